//! The PostgreSQL ledger (feature `postgres`): durable, shared by every replica.
//!
//! Four tables in a configurable schema, created by [`PostgresLedgerBuilder::build`]:
//! `dreamnet_billable_accounts` (one row per account: currency, credit line, pending and
//! charged sums), `dreamnet_billable_account_slots` (deltas of those sums, summed on read),
//! `dreamnet_billable_actions` (one row per attempt, with a partial unique
//! index on (scope, idempotency key) over live, i.e. not failed, rows) and
//! `dreamnet_billable_pruned` (counts and amounts of the resolved actions deleted after
//! [`PostgresLedgerBuilder::retention`] by [`LedgerAdmin::prune`], in bounded
//! `FOR UPDATE SKIP LOCKED` batches, so stats keep counting them).
//!
//! Every state change is one call of a server-side plpgsql function the builder creates, so
//! one statement, one implicit transaction and one round trip; and concurrent reserves (and,
//! separately, concurrent settles) are **batched**: one writer task per kind gathers the
//! calls that queue while the previous batch commits and sends them as one function call,
//! one transaction, one commit (group commit; [`PostgresLedgerBuilder::max_batch`],
//! [`PostgresLedgerBuilder::max_wait`]). A lone call is sent at once. With
//! [`PostgresLedgerBuilder::combined_batches`] one writer serves both kinds, and reserves
//! and settles that queued together are one transaction (one commit for both; off by
//! default: one serial writer measured slower than two overlapping ones, see the crate
//! README).
//!
//! Each function locks the account row first and the action row second; a batch takes its
//! requests in account order, so one lock order everywhere means no deadlocks between
//! batches, live requests and sweepers. A reservation on a credit-limited account locks the
//! row `FOR UPDATE` and checks "available >= amount" on exact totals, in request order
//! within a batch, so concurrent reservations never overspend (TigerBeetle's
//! `debits_must_not_exceed_credits`; a `CHECK` constraint enforces it again); one the credit
//! cannot cover is refused (402) and the rest of its batch goes on. Unlimited accounts and
//! every transition share the row (`FOR SHARE`) and move the sums in per-connection slot
//! rows, so an unlimited account is no hot row. Transitions are decided on the locked
//! action row, so they stay exclusive.
//!
//! Every call has a deadline (default [`DEFAULT_DEADLINE`], 5 s,
//! [`PostgresLedgerBuilder::deadline`]): past it the call is [`LedgerError::Timeout`] (a
//! 503 with `Retry-After` from the layer). [`pool_for`] / [`pool_with_deadline`] build pools with the same deadline
//! on pool waits, connects and recycles, and as the server's `statement_timeout`.
//!
//! Timestamps are Unix milliseconds from the ledger's [`Clock`](dreamnet_common::Clock),
//! passed in as parameters, so timeouts are testable with a fake clock; replicas should run
//! NTP-synced clocks (a skew only shifts when a reservation counts as expired).
//!
//! Round trips (statements are prepared once per connection and cached):
//!
//! | call | round trips |
//! |---|---|
//! | `reserve` | 1 per batch: `dreamnet_billable_reserve_batch` (per account: upsert + lock its row, post its holds to a slot; per fresh key on an unlimited account: a lock-free read and an insert; anything else as one `dreamnet_billable_reserve`: lock the key's live action, void it if expired, check funds, insert, hold) |
//! | `settle` | 1 per batch: `dreamnet_billable_resolve_batch` (the accounts locked `FOR SHARE` once; per live hold: one update storing the response and the charge; per account: its sums to a slot; anything else as one `dreamnet_billable_resolve`) |
//! | `confirm`, `charge`, `void` | 1: `dreamnet_billable_resolve` |
//! | replay (same key) | a `reserve` that finds the existing action with a plain, lock-free read first; it writes nothing |
//!
//! A successful billable request therefore takes part in 2 transactions, each shared with
//! the requests batched with it: under load, well under one commit per request (with
//! combined batches, a transaction is shared by both kinds too: about half the commits).
//!
//! The functions return the action table's columns positionally (`a.*`): a migration that
//! adds a column must `DROP` and recreate them (`CREATE OR REPLACE` cannot change a
//! function's result type). The migration is idempotent and runs at every build: a schema
//! made by 0.2 migrates in place (a slot table and new functions are added).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use deadpool_postgres::{Config, Pool, PoolConfig, Runtime, Timeouts};
use dreamnet_common::{clock, AccountId, SharedClock};
use futures_util::future::{BoxFuture, FutureExt};
use tokio_postgres::NoTls;

