//! The PostgreSQL ledger (feature `postgres`): durable, shared by every replica.
//!
//! Two tables in a configurable schema, created by [`PostgresLedgerBuilder::build`]:
//! `dreamnet_billable_accounts` (one row per account: currency, credit line, pending and
//! charged sums) and `dreamnet_billable_actions` (one row per attempt, with a partial unique
//! index on (scope, idempotency key) over live, i.e. not failed, rows).
//!
//! Every state change is one transaction that locks the account row first
//! (`SELECT ... FOR UPDATE`) and the action row second. One lock order everywhere means no
//! deadlocks between live requests and sweepers, and the account lock serializes the
//! "available >= amount" check with the hold, so concurrent reservations never overspend
//! (TigerBeetle's `debits_must_not_exceed_credits`; a `CHECK` constraint enforces it again).
//!
//! Timestamps are Unix milliseconds from the ledger's [`Clock`](dreamnet_common::Clock),
//! passed in as parameters, so timeouts are testable with a fake clock; replicas should run
//! NTP-synced clocks (a skew only shifts when a reservation counts as expired).
//!
//! Round trips (statements issued together are pipelined on one connection):
//!
//! | call | round trips |
//! |---|---|
//! | `reserve` | 4: `BEGIN`; upsert account + lock it + read the key's live action; insert action and add the hold (one statement); `COMMIT` |
//! | `confirm` | 4: `BEGIN`; lock account + lock action; update action + account; `COMMIT` |
//! | `charge` | 4: same shape as `confirm` |
//! | replay (same key) | 4 (the `reserve` that finds the existing action; it writes nothing) |
//!
//! A successful billable request therefore costs 12 round trips (plus a pool checkout);
//! statements are prepared once per connection and cached.

use std::{fmt::Write as _, sync::Arc};

