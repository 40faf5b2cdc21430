//! The two batch functions: many reserves (or settles) in one transaction, each request
//! answered in order as its own call of [`functions`](super::functions) would answer it.
//!
//! Where the time per request went (0.3, measured with `examples/ledger_load.rs`): the
//! batches called the single-request functions once per request, so each reservation ran
//! about nine statements (a lock-free read, the account upsert, a credit read, the account
//! lock, the live key locked, the insert, a slot upsert, the row read back) and each settle
//! about six, and every request's slot upsert updated the same slot row again within one
//! transaction (a longer chain of row versions for each). The batches now take the common
//! case in two statements per reservation and one per settle:
//!
//! - an account's row is created and locked once per batch, not once per request, and the
//!   sums the batch moves on it are posted to its slot once, at the end (unlimited accounts
//!   only: a credit-limited account's holds still go to its row, each checked in order);
//! - a reservation of a fresh key on an unlimited account of the right currency is one
//!   lock-free read of the key and one `INSERT .. RETURNING`; a settle of a live pending
//!   hold is one `UPDATE .. RETURNING`;
//! - anything else (a replay is still answered from its read alone; a credit line, an
//!   expired attempt to void, a currency mismatch, a key gone live meanwhile, a settle that
//!   is refused, too late or out of range) is handed to the single-request function, which
//!   answers it exactly as unbatched.
//!
//! The lock order is that of every function: account rows first, in account order (the
//! requests are taken in account order), action rows second.

use super::functions::post_to_slot;

