//! The server's edge settings ([`EdgeConfig`]), its connection counters ([`EdgeMetrics`]) and
//! the server-wide request limits (tower-http: whole-request timeout, body deadline, body
//! size cap, panic catching) that [`crate::App`] puts inside the problem+json mapping, so
//! each of their answers is problem+json with the request's `traceId` and `X-Trace-Id`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{body::Body, response::Response};
use http::StatusCode;
use tower::{
    layer::util::{Identity, Stack},
    ServiceBuilder,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    timeout::{RequestBodyDeadlineLayer, TimeoutLayer},
};

/// Connection and request limits at the edge (flags `--header-read-timeout`,
/// `--idle-timeout`, `--request-timeout`, `--body-read-timeout`, `--max-connections`,
/// `--max-body-bytes`). The defaults are what nginx or Envoy in front of a paid API would
/// give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// How long a client may take to send a complete request head, counted from the
    /// connection's start (first request) or from the first byte of the next request on a
    /// keep-alive connection (default 10 s, like nginx's `client_header_timeout` but
    /// shorter: a slowloris holds a connection that long at most).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests (default 60 s).
    pub idle_timeout: Duration,
    /// The whole request, from the head to the response head: 503 problem+json past it
    /// (default 30 s).
    pub request_timeout: Duration,
    /// The whole request body must arrive within this (default 10 s); a body cut short
    /// fails its request with a 4xx.
    pub body_read_timeout: Duration,
    /// Connections open at once (default 10,000); over it a new connection is closed at
    /// once (and counted) while the open ones keep being served.
    pub max_connections: usize,
    /// The largest request body of any route (default 1 MiB); 413 problem+json above.
    pub max_body_bytes: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_body_bytes: crate::handlers::MAX_BODY_BYTES,
        }
    }
}

/// The edge's connection counters (shared: clones count into the same figures), rendered
/// on `/metrics` as `dreamnet_edge_*`.
#[derive(Debug, Clone, Default)]
pub struct EdgeMetrics {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl EdgeMetrics {
    pub(crate) fn accepted(&self) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) -> u64 {
        self.counters.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn header_timeout(&self) {
        self.counters
            .header_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn idle_timeout(&self) {
        self.counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the cap was reached.
    pub fn refused_total(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because a request head did not arrive in time.
    pub fn header_timeouts_total(&self) -> u64 {
        self.counters.header_timeouts.load(Ordering::Relaxed)
    }

    /// Keep-alive connections closed for sitting idle.
    pub fn idle_timeouts_total(&self) -> u64 {
        self.counters.idle_timeouts.load(Ordering::Relaxed)
    }

    /// TCP connections accepted since start.
    pub fn accepted_total(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }
}

/// A panic in a handler: a bare 500 whose text the problem+json mapping outside turns into
/// the `detail` (with the `traceId`); the panic message itself is not shown to the client.
fn panicked(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    let mut response = Response::new(Body::from("the request failed on an internal error"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

type PanicHandler = fn(Box<dyn std::any::Any + Send + 'static>) -> Response;

/// The layers of [`request_limits`], outermost first.
pub(crate) type RequestLimits = Stack<
    RequestBodyDeadlineLayer,
    Stack<
        RequestBodyLimitLayer,
        Stack<TimeoutLayer, Stack<CatchPanicLayer<PanicHandler>, Identity>>,
    >,
>;

/// The server-wide request limits: a panic is a 500, a request past `request_timeout` a
/// 503, a body over `max_body_bytes` a 413, a body not in by `body_read_timeout` fails.
/// Bare statuses: the problem+json mapping outside them writes the bodies.
pub(crate) fn request_limits(edge: &EdgeConfig) -> ServiceBuilder<RequestLimits> {
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panicked as PanicHandler))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            edge.request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(edge.max_body_bytes))
        .layer(RequestBodyDeadlineLayer::new(edge.body_read_timeout))
}

#[cfg(test)]
mod tests {
    use axum::{routing::get, Router};
    use dreamnet_trace_id::TraceIdLayer;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let edge = EdgeConfig {
            request_timeout: Duration::from_millis(100),
            max_body_bytes: 8,
            ..EdgeConfig::default()
        };
        Router::new()
            .route("/panic", get(|| async { panic!("boom") as &'static str }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            )
            .layer(request_limits(&edge))
            .layer(crate::problem::problem_errors())
            .layer(TraceIdLayer::new())
    }

    async fn call(
        request: http::Request<Body>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = app().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    fn get_(path: &str) -> http::Request<Body> {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_with_the_trace_id_and_no_panic_text() {
        let (status, headers, body) = call(get_("/panic")).await;
        assert_eq!(status, 500);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["traceId"], headers["x-trace-id"].to_str().unwrap());
        assert!(!body.to_string().contains("boom"));
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_is_a_503_problem() {
        let started = std::time::Instant::now();
        let (status, headers, body) = call(get_("/slow")).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(status, 503);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["status"], 503);
        assert!(body["traceId"].is_string());
    }

    #[tokio::test]
    async fn a_body_over_the_server_wide_limit_is_a_413_problem() {
        let request = http::Request::post("/echo")
            .header("content-length", "9")
            .body(Body::from("123456789"))
            .unwrap();
        let (status, headers, _) = call(request).await;
        assert_eq!(status, 413);
        assert_eq!(headers["content-type"], "application/problem+json");
    }
}
