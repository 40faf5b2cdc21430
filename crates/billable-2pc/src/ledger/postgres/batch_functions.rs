//! The two batch functions: many reserves (or settles) in one transaction, each request
//! answered as its own call of [`functions`](super::functions) would answer it.
//!
//! Where the time per request went (measured with `examples/ledger_load.rs`, a `perf`
//! profile of the ledger's backends and `auto_explain`): PostgreSQL spends a fixed cost on
//! every statement it runs, whatever the rows: executor start-up, and, for an `INSERT` or
//! `UPDATE`, the table's `CHECK` constraints parsed again from their stored text
//! (`stringToNode`, 8% of the backends' CPU) and planned. In 0.3 the batches ran a couple of
//! statements per request and per account (a key read, an insert, an account lock, a slot
//! upsert), so that fixed cost was paid ~30 times a batch. Now the common case is set-based,
//! a few statements per batch whatever its size:
//!
//! - reserves: one lock-free read of every key's live action (replays are answered from
//!   it); one `SELECT .. FOR SHARE` of the batch's unlimited accounts, in account order (a
//!   missing account is created first, in one `INSERT`); one `INSERT .. SELECT` of every
//!   fresh key on a locked account of the request's currency, with the holds posted to the
//!   slots in the same statement (one row per account);
//! - settles: one `UPDATE .. FROM` of every live pending hold in range (stored and charged),
//!   with the sums moved in the slots in the same statement. No account lock: a settle
//!   never adds to what an account owes (see [`functions`](super::functions));
//! - anything else (a credit-limited account, an expired attempt to void, a currency
//!   mismatch, a key taken meanwhile, a settle refused, too late or out of range) is handed
//!   to the single-request function afterwards, in account order, which answers it exactly
//!   as unbatched (a credit-limited account's holds are so checked one by one, in order).
//!
//! Both run with [`PLANNER_SETTINGS`].

/// How the batch functions are planned, set on each:
///
/// - `plan_cache_mode = force_generic_plan`: with array parameters the planner judged its
///   generic plans dearer than custom ones and re-planned every statement of every batch
///   (the set-based functions then cost 2x more per request than the per-request loops they
///   replace);
/// - nested loops over plain index scans only: the generic plans are made at a
///   connection's first batch, often on the fresh, empty tables of a new schema, where a
///   hash join over a whole index (every live key) looks cheapest, and stay cached: every
///   batch would then read every live action, a cost growing with the table. Each statement
///   joins a batch's few requests to their rows by key, which nested index lookups do best
///   at any size. And `enable_seqscan = off`, as every function (see
///   [`functions`](super::functions)).
pub(super) const PLANNER_SETTINGS: &str = "SET enable_seqscan = off SET enable_bitmapscan = off
         SET enable_hashjoin = off SET enable_mergejoin = off
         SET plan_cache_mode = force_generic_plan";

