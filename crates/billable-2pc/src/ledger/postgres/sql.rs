//! The SQL of the PostgreSQL ledger: the migration (schema, tables, indexes, the plpgsql
//! functions every state change calls) and the statements, per schema.

use std::fmt::Write as _;

pub(super) const ACTION_COLUMNS: &str =
    "id, scope, idem_key, fingerprint, action, account, reserved, \
     amount, currency, state, trace_id, created_at, updated_at, expires_at, response";

pub(super) struct Sql {
    pub(super) migrate: String,
    pub(super) upsert_account: String,
    pub(super) lock_account: String,
    pub(super) live_action: String,
    pub(super) reserve: String,
    pub(super) resolve: String,
    pub(super) set_credit: String,
    pub(super) get_action: String,
    pub(super) get_account: String,
    pub(super) stats: String,
    pub(super) due: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let acc = format!("{s}.dreamnet_billable_accounts");
        let act = format!("{s}.dreamnet_billable_actions");
        let mut migrate = String::new();
        let _ = write!(
            migrate,
            "SELECT pg_advisory_xact_lock(7244913351);
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {acc} (
                 account    TEXT PRIMARY KEY,
                 currency   TEXT NOT NULL,
                 credit     BIGINT,
                 pending    BIGINT NOT NULL DEFAULT 0 CHECK (pending >= 0),
                 charged    BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0),
                 created_at BIGINT NOT NULL,
                 updated_at BIGINT NOT NULL,
                 CONSTRAINT debits_must_not_exceed_credits
                     CHECK (credit IS NULL OR pending + charged <= credit)
             );
             CREATE TABLE IF NOT EXISTS {act} (
                 id          TEXT PRIMARY KEY,
                 scope       TEXT NOT NULL,
                 idem_key    TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 action      TEXT NOT NULL,
                 account     TEXT NOT NULL REFERENCES {acc} (account),
                 reserved    BIGINT NOT NULL CHECK (reserved >= 0),
                 amount      BIGINT NOT NULL CHECK (amount >= 0 AND amount <= reserved),
                 currency    TEXT NOT NULL,
                 state       TEXT NOT NULL
                     CHECK (state IN ('pending', 'confirmed', 'charged', 'failed')),
                 trace_id    TEXT,
                 created_at  BIGINT NOT NULL,
                 updated_at  BIGINT NOT NULL,
                 expires_at  BIGINT NOT NULL,
                 response    BYTEA,
                 CHECK (state IN ('pending', 'failed') OR response IS NOT NULL)
             );
             CREATE UNIQUE INDEX IF NOT EXISTS dreamnet_billable_actions_live_key
                 ON {act} (scope, idem_key) WHERE state <> 'failed';
             CREATE INDEX IF NOT EXISTS dreamnet_billable_actions_open
                 ON {act} (created_at) WHERE state IN ('pending', 'confirmed');"
        );
        migrate.push_str(&functions(&s, &acc, &act));
        Self {
            migrate,
            upsert_account: format!(
                "INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (account) DO NOTHING"
            ),
            lock_account: format!(
                "SELECT account, currency, credit, pending, charged FROM {acc}
                 WHERE account = $1 FOR UPDATE"
            ),
            live_action: format!(
                "SELECT {ACTION_COLUMNS} FROM {act}
                 WHERE scope = $1 AND idem_key = $2 AND state <> 'failed'"
            ),
            reserve: format!(
                "SELECT o_outcome AS outcome, o_account_currency AS account_currency,
                     o_available AS available, {returned}
                 FROM {s}.dreamnet_billable_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                     $11, $12)",
                returned = returned_action_columns()
            ),
            resolve: format!(
                "SELECT o_outcome AS outcome, {returned}
                 FROM {s}.dreamnet_billable_resolve($1, $2, $3, $4, $5)",
                returned = returned_action_columns()
            ),
            set_credit: format!(
                "UPDATE {acc} SET credit = $2, updated_at = $3 WHERE account = $1
                 RETURNING account, currency, credit, pending, charged"
            ),
            get_action: format!("SELECT {ACTION_COLUMNS} FROM {act} WHERE id = $1"),
            get_account: format!(
                "SELECT account, currency, credit, pending, charged FROM {acc} WHERE account = $1"
            ),
            stats: format!(
                "SELECT state, currency, count(*)::BIGINT, COALESCE(sum(amount), 0)::BIGINT
                 FROM {act} GROUP BY state, currency"
            ),
            // SKIP LOCKED: rows a live request is resolving right now are left to it.
            due: format!(
                "SELECT {ACTION_COLUMNS} FROM {act}
                 WHERE state = 'confirmed' OR (state = 'pending' AND expires_at <= $1)
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
        }
    }
}