use crate::logs;

use super::{
    Account, Action, ActionId, ActionState, Amount, Ledger, LedgerAdmin, LedgerError, LedgerResult,
    Reservation, ReserveRequest, Stats,
};

mod batch;
mod batch_functions;
mod calls;
mod combined;
mod combined_function;
mod functions;
mod rows;
mod sql;

use batch::{BatchConfig, Batcher};
pub use batch::{BatchCounts, DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT, DEFAULT_WRITERS};
use calls::Settle;
use combined::Combined;
use rows::backend;
use sql::Sql;

/// How long a resolved action is kept by default (24 h, as in memory).
pub const DEFAULT_RETENTION: Duration = super::memory::DEFAULT_RETENTION;

/// Whether one writer serves both kinds by default
/// ([`PostgresLedgerBuilder::combined_batches`]).
pub const DEFAULT_COMBINED: bool = false;

/// The deadline of every ledger call by default (5 s).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The PostgreSQL [`Ledger`] and [`LedgerAdmin`]. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct PostgresLedger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("schema", &self.inner.core.schema)
            .finish_non_exhaustive()
    }
}

struct Inner {
    core: Arc<Core>,
    writers: Writers,
}

/// The batch writers: one per kind, or one for both.
enum Writers {
    Separate {
        reserves: Batcher<(ActionId, ReserveRequest), Reservation>,
        settles: Batcher<Settle, Action>,
    },
    Combined(Combined),
}

/// What the calls and the batch writers share.
struct Core {
    pool: Pool,
    schema: String,
    clock: SharedClock,
    default_credit: Option<Amount>,
    deadline: Duration,
    sql: Sql,
    /// How long a resolved action is kept before [`LedgerAdmin::prune`] may delete it.
    retention: Option<Duration>,
    /// Resolved actions this process deleted after their retention.
    pruned: AtomicU64,
}

/// Builds a [`PostgresLedger`].
#[must_use]
pub struct PostgresLedgerBuilder {
    pool: Pool,
    schema: String,
    clock: SharedClock,
    default_credit: Option<Amount>,
    deadline: Duration,
    batch: BatchConfig,
    combined: bool,
    retention: Option<Duration>,
}

impl std::fmt::Debug for PostgresLedgerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedgerBuilder")
            .field("schema", &self.schema)
            .field("default_credit", &self.default_credit)
            .field("deadline", &self.deadline)
            .field("batch", &self.batch)
            .field("combined", &self.combined)
            .finish_non_exhaustive()
    }
}

impl PostgresLedger {
    /// Connects a pool to `url` (e.g. `postgres://postgres@127.0.0.1:5432/test`, see
    /// [`pool_for`]) and creates the tables in schema `public` if missing.
    ///
    /// # Errors
    /// When the pool cannot be created or the tables cannot be created.
    pub async fn connect(url: &str) -> LedgerResult<Self> {
        Self::builder(pool_for(url)?).build().await
    }

    /// A builder over an existing deadpool pool (give it timeouts: [`pool_for`] does).
    pub fn builder(pool: Pool) -> PostgresLedgerBuilder {
        PostgresLedgerBuilder {
            pool,
            schema: "public".to_owned(),
            clock: clock::system(),
            default_credit: None,
            deadline: DEFAULT_DEADLINE,
            batch: BatchConfig {
                max_batch: DEFAULT_MAX_BATCH,
                max_wait: DEFAULT_MAX_WAIT,
                writers: DEFAULT_WRITERS,
            },
            combined: DEFAULT_COMBINED,
            retention: Some(DEFAULT_RETENTION),
        }
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.inner.core.schema
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.core.pool
    }

    /// Resolved actions this process deleted after their retention ([`LedgerAdmin::prune`]),
    /// since the ledger was built: the figure a server exports as a metric.
    pub fn pruned_total(&self) -> u64 {
        self.inner.core.pruned.load(Ordering::Relaxed)
    }

    /// The batches that carried reserves so far and the reserves they carried (with
    /// [`PostgresLedgerBuilder::combined_batches`], a batch carrying both kinds counts here
    /// and in [`settle_batches`](Self::settle_batches)).
    pub fn reserve_batches(&self) -> BatchCounts {
        match &self.inner.writers {
            Writers::Separate { reserves, .. } => reserves.counts(),
            Writers::Combined(combined) => combined.kind(0),
        }
    }

