//! A gRPC request (`content-type: application/grpc*`) gets its rejection as a gRPC
//! trailers-only response; any other request keeps problem+json. And a gRPC error answered by
//! the inner service (HTTP 200, `grpc-status` in the headers) counts as the failure it is.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use bytes::Bytes;
use dreamnet_common::{ManualClock, ResponseBody};
use dreamnet_control_core::{BreakerState, ClusterConfig, ControlConfig, ControlPlane};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};

/// 2026-01-01T00:00:19Z: 41 s left in the minute.
const T: u64 = 1_767_225_600_000 + 19_000;

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn plane(minute: u64) -> ControlPlane {
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "alpha".to_owned(),
        ClusterConfig::per_minute_hour_day(minute, 1000, 10_000),
    );
    let config = ControlConfig {
        clusters,
        ..ControlConfig::default()
    };
    ControlPlane::builder()
        .config(config)
        .clock(Arc::new(ManualClock::new(T)))
        .build()
}

/// A guarded handler answering `response()`.
fn guarded(plane: &ControlPlane, response: fn() -> Response<Full<Bytes>>) -> Svc {
    let service = ServiceBuilder::new()
        .layer(plane.layer("alpha"))
        .service(service_fn(move |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(response())
        }));
    BoxCloneService::new(service)
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

async fn send(svc: &Svc, content_type: &str) -> Response<ResponseBody<Full<Bytes>>> {
    let request = Request::post("/dreamnet.mint.v1.Mint/Mint")
        .header("content-type", content_type)
        .body(Full::default())
        .unwrap();
    svc.clone().oneshot(request).await.unwrap()
}

fn header<'a, B>(response: &'a Response<B>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

#[tokio::test]
async fn rate_limited_grpc_is_resource_exhausted_with_pushback_and_rate_limit_metadata() {
    let plane = plane(1);
    let svc = guarded(&plane, ok);
    assert_eq!(send(&svc, "application/grpc").await.status(), 200);
    let response = send(&svc, "application/grpc+proto").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/grpc");
    assert_eq!(header(&response, "grpc-status"), "8");
    assert_eq!(header(&response, "grpc-retry-pushback-ms"), "41000");
    assert_eq!(header(&response, "retry-after"), "41");
    assert_eq!(header(&response, "ratelimit"), "\"minute\";r=0;t=41");
    assert!(header(&response, "ratelimit-policy").starts_with("\"minute\";q=1;w=60"));
    assert_eq!(
        header(&response, "dreamnet-problem-type"),
        "urn:dreamnet:control:rate-limited"
    );
    assert!(header(&response, "grpc-message").starts_with("Too Many Requests: "));
    // The same rejection for a JSON client is still problem+json.
    let json = send(&svc, "application/json").await;
    assert_eq!(json.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&json, "content-type"), "application/problem+json");
    assert_eq!(header(&json, "grpc-status"), "");
}

#[tokio::test]
async fn a_kill_switch_is_unavailable_for_grpc() {
    let plane = plane(100);
    let svc = guarded(&plane, ok);
    plane
        .engage_kill_switch("incident", "ops", None)
        .await
        .unwrap();
    let response = send(&svc, "application/grpc").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "grpc-status"), "14");
    assert_eq!(
        header(&response, "dreamnet-problem-type"),
        "urn:dreamnet:control:kill-switch"
    );
}

#[tokio::test]
async fn an_inner_grpc_unavailable_counts_as_a_failure_and_opens_the_breaker() {
    fn unavailable() -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::default());
        let headers = response.headers_mut();
        headers.insert("content-type", "application/grpc".parse().unwrap());
        headers.insert("grpc-status", "14".parse().unwrap());
        response
    }
    let plane = plane(10_000);
    let svc = guarded(&plane, unavailable);
    for _ in 0..10 {
        assert_eq!(
            header(&send(&svc, "application/grpc").await, "grpc-status"),
            "14"
        );
    }
    assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
    let refused = send(&svc, "application/grpc").await;
    assert_eq!(
        header(&refused, "dreamnet-problem-type"),
        "urn:dreamnet:control:circuit-open"
    );
    assert_eq!(header(&refused, "grpc-retry-pushback-ms"), "30000");
}

#[tokio::test]
async fn an_inner_grpc_ok_is_a_success() {
    fn grpc_ok() -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(b"\0\0\0\0\0")));
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    }
    let plane = plane(10_000);
    let svc = guarded(&plane, grpc_ok);
    for _ in 0..12 {
        assert_eq!(send(&svc, "application/grpc").await.status(), 200);
    }
    let breaker = plane.breaker("alpha").unwrap();
    assert_eq!(breaker.state, BreakerState::Closed);
    assert_eq!(breaker.failures, 0);
}
