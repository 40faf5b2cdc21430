//! What the Redis tests of the control plane share: a guarded `200 ok` service, one request
//! through it, and a cluster whose one window no test outlives.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use dreamnet_control_core::{ClusterConfig, ControlPlane, WindowConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};

/// A handler behind the plane's layer.
pub(crate) type Svc = BoxCloneService<
    Request<Full<Bytes>>,
    Response<dreamnet_common::ResponseBody<Full<Bytes>>>,
    Infallible,
>;

/// `cluster`'s layer of `plane` over a handler that answers `200 ok`.
pub(crate) fn guarded(plane: &ControlPlane, cluster: &str) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(plane.layer(cluster))
            .service(service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })),
    )
}

/// One empty request through `svc`.
pub(crate) async fn send(svc: &Svc) -> Response<dreamnet_common::ResponseBody<Full<Bytes>>> {
    svc.clone()
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap()
}

/// The status of one request through `svc`.
pub(crate) async fn status(svc: &Svc) -> StatusCode {
    send(svc).await.status()
}

/// The status of one request, and whether Redis counted it (a `RateLimit` header with
/// usage; a fail-open admission has none).
pub(crate) async fn counted(svc: &Svc) -> (StatusCode, bool) {
    let response = send(svc).await;
    (
        response.status(),
        response.headers().contains_key("ratelimit"),
    )
}

/// A cluster allowing `limit` requests in one year-long window, so no window boundary
/// falls inside a test.
pub(crate) fn yearly(limit: u64) -> ClusterConfig {
    ClusterConfig {
        windows: vec![WindowConfig::new("year", limit, 365 * 86_400)],
        ..ClusterConfig::per_minute_hour_day(1, 1, 1)
    }
}
