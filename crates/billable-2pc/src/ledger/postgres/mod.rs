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

use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::{Config, Pool, Runtime};
use dreamnet_common::{clock, AccountId, SharedClock};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::NoTls;

use crate::logs;

use super::{
    Account, Action, ActionId, ActionState, Amount, Ledger, LedgerAdmin, LedgerError, LedgerResult,
    Reservation, ReserveRequest, Stats,
};

mod calls;
mod rows;
mod sql;

use rows::{backend, millis};
use sql::Sql;

/// The PostgreSQL [`Ledger`] and [`LedgerAdmin`]. Cheap to clone (an `Arc` inside).
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
            return Err(LedgerError::backend(format!(
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
}

impl LedgerAdmin for PostgresLedger {
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        async move {
            self.query_action(&self.inner.sql.get_action, &[&id.as_str()])
                .await
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        self.stats_query().boxed()
    }

    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        self.account_query(account).boxed()
    }

    fn add_credit<'a>(
        &'a self,
        account: &'a AccountId,
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
        account: &'a AccountId,
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
