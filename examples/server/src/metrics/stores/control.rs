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

fn timed<'a, T: Send + 'a>(
    op: Op,
    started: Instant,
    call: StoreFuture<'a, Result<T, StoreError>>,
) -> StoreFuture<'a, Result<T, StoreError>> {
    match call.into_ready() {
        Ok(result) => {
            op.record(started, result.is_err());
            StoreFuture::ready(result)
        }
        Err(pending) => StoreFuture::new(async move {
            let result = pending.await;
            op.record(started, result.is_err());
            result
        }),
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
        let started = Instant::now();
        timed(
            op.clone(),
            started,
            self.inner.count(cluster, windows, client, now_millis, mode),
        )
    }

    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
        taken: &'a Taken,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        let started = Instant::now();
        timed(
            self.give_back.clone(),
            started,
            self.inner.give_back(cluster, windows, client, taken),
        )
    }
}

impl<S: StateStore> StateStore for TimedControl<S> {
    fn load(&self) -> StoreFuture<'_, Result<Option<Versioned>, StoreError>> {
        let started = Instant::now();
        timed(self.load.clone(), started, self.inner.load())
    }

    fn version(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        let started = Instant::now();
        timed(self.version.clone(), started, self.inner.version())
    }

    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> StoreFuture<'a, Result<Option<u64>, StoreError>> {
        let started = Instant::now();
        timed(
            self.compare_and_swap.clone(),
            started,
            self.inner.compare_and_swap(expected, state, audit),
        )
    }

    fn audit(&self, limit: usize) -> StoreFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let started = Instant::now();
        timed(self.audit.clone(), started, self.inner.audit(limit))
    }

    fn notify<'a>(&'a self, clusters: &'a [String]) -> StoreFuture<'a, Result<(), StoreError>> {
        let started = Instant::now();
        timed(self.notify.clone(), started, self.inner.notify(clusters))
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}
