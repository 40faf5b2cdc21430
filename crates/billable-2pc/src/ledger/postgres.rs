//! The PostgreSQL ledger (feature `postgres`): durable, shared by every replica.
//!
//! Two tables in a configurable schema, created by [`PostgresLedgerBuilder::build`]:
//! `dreamnet_billable_accounts` (one row per account: currency, credit line, pending and
//! charged sums) and `dreamnet_billable_actions` (one row per attempt, with a partial unique
//! index on (scope, idempotency key) over live, i.e. not failed, rows).
//!
//! Every state change is one call of a server-side plpgsql function the builder creates
//! (`dreamnet_billable_reserve`, `dreamnet_billable_resolve`), so one statement, one implicit
//! transaction and one round trip. Each function locks the account row first
//! (`SELECT ... FOR UPDATE`) and the action row second. One lock order everywhere means no
//! deadlocks between live requests and sweepers, and the account lock serializes the
//! "available >= amount" check with the hold, so concurrent reservations never overspend
//! (TigerBeetle's `debits_must_not_exceed_credits`; a `CHECK` constraint enforces it again).
//! Transitions are decided on the locked row, so they stay exclusive.
//!
//! Timestamps are Unix milliseconds from the ledger's [`Clock`](dreamnet_common::Clock),
//! passed in as parameters, so timeouts are testable with a fake clock; replicas should run
//! NTP-synced clocks (a skew only shifts when a reservation counts as expired).
//!
//! Round trips (statements are prepared once per connection and cached):
//!
//! | call | round trips |
//! |---|---|
//! | `reserve` | 1: `dreamnet_billable_reserve` (upsert + lock the account, lock the key's live action, void it if expired, check funds, insert, hold) |
//! | `confirm` | 1: `dreamnet_billable_resolve` (lock account, lock action, check, move both) |
//! | `charge`, `void` | 1: same function |
//! | replay (same key) | 1 (the `reserve` that finds the existing action with a plain, lock-free read first; it writes nothing, so its commit needs no WAL flush) |
//!
//! A successful billable request therefore costs 3 round trips (plus a pool checkout). In
//! the rare race where the key goes live under another account's lock between the lookup
//! and the insert, the function rolls everything back (SQLSTATE `DB409`) and one more
//! `SELECT` reads the winner's action.
//!
//! The functions return the action table's columns positionally (`a.*`): a migration that
//! adds a column must `DROP` and recreate them (`CREATE OR REPLACE` cannot change a
//! function's result type).

use std::{fmt::Write as _, sync::Arc};

use bytes::Bytes;
use deadpool_postgres::{Config, GenericClient, Pool, Runtime, Transaction};
use dreamnet_common::{clock, SharedClock};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::{error::SqlState, types::ToSql, NoTls, Row};

use crate::logs;

use super::{
    Account, Action, ActionId, ActionState, Amount, Ledger, LedgerError, LedgerResult, Reservation,
    ReserveRequest, Stats,
};

/// The PostgreSQL [`Ledger`]. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct PostgresLedger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    schema: String,
    clock: SharedClock,
    default_credit: Option<Amount>,
    sql: Sql,
}

/// Builds a [`PostgresLedger`].
#[must_use]
pub struct PostgresLedgerBuilder {
    pool: Pool,
    schema: String,
    clock: SharedClock,
    default_credit: Option<Amount>,
}

impl std::fmt::Debug for PostgresLedgerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedgerBuilder")
            .field("schema", &self.schema)
            .field("default_credit", &self.default_credit)
            .finish_non_exhaustive()
    }
}

fn backend(err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Backend(err.to_string())
}

impl PostgresLedger {
    /// Connects a pool to `url` (e.g. `postgres://postgres@127.0.0.1:5432/test`) and
    /// creates the tables in schema `public` if missing.
    ///
    /// # Errors
    /// When the pool cannot be created or the tables cannot be created.
    pub async fn connect(url: &str) -> LedgerResult<Self> {
        Self::builder(pool_for(url)?).build().await
    }

