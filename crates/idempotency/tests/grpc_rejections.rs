//! A gRPC request (`content-type: application/grpc`) gets every rejection of the layer as a
//! gRPC trailers-only response: 400 -> INVALID_ARGUMENT, 413 -> RESOURCE_EXHAUSTED,
//! 409 in flight -> ABORTED (with pushback), 422 mismatch -> FAILED_PRECONDITION.
#![allow(missing_docs)]

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use dreamnet_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::{util::BoxCloneService, ServiceBuilder, ServiceExt};

type Svc = BoxCloneService<
    Request<Full<Bytes>>,
    Response<dreamnet_common::ResponseBody<Full<Bytes>>>,
    Infallible,
>;

/// The layer (key required, 16-byte body limit) around a handler that adds a permit to
/// `entered`, then waits for `gate`.
fn service(gate: Arc<Semaphore>, entered: Arc<Semaphore>) -> Svc {
    let layer = IdempotencyLayer::builder()
        .store(MemoryStore::new())
        .required(true)
        .max_request_body(16)
        .build();
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        let gate = Arc::clone(&gate);
        entered.add_permits(1);
        async move {
            gate.acquire().await.unwrap().forget();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"minted"))))
        }
    });
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(handler))
}

fn grpc(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/dreamnet.mint.v1.Mint/Mint")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// (HTTP status, grpc-status, grpc-message, grpc-retry-pushback-ms, body length).
async fn send(
    svc: Svc,
    request: Request<Full<Bytes>>,
) -> (StatusCode, String, String, String, usize) {
    let response = svc.clone().oneshot(request).await.unwrap();
    let get = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let (code, message, pushback) = (
        get("grpc-status"),
        get("grpc-message"),
        get("grpc-retry-pushback-ms"),
    );
    assert!(code.is_empty() || get("content-type") == "application/grpc");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, code, message, pushback, body.len())
}

#[tokio::test]
async fn a_missing_or_invalid_key_is_invalid_argument() {
    let svc = service(Arc::new(Semaphore::new(10)), Arc::new(Semaphore::new(0)));
    let (status, code, message, _, body) = send(svc.clone(), grpc(None, "{}")).await;
    assert_eq!((status, code.as_str(), body), (StatusCode::OK, "3", 0));
    assert!(message.contains("requires an Idempotency-Key"), "{message}");
    let (_, code, _, _, _) = send(svc.clone(), grpc(Some("42"), "{}")).await;
    assert_eq!(code, "3", "an sf-integer is not a key");
}

#[tokio::test]
async fn a_body_over_the_limit_is_resource_exhausted() {
    let svc = service(Arc::new(Semaphore::new(10)), Arc::new(Semaphore::new(0)));
    let (status, code, message, _, _) =
        send(svc.clone(), grpc(Some("k-big"), "0123456789abcdefXYZ")).await;
    assert_eq!((status, code.as_str()), (StatusCode::OK, "8"));
    assert!(message.contains("larger than 16 bytes"), "{message}");
}

#[tokio::test]
async fn in_flight_is_aborted_with_pushback_and_mismatch_is_failed_precondition() {
    let (gate, entered) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let svc = service(Arc::clone(&gate), Arc::clone(&entered));
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(svc.clone(), grpc(Some("k-1"), "a")).await }
    });
    // The first attempt is in the handler, holding the key.
    entered.acquire().await.unwrap().forget();
    let (_, code, message, pushback, _) = send(svc.clone(), grpc(Some("k-1"), "a")).await;
    assert_eq!(code, "10");
    assert!(message.starts_with("Conflict: "), "{message}");
    assert!(!pushback.is_empty() && pushback.parse::<u64>().unwrap() >= 1000);
    gate.add_permits(1);
    let (status, code, _, _, body) = first.await.unwrap();
    assert_eq!((status, code.as_str(), body), (StatusCode::OK, "", 6));
    let (status, code, message, _, _) = send(svc.clone(), grpc(Some("k-1"), "b")).await;
    assert_eq!((status, code.as_str()), (StatusCode::OK, "9"));
    assert!(message.contains("different request payload"), "{message}");
}

#[tokio::test]
async fn a_json_request_still_gets_problem_json() {
    let svc = service(Arc::new(Semaphore::new(10)), Arc::new(Semaphore::new(0)));
    let request = Request::post("/mint")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}