    /// The batches that carried settles so far and the settles they carried.
    pub fn settle_batches(&self) -> BatchCounts {
        match &self.inner.writers {
            Writers::Separate { settles, .. } => settles.counts(),
            Writers::Combined(combined) => combined.kind(1),
        }
    }

    /// Every batch sent so far, i.e. the writers' transactions (each one commit, or one
    /// rollback), and the calls they carried, of both kinds.
    pub fn batches(&self) -> BatchCounts {
        match &self.inner.writers {
            Writers::Separate { reserves, settles } => {
                let (r, s) = (reserves.counts(), settles.counts());
                BatchCounts {
                    batches: r.batches + s.batches,
                    calls: r.calls + s.calls,
                }
            }
            Writers::Combined(combined) => combined.all(),
        }
    }

    /// Bounds a batched call by the deadline.
    async fn batched<T>(
        &self,
        call: impl std::future::Future<Output = LedgerResult<T>>,
    ) -> LedgerResult<T> {
        self.inner.core.timed(call).await
    }
}

/// A deadpool pool for `url`, with the tokio runtime and no TLS, and the
/// [`DEFAULT_DEADLINE`] (see [`pool_with_deadline`]).
///
/// # Errors
/// When the URL is invalid.
pub fn pool_for(url: &str) -> LedgerResult<Pool> {
    pool_with_deadline(url, DEFAULT_DEADLINE)
}

/// A deadpool pool for `url`, with the tokio runtime and no TLS, whose waits for a
/// connection, connects and recycles are bounded by `deadline`, and whose connections run
/// with `statement_timeout` = `deadline` (so a statement stuck on a lock ends server-side too).
///
/// # Errors
/// When the URL is invalid.
pub fn pool_with_deadline(url: &str, deadline: Duration) -> LedgerResult<Pool> {
    let config = Config {
        url: Some(url.to_owned()),
        options: Some(format!(
            "-c statement_timeout={}",
            deadline.as_millis().max(1)
        )),
        pool: Some(PoolConfig {
            timeouts: Timeouts {
                wait: Some(deadline),
                create: Some(deadline),
                recycle: Some(deadline),
            },
            ..PoolConfig::default()
        }),
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

    /// The longest any ledger call may take, pool checkout included (default 5 s); past it
    /// the call is [`LedgerError::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The most reserves (or settles) one transaction carries (default
    /// [`DEFAULT_MAX_BATCH`], 256; 1 turns batching off).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.batch.max_batch = max_batch.max(1);
        self
    }

    /// How long a batch waits to fill once its first call is queued (default zero: it is
    /// sent as soon as the queue is empty, so a lone call never waits; batches still form
    /// from the calls that queue while the previous one commits).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.batch.max_wait = max_wait;
        self
    }

    /// How many batches of one kind (reserves, settles) may be in flight at once, each in
    /// its own transaction on its own connection (default [`DEFAULT_WRITERS`], 1: each
    /// batch sent once the previous one committed). More overlap one batch's commit flush
    /// with the next one's work, at the price of smaller batches (more CPU per request):
    /// worth it when the server's disk, not its CPU, is the limit.
    pub fn batch_writers(mut self, writers: usize) -> Self {
        self.batch.writers = writers.max(1);
        self
    }

    /// One writer for both kinds (default [`DEFAULT_COMBINED`]): reserves and settles queue
    /// together, and a batch holding both is one transaction, so under load one commit
    /// serves a mint's reserve and another mint's settle (`dreamnet_billable_reserve_and_settle_batch`;
    /// its lock order is that of the separate batches, over both parts). With `false`, one
    /// writer per kind, each batch one kind. [`batch_writers`](Self::batch_writers) then
    /// bounds the combined batches in flight.
    pub fn combined_batches(mut self, combined: bool) -> Self {
        self.combined = combined;
        self
    }

    /// How long a charged or failed action is kept after its last change before
    /// [`LedgerAdmin::prune`] (the [`Sweeper`](crate::Sweeper)) deletes it, in batches
    /// (default 24 h; `None` keeps everything). Its key then no longer replays; stats keep
    /// counting it.
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Creates (or migrates in place) the schema, tables, indexes and functions, starts the
    /// two batch writers (tasks on the current tokio runtime, ending with the last clone of
    /// the ledger), and returns the ledger.
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
        let core = Arc::new(Core {
            sql: Sql::new(&self.schema),
            pool: self.pool,
            schema: self.schema,
            clock: self.clock,
            default_credit: self.default_credit,
            deadline: self.deadline,
            retention: self.retention,
            pruned: AtomicU64::new(0),
        });
        core.timed(core.migrate()).await?;
        let writers = if self.combined {
            Writers::Combined(Combined::spawn(self.batch, core.clone()))
        } else {
            let reserves = {
                let core = core.clone();
                Batcher::spawn(self.batch, move |batch| {
                    let core = core.clone();
                    async move { core.timed(core.reserve_batch(batch)).await }
                })
            };
            let settles = {
                let core = core.clone();
                Batcher::spawn(self.batch, move |batch| {
                    let core = core.clone();
                    async move { core.timed(core.resolve_batch(batch)).await }
                })
            };
            Writers::Separate { reserves, settles }
        };
        Ok(PostgresLedger {
            inner: Arc::new(Inner { core, writers }),
        })
    }
}