/// The batch functions of schema `s` (`acc`: accounts table, `act`: actions table, `slots`:
/// slots table, `out`: the returned action columns), created or replaced by the migration
/// with the signatures and result types they had in 0.3.
pub(super) fn batch_functions(s: &str, acc: &str, act: &str, slots: &str, out: &str) -> String {
    let settings = PLANNER_SETTINGS;
    let replays = replays(act);
    let lock_unlimited = lock_unlimited(acc, "v_accounts");
    let fresh_keys = fresh_keys(act);
    format!(
        "
         -- A batch of reservations in one transaction. o_ord is the request's index
         -- (1-based). Locks: the batch's unlimited accounts FOR SHARE, in account order, then
         -- the new action rows; the rest (credit-limited accounts FOR UPDATE) in account order.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_reserve_batch(
             p_ids TEXT[], p_scopes TEXT[], p_keys TEXT[], p_fingerprints TEXT[],
             p_actions TEXT[], p_accounts TEXT[], p_amounts BIGINT[], p_currencies TEXT[],
             p_traces TEXT[], p_now BIGINT, p_expires BIGINT[], p_default_credit BIGINT
         ) RETURNS TABLE (o_ord INT, o_outcome TEXT, o_account_currency TEXT,
             o_available BIGINT, {out})
         LANGUAGE plpgsql {settings} AS $fn$
         DECLARE
             v_n INT := cardinality(p_ids);
             -- The requests whose key has a live action, and those actions.
             v_live_ords INT[];
             v_live {act}[];
             -- Those answered as replays (the others have expired: voided on the slow path).
             v_replayed INT[] := '{{}}';
             -- The accounts of the other requests; those locked as unlimited, their currency.
             v_accounts TEXT[];
             v_locked TEXT[];
             v_currencies TEXT[];
             -- The requests reserved in the set-based insert, and their new actions.
             v_ords INT[];
             v_rows {act}[];
             o INT;
         BEGIN
             {replays}
                 IF cardinality(v_replayed) = v_n THEN
                     RETURN;
                 END IF;
             END IF;
             SELECT array_agg(DISTINCT p_accounts[g] ORDER BY p_accounts[g]) INTO v_accounts
             FROM generate_series(1, v_n) AS g WHERE g <> ALL (v_replayed);
             {lock_unlimited}
             -- Every fresh key on a locked account of its currency, in one statement; the
             -- holds posted to this connection's slot of each account in the same one. A key
             -- taken meanwhile (or twice in the batch) is skipped here and answered below.
             WITH ins AS (
                 {fresh_keys}
             ), held AS (
                 INSERT INTO {slots} AS t (account, slot, pending, charged)
                 SELECT (ins.n).account, pg_backend_pid() % 16, sum((ins.n).reserved), 0
                 FROM ins GROUP BY (ins.n).account
                 ON CONFLICT (account, slot) DO UPDATE SET pending = t.pending + EXCLUDED.pending
             )
             SELECT COALESCE(array_agg(g::INT), '{{}}'), array_agg(ins.n) INTO v_ords, v_rows
             FROM ins JOIN generate_series(1, v_n) AS g ON p_ids[g] = (ins.n).id;
             IF cardinality(v_ords) > 0 THEN
                 RETURN QUERY SELECT v_ords[j], 'reserved'::TEXT, NULL::TEXT, NULL::BIGINT,
                     (v_rows[j]).*
                 FROM generate_series(1, cardinality(v_ords)) AS j;
             END IF;
             IF cardinality(v_ords) + cardinality(v_replayed) < v_n THEN
                 FOR o IN SELECT g FROM generate_series(1, v_n) AS g
                     WHERE g <> ALL (v_replayed) AND g <> ALL (v_ords)
                     ORDER BY p_accounts[g], g
                 LOOP
                     RETURN QUERY SELECT o, r.* FROM {s}.dreamnet_billable_reserve(p_ids[o],
                         p_scopes[o], p_keys[o], p_fingerprints[o], p_actions[o], p_accounts[o],
                         p_amounts[o], p_currencies[o], p_traces[o], p_now, p_expires[o],
                         p_default_credit) AS r;
                 END LOOP;
             END IF;
         END $fn$;

         -- A batch of resolves (settles) in one transaction: every live pending hold in
         -- range stored and charged in one statement (action rows locked in id order, no
         -- account lock), its sums moved in this connection's slots; the rest one by one.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_resolve_batch(
             p_ids TEXT[], p_tos TEXT[], p_actuals BIGINT[], p_responses BYTEA[], p_now BIGINT
         ) RETURNS TABLE (o_ord INT, o_outcome TEXT, {out})
         LANGUAGE plpgsql {settings} AS $fn$
         DECLARE
             v_n INT := cardinality(p_ids);
             v_ords INT[];
             v_rows {act}[];
             o INT;
         BEGIN
             WITH upd AS (
                 UPDATE {act} AS a SET state = 'charged',
                     amount = COALESCE(p_actuals[u.ord], a.reserved),
                     response = p_responses[u.ord], updated_at = p_now
                 FROM (SELECT DISTINCT ON (x.id) x.id, x.ord::INT AS ord
                     FROM unnest(p_ids) WITH ORDINALITY AS x(id, ord) ORDER BY x.id, x.ord) AS u
                 WHERE a.id = u.id AND p_tos[u.ord] = 'charged' AND p_responses[u.ord] IS NOT NULL
                     AND a.state = 'pending' AND p_now < a.expires_at AND a.amount = a.reserved
                     AND COALESCE(p_actuals[u.ord], a.reserved) BETWEEN 0 AND a.reserved
                 RETURNING u.ord, a
             ), moved AS (
                 INSERT INTO {slots} AS t (account, slot, pending, charged)
                 SELECT (upd.a).account, pg_backend_pid() % 16, -sum((upd.a).reserved),
                     sum((upd.a).amount)
                 FROM upd GROUP BY (upd.a).account
                 ON CONFLICT (account, slot) DO UPDATE SET pending = t.pending + EXCLUDED.pending,
                     charged = t.charged + EXCLUDED.charged
             )
             SELECT COALESCE(array_agg(upd.ord), '{{}}'), array_agg(upd.a) INTO v_ords, v_rows
             FROM upd;
             IF cardinality(v_ords) > 0 THEN
                 RETURN QUERY SELECT v_ords[j], 'done'::TEXT, (v_rows[j]).*
                 FROM generate_series(1, cardinality(v_ords)) AS j;
             END IF;
             IF cardinality(v_ords) < v_n THEN
                 FOR o IN SELECT g FROM generate_series(1, v_n) AS g WHERE g <> ALL (v_ords)
                     ORDER BY g
                 LOOP
                     RETURN QUERY SELECT o, x.* FROM {s}.dreamnet_billable_resolve(p_ids[o],
                         p_tos[o], p_actuals[o], p_responses[o], p_now) AS x;
                 END LOOP;
             END IF;
         END $fn$;"
    )
}

