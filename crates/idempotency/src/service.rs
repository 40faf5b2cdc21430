//! [`Idempotency`], the service: the protocol's three steps over an [`IdempotencyStore`].

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{grpc::effective_status, Problem, ProblemFormat, ResponseBody};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::RequestBody,
    future::ResponseFuture,
    layer::Config,
    protocol::{self, Admission, Captured, Claimed, Prepared, Ran, Settlement},
    IdempotencyKey,
};

/// The `tracing` target of every event this crate emits.
pub const LOG_TARGET: &str = "dreamnet_idempotency";

/// The idempotency service; see [`IdempotencyLayer`](crate::IdempotencyLayer).
///
/// The inner service receives a [`RequestBody<B>`]: for guarded requests the bytes the
/// layer buffered (up to the limit), for the others the incoming body `B` untouched. Any
/// `B: Body<Data = Bytes>` works (hyper's `Incoming`, `tonic::body::Body`, axum's `Body`),
/// and an axum `Router` / tonic `Routes` inside takes `RequestBody<B>` as is.
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

impl<S, B, ResBody> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
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
        let key = match self.config.protocol.admit(&request) {
            Admission::Guard(key) => key,
            Admission::Skip => {
                return ResponseFuture::passthrough(
                    self.inner.call(request.map(RequestBody::inner)),
                )
            }
            Admission::Reject(problem) => {
                let format = ProblemFormat::of(request.headers());
                return ResponseFuture::rejected(problem, format);
            }
        };
        // The service that was driven to readiness is the one that must be called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture::guarded(Box::pin(guarded(config, inner, key, request)))
    }
}

/// A rejection in the request's format (problem+json, or gRPC trailers-only).
fn reject<B>(problem: Problem, format: ProblemFormat) -> Response<ResponseBody<B>> {
    ResponseBody::from_full_response(problem.render(format))
}

/// Prepare, claim, run, settle: store a response that can be kept, release the key otherwise.
async fn guarded<S, B, ResBody>(
    config: Arc<Config>,
    inner: S,
    key: IdempotencyKey,
    request: Request<B>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    ResBody: Body<Data = Bytes>,
{
    let format = ProblemFormat::of(request.headers());
    let prepared = match config.protocol.prepare(key, request).await {
        Ok(prepared) => prepared,
        Err(problem) => return Ok(reject(problem, format)),
    };
    let token = match protocol::claim(&*config.store, &prepared, config.lease).await {
        Claimed::Proceed(token) => token,
        Claimed::Answered(answer) => return Ok(ResponseBody::from_full_response(answer)),
    };
    let Prepared {
        key,
        scope,
        trace_id,
        parts,
        body,
        ..
    } = prepared;
    let settlement = Settlement::new(Arc::clone(&config.store), scope, key, token, trace_id);
    let heartbeat = config.heartbeat.then_some(config.lease);
    let handled = protocol::run(inner, Request::from_parts(parts, RequestBody::full(body)));
    let response = match settlement.keep_alive(heartbeat, handled).await {
        Ran::Response(response) => response,
        Ran::Error(err) => {
            settlement.release("handler error").await;
            return Err(err);
        }
        Ran::Panic(panic) => {
            settlement.release("handler panicked").await;
            std::panic::resume_unwind(panic);
        }
    };
    // A gRPC error is HTTP 200 with its grpc-status in the headers: decide by that.
    if !(config.store_status)(effective_status(response.status(), response.headers())) {
        settlement.release("status not stored").await;
        return Ok(ResponseBody::from_inner_response(response));
    }
    match settlement
        .keep_alive(heartbeat, config.protocol.capture(response))
        .await
    {
        Captured::Kept { head, body, stored } => {
            settlement.complete(&stored, config.ttl).await;
            Ok(Response::from_parts(head, ResponseBody::full(body)))
        }
        Captured::Unstorable(response) => {
            settlement
                .release("response streaming or over the limit")
                .await;
            Ok(ResponseBody::from_inner_response(response))
        }
        Captured::Failed(_) => {
            let problem = Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR)
                .detail("the response body failed while being read")
                .maybe_trace_id(settlement.trace_id());
            settlement.release("response body failed").await;
            Ok(reject(problem, format))
        }
    }
}
