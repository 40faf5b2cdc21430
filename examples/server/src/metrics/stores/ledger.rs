//! [`TimedLedger`]: the billing ledger, every call timed; only backend failures (not state
//! conflicts such as "already charged") count as errors.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_billable::{
    ledger::{
        Account, Action, ActionId, Amount, LedgerError, LedgerResult, Reservation, ReserveRequest,
        Stats,
    },
    Ledger, LedgerAdmin,
};
use dreamnet_common::{delegate_through, AccountId};
use futures_util::future::BoxFuture;

use super::{Op, StoreMetrics};

/// Times every [`Ledger`] and [`LedgerAdmin`] call of the wrapped ledger.
pub(crate) struct TimedLedger {
    inner: Arc<dyn LedgerAdmin>,
    ops: Ops,
}

struct Ops {
    reserve: Op,
    confirm: Op,
    settle: Op,
    charge: Op,
    void: Op,
    find: Op,
    extend: Op,
    action: Op,
    stats: Op,
    account: Op,
    add_credit: Op,
    set_credit: Op,
    due_for_recovery: Op,
    prune: Op,
}

impl TimedLedger {
    /// Wraps `inner`, whose backend (`memory`, `postgres`) labels the series.
    pub(crate) fn new(
        inner: Arc<dyn LedgerAdmin>,
        backend: &'static str,
        metrics: &StoreMetrics,
    ) -> Self {
        let op = |name| metrics.op("ledger", backend, name);
        Self {
            inner,
            ops: Ops {
                reserve: op("reserve"),
                confirm: op("confirm"),
                settle: op("settle"),
                charge: op("charge"),
                void: op("void"),
                find: op("find"),
                extend: op("extend"),
                action: op("action"),
                stats: op("stats"),
                account: op("account"),
                add_credit: op("add_credit"),
                set_credit: op("set_credit"),
                due_for_recovery: op("due_for_recovery"),
                prune: op("prune"),
            },
        }
    }
}

/// Times `call` into `op`, the clock started before the call is made; only a backend
/// failure counts as an error.
fn timed<'a, T: Send + 'a>(
    op: &'a Op,
    call: impl FnOnce() -> BoxFuture<'a, LedgerResult<T>>,
) -> BoxFuture<'a, LedgerResult<T>> {
    let started = Instant::now();
    Box::pin(super::timed(op, started, call(), |result| {
        result.as_ref().is_err_and(LedgerError::is_backend)
    }))
}

// Every method is forwarded (`extend` and `prune` included: otherwise the reservation
// heartbeat would get the trait's default refusal, and the sweeper's pruning would forget
// nothing), each timed into the `ops` handle of its name.
delegate_through! {
    impl Ledger for TimedLedger => timed, self.inner, self.ops;
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>>;
    fn confirm<'a>(&'a self, id: &'a ActionId, response: Bytes, actual: Option<Amount>) -> BoxFuture<'a, LedgerResult<Action>>;
    fn settle<'a>(&'a self, id: &'a ActionId, response: Bytes, actual: Option<Amount>) -> BoxFuture<'a, LedgerResult<Action>>;
    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;
    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;
    fn find<'a>(&'a self, scope: &'a str, idempotency_key: &'a str) -> BoxFuture<'a, LedgerResult<Option<Action>>>;
    fn extend<'a>(&'a self, id: &'a ActionId, by: Duration) -> BoxFuture<'a, LedgerResult<Action>>;
}

delegate_through! {
    impl LedgerAdmin for TimedLedger => timed, self.inner, self.ops;
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>>;
    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>>;
    fn account<'a>(&'a self, account: &'a AccountId) -> BoxFuture<'a, LedgerResult<Option<Account>>>;
    fn add_credit<'a>(&'a self, account: &'a AccountId, amount: Amount, currency: &'a str) -> BoxFuture<'a, LedgerResult<Account>>;
    fn set_credit<'a>(&'a self, account: &'a AccountId, credit: Option<Amount>, currency: &'a str) -> BoxFuture<'a, LedgerResult<Account>>;
    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>>;
    fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>>;
}
