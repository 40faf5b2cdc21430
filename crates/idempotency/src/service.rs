//! [`Idempotency`], the service, and its [`ResponseFuture`].

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{
    body::{buffer_limited, exact_len_within, BufferError},
    Problem, ResponseBody,
};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    key_from_headers,
    layer::Config,
    problems,
    store::{Claim, ClaimRequest, Completion, FencingToken, IdempotencyStore, StoreError},
    trace_id_of, Fingerprint, IdempotencyKey, StoredResponse,
};

/// The `tracing` target of every event this crate emits.
pub const LOG_TARGET: &str = "dreamnet_idempotency";

/// The idempotency service; see [`IdempotencyLayer`](crate::IdempotencyLayer).
///
/// The inner service receives the request with the same body type `B`: for guarded
/// requests the layer buffers the body (up to the limit) and hands the bytes back as
/// `B::from(bytes)`, so `B` must implement `From<Bytes>` (axum's `Body` and
/// `http_body_util::Full<Bytes>` do; for hyper's `Incoming`, map the request into axum's
/// `Body` first). Requests the layer does not guard reach the inner service untouched.
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`]: the inner future itself for requests the layer
    /// does not guard, a ready rejection, or the boxed guarded flow (where a store round trip
    /// dominates the allocation).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Guarded { future: BoxedResponse<B, E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                future.poll(cx).map_ok(ResponseBody::from_inner_response)
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Guarded { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn rejected(problem: Problem) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(ResponseBody::from_full_response(problem.into_response())),
            },
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !self.config.methods.contains(request.method()) {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    future: self.inner.call(request),
                },
            };
        }
        let key = match key_from_headers(request.headers(), &self.config.key_headers) {
            Ok(Some(key)) => key,
            Ok(None) if !self.config.required => {
                return ResponseFuture {
                    kind: Kind::Passthrough {
                        future: self.inner.call(request),
                    },
                }
            }
            Ok(None) => {
                let trace_id = trace_id_of(request.extensions());
                return ResponseFuture::rejected(problems::missing_key(trace_id));
            }
            Err(err) => {
                let trace_id = trace_id_of(request.extensions());
                return ResponseFuture::rejected(problems::invalid_key(&err, trace_id));
            }
        };
        // The service that was driven to readiness is the one that must be called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture {
            kind: Kind::Guarded {
                future: Box::pin(guarded(config, inner, key, request)),
            },
        }
    }
}

fn reject<B>(problem: Problem) -> Response<ResponseBody<B>> {
    ResponseBody::from_full_response(problem.into_response())
}

/// The guarded flow: buffer, fingerprint, claim, run (or replay / refuse), store or release.
async fn guarded<S, B, ResBody>(
    config: Arc<Config>,
    inner: S,
    key: IdempotencyKey,
    request: Request<B>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    let (parts, body) = request.into_parts();
    let trace_id = trace_id_of(&parts.extensions).map(str::to_owned);
    let trace = trace_id.as_deref();
    let bytes = match buffer_limited(&parts.headers, body, config.max_request_body).await {
        Ok(bytes) => bytes,
        Err(BufferError::TooLarge { limit }) => {
            return Ok(reject(problems::body_too_large(limit, trace)))
        }
        Err(BufferError::Body(err)) => {
            tracing::debug!(target: LOG_TARGET, idempotency_key = key.as_str(), error = %err, "request body unreadable");
            return Ok(reject(problems::unreadable_body(trace)));
        }
    };
    let scope = config.scope.scope(&parts);
    let fingerprint = Fingerprint::compute(&parts, &config.fingerprint_headers, &bytes);
    let claim = config
        .store
        .claim(ClaimRequest {
            scope: &scope,
            key: key.as_str(),
            fingerprint: &fingerprint,
            trace_id: trace,
            lease: config.lease,
        })
        .await;
    let token = match claim {
        Ok(Claim::Proceed(token)) => token,
        Ok(Claim::Completed {
            response,
            original_trace_id,
        }) => {
            log_duplicate(
                &key,
                trace,
                &fingerprint,
                original_trace_id.as_deref(),
                "replayed",
            );
            return Ok(ResponseBody::from_full_response(response.replay()));
        }
        Ok(Claim::InFlight {
            retry_after,
            original_trace_id,
        }) => {
            log_duplicate(
                &key,
                trace,
                &fingerprint,
                original_trace_id.as_deref(),
                "in_flight",
            );
            return Ok(reject(problems::in_flight(retry_after, trace)));
        }
        Ok(Claim::Mismatch { original_trace_id }) => {
            tracing::warn!(
                target: LOG_TARGET,
                idempotency_key = key.as_str(),
                trace_id = trace.unwrap_or("-"),
                digest = fingerprint.as_str(),
                original_trace_id = original_trace_id.as_deref().unwrap_or("-"),
                outcome = "mismatch",
                "[Idempotency] Key reused with a different request - Key: {}, Trace: {}, Digest: {}, Original: {}",
                key,
                trace.unwrap_or("-"),
                fingerprint,
                original_trace_id.as_deref().unwrap_or("-"),
            );
            return Ok(reject(problems::fingerprint_mismatch(trace)));
        }
        Err(StoreError::Corrupt(err)) => {
            tracing::error!(target: LOG_TARGET, idempotency_key = key.as_str(), trace_id = trace.unwrap_or("-"), error = %err, "idempotency record unreadable");
            return Ok(reject(problems::corrupt_record(trace)));
        }
        Err(err) => {
            tracing::warn!(target: LOG_TARGET, idempotency_key = key.as_str(), trace_id = trace.unwrap_or("-"), error = %err, "idempotency store unavailable; refusing the request");
            return Ok(reject(problems::store_unavailable(trace)));
        }
    };
    tracing::info!(
        target: LOG_TARGET,
        idempotency_key = key.as_str(),
        trace_id = trace.unwrap_or("-"),
        digest = fingerprint.as_str(),
        status = "NEW",
        "[DeployKeeper] Idempotency-Key: {}, Trace-ID: {}, Digest: {}, Status: NEW",
        key,
        trace.unwrap_or("-"),
        fingerprint,
    );

    let mut guard = ReleaseGuard {
        store: Arc::clone(&config.store),
        scope,
        key,
        token,
        armed: true,
    };
    let request = Request::from_parts(parts, B::from(bytes));
    let mut inner = inner;
    // `call` itself may panic too, so it runs inside the caught future.
    let outcome = AssertUnwindSafe(async move { inner.call(request).await })
        .catch_unwind()
        .await;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            guard.release("handler error").await;
            return Err(err);
        }
        Err(panic) => {
            guard.release("handler panicked").await;
            std::panic::resume_unwind(panic);
        }
    };
    if !(config.store_status)(response.status()) {
        guard.release("status not stored").await;
        return Ok(ResponseBody::from_inner_response(response));
    }
    if exact_len_within(response.body(), config.max_response_body).is_none() {
        guard.release("response streaming or over the limit").await;
        return Ok(ResponseBody::from_inner_response(response));
    }
    let (response_parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        guard.release("response body failed").await;
        return Ok(reject(
            Problem::from_status(http::StatusCode::INTERNAL_SERVER_ERROR)
                .detail("the response body failed while being read")
                .maybe_trace_id(trace),
        ));
    };
    let body = collected.to_bytes();
    let stored = StoredResponse::capture(&response_parts, body.clone(), &config.replayed_headers);
    match config
        .store
        .complete(&guard.scope, guard.key.as_str(), token, &stored, config.ttl)
        .await
    {
        Ok(Completion::Stored) => guard.armed = false,
        Ok(Completion::Superseded) => {
            guard.armed = false;
            tracing::warn!(
                target: LOG_TARGET,
                idempotency_key = guard.key.as_str(),
                trace_id = trace.unwrap_or("-"),
                fencing_token = token.0,
                "completion rejected: the lease ended and the key was claimed again (or released); response not stored"
            );
        }
        Ok(Completion::Dropped) => {
            guard.armed = false;
            tracing::debug!(target: LOG_TARGET, idempotency_key = guard.key.as_str(), "response too large for the store; key released");
        }
        Err(err) => {
            tracing::warn!(target: LOG_TARGET, idempotency_key = guard.key.as_str(), trace_id = trace.unwrap_or("-"), error = %err, "response could not be stored");
            guard.release("store failed on completion").await;
        }
    }
    Ok(Response::from_parts(
        response_parts,
        ResponseBody::full(body),
    ))
}

fn log_duplicate(
    key: &IdempotencyKey,
    trace: Option<&str>,
    fingerprint: &Fingerprint,
    original: Option<&str>,
    outcome: &'static str,
) {
    tracing::info!(
        target: LOG_TARGET,
        idempotency_key = key.as_str(),
        trace_id = trace.unwrap_or("-"),
        digest = fingerprint.as_str(),
        original_trace_id = original.unwrap_or("-"),
        outcome,
        "[Idempotency] Duplicate detected - Key: {}, Trace: {}, Digest: {}, Original: {}",
        key,
        trace.unwrap_or("-"),
        fingerprint,
        original.unwrap_or("-"),
    );
}

/// Releases the claim if the request future is dropped before it completes or releases
/// (the client went away, a timeout layer gave up). Drop cannot await, so the release is
/// spawned on the current tokio runtime; without one it is skipped and the lease frees the
/// key when it ends (as after a crash).
struct ReleaseGuard {
    store: Arc<dyn IdempotencyStore>,
    scope: String,
    key: IdempotencyKey,
    token: FencingToken,
    armed: bool,
}

impl ReleaseGuard {
    async fn release(&mut self, why: &'static str) {
        self.armed = false;
        match self
            .store
            .release(&self.scope, self.key.as_str(), self.token)
            .await
        {
            Ok(_) => {
                tracing::debug!(target: LOG_TARGET, idempotency_key = self.key.as_str(), reason = why, "key released");
            }
            Err(err) => {
                tracing::warn!(target: LOG_TARGET, idempotency_key = self.key.as_str(), reason = why, error = %err, "key release failed; the lease will free it");
            }
        }
    }
}

impl Drop for ReleaseGuard {
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