impl Ledger for PostgresLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        let logged = logs::Logged::of(&request);
        async move {
            let outcome = if request.amount < 0 {
                Err(LedgerError::InvalidAmount(request.amount))
            } else {
                let id = ActionId::random();
                match &self.inner.writers {
                    Writers::Separate { reserves, .. } => {
                        self.batched(reserves.call((id, request))).await
                    }
                    Writers::Combined(combined) => {
                        self.batched(combined.reserve(id, request)).await
                    }
                }
            };
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
        let core = &self.inner.core;
        async move {
            core.timed(core.resolve_call(id, ActionState::Confirmed, actual, Some(&response)))
                .await
        }
        .boxed()
    }

    fn settle<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        let settle = Settle {
            id: id.clone(),
            response,
            actual,
        };
        async move {
            match &self.inner.writers {
                Writers::Separate { settles, .. } => self.batched(settles.call(settle)).await,
                Writers::Combined(combined) => self.batched(combined.settle(settle)).await,
            }
        }
        .boxed()
    }

    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        let core = &self.inner.core;
        core.timed(core.resolve_call(id, ActionState::Charged, None, None))
            .boxed()
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        let core = &self.inner.core;
        core.timed(core.resolve_call(id, ActionState::Failed, None, None))
            .boxed()
    }

    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        let core = &self.inner.core;
        async move {
            core.timed(core.query_action(&core.sql.live_action, &[&scope, &idempotency_key]))
                .await
        }
        .boxed()
    }

    fn extend<'a>(&'a self, id: &'a ActionId, by: Duration) -> BoxFuture<'a, LedgerResult<Action>> {
        let core = &self.inner.core;
        core.timed(core.extend_call(id, by)).boxed()
    }
}

impl LedgerAdmin for PostgresLedger {
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        let core = &self.inner.core;
        async move {
            core.timed(core.query_action(&core.sql.get_action, &[&id.as_str()]))
                .await
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        let core = &self.inner.core;
        core.timed(core.stats_query()).boxed()
    }

    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        let core = &self.inner.core;
        core.timed(core.account_query(account)).boxed()
    }

    fn add_credit<'a>(
        &'a self,
        account: &'a AccountId,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        let core = &self.inner.core;
        async move {
            if amount <= 0 {
                return Err(LedgerError::InvalidAmount(amount));
            }
            let update = |credit: Option<Amount>| {
                credit
                    .unwrap_or(0)
                    .checked_add(amount)
                    .map(Some)
                    .ok_or(LedgerError::InvalidAmount(amount))
            };
            core.timed(core.credit_tx(account, currency, update)).await
        }
        .boxed()
    }

    fn set_credit<'a>(
        &'a self,
        account: &'a AccountId,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        let core = &self.inner.core;
        async move {
            if let Some(c) = credit.filter(|c| *c < 0) {
                return Err(LedgerError::InvalidAmount(c));
            }
            core.timed(core.credit_tx(account, currency, |_| Ok(credit)))
                .await
        }
        .boxed()
    }

    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
        let core = &self.inner.core;
        core.timed(core.due_query(limit)).boxed()
    }

    fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>> {
        let core = &self.inner.core;
        async move {
            let Some(retention) = core.retention else {
                return Ok(0);
            };
            core.timed(core.prune_batch(retention, limit)).await
        }
        .boxed()
    }
}
