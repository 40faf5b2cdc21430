//! The server-side plpgsql functions: each state change is one call (one round trip, one
//! implicit transaction), and a batch of them is one call too.
//!
//! Locks, the same everywhere so live requests, batches and sweepers never deadlock:
//!
//! - the account row first, the action row second; a batch takes its requests in account
//!   order, so it locks each account row once, in a global order;
//! - only a reservation on a credit-limited account adds to what an account owes, so only it
//!   locks the row `FOR UPDATE`, folds the account's slot rows into the row and checks the
//!   hold against exact totals (`debits_must_not_exceed_credits`, also a `CHECK`);
//! - everything else (a reservation on an unlimited account, and every transition: confirm,
//!   settle, charge, void, which never add to what is owed) locks the row `FOR SHARE`, which
//!   its peers share, and writes its deltas to the slot row of its connection
//!   (`pg_backend_pid() % 16`), so an unlimited account is not one hot row. Setting a credit
//!   line locks `FOR UPDATE`, waiting for those, and folds.

// Every function runs with `SET enable_seqscan = off`: plpgsql caches each statement's plan
// per connection, made at the first calls, i.e. on the empty tables of a fresh schema, where
// a scan looks cheapest; nothing replans it until an autovacuum ANALYZE, so every batch
// scanned the whole actions table (0.3: 613 us of backend CPU per mint; 160 us with index
// lookups only). Every statement of the functions is a keyed lookup, so no plan loses by it
// (tests/batch_paths.rs checks the scans).

/// The action columns as the functions return them.
const OUT: &str = "o_id TEXT, o_scope TEXT, o_idem_key TEXT, o_fingerprint TEXT, o_action TEXT,
     o_account TEXT, o_reserved BIGINT, o_amount BIGINT, o_currency TEXT, o_state TEXT,
     o_trace_id TEXT, o_created_at BIGINT, o_updated_at BIGINT, o_expires_at BIGINT,
     o_response BYTEA";

