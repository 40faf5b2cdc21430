//! [`TimedIdempotency`]: an [`IdempotencyStore`] that times every call of the one it wraps.

use std::{sync::Arc, time::Instant};

use dreamnet_idempotency::{forward_idempotency_store, store::StoreOp, IdempotencyStore};

use super::{timed, Op, StoreMetrics};

/// Times the wrapped store's `claim`, `complete`, `release` and `extend` (all four are
/// forwarded, so the lease heartbeat keeps working through the wrapper).
pub(crate) struct TimedIdempotency {
    inner: Arc<dyn IdempotencyStore>,
    claim: Op,
    complete: Op,
    release: Op,
    extend: Op,
}

impl TimedIdempotency {
    /// Wraps `inner`, whose backend (`memory`, `redis`) labels the series.
    pub(crate) fn new(
        inner: Arc<dyn IdempotencyStore>,
        backend: &'static str,
        metrics: &StoreMetrics,
    ) -> Self {
        let op = |op: StoreOp| metrics.op("idempotency", backend, op.as_str());
        Self {
            inner,
            claim: op(StoreOp::Claim),
            complete: op(StoreOp::Complete),
            release: op(StoreOp::Release),
            extend: op(StoreOp::Extend),
        }
    }

    fn op(&self, op: StoreOp) -> &Op {
        match op {
            StoreOp::Claim => &self.claim,
            StoreOp::Complete => &self.complete,
            StoreOp::Release => &self.release,
            StoreOp::Extend => &self.extend,
        }
    }
}

// The clock starts before the call: the memory store does its work in the call itself.
forward_idempotency_store!(impl for TimedIdempotency => |this| this.inner, |op, call| {
    let started = Instant::now();
    Box::pin(timed(this.op(op), started, call(), Result::is_err))
});