    /// A builder over an existing deadpool pool.
    pub fn builder(pool: Pool) -> PostgresLedgerBuilder {
        PostgresLedgerBuilder {
            pool,
            schema: "public".to_owned(),
            clock: clock::system(),
            default_credit: None,
        }
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    fn now(&self) -> i64 {
        millis(self.inner.clock.now_millis())
    }
}

/// A deadpool pool for `url`, with the tokio runtime and no TLS.
///
/// # Errors
/// When the URL is invalid.
pub fn pool_for(url: &str) -> LedgerResult<Pool> {
    let config = Config {
        url: Some(url.to_owned()),
        ..Config::default()
    };
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .map_err(backend)
}

impl PostgresLedgerBuilder {
    /// The schema for the tables (default `public`; created if missing). ASCII letters,
    /// digits and `_` only, not starting with a digit.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The clock for timestamps and timeouts (default: system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The credit line of accounts created by a reservation (`None`, the default, is
    /// unlimited).
    pub fn default_credit(mut self, credit: Option<Amount>) -> Self {
        self.default_credit = credit;
        self
    }

    /// Creates the schema, tables and indexes if missing, and returns the ledger.
    ///
    /// # Errors
    /// An invalid schema name, or a database error.
    pub async fn build(self) -> LedgerResult<PostgresLedger> {
        let valid = !self.schema.is_empty()
            && self.schema.len() <= 63
            && !self.schema.starts_with(|c: char| c.is_ascii_digit())
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(LedgerError::Backend(format!(
                "invalid schema name {:?}",
                self.schema
            )));
        }
        let sql = Sql::new(&self.schema);
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        // Concurrent `CREATE ... IF NOT EXISTS` can still collide; serialize them.
        tx.batch_execute(&sql.migrate).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(PostgresLedger {
            inner: Arc::new(Inner {
                pool: self.pool,
                schema: self.schema,
                clock: self.clock,
                default_credit: self.default_credit,
                sql,
            }),
        })
    }
}

const ACTION_COLUMNS: &str = "id, scope, idem_key, fingerprint, action, account, reserved, \
     amount, currency, state, trace_id, created_at, updated_at, expires_at, response";