use bytes::Bytes;
use deadpool_postgres::{Config, GenericClient, Pool, Runtime, Transaction};
use dreamnet_common::{clock, SharedClock};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::{types::ToSql, NoTls, Row};

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
    lock_account_of_action: String,
    live_action_for_update: String,
    live_action: String,
    insert_action: String,
    lock_action: String,
    set_action: String,
    move_account: String,
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
            lock_account_of_action: format!(
                "SELECT account, currency, credit, pending, charged FROM {acc}
                 WHERE account = (SELECT account FROM {act} WHERE id = $1) FOR UPDATE"
            ),
            live_action_for_update: format!(
                "SELECT {ACTION_COLUMNS} FROM {act}
                 WHERE scope = $1 AND idem_key = $2 AND state <> 'failed' FOR UPDATE"
            ),
            live_action: format!(
                "SELECT {ACTION_COLUMNS} FROM {act}
                 WHERE scope = $1 AND idem_key = $2 AND state <> 'failed'"
            ),
            // Insert and hold in one statement; no row back means the key is live already.
            insert_action: format!(
                "WITH ins AS (
                     INSERT INTO {act} (id, scope, idem_key, fingerprint, action, account,
                         reserved, amount, currency, state, trace_id, created_at, updated_at,
                         expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, 'pending', $9, $10, $10, $11)
                     ON CONFLICT (scope, idem_key) WHERE state <> 'failed' DO NOTHING
                     RETURNING account, amount
                 )
                 UPDATE {acc} SET pending = {acc}.pending + ins.amount, updated_at = $10
                 FROM ins WHERE {acc}.account = ins.account
                 RETURNING {acc}.account"
            ),
            lock_action: format!("SELECT {ACTION_COLUMNS} FROM {act} WHERE id = $1 FOR UPDATE"),
            set_action: format!(
                "UPDATE {act} SET state = $2, amount = $3, response = COALESCE($4, response),
                     updated_at = $5
                 WHERE id = $1 RETURNING {ACTION_COLUMNS}"
            ),
            move_account: format!(
                "UPDATE {acc} SET pending = pending + $2, charged = charged + $3,
                     updated_at = $4
                 WHERE account = $1"
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

/// Whether `state` holds its amount as pending on the account.
fn held(state: ActionState) -> bool {
    matches!(state, ActionState::Pending | ActionState::Confirmed)
}

impl PostgresLedger {
    /// Moves a locked action to `to` with `amount` (and maybe a response), adjusting its
    /// locked account. Both statements are pipelined.
    async fn transition(
        &self,
        tx: &Transaction<'_>,
        action: &Action,
        to: ActionState,
        amount: Amount,
        response: Option<&[u8]>,
        now: i64,
    ) -> LedgerResult<Action> {
        let sql = &self.inner.sql;
        let mut pending_delta = 0;
        if held(action.state) {
            pending_delta -= action.amount;
        }
        if held(to) {
            pending_delta += amount;
        }
        let charged_delta = if to == ActionState::Charged {
            amount
        } else {
            0
        };
        let (set_action, move_account) = prepare2(tx, &sql.set_action, &sql.move_account).await?;
        let (id, state) = (action.id.as_str(), to.as_str());
        let action_params: [&(dyn ToSql + Sync); 5] = [&id, &state, &amount, &response, &now];
        let account_params: [&(dyn ToSql + Sync); 4] =
            [&action.account, &pending_delta, &charged_delta, &now];
        let (row, _) = tokio::try_join!(
            tx.query_one(&set_action, &action_params),
            tx.execute(&move_account, &account_params),
        )
        .map_err(backend)?;
        action_from(&row)
    }

    /// Locks (account, action) of `id` in that order, pipelined.
    async fn lock_action(&self, tx: &Transaction<'_>, id: &ActionId) -> LedgerResult<Action> {
        let sql = &self.inner.sql;
        let (lock_account, lock_action) =
            prepare2(tx, &sql.lock_account_of_action, &sql.lock_action).await?;
        let id_str = id.as_str();
        let params: [&(dyn ToSql + Sync); 1] = [&id_str];
        let (_, action) = tokio::try_join!(
            tx.query_opt(&lock_account, &params),
            tx.query_opt(&lock_action, &params),
        )
        .map_err(backend)?;
        action_from(&action.ok_or_else(|| LedgerError::NotFound(id.clone()))?)
    }

    async fn reserve_tx(&self, request: ReserveRequest) -> LedgerResult<Reservation> {
        if request.amount < 0 {
            return Err(LedgerError::InvalidAmount(request.amount));
        }
        let sql = &self.inner.sql;
        let now = self.now();
        let mut client = self.inner.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let (upsert, lock, live) = tokio::try_join!(
            tx.prepare_cached(&sql.upsert_account),
            tx.prepare_cached(&sql.lock_account),
            tx.prepare_cached(&sql.live_action_for_update),
        )
        .map_err(backend)?;
        // Sent in this order on one connection: upsert, lock, then read the key's action.
        let upsert_params: [&(dyn ToSql + Sync); 4] = [
            &request.account,
            &request.currency,
            &self.inner.default_credit,
            &now,
        ];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&request.account];
        let live_params: [&(dyn ToSql + Sync); 2] = [&request.scope, &request.idempotency_key];
        let (_, account_row, live) = tokio::try_join!(
            tx.execute(&upsert, &upsert_params),
            tx.query_one(&lock, &lock_params),
            tx.query_opt(&live, &live_params),
        )
        .map_err(backend)?;
        let mut account = account_from(&account_row)?;
        if let Some(row) = live {
            let existing = action_from(&row)?;
            if !existing.is_expired(millis_u(now)) {
                tx.commit().await.map_err(backend)?;
                return Ok(Reservation::Existing(existing));
            }
            // A crashed attempt past its timeout: void it so this retry can run.
            self.transition(
                &tx,
                &existing,
                ActionState::Failed,
                existing.amount,
                None,
                now,
            )
            .await?;
            if existing.account == account.account {
                account.pending -= existing.amount;
            }
        }
        if account.currency != request.currency {
            return Err(LedgerError::CurrencyMismatch {
                account: request.account,
                account_currency: account.currency,
                requested: request.currency,
            });
        }
        if let Some(available) = account.available() {
            if available < request.amount {
                tx.commit().await.map_err(backend)?;
                return Ok(Reservation::InsufficientFunds {
                    account: request.account,
                    available,
                    required: request.amount,
                    currency: request.currency,
                });
            }
        }
        let id = ActionId::random();
        let expires_at =
            now.saturating_add(i64::try_from(request.timeout.as_millis()).unwrap_or(i64::MAX));
        let st = tx
            .prepare_cached(&sql.insert_action)
            .await
            .map_err(backend)?;
        let inserted = tx
            .query_opt(
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
                ],
            )
            .await
            .map_err(backend)?;
        if inserted.is_none() {
            // The key went live meanwhile under another account's lock: report that one.
            tx.rollback().await.map_err(backend)?;
            let client = self.inner.pool.get().await.map_err(backend)?;
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
        tx.commit().await.map_err(backend)?;
        Ok(Reservation::Reserved(Action {
            id,
            scope: request.scope,
            idempotency_key: request.idempotency_key,
            fingerprint: request.fingerprint,
            action: request.action,
            account: request.account,
            reserved: request.amount,
            amount: request.amount,
            currency: request.currency,
            state: ActionState::Pending,
            trace_id: request.trace_id,
            created_at_ms: millis_u(now),
            updated_at_ms: millis_u(now),
            expires_at_ms: millis_u(expires_at),
            response: None,
        }))
    }

    async fn confirm_tx(
        &self,
        id: &ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let mut client = self.inner.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let action = self.lock_action(&tx, id).await?;
        match action.state {
            ActionState::Pending => {}
            ActionState::Confirmed => return Err(LedgerError::AlreadyConfirmed(id.clone())),
            ActionState::Charged => return Err(LedgerError::AlreadyCharged(id.clone())),
            ActionState::Failed => return Err(LedgerError::AlreadyVoided(id.clone())),
        }
        let amount = actual.unwrap_or(action.reserved);
        if amount < 0 {
            return Err(LedgerError::InvalidAmount(amount));
        }
        if amount > action.reserved {
            return Err(LedgerError::ExceedsReservation {
                reserved: action.reserved,
                actual: amount,
            });
        }
        if action.is_expired(millis_u(now)) {
            self.transition(&tx, &action, ActionState::Failed, action.amount, None, now)
                .await?;
            tx.commit().await.map_err(backend)?;
            return Err(LedgerError::Expired(id.clone()));
        }
        let confirmed = self
            .transition(
                &tx,
                &action,
                ActionState::Confirmed,
                amount,
                Some(&response),
                now,
            )
            .await?;
        tx.commit().await.map_err(backend)?;
        Ok(confirmed)
    }

    async fn resolve_tx(&self, id: &ActionId, to: ActionState) -> LedgerResult<Action> {
        let now = self.now();
        let mut client = self.inner.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let action = self.lock_action(&tx, id).await?;
        match (action.state, to) {
            (ActionState::Confirmed, ActionState::Charged)
            | (ActionState::Pending, ActionState::Failed) => {}
            (ActionState::Pending, _) => return Err(LedgerError::NotConfirmed(id.clone())),
            (ActionState::Confirmed, _) => return Err(LedgerError::AlreadyConfirmed(id.clone())),
            (ActionState::Charged, _) => return Err(LedgerError::AlreadyCharged(id.clone())),
            (ActionState::Failed, _) => return Err(LedgerError::AlreadyVoided(id.clone())),
        }
        let resolved = self
            .transition(&tx, &action, to, action.amount, None, now)
            .await?;
        tx.commit().await.map_err(backend)?;
        Ok(resolved)
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

fn millis_u(ms: i64) -> u64 {
    unmillis(ms)
}

impl Ledger for PostgresLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        let logged = logs::Logged::of(&request);
        async move {
            let outcome = self.reserve_tx(request).await;
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
        self.confirm_tx(id, response, actual).boxed()
    }

    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        self.resolve_tx(id, ActionState::Charged).boxed()
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        self.resolve_tx(id, ActionState::Failed).boxed()
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