/// The functions, created (or replaced in place) by the migration. Signatures and result
/// types of `dreamnet_billable_reserve` / `_resolve` / `_transition` are those of 0.2, so a
/// replica still on 0.2 keeps working against a migrated schema while replicas roll over.
pub(super) fn functions(s: &str, acc: &str, act: &str, slots: &str) -> String {
    let out = OUT;
    // A row of NULL action columns, for outcomes without an action.
    let no_action = format!("FROM (SELECT 1) AS one LEFT JOIN {act} AS a ON FALSE");
    let post_to_slot = post_to_slot(slots, "p_account", "p_pending", "p_charged");
    format!(
        "
         -- Locks the account FOR UPDATE and folds its slots into its row: exact totals.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_fold(p_account TEXT)
         RETURNS SETOF {acc} LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         DECLARE
             v_pending BIGINT;
             v_charged BIGINT;
         BEGIN
             PERFORM 1 FROM {acc} WHERE account = p_account FOR UPDATE;
             IF NOT FOUND THEN
                 RETURN;
             END IF;
             WITH gone AS (DELETE FROM {slots} WHERE account = p_account
                     RETURNING pending, charged)
                 SELECT COALESCE(sum(pending), 0), COALESCE(sum(charged), 0)
                 INTO v_pending, v_charged FROM gone;
             IF v_pending <> 0 OR v_charged <> 0 THEN
                 RETURN QUERY UPDATE {acc} SET pending = pending + v_pending,
                     charged = charged + v_charged WHERE account = p_account RETURNING *;
             ELSE
                 RETURN QUERY SELECT * FROM {acc} WHERE account = p_account;
             END IF;
         END $fn$;

         -- Moves an account's sums: in its row when the caller holds it FOR UPDATE
         -- (p_exclusive), else in this connection's slot row.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_add(
             p_account TEXT, p_pending BIGINT, p_charged BIGINT, p_exclusive BOOLEAN,
             p_now BIGINT
         ) RETURNS VOID LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         BEGIN
             IF p_pending = 0 AND p_charged = 0 THEN
                 RETURN;
             END IF;
             IF p_exclusive THEN
                 UPDATE {acc} SET pending = pending + p_pending, charged = charged + p_charged,
                     updated_at = p_now WHERE account = p_account;
             ELSE
                 {post_to_slot}
             END IF;
         END $fn$;

         -- Moves an action (locked by the caller, its account at least FOR SHARE) to p_to
         -- with p_amount; the account's sums move in a slot (a transition never adds to
         -- what the account owes).
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_transition(
             p_id TEXT, p_account TEXT, p_from TEXT, p_from_amount BIGINT, p_to TEXT,
             p_amount BIGINT, p_response BYTEA, p_now BIGINT
         ) RETURNS VOID LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         BEGIN
             UPDATE {act} SET state = p_to, amount = p_amount,
                 response = COALESCE(p_response, response), updated_at = p_now
             WHERE id = p_id;
             PERFORM {s}.dreamnet_billable_add(p_account,
                 CASE WHEN p_to IN ('pending', 'confirmed') THEN p_amount ELSE 0 END
                     - CASE WHEN p_from IN ('pending', 'confirmed') THEN p_from_amount ELSE 0 END,
                 CASE WHEN p_to = 'charged' THEN p_amount ELSE 0 END, FALSE, p_now);
         END $fn$;

         -- Reserve: a replay answered from a lock-free read (it writes nothing); else upsert
         -- + lock the account, lock the key's live action; an unexpired one is 'existing';
         -- else currency and funds checks, the expired one voided, the new action inserted
         -- and its amount held. A key that went live meanwhile under another account's lock
         -- answers 'existing' with that action.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_reserve(
             p_id TEXT, p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_action TEXT,
             p_account TEXT, p_amount BIGINT, p_currency TEXT, p_trace TEXT, p_now BIGINT,
             p_expires BIGINT, p_default_credit BIGINT
         ) RETURNS TABLE (o_outcome TEXT, o_account_currency TEXT, o_available BIGINT, {out})
         LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         DECLARE
             v_acc {acc}%ROWTYPE;
             v_live {act}%ROWTYPE;
             v_found BOOLEAN;
             v_limited BOOLEAN;
             v_available BIGINT;
         BEGIN
             SELECT * INTO v_live FROM {act}
                 WHERE scope = p_scope AND idem_key = p_key AND state <> 'failed';
             IF FOUND AND NOT (v_live.state = 'pending' AND p_now >= v_live.expires_at) THEN
                 RETURN QUERY SELECT 'existing'::TEXT, NULL::TEXT, NULL::BIGINT, v_live.*;
                 RETURN;
             END IF;
             INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                 VALUES (p_account, p_currency, p_default_credit, p_now, p_now)
                 ON CONFLICT (account) DO NOTHING;
             SELECT credit IS NOT NULL INTO v_limited FROM {acc} WHERE account = p_account;
             IF v_limited THEN
                 SELECT * INTO v_acc FROM {acc} WHERE account = p_account FOR UPDATE;
             ELSE
                 SELECT * INTO v_acc FROM {acc} WHERE account = p_account FOR SHARE;
                 IF v_acc.credit IS NOT NULL THEN
                     -- A credit line opened meanwhile: its check needs the row alone.
                     SELECT * INTO v_acc FROM {acc} WHERE account = p_account FOR UPDATE;
                 END IF;
             END IF;
             v_limited := v_acc.credit IS NOT NULL;
             SELECT * INTO v_live FROM {act}
                 WHERE scope = p_scope AND idem_key = p_key AND state <> 'failed' FOR UPDATE;
             v_found := FOUND;
             IF v_found AND NOT (v_live.state = 'pending' AND p_now >= v_live.expires_at) THEN
                 RETURN QUERY SELECT 'existing'::TEXT, NULL::TEXT, NULL::BIGINT, a.*
                     FROM {act} AS a WHERE a.id = v_live.id;
                 RETURN;
             END IF;
             IF v_acc.currency <> p_currency THEN
                 RETURN QUERY SELECT 'currency_mismatch'::TEXT, v_acc.currency, NULL::BIGINT, a.*
                     {no_action};
                 RETURN;
             END IF;
             IF v_found THEN
                 -- A crashed attempt past its timeout: void it so this retry can run.
                 PERFORM {s}.dreamnet_billable_transition(v_live.id, v_live.account,
                     v_live.state, v_live.amount, 'failed', v_live.amount, NULL, p_now);
             END IF;
             IF v_limited THEN
                 SELECT * INTO v_acc FROM {s}.dreamnet_billable_fold(p_account);
                 v_available := v_acc.credit - v_acc.pending - v_acc.charged;
                 IF v_available < p_amount THEN
                     RETURN QUERY SELECT 'insufficient_funds'::TEXT, v_acc.currency, v_available,
                         a.* {no_action};
                     RETURN;
                 END IF;
             END IF;
             INSERT INTO {act} (id, scope, idem_key, fingerprint, action, account, reserved,
                 amount, currency, state, trace_id, created_at, updated_at, expires_at)
             VALUES (p_id, p_scope, p_key, p_fingerprint, p_action, p_account, p_amount,
                 p_amount, p_currency, 'pending', p_trace, p_now, p_now, p_expires)
             ON CONFLICT (scope, idem_key) WHERE state <> 'failed' DO NOTHING;
             IF NOT FOUND THEN
                 RETURN QUERY SELECT 'existing'::TEXT, NULL::TEXT, NULL::BIGINT, a.*
                     FROM {act} AS a
                     WHERE a.scope = p_scope AND a.idem_key = p_key AND a.state <> 'failed';
                 RETURN;
             END IF;
             PERFORM {s}.dreamnet_billable_add(p_account, p_amount, 0, v_limited, p_now);
             RETURN QUERY SELECT 'reserved'::TEXT, NULL::TEXT, NULL::BIGINT, a.*
                 FROM {act} AS a WHERE a.id = p_id;
         END $fn$;

         -- Confirm (p_to 'confirmed') or settle ('charged'), both with p_response and
         -- p_actual, from pending; charge ('charged', no response) from confirmed; void
         -- ('failed') from pending. Outcomes: 'done' (the new row), 'refused' (the current
         -- row: wrong state), 'not_found', 'invalid_amount', 'exceeds', 'expired' (stored too
         -- late: voided, committed).
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_resolve(
             p_id TEXT, p_to TEXT, p_actual BIGINT, p_response BYTEA, p_now BIGINT
         ) RETURNS TABLE (o_outcome TEXT, {out})
         LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         DECLARE
             v_act {act}%ROWTYPE;
             v_amount BIGINT;
             v_outcome TEXT := 'done';
         BEGIN
             PERFORM 1 FROM {acc}
                 WHERE account = (SELECT account FROM {act} WHERE id = p_id) FOR SHARE;
             SELECT * INTO v_act FROM {act} WHERE id = p_id FOR UPDATE;
             IF NOT FOUND THEN
                 RETURN QUERY SELECT 'not_found'::TEXT, a.* {no_action};
                 RETURN;
             END IF;
             IF p_response IS NOT NULL THEN
                 v_amount := COALESCE(p_actual, v_act.reserved);
                 IF v_act.state <> 'pending' THEN
                     v_outcome := 'refused';
                 ELSIF v_amount < 0 THEN
                     v_outcome := 'invalid_amount';
                 ELSIF v_amount > v_act.reserved THEN
                     v_outcome := 'exceeds';
                 ELSIF p_now >= v_act.expires_at THEN
                     PERFORM {s}.dreamnet_billable_transition(p_id, v_act.account, v_act.state,
                         v_act.amount, 'failed', v_act.amount, NULL, p_now);
                     v_outcome := 'expired';
                 ELSE
                     PERFORM {s}.dreamnet_billable_transition(p_id, v_act.account, v_act.state,
                         v_act.amount, p_to, v_amount, p_response, p_now);
                 END IF;
             ELSIF (v_act.state = 'confirmed' AND p_to = 'charged')
                 OR (v_act.state = 'pending' AND p_to = 'failed') THEN
                 PERFORM {s}.dreamnet_billable_transition(p_id, v_act.account, v_act.state,
                     v_act.amount, p_to, v_act.amount, NULL, p_now);
             ELSE
                 v_outcome := 'refused';
             END IF;
             RETURN QUERY SELECT v_outcome, a.* FROM {act} AS a WHERE a.id = p_id;
         END $fn$;"
    ) + &super::batch_functions::batch_functions(s, acc, act, slots, OUT)
        + &super::combined_function::combined_function(
            s,
            acc,
            act,
            slots,
            OUT,
            super::sql::ACTION_COLUMNS,
        )
}

/// The statement adding `pending` and `charged` (plpgsql expressions) to `account`'s slot
/// row of this connection (the batches post theirs set-based, one row per account).
fn post_to_slot(slots: &str, account: &str, pending: &str, charged: &str) -> String {
    format!(
        "INSERT INTO {slots} AS t (account, slot, pending, charged)
                     VALUES ({account}, pg_backend_pid() % 16, {pending}, {charged})
                     ON CONFLICT (account, slot) DO UPDATE SET
                         pending = t.pending + EXCLUDED.pending,
                         charged = t.charged + EXCLUDED.charged;"
    )
}
