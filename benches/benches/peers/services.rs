//! The services the peers bench and the `per_request` example compare: one bare handler,
//! and each layer (ours, and the peer a user would otherwise pick) wrapped around it.
//!
//! Every service takes the same request and answers through the same handler, so "layer
//! minus bare" is the layer's own cost.
#![allow(dead_code, unreachable_pub)]

use std::{convert::Infallible, future::Ready};

use axum::body::Body;
use bytes::Bytes;
use dreamnet_control_core::ControlPlane;
use dreamnet_trace_id::TraceIdLayer;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Service, ServiceBuilder};
use tower_governor::{
    governor::GovernorConfigBuilder, key_extractor::GlobalKeyExtractor, GovernorLayer,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

/// What the request brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// No id header.
    Nothing,
    /// A valid `X-Trace-Id` (what a gateway or a client sends).
    TraceId,
    /// A valid `X-Request-Id` for tower-http (the UUID form its generator makes).
    RequestId,
}

const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request every case sends. Header names and values are constants, so building the
/// request parses nothing per call (the same for every case).
pub fn request(incoming: Incoming) -> Request<()> {
    let mut request = Request::builder()
        .uri("/api/wolf-pack/echo")
        .body(())
        .expect("a valid request");
    let header = match incoming {
        Incoming::Nothing => None,
        Incoming::TraceId => Some((
            X_TRACE_ID,
            HeaderValue::from_static("mbx2k9q1-3f9a0c1e77d24b6a"),
        )),
        Incoming::RequestId => Some((
            X_REQUEST_ID,
            HeaderValue::from_static("7c1c5f3e-9a0b-4d2e-8f6a-1b2c3d4e5f60"),
        )),
    };
    if let Some((name, value)) = header {
        request.headers_mut().insert(name, value);
    }
    request
}

/// The handler every case wraps: 200 with a small body, answered at once. The body is
/// axum's because tower_governor's `Service` impl needs
/// `Response<axum::body::Body>: From<GovernorError>`.
pub fn bare_handler(_request: Request<()>) -> Ready<Result<Response<Body>, Infallible>> {
    std::future::ready(Ok(Response::new(Body::from(Bytes::from_static(
        b"{\"ok\":true}",
    )))))
}

/// The handler as a service.
pub type Bare =
    tower::util::ServiceFn<fn(Request<()>) -> Ready<Result<Response<Body>, Infallible>>>;

/// The bare handler as a service.
pub fn bare() -> Bare {
    tower::service_fn(bare_handler as fn(_) -> _)
}

/// Our trace-id layer, with its default header names and id generator.
pub fn trace_id() -> impl Service<Request<()>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(bare())
}

/// tower-http's request id: `SetRequestId` (UUID v4 when missing) + `PropagateRequestId`,
/// as its docs stack them.
pub fn tower_http_request_id() -> impl Service<Request<()>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .service(bare())
}

/// Our control layer on the memory store (kill switch, breaker, 3 windows, both headers).
pub fn control(plane: &ControlPlane) -> impl Service<Request<()>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(plane.layer("wolf-pack"))
        .service(bare())
}

/// tower_governor with one global GCRA quota so generous that nothing is ever refused
/// (a billion per second, a burst of `u32::MAX`).
pub fn governor() -> impl Service<Request<()>, Error = Infallible> + Clone {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(GlobalKeyExtractor)
        .finish()
        .expect("a valid governor config");
    ServiceBuilder::new()
        .layer(GovernorLayer::new(config))
        .service(bare())
}

/// [`governor`] with `use_headers()`: `X-RateLimit-Limit` and `X-RateLimit-Remaining` on
/// every admitted response, the closest peer of our `RateLimit-Policy` + `RateLimit`.
pub fn governor_with_headers() -> impl Service<Request<()>, Error = Infallible> + Clone {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(GlobalKeyExtractor)
        .use_headers()
        .finish()
        .expect("a valid governor config");
    ServiceBuilder::new()
        .layer(GovernorLayer::new(config))
        .service(bare())
}