struct Sql {
    migrate: String,
    upsert_account: String,
    lock_account: String,
    live_action: String,
    reserve: String,
    resolve: String,
    set_credit: String,
    get_action: String,
    get_account: String,
    stats: String,
    due: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
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

/// The action columns as the functions return them (`o_id AS id`, ...), so [`action_from`]
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

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn unmillis(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn action_from(row: &Row) -> LedgerResult<Action> {
    let state: String = row.try_get("state").map_err(backend)?;
    let response: Option<Vec<u8>> = row.try_get("response").map_err(backend)?;
    Ok(Action {
        id: ActionId::new(row.try_get::<_, String>("id").map_err(backend)?),
        scope: row.try_get("scope").map_err(backend)?,
        idempotency_key: row.try_get("idem_key").map_err(backend)?,
        fingerprint: row.try_get("fingerprint").map_err(backend)?,
        action: row.try_get("action").map_err(backend)?,
        account: row.try_get("account").map_err(backend)?,
        reserved: row.try_get("reserved").map_err(backend)?,
        amount: row.try_get("amount").map_err(backend)?,
        currency: row.try_get("currency").map_err(backend)?,
        state: ActionState::parse(&state)
            .ok_or_else(|| LedgerError::Backend(format!("unknown action state {state:?}")))?,
        trace_id: row.try_get("trace_id").map_err(backend)?,
        created_at_ms: unmillis(row.try_get("created_at").map_err(backend)?),
        updated_at_ms: unmillis(row.try_get("updated_at").map_err(backend)?),
        expires_at_ms: unmillis(row.try_get("expires_at").map_err(backend)?),
        response: response.map(Bytes::from),
    })
}

fn account_from(row: &Row) -> LedgerResult<Account> {
    Ok(Account {
        account: row.try_get("account").map_err(backend)?,
        currency: row.try_get("currency").map_err(backend)?,
        credit: row.try_get("credit").map_err(backend)?,
        pending: row.try_get("pending").map_err(backend)?,
        charged: row.try_get("charged").map_err(backend)?,
    })
}

/// The SQLSTATE `dreamnet_billable_reserve` raises when the key went live meanwhile.
const KEY_WENT_LIVE: &str = "DB409";

impl PostgresLedger {
    async fn reserve_call(&self, request: ReserveRequest) -> LedgerResult<Reservation> {
        if request.amount < 0 {
            return Err(LedgerError::InvalidAmount(request.amount));
        }
        let sql = &self.inner.sql;
        let now = self.now();
        let id = ActionId::random();
        let expires_at =
            now.saturating_add(i64::try_from(request.timeout.as_millis()).unwrap_or(i64::MAX));
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client.prepare_cached(&sql.reserve).await.map_err(backend)?;
        let result = client
            .query_one(
                &st,
                &[
                    &id.as_str(),
                    &request.scope,
                    &request.idempotency_key,
                    &request.fingerprint,
                    &request.action,
                    &request.account,
                    &request.amount,
                    &request.currency,
                    &request.trace_id,
                    &now,
                    &expires_at,
                    &self.inner.default_credit,
                ],
            )
            .await;
        let row = match result {
            Ok(row) => row,
            Err(err) if err.code().map(SqlState::code) == Some(KEY_WENT_LIVE) => {
                // Everything rolled back; the key's live action (another account's) answers.
                let st = client
                    .prepare_cached(&sql.live_action)
                    .await
                    .map_err(backend)?;
                let row = client
                    .query_opt(&st, &[&request.scope, &request.idempotency_key])
                    .await
                    .map_err(backend)?
                    .ok_or_else(|| backend("the key's live action vanished; retry"))?;
                return Ok(Reservation::Existing(action_from(&row)?));
            }
            Err(err) => return Err(backend(err)),
        };
        let outcome: String = row.try_get("outcome").map_err(backend)?;
        match outcome.as_str() {
            "reserved" => Ok(Reservation::Reserved(action_from(&row)?)),
            "existing" => Ok(Reservation::Existing(action_from(&row)?)),
            "insufficient_funds" => Ok(Reservation::InsufficientFunds {
                account: request.account,
                available: row.try_get("available").map_err(backend)?,
                required: request.amount,
                currency: request.currency,
            }),
            "currency_mismatch" => Err(LedgerError::CurrencyMismatch {
                account: request.account,
                account_currency: row.try_get("account_currency").map_err(backend)?,
                requested: request.currency,
            }),
            other => Err(backend(format!("unknown reserve outcome {other:?}"))),
        }
    }

    /// Confirm (`to` = confirmed), charge or void, in one call of `dreamnet_billable_resolve`.
    async fn resolve_call(
        &self,
        id: &ActionId,
        to: ActionState,
        actual: Option<Amount>,
        response: Option<&[u8]>,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.resolve)
            .await
            .map_err(backend)?;
        let (id_str, to_str) = (id.as_str(), to.as_str());
        let params: [&(dyn ToSql + Sync); 5] = [&id_str, &to_str, &actual, &response, &now];
        let row = client.query_one(&st, &params).await.map_err(backend)?;
        let outcome: String = row.try_get("outcome").map_err(backend)?;
        if outcome == "not_found" {
            return Err(LedgerError::NotFound(id.clone()));
        }
        let action = action_from(&row)?;
        match outcome.as_str() {
            "done" => Ok(action),
            "expired" => Err(LedgerError::Expired(id.clone())),
            "invalid_amount" => Err(LedgerError::InvalidAmount(
                actual.unwrap_or(action.reserved),
            )),
            "exceeds" => Err(LedgerError::ExceedsReservation {
                reserved: action.reserved,
                actual: actual.unwrap_or(action.reserved),
            }),
            "refused" => Err(match (action.state, to) {
                (ActionState::Pending, _) => LedgerError::NotConfirmed(id.clone()),
                (ActionState::Confirmed, _) => LedgerError::AlreadyConfirmed(id.clone()),
                (ActionState::Charged, _) => LedgerError::AlreadyCharged(id.clone()),
                (ActionState::Failed, _) => LedgerError::AlreadyVoided(id.clone()),
            }),
            other => Err(backend(format!("unknown resolve outcome {other:?}"))),
        }
    }

    async fn credit_tx(
        &self,
        account: &str,
        currency: &str,
        update: impl FnOnce(Option<Amount>) -> LedgerResult<Option<Amount>>,
    ) -> LedgerResult<Account> {
        let sql = &self.inner.sql;
        let now = self.now();
        let mut client = self.inner.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let (upsert, lock) = prepare2(&tx, &sql.upsert_account, &sql.lock_account).await?;
        let no_credit: Option<Amount> = None;
        let upsert_params: [&(dyn ToSql + Sync); 4] = [&account, &currency, &no_credit, &now];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&account];
        let (_, row) = tokio::try_join!(
            tx.execute(&upsert, &upsert_params),
            tx.query_one(&lock, &lock_params),
        )
        .map_err(backend)?;
        let current = account_from(&row)?;
        if current.currency != currency {
            return Err(LedgerError::CurrencyMismatch {
                account: account.to_owned(),
                account_currency: current.currency,
                requested: currency.to_owned(),
            });
        }
        let credit = update(current.credit)?;
        if let Some(credit) = credit {
            if credit < current.pending + current.charged {
                return Err(LedgerError::InvalidAmount(credit));
            }
        }
        let st = tx.prepare_cached(&sql.set_credit).await.map_err(backend)?;
        let row = tx
            .query_one(&st, &[&account, &credit, &now])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        account_from(&row)
    }

