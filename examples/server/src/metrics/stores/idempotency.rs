//! [`TimedIdempotency`]: an [`IdempotencyStore`] that times every call of the one it wraps.

use std::{sync::Arc, time::Duration, time::Instant};

use dreamnet_idempotency::{
    store::{Claim, ClaimRequest, Completion, FencingToken, StoreFuture, StoredResponse},
    IdempotencyStore,
};

use super::{Op, StoreMetrics};

/// Times the wrapped store's `claim`, `complete`, `release` and `extend`.
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
        let op = |name| metrics.op("idempotency", backend, name);
        Self {
            inner,
            claim: op("claim"),
            complete: op("complete"),
            release: op("release"),
            extend: op("extend"),
        }
    }
}

fn timed<'a, T: Send + 'a>(op: &'a Op, call: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
    let started = Instant::now();
    Box::pin(async move {
        let result = call.await;
        op.record(started, result.is_err());
        result
    })
}

impl IdempotencyStore for TimedIdempotency {
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        timed(&self.claim, self.inner.claim(request))
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion> {
        timed(
            &self.complete,
            self.inner.complete(scope, key, token, response, ttl),
        )
    }

    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool> {
        timed(&self.release, self.inner.release(scope, key, token))
    }

    // Forwarded, or the lease heartbeat would get the trait's default (no heartbeat).
    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        timed(&self.extend, self.inner.extend(scope, key, token, lease))
    }
}