/// The reserve batch's first step (plpgsql, the reserve batch's parameters and variables): a
/// lock-free read of every key's live action; the replays among them answered at once,
/// writing nothing, their requests in `v_replayed`; the others (expired attempts, voided on
/// the slow path) in `v_live_ords`. Leaves an `IF` open when some key was live, so the caller
/// can end early when every request was a replay.
pub(super) fn replays(act: &str) -> String {
    format!(
        "SELECT array_agg(u.ord::INT), array_agg(a) INTO v_live_ords, v_live
             FROM unnest(p_scopes, p_keys) WITH ORDINALITY AS u(scope, key, ord)
             JOIN {act} AS a ON a.scope = u.scope AND a.idem_key = u.key AND a.state <> 'failed';
             IF v_live_ords IS NULL THEN
                 v_live_ords := '{{}}';
             ELSE
                 -- A replay: answered from this lock-free read, writing nothing.
                 SELECT COALESCE(array_agg(v_live_ords[j]), '{{}}') INTO v_replayed
                 FROM generate_series(1, cardinality(v_live_ords)) AS j
                 WHERE NOT ((v_live[j]).state = 'pending' AND p_now >= (v_live[j]).expires_at);
                 RETURN QUERY SELECT v_live_ords[j], 'existing'::TEXT, NULL::TEXT, NULL::BIGINT,
                     (v_live[j]).*
                 FROM generate_series(1, cardinality(v_live_ords)) AS j
                 WHERE v_live_ords[j] = ANY (v_replayed);"
    )
}

/// The unlimited accounts among `to_lock` (a sorted `TEXT[]`), locked `FOR SHARE` in account
/// order, into `v_locked` and their currencies into `v_currencies` (the lock re-checks the
/// filter, so an account given a credit line meanwhile is not taken: it goes to the slow
/// path, which locks it `FOR UPDATE`). The reserves' missing accounts (`v_accounts`) are
/// created (unlimited, unless there is a default credit line: then the slow path creates
/// them) and locked.
pub(super) fn lock_unlimited(acc: &str, to_lock: &str) -> String {
    format!(
        "FOR o IN 1..2 LOOP
                 SELECT COALESCE(array_agg(l.account), '{{}}'), COALESCE(array_agg(l.currency), '{{}}')
                 INTO v_locked, v_currencies
                 FROM (SELECT account, currency FROM {acc}
                     WHERE account = ANY ({to_lock}) AND credit IS NULL
                     ORDER BY account FOR SHARE) AS l;
                 EXIT WHEN o = 2 OR p_default_credit IS NOT NULL
                     OR COALESCE(v_accounts <@ v_locked, TRUE);
                 INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                 SELECT DISTINCT ON (p_accounts[g]) p_accounts[g], p_currencies[g], NULL::BIGINT,
                     p_now, p_now
                 FROM generate_series(1, v_n) AS g
                 WHERE g <> ALL (v_replayed) AND p_accounts[g] <> ALL (v_locked)
                 ORDER BY p_accounts[g], g
                 ON CONFLICT (account) DO NOTHING;
             END LOOP;"
    )
}

/// The set-based reservation (a statement for a `WITH`): every fresh key (not live,
/// `v_live_ords`) on a locked account of its currency (`v_locked`, `v_currencies`), inserted
/// pending, in account order, returning the new rows as `n`. A key taken meanwhile (or twice
/// in the batch) is skipped, for the slow path to answer.
pub(super) fn fresh_keys(act: &str) -> String {
    format!(
        "INSERT INTO {act} AS n (id, scope, idem_key, fingerprint, action, account,
                     reserved, amount, currency, state, trace_id, created_at, updated_at,
                     expires_at)
                 SELECT p_ids[g], p_scopes[g], p_keys[g], p_fingerprints[g], p_actions[g],
                     p_accounts[g], p_amounts[g], p_amounts[g], p_currencies[g], 'pending',
                     p_traces[g], p_now, p_now, p_expires[g]
                 FROM generate_series(1, v_n) AS g
                 JOIN unnest(v_locked, v_currencies) AS l(account, currency)
                     ON l.account = p_accounts[g] AND l.currency = p_currencies[g]
                 WHERE g <> ALL (v_live_ords)
                 ORDER BY p_accounts[g], g
                 ON CONFLICT (scope, idem_key) WHERE state <> 'failed' DO NOTHING
                 RETURNING n"
    )
}
