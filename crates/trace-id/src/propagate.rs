//! [`PropagateTraceLayer`]: the client-side layer for outbound requests.

use crate::{
    context::TraceContext,
    id::is_valid_trace_id,
    layer::{TRACEPARENT, X_TRACE_ID},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Adds the current trace to outbound requests: `X-Trace-Id` and a W3C `traceparent`.
///
/// For a tower-based HTTP client (hyper-util's legacy client, a reqwest/tower stack, a
/// tonic channel). The context is the request's own [`TraceContext`] extension if it has
/// one, else [`TraceContext::current`] (the request being served, set by
/// [`TraceIdLayer`](crate::TraceIdLayer)); without either, the request is sent unchanged.
///
/// - `X-Trace-Id` carries the trace id itself (so `timestamp-hex` ids survive the hop);
/// - `traceparent` is `00-<w3c trace id>-<span id>-01`, naming the current span as the
///   parent. A trace id that is not 32 hex digits is mapped deterministically (see
///   [`w3c_trace_id`](crate::w3c_trace_id)), so the header is always valid W3C and the
///   next service recognises it as the same trace.
///
/// Both headers are replaced if already present, so they never disagree.
///
/// ```
/// use dreamnet_trace_id::{PropagateTraceLayer, TraceContext};
/// use http::{Request, Response};
/// use std::convert::Infallible;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Stands in for an HTTP client: answers with the headers it was sent.
/// let client = ServiceBuilder::new()
///     .layer(PropagateTraceLayer::new())
///     .service(service_fn(|req: Request<()>| async move {
///         Ok::<_, Infallible>(Response::new(req.headers().clone()))
///     }));
///
/// let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
/// let sent = ctx
///     .clone()
///     .scope(client.oneshot(Request::new(())))
///     .await
///     .unwrap()
///     .into_body();
/// assert_eq!(sent["x-trace-id"], "mbx2k9q1-3f9a0c1e77d24b6a");
/// assert_eq!(sent["traceparent"], ctx.traceparent().as_str());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PropagateTraceLayer {
    trace_id_header: HeaderName,
    traceparent_header: HeaderName,
}

impl PropagateTraceLayer {
    /// A layer writing `x-trace-id` and `traceparent`.
    #[must_use]
    pub fn new() -> Self {
        Self {
            trace_id_header: X_TRACE_ID,
            traceparent_header: TRACEPARENT,
        }
    }

    /// The header carrying the trace id (default `x-trace-id`).
    #[must_use]
    pub fn trace_id_header(mut self, name: HeaderName) -> Self {
        self.trace_id_header = name;
        self
    }

    /// The W3C trace context header (default `traceparent`).
    #[must_use]
    pub fn traceparent_header(mut self, name: HeaderName) -> Self {
        self.traceparent_header = name;
        self
    }
}

impl Default for PropagateTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for PropagateTraceLayer {
    type Service = PropagateTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateTrace {
            inner,
            config: self.clone(),
        }
    }
}

/// The service made by [`PropagateTraceLayer`].
#[derive(Debug)]
pub struct PropagateTrace<S> {
    inner: S,
    config: PropagateTraceLayer,
}

impl<S> PropagateTrace<S> {
    /// Wraps `inner` with the default header names.
    pub fn new(inner: S) -> Self {
        PropagateTraceLayer::new().layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for PropagateTrace<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S, B> Service<Request<B>> for PropagateTrace<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let values = match TraceContext::from_extensions(request.extensions()) {
            Some(context) => Some(header_values(context)),
            None => TraceContext::current().as_ref().map(header_values),
        };
        if let Some((trace_id, traceparent)) = values {
            let headers = request.headers_mut();
            headers.insert(&self.config.trace_id_header, trace_id);
            headers.insert(&self.config.traceparent_header, traceparent);
        }
        self.inner.call(request)
    }
}

/// `(X-Trace-Id, traceparent)` values for `context`.
fn header_values(context: &TraceContext) -> (HeaderValue, HeaderValue) {
    // A context built by hand may hold any string: only an allow-listed id is sent as is.
    let trace_id = if is_valid_trace_id(context.trace_id()) {
        context.trace_id().to_owned()
    } else {
        context.w3c_trace_id().into_owned()
    };
    (
        HeaderValue::from_maybe_shared(Bytes::from(trace_id))
            .expect("a valid trace id is a valid header value"),
        HeaderValue::from_maybe_shared(Bytes::from(context.traceparent()))
            .expect("a traceparent is a valid header value"),
    )
}

impl TraceContext {
    /// Writes `X-Trace-Id` and `traceparent` for this context into `headers`, for clients
    /// that are not tower services (the same values as [`PropagateTraceLayer`]).
    ///
    /// ```
    /// use dreamnet_trace_id::TraceContext;
    ///
    /// let ctx = TraceContext::new("order-7");
    /// let mut headers = http::HeaderMap::new();
    /// ctx.inject_headers(&mut headers);
    /// assert_eq!(headers["x-trace-id"], "order-7");
    /// assert!(headers["traceparent"].to_str().unwrap().starts_with("00-"));
    /// ```
    pub fn inject_headers(&self, headers: &mut HeaderMap) {
        let (trace_id, traceparent) = header_values(self);
        headers.insert(X_TRACE_ID, trace_id);
        headers.insert(TRACEPARENT, traceparent);
    }
}