/// The action columns as the functions return them (`o_id AS id`, ...), so [`action_from`](super::rows::action_from)
/// reads their rows like the table's.
fn returned_action_columns() -> String {
    ACTION_COLUMNS
        .split(", ")
        .map(|column| format!("o_{column} AS {column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server-side functions: each state change is one call, i.e. one round trip and one
/// (implicit) transaction. Both lock the account row before the action row.
fn functions(s: &str, acc: &str, act: &str) -> String {
    let out = "o_id TEXT, o_scope TEXT, o_idem_key TEXT, o_fingerprint TEXT, o_action TEXT,
         o_account TEXT, o_reserved BIGINT, o_amount BIGINT, o_currency TEXT, o_state TEXT,
         o_trace_id TEXT, o_created_at BIGINT, o_updated_at BIGINT, o_expires_at BIGINT,
         o_response BYTEA";
    // A row of NULL action columns, for outcomes without an action.
    let no_action = format!("FROM (SELECT 1) AS one LEFT JOIN {act} AS a ON FALSE");
    format!(
        "
         -- Moves an action (locked by the caller, with its account) to p_to with p_amount,
         -- moving the held and charged sums of its account.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_transition(
             p_id TEXT, p_account TEXT, p_from TEXT, p_from_amount BIGINT, p_to TEXT,
             p_amount BIGINT, p_response BYTEA, p_now BIGINT
         ) RETURNS VOID LANGUAGE plpgsql AS $fn$
         BEGIN
             UPDATE {act} SET state = p_to, amount = p_amount,
                 response = COALESCE(p_response, response), updated_at = p_now
             WHERE id = p_id;
             UPDATE {acc} SET
                 pending = pending
                     - CASE WHEN p_from IN ('pending', 'confirmed') THEN p_from_amount ELSE 0 END
                     + CASE WHEN p_to IN ('pending', 'confirmed') THEN p_amount ELSE 0 END,
                 charged = charged + CASE WHEN p_to = 'charged' THEN p_amount ELSE 0 END,
                 updated_at = p_now
             WHERE account = p_account;
         END $fn$;

         -- Reserve: upsert + lock the account, lock the key's live action; an unexpired one
         -- is 'existing' (nothing written); else currency and funds checks, the expired one
         -- voided, the new action inserted and its amount held. SQLSTATE DB409 (all rolled
         -- back): the key went live meanwhile under another account's lock.
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_reserve(
             p_id TEXT, p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_action TEXT,
             p_account TEXT, p_amount BIGINT, p_currency TEXT, p_trace TEXT, p_now BIGINT,
             p_expires BIGINT, p_default_credit BIGINT
         ) RETURNS TABLE (o_outcome TEXT, o_account_currency TEXT, o_available BIGINT, {out})
         LANGUAGE plpgsql AS $fn$
         DECLARE
             v_acc {acc}%ROWTYPE;
             v_live {act}%ROWTYPE;
             v_found BOOLEAN;
             v_available BIGINT;
         BEGIN
             -- A replay first: read without locking, so it writes nothing (no row lock, no
             -- transaction id, no WAL flush at commit). The locked path below re-checks.
             SELECT * INTO v_live FROM {act}
                 WHERE scope = p_scope AND idem_key = p_key AND state <> 'failed';
             IF FOUND AND NOT (v_live.state = 'pending' AND p_now >= v_live.expires_at) THEN
                 RETURN QUERY SELECT 'existing'::TEXT, NULL::TEXT, NULL::BIGINT, v_live.*;
                 RETURN;
             END IF;
             INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                 VALUES (p_account, p_currency, p_default_credit, p_now, p_now)
                 ON CONFLICT (account) DO NOTHING;
             SELECT * INTO v_acc FROM {acc} WHERE account = p_account FOR UPDATE;
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
                 IF v_live.account = p_account THEN
                     v_acc.pending := v_acc.pending - v_live.amount;
                 END IF;
             END IF;
             IF v_acc.credit IS NOT NULL THEN
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
                 RAISE EXCEPTION 'idempotency key went live meanwhile' USING ERRCODE = 'DB409';
             END IF;
             UPDATE {acc} SET pending = pending + p_amount, updated_at = p_now
                 WHERE account = p_account;
             RETURN QUERY SELECT 'reserved'::TEXT, NULL::TEXT, NULL::BIGINT, a.*
                 FROM {act} AS a WHERE a.id = p_id;
         END $fn$;

         -- Confirm (p_to 'confirmed', with p_actual and p_response), charge ('charged') or
         -- void ('failed'): lock the account, then the action; exclusive transitions. Outcomes:
         -- 'done' (the new row), 'refused' (the current row: wrong state), 'not_found',
         -- 'invalid_amount', 'exceeds', 'expired' (confirm too late: voided, committed).
         CREATE OR REPLACE FUNCTION {s}.dreamnet_billable_resolve(
             p_id TEXT, p_to TEXT, p_actual BIGINT, p_response BYTEA, p_now BIGINT
         ) RETURNS TABLE (o_outcome TEXT, {out})
         LANGUAGE plpgsql AS $fn$
         DECLARE
             v_act {act}%ROWTYPE;
             v_amount BIGINT;
             v_outcome TEXT := 'done';
         BEGIN
             PERFORM 1 FROM {acc}
                 WHERE account = (SELECT account FROM {act} WHERE id = p_id) FOR UPDATE;
             SELECT * INTO v_act FROM {act} WHERE id = p_id FOR UPDATE;
             IF NOT FOUND THEN
                 RETURN QUERY SELECT 'not_found'::TEXT, a.* {no_action};
                 RETURN;
             END IF;
             IF p_to = 'confirmed' THEN
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
                         v_act.amount, 'confirmed', v_amount, p_response, p_now);
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
    )
}