/// The batch functions of schema `s` (`acc`: accounts table, `act`: actions table, `slots`: slots table, `out`:
/// the returned action columns), created or replaced by the migration with the signatures
/// and result types they had in 0.3.
pub(super) fn batch_functions(s: &str, acc: &str, act: &str, slots: &str, out: &str) -> String {
    let post_held = post_to_slot(slots, "v_account", "v_held", "0");
    let post_moved = post_to_slot(slots, "v_account", "v_pending", "v_charged");
    format!(
        "
         -- A batch of reservations in one transaction, in account order (each account row
         -- locked once, in a global order), in request order within an account (each hold
         -- checked against what the earlier ones left). o_ord is the request's index (1-based).
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_reserve_batch(
             p_ids TEXT[], p_scopes TEXT[], p_keys TEXT[], p_fingerprints TEXT[],
             p_actions TEXT[], p_accounts TEXT[], p_amounts BIGINT[], p_currencies TEXT[],
             p_traces TEXT[], p_now BIGINT, p_expires BIGINT[], p_default_credit BIGINT
         ) RETURNS TABLE (o_ord INT, o_outcome TEXT, o_account_currency TEXT,
             o_available BIGINT, {out})
         LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         DECLARE
             i INT;
             -- The account whose requests are being taken; whether its row exists and is
             -- locked (taken at its first request that is no replay: replays need neither);
             -- whether it is unlimited (held FOR SHARE, its holds taken here), its currency,
             -- and what this batch held on it so far (posted to a slot once, at the end).
             v_account TEXT;
             v_ready BOOLEAN := FALSE;
             v_shared BOOLEAN := FALSE;
             v_currency TEXT;
             v_held BIGINT := 0;
             v_live {act}%ROWTYPE;
             v_found BOOLEAN;
             v_new {act}%ROWTYPE;
         BEGIN
             FOR i IN SELECT u.ord::INT FROM unnest(p_accounts) WITH ORDINALITY AS u(account, ord)
                 ORDER BY u.account, u.ord
             LOOP
                 IF v_account IS DISTINCT FROM p_accounts[i] THEN
                     IF v_held <> 0 THEN
                     {post_held}
                 END IF;
                     v_account := p_accounts[i];
                     v_ready := FALSE;
                     v_shared := FALSE;
                     v_held := 0;
                 END IF;
                 -- A replay: answered from a lock-free read, writing nothing.
                 SELECT * INTO v_live FROM {act}
                     WHERE scope = p_scopes[i] AND idem_key = p_keys[i] AND state <> 'failed';
                 v_found := FOUND;
                 IF v_found AND NOT (v_live.state = 'pending' AND p_now >= v_live.expires_at) THEN
                     RETURN QUERY SELECT i, 'existing'::TEXT, NULL::TEXT, NULL::BIGINT, v_live.*;
                     CONTINUE;
                 END IF;
                 IF NOT v_ready THEN
                     -- An existing unlimited account, the common case: locked FOR SHARE in
                     -- one statement (the lock only taken if it is still unlimited once
                     -- locked: a credit-limited one is left to the single-request function,
                     -- which takes it FOR UPDATE, and must not find our share lock on it).
                     SELECT currency, TRUE INTO v_currency, v_shared FROM {acc}
                         WHERE account = v_account AND credit IS NULL FOR SHARE;
                     IF NOT FOUND THEN
                         INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                             VALUES (v_account, p_currencies[i], p_default_credit, p_now, p_now)
                             ON CONFLICT (account) DO NOTHING;
                         SELECT currency, TRUE INTO v_currency, v_shared FROM {acc}
                             WHERE account = v_account AND credit IS NULL FOR SHARE;
                         v_shared := FOUND;
                     END IF;
                     v_ready := TRUE;
                 END IF;
                 IF v_shared AND NOT v_found AND v_currency = p_currencies[i] THEN
                     INSERT INTO {act} (id, scope, idem_key, fingerprint, action, account,
                         reserved, amount, currency, state, trace_id, created_at, updated_at,
                         expires_at)
                     VALUES (p_ids[i], p_scopes[i], p_keys[i], p_fingerprints[i], p_actions[i],
                         v_account, p_amounts[i], p_amounts[i], p_currencies[i], 'pending',
                         p_traces[i], p_now, p_now, p_expires[i])
                     ON CONFLICT (scope, idem_key) WHERE state <> 'failed' DO NOTHING
                     RETURNING * INTO v_new;
                     IF FOUND THEN
                         v_held := v_held + p_amounts[i];
                         RETURN QUERY SELECT i, 'reserved'::TEXT, NULL::TEXT, NULL::BIGINT,
                             v_new.*;
                         CONTINUE;
                     END IF;
                 END IF;
                 RETURN QUERY SELECT i, r.* FROM {s}.dreamnet_billable_reserve(p_ids[i],
                     p_scopes[i], p_keys[i], p_fingerprints[i], p_actions[i], p_accounts[i],
                     p_amounts[i], p_currencies[i], p_traces[i], p_now, p_expires[i],
                     p_default_credit) AS r;
             END LOOP;
             IF v_held <> 0 THEN
                     {post_held}
                 END IF;
         END $fn$;

         -- A batch of resolves (settles) in one transaction: the accounts locked FOR SHARE
         -- first, once each, in account order; then the actions in account order.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_resolve_batch(
             p_ids TEXT[], p_tos TEXT[], p_actuals BIGINT[], p_responses BYTEA[], p_now BIGINT
         ) RETURNS TABLE (o_ord INT, o_outcome TEXT, {out})
         LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
         DECLARE
             r RECORD;
             i INT;
             -- The account whose actions are being taken, and what the batch moved on it.
             v_account TEXT;
             v_pending BIGINT := 0;
             v_charged BIGINT := 0;
             v_row {act}%ROWTYPE;
         BEGIN
             PERFORM 1 FROM {acc} WHERE account IN
                     (SELECT a.account FROM {act} AS a WHERE a.id = ANY (p_ids))
                 ORDER BY account FOR SHARE;
             FOR r IN SELECT u.ord::INT AS ord, a.account FROM unnest(p_ids)
                     WITH ORDINALITY AS u(id, ord)
                 LEFT JOIN {act} AS a ON a.id = u.id ORDER BY a.account NULLS LAST, u.ord
             LOOP
                 i := r.ord;
                 IF v_account IS DISTINCT FROM r.account THEN
                     IF v_pending <> 0 OR v_charged <> 0 THEN
                         {post_moved}
                     END IF;
                     v_account := r.account;
                     v_pending := 0;
                     v_charged := 0;
                 END IF;
                 -- A settle of a live pending hold (its amount still the reserved one) within
                 -- range: stored and charged in one statement.
                 IF p_tos[i] = 'charged' AND p_responses[i] IS NOT NULL THEN
                     UPDATE {act} SET state = 'charged',
                         amount = COALESCE(p_actuals[i], reserved),
                         response = p_responses[i], updated_at = p_now
                     WHERE id = p_ids[i] AND state = 'pending' AND p_now < expires_at
                         AND amount = reserved
                         AND COALESCE(p_actuals[i], reserved) BETWEEN 0 AND reserved
                     RETURNING * INTO v_row;
                     IF FOUND THEN
                         v_pending := v_pending - v_row.reserved;
                         v_charged := v_charged + v_row.amount;
                         RETURN QUERY SELECT i, 'done'::TEXT, v_row.*;
                         CONTINUE;
                     END IF;
                 END IF;
                 RETURN QUERY SELECT i, x.* FROM {s}.dreamnet_billable_resolve(p_ids[i],
                     p_tos[i], p_actuals[i], p_responses[i], p_now) AS x;
             END LOOP;
             IF v_pending <> 0 OR v_charged <> 0 THEN
                 {post_moved}
             END IF;
         END $fn$;"
    )
}
