//! [`PropagateTraceLayer`]: the client-side layer for outbound requests.

use crate::{context::TraceContext, id::is_valid_trace_id, layer::HeaderNames};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Adds the current trace to outbound requests: `X-Trace-Id`, a W3C `traceparent` and
/// `tracestate`, with a new span per request.
///
/// For a tower-based HTTP client (hyper-util's legacy client, a reqwest/tower stack, a
/// tonic channel). The parent context is the request's own [`TraceContext`] extension if it
/// has one, else [`TraceContext::current`] (the request being served, set by
/// [`TraceIdLayer`](crate::TraceIdLayer)); without either, the request is sent unchanged.
///
/// Each request sent is a **child span** of that context ([`TraceContext::child`]): three
/// calls made while serving one request carry three different `traceparent` parent-ids,
/// each a child of the request's span. The child replaces the request's `TraceContext`
/// extension, so inner client layers can log the call's span.
///
/// - `X-Trace-Id` carries the correlation id (so `timestamp-hex` ids survive the hop);
/// - `traceparent` is `00-<w3c trace id>-<call span id>-<flags>`: the W3C trace continued
///   from the incoming `traceparent` (flags as received, so "not sampled" stays `00`), else
///   the [W3C form](crate::w3c_trace_id) of the correlation id with flags `01`; always
///   version `00`, whatever version came in;
/// - `tracestate` is the validated incoming `tracestate`, as stored (no re-serialization).
///
/// The three headers are replaced if already present, and a stale `tracestate` is removed
/// when the context has none, so they never disagree.
///
/// ```
/// use dreamnet_trace_id::{PropagateTraceLayer, TraceContext, Traceparent};
/// use http::{Request, Response};
/// use std::convert::Infallible;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Stands in for an HTTP client: answers with the headers it was asked to send.
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
/// let tp = Traceparent::parse(sent["traceparent"].to_str().unwrap()).unwrap();
/// assert_eq!(tp.trace_id(), ctx.w3c_trace_id());
/// assert_ne!(tp.parent_id(), ctx.span_id(), "a child span per call");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PropagateTraceLayer {
    names: HeaderNames,
}

impl PropagateTraceLayer {
    /// A layer writing `x-trace-id`, `traceparent` and `tracestate`.
    #[must_use]
    pub fn new() -> Self {
        Self {
            names: HeaderNames::DEFAULT,
        }
    }

    /// The header carrying the correlation id (default `x-trace-id`).
    #[must_use]
    pub fn trace_id_header(mut self, name: HeaderName) -> Self {
        self.names.trace_id = name;
        self
    }

    /// The W3C trace context header (default `traceparent`).
    #[must_use]
    pub fn traceparent_header(mut self, name: HeaderName) -> Self {
        self.names.traceparent = name;
        self
    }

    /// The W3C trace state header (default `tracestate`).
    #[must_use]
    pub fn tracestate_header(mut self, name: HeaderName) -> Self {
        self.names.tracestate = name;
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
        let call = match TraceContext::from_extensions(request.extensions()) {
            Some(parent) => Some(parent.child()),
            None => TraceContext::current_child(),
        };
        if let Some(call) = call {
            write_headers(&call, request.headers_mut(), &self.config.names);
            request.extensions_mut().insert(call);
        }
        self.inner.call(request)
    }
}

/// Writes the headers naming `context`'s span as the parent of the request.
fn write_headers(context: &TraceContext, headers: &mut HeaderMap, names: &HeaderNames) {
    // A context built by hand may hold any string: only an allow-listed id is sent as is.
    let trace_id = if is_valid_trace_id(context.trace_id()) {
        context.trace_id().to_owned()
    } else {
        context.w3c_trace_id().into_owned()
    };
    headers.insert(
        &names.trace_id,
        HeaderValue::from_maybe_shared(Bytes::from(trace_id))
            .expect("a valid trace id is a valid header value"),
    );
    headers.insert(
        &names.traceparent,
        HeaderValue::from_maybe_shared(Bytes::from(context.traceparent()))
            .expect("a traceparent is a valid header value"),
    );
    match context.tracestate() {
        Some(state) => {
            headers.insert(&names.tracestate, state.header_value().clone());
        }
        None => {
            headers.remove(&names.tracestate);
        }
    }
}

impl TraceContext {
    /// Writes `X-Trace-Id`, `traceparent` and `tracestate` for this context into `headers`,
    /// for clients that are not tower services, naming **this** span as the parent.
    ///
    /// [`PropagateTraceLayer`] sends a child span per request; do the same with
    /// `ctx.child().inject_headers(...)`.
    ///
    /// ```
    /// use dreamnet_trace_id::TraceContext;
    ///
    /// let ctx = TraceContext::new("order-7");
    /// let mut headers = http::HeaderMap::new();
    /// ctx.child().inject_headers(&mut headers);
    /// assert_eq!(headers["x-trace-id"], "order-7");
    /// assert!(headers["traceparent"].to_str().unwrap().starts_with("00-"));
    /// assert!(!headers.contains_key("tracestate"));
    /// ```
    pub fn inject_headers(&self, headers: &mut HeaderMap) {
        write_headers(self, headers, &HeaderNames::DEFAULT);
    }
}
