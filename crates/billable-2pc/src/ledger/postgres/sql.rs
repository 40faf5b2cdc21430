//! The SQL of the PostgreSQL ledger: the migration (schema, tables, indexes, the plpgsql
//! functions of [`functions`](super::functions)) and the statements, per schema.

use std::fmt::Write as _;

pub(super) const ACTION_COLUMNS: &str =
    "id, scope, idem_key, fingerprint, action, account, reserved, \
     amount, currency, state, trace_id, created_at, updated_at, expires_at, response";

/// An account's exact totals: its row plus its slot rows (see [`super::functions`]).
const ACCOUNT_TOTALS: &str = "a.account, a.currency, a.credit,
     a.pending + COALESCE(s.pending, 0) AS pending, a.charged + COALESCE(s.charged, 0) AS charged";

pub(super) struct Sql {
    pub(super) migrate: String,
    pub(super) upsert_account: String,
    pub(super) lock_account: String,
    pub(super) live_action: String,
    pub(super) reserve_batch: String,
    pub(super) resolve: String,
    pub(super) resolve_batch: String,
    pub(super) reserve_and_settle_batch: String,
    pub(super) set_credit: String,
    pub(super) get_action: String,
    pub(super) get_account: String,
    pub(super) stats: String,
    pub(super) due: String,
    pub(super) extend: String,
    pub(super) prune: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let acc = format!("{s}.dreamnet_billable_accounts");
        let act = format!("{s}.dreamnet_billable_actions");
        let slots = format!("{s}.dreamnet_billable_account_slots");
        let pruned = format!("{s}.dreamnet_billable_pruned");
        let mut migrate = String::new();
        // Every statement is idempotent, so a restart, a second replica or a schema made by
        // an earlier version migrates in place (the advisory lock serializes concurrent runs).
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
                 ON {act} (created_at) WHERE state IN ('pending', 'confirmed');
             -- Deltas of an account's pending and charged sums, summed with its row on read
             -- (0.3: so unlimited accounts do not serialize on their row). Either may be
             -- negative; the row plus its slots is exact.
             CREATE TABLE IF NOT EXISTS {slots} (
                 account TEXT NOT NULL,
                 slot    INT NOT NULL,
                 pending BIGINT NOT NULL DEFAULT 0,
                 charged BIGINT NOT NULL DEFAULT 0,
                 PRIMARY KEY (account, slot)
             );
             -- 0.3: resolved actions past the retention are deleted in small batches; what
             -- they counted is folded in here, so stats keep counting them.
             CREATE TABLE IF NOT EXISTS {pruned} (
                 state    TEXT NOT NULL,
                 currency TEXT NOT NULL,
                 n        BIGINT NOT NULL,
                 amount   BIGINT NOT NULL,
                 PRIMARY KEY (state, currency)
             );
             CREATE INDEX IF NOT EXISTS dreamnet_billable_actions_resolved
                 ON {act} (updated_at) WHERE state IN ('charged', 'failed');"
        );
        migrate.push_str(&super::functions::functions(&s, &acc, &act, &slots));
        let totals = format!(
            "{acc} AS a LEFT JOIN (SELECT sum(pending)::BIGINT AS pending, sum(charged)::BIGINT AS charged
                 FROM {slots} WHERE account = $1) AS s ON TRUE"
        );
        Self {
            migrate,
            upsert_account: format!(
                "INSERT INTO {acc} (account, currency, credit, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (account) DO NOTHING"
            ),
            // The account locked, its slots folded into its row: exact totals to check.
            lock_account: format!(
                "SELECT account, currency, credit, pending, charged
                 FROM {s}.dreamnet_billable_fold($1)"
            ),
            live_action: format!(
                "SELECT {ACTION_COLUMNS} FROM {act}
                 WHERE scope = $1 AND idem_key = $2 AND state <> 'failed'"
            ),
            reserve_batch: format!(
                "SELECT o_ord AS ord, o_outcome AS outcome, o_account_currency AS account_currency,
                     o_available AS available, {returned}
                 FROM {s}.dreamnet_billable_reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9,
                     $10, $11, $12)",
                returned = returned_action_columns()
            ),
            resolve: format!(
                "SELECT o_outcome AS outcome, {returned}
                 FROM {s}.dreamnet_billable_resolve($1, $2, $3, $4, $5)",
                returned = returned_action_columns()
            ),
            resolve_batch: format!(
                "SELECT o_ord AS ord, o_outcome AS outcome, {returned}
                 FROM {s}.dreamnet_billable_resolve_batch($1, $2, $3, $4, $5)",
                returned = returned_action_columns()
            ),
            reserve_and_settle_batch: format!(
                "SELECT o_ord AS ord, o_outcome AS outcome, o_account_currency AS account_currency,
                     o_available AS available, {returned}
                 FROM {s}.dreamnet_billable_reserve_and_settle_batch($1, $2, $3, $4, $5, $6, $7,
                     $8, $9, $10, $11, $12, $13, $14, $15)",
                returned = returned_action_columns()
            ),
            set_credit: format!(
                "UPDATE {acc} SET credit = $2, updated_at = $3 WHERE account = $1
                 RETURNING account, currency, credit, pending, charged"
            ),
            get_action: format!("SELECT {ACTION_COLUMNS} FROM {act} WHERE id = $1"),
            get_account: format!("SELECT {ACCOUNT_TOTALS} FROM {totals} WHERE a.account = $1"),
            stats: format!(
                "SELECT state, currency, sum(n)::BIGINT, sum(amount)::BIGINT FROM (
                     SELECT state, currency, count(*) AS n, COALESCE(sum(amount), 0) AS amount
                     FROM {act} GROUP BY state, currency
                     UNION ALL
                     SELECT state, currency, n, amount FROM {pruned}
                 ) AS t GROUP BY state, currency"
            ),
            // One bounded batch: the oldest resolved actions past the cutoff, skipping rows
            // anyone holds locked (no waiting, no long locks), deleted and folded into the
            // pruned totals in the same statement, so stats never dip.
            prune: format!(
                "WITH gone AS (
                     DELETE FROM {act} WHERE id IN (
                         SELECT id FROM {act}
                         WHERE state IN ('charged', 'failed') AND updated_at <= $1
                         ORDER BY updated_at LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING state, currency, amount
                 ), folded AS (
                     INSERT INTO {pruned} AS p (state, currency, n, amount)
                     SELECT state, currency, count(*), sum(amount) FROM gone
                     GROUP BY state, currency
                     ON CONFLICT (state, currency) DO UPDATE
                         SET n = p.n + EXCLUDED.n, amount = p.amount + EXCLUDED.amount
                 )
                 SELECT count(*)::BIGINT FROM gone"
            ),
            // The heartbeat of a running handler: never shortens, never revives an expired one.
            extend: format!(
                "UPDATE {act} SET expires_at = GREATEST(expires_at, $3)
                 WHERE id = $1 AND state = 'pending' AND expires_at > $2
                 RETURNING {ACTION_COLUMNS}"
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