    async fn query_action(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> LedgerResult<Option<Action>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client.prepare_cached(sql).await.map_err(backend)?;
        client
            .query_opt(&st, params)
            .await
            .map_err(backend)?
            .as_ref()
            .map(action_from)
            .transpose()
    }

    async fn stats_query(&self) -> LedgerResult<Stats> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.stats)
            .await
            .map_err(backend)?;
        let mut stats = Stats::default();
        for row in client.query(&st, &[]).await.map_err(backend)? {
            let state: String = row.try_get(0).map_err(backend)?;
            let currency: String = row.try_get(1).map_err(backend)?;
            let count: i64 = row.try_get(2).map_err(backend)?;
            let amount: i64 = row.try_get(3).map_err(backend)?;
            let state = ActionState::parse(&state)
                .ok_or_else(|| LedgerError::Backend(format!("unknown action state {state:?}")))?;
            stats.add(state, &currency, unmillis(count), amount);
        }
        Ok(stats)
    }

    async fn account_query(&self, account: &str) -> LedgerResult<Option<Account>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.get_account)
            .await
            .map_err(backend)?;
        client
            .query_opt(&st, &[&account])
            .await
            .map_err(backend)?
            .as_ref()
            .map(account_from)
            .transpose()
    }

    async fn due_query(&self, limit: usize) -> LedgerResult<Vec<Action>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.due)
            .await
            .map_err(backend)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(&st, &[&self.now(), &limit])
            .await
            .map_err(backend)?
            .iter()
            .map(action_from)
            .collect()
    }
}

/// Prepares (or takes from the cache) two statements, so the queries that use them can be
/// sent back to back: pipelined statements keep their order only if none waits on a prepare.
async fn prepare2(
    tx: &Transaction<'_>,
    a: &str,
    b: &str,
) -> LedgerResult<(tokio_postgres::Statement, tokio_postgres::Statement)> {
    tokio::try_join!(tx.prepare_cached(a), tx.prepare_cached(b)).map_err(backend)
}

impl Ledger for PostgresLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        let logged = logs::Logged::of(&request);
        async move {
            let outcome = self.reserve_call(request).await;
            logged.emit(&outcome);
            outcome
        }
        .boxed()
    }

    fn confirm<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        async move {
            self.resolve_call(id, ActionState::Confirmed, actual, Some(&response))
                .await
        }
        .boxed()
    }

    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        self.resolve_call(id, ActionState::Charged, None, None)
            .boxed()
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        self.resolve_call(id, ActionState::Failed, None, None)
            .boxed()
    }

    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        async move {
            self.query_action(&self.inner.sql.get_action, &[&id.as_str()])
                .await
        }
        .boxed()
    }

    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        async move {
            self.query_action(&self.inner.sql.live_action, &[&scope, &idempotency_key])
                .await
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        self.stats_query().boxed()
    }

    fn account<'a>(&'a self, account: &'a str) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        self.account_query(account).boxed()
    }

    fn add_credit<'a>(
        &'a self,
        account: &'a str,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        async move {
            if amount <= 0 {
                return Err(LedgerError::InvalidAmount(amount));
            }
            self.credit_tx(account, currency, |credit| {
                credit
                    .unwrap_or(0)
                    .checked_add(amount)
                    .map(Some)
                    .ok_or(LedgerError::InvalidAmount(amount))
            })
            .await
        }
        .boxed()
    }

    fn set_credit<'a>(
        &'a self,
        account: &'a str,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        async move {
            if let Some(c) = credit.filter(|c| *c < 0) {
                return Err(LedgerError::InvalidAmount(c));
            }
            self.credit_tx(account, currency, |_| Ok(credit)).await
        }
        .boxed()
    }

    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
        self.due_query(limit).boxed()
    }
}
