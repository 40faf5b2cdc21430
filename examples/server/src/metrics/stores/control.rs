//! [`TimedControl`]: the control plane's counter and state store, every call timed.

use std::{fmt, sync::Arc, time::Instant};

use dreamnet_control_core::{
    store::{AuditEntry, ControlState, Count, StoreFuture, Taken, Versioned},
    ClientQuota, CounterStore, StateStore, StoreError, WindowConfig,
};

use super::{Op, StoreMetrics};

/// Times every call of the wrapped store (memory or Redis). A call the memory store answers
/// at once stays unboxed: it is recorded on the spot.
pub(crate) struct TimedControl<S> {
    inner: S,
    count_take: Op,
    count_peek: Op,
    give_back: Op,
    load: Op,
    version: Op,
    compare_and_swap: Op,
    audit: Op,
    notify: Op,
}

impl<S: fmt::Debug> fmt::Debug for TimedControl<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TimedControl").field(&self.inner).finish()
    }
}

impl<S> TimedControl<S> {
    /// Wraps `inner`, whose backend (`memory`, `redis`) labels the series.
    pub(crate) fn new(inner: S, backend: &'static str, metrics: &StoreMetrics) -> Self {
        let op = |name| metrics.op("control", backend, name);
        Self {
            inner,
            count_take: op("count_take"),
            count_peek: op("count_peek"),
            give_back: op("give_back"),
            load: op("load"),
            version: op("version"),
            compare_and_swap: op("compare_and_swap"),
            audit: op("audit"),
            notify: op("notify"),
        }
    }
}

/// Makes `call` timed: the clock starts before it (the memory store answers in the call),
/// and an answer that is ready at once is recorded on the spot and stays unboxed. Only a
/// pending call gets its own handles, as its future may outlive `self`.
fn timed<'a, T: Send + 'a>(
    op: &Op,
    call: impl FnOnce() -> StoreFuture<'a, Result<T, StoreError>>,
) -> StoreFuture<'a, Result<T, StoreError>> {
    let started = Instant::now();
    match call().into_ready() {
        Ok(result) => {
            op.record(started, result.is_err());
            StoreFuture::ready(result)
        }
        Err(pending) => {
            StoreFuture::new(super::timed(op.clone(), started, pending, Result::is_err))
        }
    }
}

impl<S: CounterStore> CounterStore for TimedControl<S> {
    fn count(
        &self,
        cluster: &Arc<str>,
        windows: &Arc<[WindowConfig]>,
        client: Option<&ClientQuota>,
        now_millis: u64,
        mode: Count,
    ) -> StoreFuture<'static, Result<Taken, StoreError>> {
        let op = match mode {
            Count::Take => &self.count_take,
            Count::Peek => &self.count_peek,
        };
        timed(op, || {
            self.inner.count(cluster, windows, client, now_millis, mode)
        })
    }

    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
        taken: &'a Taken,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        timed(&self.give_back, || {
            self.inner.give_back(cluster, windows, client, taken)
        })
    }
}

impl<S: StateStore> StateStore for TimedControl<S> {
    fn load(&self) -> StoreFuture<'_, Result<Option<Versioned>, StoreError>> {
        timed(&self.load, || self.inner.load())
    }

    fn version(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        timed(&self.version, || self.inner.version())
    }

    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> StoreFuture<'a, Result<Option<u64>, StoreError>> {
        timed(&self.compare_and_swap, || {
            self.inner.compare_and_swap(expected, state, audit)
        })
    }

    fn audit(&self, limit: usize) -> StoreFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        timed(&self.audit, || self.inner.audit(limit))
    }

    fn notify<'a>(&'a self, clusters: &'a [String]) -> StoreFuture<'a, Result<(), StoreError>> {
        timed(&self.notify, || self.inner.notify(clusters))
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}
