//! The combined batch function: reserves and settles that queued together, in one
//! transaction, so one commit (one WAL flush) serves both kinds
//! ([`PostgresLedgerBuilder::combined_batches`](super::PostgresLedgerBuilder::combined_batches)).
//! Each request is answered as its own batch function
//! ([`batch_functions`](super::batch_functions)) would answer it.
//!
//! # Lock order
//!
//! Every transaction of the ledger locks account rows before the rows that belong to them
//! (action rows, slot rows), and takes account rows in one global order: first the
//! unlimited accounts (`FOR SHARE`, in account order), then the credit-limited ones (in
//! account order: `FOR UPDATE` for a reservation, which checks exact totals; `FOR SHARE` for
//! a transition). An account's credit line cannot change while anyone holds its row, so
//! two transactions agree on which accounts come first. The combined function keeps that
//! order over both parts:
//!
//! 1. lock-free reads: the reserves' live keys (replays answered from them) and each
//!    settle's account (an action's account never changes);
//! 2. the unlimited accounts of **both** parts, `FOR SHARE`, in one sorted statement (the
//!    reserves' missing accounts created first, as in the reserve batch);
//! 3. one statement: the fresh keys inserted, the live holds on those locked accounts
//!    stored and charged, and both parts' sums posted to this connection's slots, one row
//!    per account, in account order;
//! 4. everything else (a credit-limited account, an expired attempt, a mismatch, a key
//!    taken meanwhile, a settle refused, late or on a credit-limited account), one
//!    single-request function call each, all in one account order, an account's reserves
//!    before its settles (so a limited account is locked `FOR UPDATE` before the `FOR SHARE`
//!    a settle re-takes: never an upgrade).
//!
//! So the combined transaction never writes a row of an account whose row it does not
//! hold, and never waits for an account row while holding rows of an account it has not
//! locked. Against the other paths:
//!
//! - a credit line (`credit_tx`) locks its one account `FOR UPDATE` and then that account's
//!   slots: it waits for the combined batch at the account row (step 2 or 4 hold it), before
//!   it holds anything the batch needs;
//! - a single transition (the layer's void, recovery's charge or void) locks its account
//!   `FOR SHARE`, its action row, then a slot row: it shares the account with the batch, and
//!   the batch writes its slots only in step 3 after every action row of step 3 is locked;
//! - recovery's listing and pruning read `FOR UPDATE SKIP LOCKED` (no waiting), a
//!   heartbeat locks one action row only.
//!
//! Unlike the separate settle batch, a combined batch settles a hold on a credit-limited
//! account through the single-request function (step 4): writing its slot without the
//! account row (as the separate batch does) and then locking that row for a later request
//! of the same batch would wait on a credit line that waits on the slot.
//!
//! What remains is what the separate batches share: two transactions whose connections
//! have the same slot number (`pg_backend_pid() % 16`) writing the same accounts' slots in
//! different orders on their slow paths, or one idempotency key raced on two accounts by
//! two replicas, can still meet in a cycle. PostgreSQL's deadlock detector then aborts one
//! of them whole: every caller of that batch gets the error and nothing of it is applied
//! (no hold, no charge), as for any failed batch.

use super::batch_functions::{fresh_keys, lock_unlimited, replays, PLANNER_SETTINGS};

