//! [`TimedControl`]: the control plane's counter and state store, every call timed.

use std::{fmt, time::Instant};

use dreamnet_control_core::{
    forward_control_store,
    store::{Count, StoreFuture, StoreOp},
    CounterStore, StateStore, StoreError,
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
        let op = |op: StoreOp| metrics.op("control", backend, op.as_str());
        Self {
            inner,
            count_take: op(StoreOp::Count(Count::Take)),
            count_peek: op(StoreOp::Count(Count::Peek)),
            give_back: op(StoreOp::GiveBack),
            load: op(StoreOp::Load),
            version: op(StoreOp::Version),
            compare_and_swap: op(StoreOp::CompareAndSwap),
            audit: op(StoreOp::Audit),
            notify: op(StoreOp::Notify),
        }
    }

    fn op(&self, op: StoreOp) -> &Op {
        match op {
            StoreOp::Count(Count::Take) => &self.count_take,
            StoreOp::Count(Count::Peek) => &self.count_peek,
            StoreOp::GiveBack => &self.give_back,
            StoreOp::Load => &self.load,
            StoreOp::Version => &self.version,
            StoreOp::CompareAndSwap => &self.compare_and_swap,
            StoreOp::Audit => &self.audit,
            StoreOp::Notify => &self.notify,
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

// Every method is forwarded (`notify` and `is_shared` included: otherwise replicas sharing
// a Redis store would not hear of a change), each timed into the handle of its name.
forward_control_store!(impl[S: CounterStore + StateStore] for TimedControl<S> => |this| this.inner, |op, call| {
    timed(this.op(op), call)
});
