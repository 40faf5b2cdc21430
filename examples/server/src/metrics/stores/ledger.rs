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
use dreamnet_common::AccountId;
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

fn timed<'a, T: Send + 'a>(
    op: &'a Op,
    call: BoxFuture<'a, LedgerResult<T>>,
) -> BoxFuture<'a, LedgerResult<T>> {
    Box::pin(super::timed(op, Instant::now(), call, |result| {
        result.as_ref().is_err_and(LedgerError::is_backend)
    }))
}

impl Ledger for TimedLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        timed(&self.ops.reserve, self.inner.reserve(request))
    }

    fn confirm<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        timed(&self.ops.confirm, self.inner.confirm(id, response, actual))
    }

    fn settle<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        timed(&self.ops.settle, self.inner.settle(id, response, actual))
    }

    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        timed(&self.ops.charge, self.inner.charge(id))
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        timed(&self.ops.void, self.inner.void(id))
    }

    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        timed(&self.ops.find, self.inner.find(scope, idempotency_key))
    }

    // Forwarded, or the reservation heartbeat would get the trait's default refusal.
    fn extend<'a>(&'a self, id: &'a ActionId, by: Duration) -> BoxFuture<'a, LedgerResult<Action>> {
        timed(&self.ops.extend, self.inner.extend(id, by))
    }
}

impl LedgerAdmin for TimedLedger {
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        timed(&self.ops.action, self.inner.action(id))
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        timed(&self.ops.stats, self.inner.stats())
    }

    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        timed(&self.ops.account, self.inner.account(account))
    }

    fn add_credit<'a>(
        &'a self,
        account: &'a AccountId,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        timed(
            &self.ops.add_credit,
            self.inner.add_credit(account, amount, currency),
        )
    }

    fn set_credit<'a>(
        &'a self,
        account: &'a AccountId,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        timed(
            &self.ops.set_credit,
            self.inner.set_credit(account, credit, currency),
        )
    }

    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
        timed(
            &self.ops.due_for_recovery,
            self.inner.due_for_recovery(limit),
        )
    }

    // Forwarded, or the sweeper's pruning would get the trait's default (forget nothing).
    fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>> {
        timed(&self.ops.prune, self.inner.prune(limit))
    }
}