/// The combined function of schema `s` (`acc`: accounts, `act`: actions, `slots`: slots,
/// `out`: the returned action columns; `columns`: the action columns by name). Requests are
/// numbered 1..n (reserves) and n+1..n+m (settles) in `o_ord`; settles answer with
/// `o_account_currency` and `o_available` NULL.
pub(super) fn combined_function(
    s: &str,
    acc: &str,
    act: &str,
    slots: &str,
    out: &str,
    columns: &str,
) -> String {
    let settings = PLANNER_SETTINGS;
    let replays = replays(act);
    let lock_unlimited = lock_unlimited(acc, "v_all");
    let fresh_keys = fresh_keys(act);
    let settled_columns = columns
        .split(", ")
        .map(|column| format!("x.o_{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_reserve_and_settle_batch(
             p_ids TEXT[], p_scopes TEXT[], p_keys TEXT[], p_fingerprints TEXT[],
             p_actions TEXT[], p_accounts TEXT[], p_amounts BIGINT[], p_currencies TEXT[],
             p_traces TEXT[], p_now BIGINT, p_expires BIGINT[], p_default_credit BIGINT,
             p_settle_ids TEXT[], p_actuals BIGINT[], p_responses BYTEA[]
         ) RETURNS TABLE (o_ord INT, o_outcome TEXT, o_account_currency TEXT,
             o_available BIGINT, {out})
         LANGUAGE plpgsql {settings} AS $fn$
         DECLARE
             v_n INT := cardinality(p_ids);
             v_m INT := cardinality(p_settle_ids);
             v_live_ords INT[];
             v_live {act}[];
             v_replayed INT[] := '{{}}';
             -- The reserves' accounts (replays aside), each settle's account (NULL: no such
             -- action), both together; those locked as unlimited, their currency.
             v_accounts TEXT[];
             v_settled_on TEXT[];
             v_all TEXT[];
             v_locked TEXT[];
             v_currencies TEXT[];
             -- The requests done in the set-based statement, their outcomes and rows.
             v_ords INT[];
             v_outcomes TEXT[];
             v_rows {act}[];
             o INT;
         BEGIN
             {replays}
             END IF;
             SELECT COALESCE(array_agg(DISTINCT p_accounts[g] ORDER BY p_accounts[g]), '{{}}')
             INTO v_accounts FROM generate_series(1, v_n) AS g WHERE g <> ALL (v_replayed);
             SELECT array_agg(a.account ORDER BY u.ord) INTO v_settled_on
             FROM unnest(p_settle_ids) WITH ORDINALITY AS u(id, ord)
             LEFT JOIN {act} AS a ON a.id = u.id;
             SELECT COALESCE(array_agg(DISTINCT x ORDER BY x), '{{}}') INTO v_all
             FROM unnest(v_accounts || v_settled_on) AS x WHERE x IS NOT NULL;
             {lock_unlimited}
             -- Both parts' common case in one statement, their sums in one slot post.
             WITH ins AS (
                 {fresh_keys}
             ), upd AS (
                 UPDATE {act} AS a SET state = 'charged',
                     amount = COALESCE(p_actuals[u.ord], a.reserved),
                     response = p_responses[u.ord], updated_at = p_now
                 FROM (SELECT DISTINCT ON (x.id) x.id, x.ord::INT AS ord
                     FROM unnest(p_settle_ids) WITH ORDINALITY AS x(id, ord)
                     ORDER BY x.id, x.ord) AS u
                 WHERE a.id = u.id AND a.account = ANY (v_locked)
                     AND p_responses[u.ord] IS NOT NULL
                     AND a.state = 'pending' AND p_now < a.expires_at AND a.amount = a.reserved
                     AND COALESCE(p_actuals[u.ord], a.reserved) BETWEEN 0 AND a.reserved
                 RETURNING u.ord, a
             ), done AS (
                 SELECT g::INT AS ord, 'reserved'::TEXT AS outcome, ins.n AS r
                 FROM ins JOIN generate_series(1, v_n) AS g ON p_ids[g] = (ins.n).id
                 UNION ALL
                 SELECT v_n + upd.ord, 'done'::TEXT, upd.a FROM upd
             ), moved AS (
                 INSERT INTO {slots} AS t (account, slot, pending, charged)
                 SELECT (d.r).account, pg_backend_pid() % 16,
                     sum(CASE WHEN d.outcome = 'reserved' THEN (d.r).reserved
                         ELSE -(d.r).reserved END),
                     sum(CASE WHEN d.outcome = 'done' THEN (d.r).amount ELSE 0 END)
                 FROM done AS d GROUP BY (d.r).account ORDER BY (d.r).account
                 ON CONFLICT (account, slot) DO UPDATE SET pending = t.pending + EXCLUDED.pending,
                     charged = t.charged + EXCLUDED.charged
             )
             SELECT COALESCE(array_agg(d.ord), '{{}}'), array_agg(d.outcome), array_agg(d.r)
             INTO v_ords, v_outcomes, v_rows FROM done AS d;
             IF cardinality(v_ords) > 0 THEN
                 RETURN QUERY SELECT v_ords[j], v_outcomes[j], NULL::TEXT, NULL::BIGINT,
                     (v_rows[j]).*
                 FROM generate_series(1, cardinality(v_ords)) AS j;
             END IF;
             IF cardinality(v_ords) + cardinality(v_replayed) < v_n + v_m THEN
                 -- One account order over both kinds, an account's reserves first.
                 FOR o IN SELECT x.ord FROM (
                         SELECT g AS ord, p_accounts[g] AS account, 0 AS kind
                         FROM generate_series(1, v_n) AS g WHERE g <> ALL (v_replayed)
                         UNION ALL
                         SELECT v_n + h, v_settled_on[h], 1 FROM generate_series(1, v_m) AS h
                     ) AS x
                     WHERE x.ord <> ALL (v_ords)
                     ORDER BY x.account, x.kind, x.ord
                 LOOP
                     IF o <= v_n THEN
                         RETURN QUERY SELECT o, r.* FROM {s}.dreamnet_billable_reserve(p_ids[o],
                             p_scopes[o], p_keys[o], p_fingerprints[o], p_actions[o],
                             p_accounts[o], p_amounts[o], p_currencies[o], p_traces[o], p_now,
                             p_expires[o], p_default_credit) AS r;
                     ELSE
                         RETURN QUERY SELECT o, x.o_outcome, NULL::TEXT, NULL::BIGINT,
                             {settled_columns}
                         FROM {s}.dreamnet_billable_resolve(p_settle_ids[o - v_n], 'charged',
                             p_actuals[o - v_n], p_responses[o - v_n], p_now) AS x;
                     END IF;
                 END LOOP;
             END IF;
         END $fn$;"
    )
}
