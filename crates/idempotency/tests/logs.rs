//! The DeployKeeper log lines, as `tracing` events with structured fields.
#![allow(missing_docs)]

use bytes::Bytes;
use dreamnet_idempotency::{IdempotencyLayer, RequestBody};
use dreamnet_test_support::logs::Capture;
use dreamnet_trace_id::TraceContext;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};

fn request(trace: &str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/charges")
        .header("idempotency-key", "order-42")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    request.extensions_mut().insert(TraceContext::new(trace));
    request
}

#[tokio::test]
async fn new_and_duplicate_lines_carry_key_trace_digest_and_original() {
    let (capture, _guard) = Capture::json(tracing::Level::INFO);

    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::default())
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"ok",
                ))))
            },
        ));
    svc.clone().oneshot(request("trace-first")).await.unwrap();
    svc.clone().oneshot(request("trace-retry")).await.unwrap();

    let events = capture.events();
    let new = events
        .iter()
        .find(|e| e["fields"]["status"] == "NEW")
        .expect("a NEW event");
    let digest = new["fields"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64);
    assert_eq!(
        new["fields"]["message"],
        format!("[DeployKeeper] Idempotency-Key: order-42, Trace-ID: trace-first, Digest: {digest}, Status: NEW")
    );
    assert_eq!(new["fields"]["idempotency_key"], "order-42");
    assert_eq!(new["fields"]["trace_id"], "trace-first");

    let duplicate = events
        .iter()
        .find(|e| e["fields"]["outcome"] == "replayed")
        .expect("a duplicate event");
    assert_eq!(
        duplicate["fields"]["message"],
        format!("[Idempotency] Duplicate detected - Key: order-42, Trace: trace-retry, Digest: {digest}, Original: trace-first")
    );
    assert_eq!(duplicate["fields"]["original_trace_id"], "trace-first");
    assert_eq!(duplicate["target"], "dreamnet_idempotency");
}
