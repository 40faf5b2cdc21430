//! Step 3: run the handler, keep its response, and settle the key.

use std::{any::Any, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use bytes::Bytes;
use dreamnet_common::{
    body::exact_len_within,
    heartbeat::{period_for, while_running, Beat},
};
use futures_util::FutureExt;
use http::{response, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::Protocol;
use crate::{
    store::{Completion, FencingToken, IdempotencyStore},
    IdempotencyKey, StoredResponse, LOG_TARGET,
};

/// How the inner service's call ended.
#[derive(Debug)]
pub enum Ran<R, E> {
    /// It answered.
    Response(R),
    /// It failed with its own error.
    Error(E),
    /// It panicked (in `call` or while polled); resume or answer, after settling the key.
    Panic(Box<dyn Any + Send>),
}

/// Calls `inner` (already driven to readiness) with `request`, catching a panic so the key
/// can be settled before the panic goes on.
pub async fn run<S, Req>(mut inner: S, request: Req) -> Ran<S::Response, S::Error>
where
    S: Service<Req>,
{
    // `call` itself may panic too, so it runs inside the caught future.
    match AssertUnwindSafe(async move { inner.call(request).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(response)) => Ran::Response(response),
        Ok(Err(err)) => Ran::Error(err),
        Err(panic) => Ran::Panic(panic),
    }
}

/// A response buffered for keeping, or why it cannot be kept.
#[derive(Debug)]
pub enum Captured<B: Body> {
    /// The whole response: send `head` with `body`, store `stored`.
    Kept {
        /// The response head.
        head: response::Parts,
        /// The whole body.
        body: Bytes,
        /// What to store and replay (status, allow-listed headers, body).
        stored: StoredResponse,
    },
    /// Streaming (no exact size) or over the response limit: send it as is, unstored.
    Unstorable(Response<B>),
    /// The body failed while being read.
    Failed(B::Error),
}

impl Protocol {
    /// Buffers `response` for keeping if its size is known and within the response limit.
    pub async fn capture<B>(&self, response: Response<B>) -> Captured<B>
    where
        B: Body<Data = Bytes>,
    {
        if exact_len_within(response.body(), self.max_response_body).is_none() {
            return Captured::Unstorable(response);
        }
        let (head, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => {
                let body = collected.to_bytes();
                let stored = StoredResponse::capture(&head, body.clone(), &self.replayed_headers);
                Captured::Kept { head, body, stored }
            }
            Err(err) => Captured::Failed(err),
        }
    }
}

/// A key claimed in an [`IdempotencyStore`], waiting to be settled: [`complete`](Self::complete)
/// stores the response under the fencing token, [`release`](Self::release) frees the key.
///
/// Dropped unsettled (the client went away, a timeout layer gave up), it releases the key
/// from a task spawned on the current tokio runtime; without one the lease frees the key
/// when it ends, as after a crash (drop cannot await).
pub struct Settlement {
    store: Arc<dyn IdempotencyStore>,
    scope: String,
    key: IdempotencyKey,
    token: FencingToken,
    trace_id: Option<String>,
    armed: bool,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("token", &self.token)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Settlement {
    /// The claim of (`scope`, `key`) held by `token`.
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        scope: String,
        key: IdempotencyKey,
        token: FencingToken,
        trace_id: Option<String>,
    ) -> Self {
        Self {
            store,
            scope,
            key,
            token,
            trace_id,
            armed: true,
        }
    }

    /// The trace id of the claiming request.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// Stores `stored` for `ttl`; `true` when it was stored. A superseded token (the lease
    /// ended and the key was claimed again) writes nothing; a store failure releases the key.
    pub async fn complete(mut self, stored: &StoredResponse, ttl: Duration) -> bool {
        let key = self.key.as_str();
        let trace = self.trace_id.as_deref().unwrap_or("-");
        let completed = self
            .store
            .complete(&self.scope, key, self.token, stored, ttl)
            .await;
        self.armed = false;
        match completed {
            Ok(Completion::Stored) => return true,
            Ok(Completion::Superseded) => {
                tracing::warn!(
                    target: LOG_TARGET,
                    idempotency_key = key,
                    trace_id = trace,
                    fencing_token = self.token.0,
                    "completion rejected: the lease ended and the key was claimed again (or released); response not stored"
                );
            }
            Ok(Completion::Dropped) => {
                tracing::debug!(target: LOG_TARGET, idempotency_key = key, "response too large for the store; key released");
            }
            Err(err) => {
                tracing::warn!(target: LOG_TARGET, idempotency_key = key, trace_id = trace, error = %err, "response could not be stored");
                self.release_now("store failed on completion").await;
            }
        }
        false
    }

    /// Runs `work` (the handler, the reading of its response) while extending this claim's
    /// lease to `lease` from now every third of it, so a handler slower than the lease is
    /// neither taken over by a retry nor run twice. The beats stop with `work`, with its
    /// future, and with the process (a crashed replica's lease still runs out); a store
    /// without [`extend`](crate::IdempotencyStore::extend) keeps no heartbeat, nor does a
    /// `lease` of `None` (`work` just runs).
    pub async fn keep_alive<F: std::future::Future>(
        &self,
        lease: Option<Duration>,
        work: F,
    ) -> F::Output {
        let Some(lease) = lease else {
            return work.await;
        };
        let key = self.key.as_str();
        let beat = || async move {
            match self.store.extend(&self.scope, key, self.token, lease).await {
                Ok(true) => Beat::Kept,
                Ok(false) => {
                    tracing::debug!(target: LOG_TARGET, idempotency_key = key,
                        fencing_token = self.token.0, "lease heartbeat stopped: the claim is no longer held");
                    Beat::Gone
                }
                Err(err) => {
                    tracing::warn!(target: LOG_TARGET, idempotency_key = key, error = %err,
                        "lease heartbeat failed; retrying at the next beat");
                    Beat::Failed
                }
            }
        };
        while_running(period_for(lease), beat, work).await
    }

    /// Frees the key (if the token still holds it), so a retry runs again.
    pub async fn release(mut self, why: &'static str) {
        self.release_now(why).await;
    }

    async fn release_now(&mut self, why: &'static str) {
        self.armed = false;
        let key = self.key.as_str();
        match self.store.release(&self.scope, key, self.token).await {
            Ok(_) => {
                tracing::debug!(target: LOG_TARGET, idempotency_key = key, reason = why, "key released");
            }
            Err(err) => {
                tracing::warn!(target: LOG_TARGET, idempotency_key = key, reason = why, error = %err, "key release failed; the lease will free it");
            }
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            let scope = std::mem::take(&mut self.scope);
            let key = self.key.clone();
            let token = self.token;
            handle.spawn(async move {
                let _ = store.release(&scope, key.as_str(), token).await;
            });
        }
    }
}
