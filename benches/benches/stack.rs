//! The whole server stack (trace id -> control -> idempotency -> handler) against the bare
//! handler, on memory stores, in process through `tower::ServiceExt::oneshot` (no sockets).
//!
//! Cases:
//! - `bare`: the handler alone;
//! - `stack/no_key`: every layer, a POST without an idempotency key (the idempotency layer
//!   passes it through after the control plane admitted it);
//! - `stack/new_key`: a fresh key per request (claim, run, store the response);
//! - `stack/replay`: the same key and body every time (the stored response is replayed).
//!
//! The cluster's limits are set high enough that nothing is rejected, so every request pays
//! for the rate-limit decision on three windows and the breaker bookkeeping. No `tracing`
//! subscriber is installed (spans disabled, as in a service logging at `warn`).
//!
//! `cargo bench -p dreamnet-benches --bench stack -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_benches::{bare_handler, runtime};
use dreamnet_control_core::{ControlConfig, ControlPlane};
use dreamnet_idempotency::{IdempotencyLayer, MemoryStore};
use dreamnet_trace_id::TraceIdLayer;
use http::{HeaderValue, Request};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const CONFIG: &str = r"
[clusters.bench]
requests_per_minute = 1000000000
requests_per_hour = 1000000000
requests_per_day = 1000000000
";

fn request(key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method("POST")
        .uri("/api/bench/echo")
        .header("content-type", "application/json")
        .header("x-trace-id", "mbx2k9q1-3f9a0c1e77d24b6a")
        .body(Full::new(Bytes::from_static(
            br#"{"dreamId":"d","wallet":"w"}"#,
        )))
        .expect("request");
    if let Some(key) = key {
        request.headers_mut().insert(
            "idempotency-key",
            HeaderValue::from_str(key).expect("key header"),
        );
    }
    request
}

fn stack(c: &mut Criterion) {
    let rt = runtime();
    let config = ControlConfig::from_toml_str(CONFIG).expect("bench config");
    let plane = rt.block_on(async { ControlPlane::builder().config(config).build() });
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .layer(plane.layer("bench"))
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(service_fn(bare_handler));

    let mut group = c.benchmark_group("stack");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let response = service_fn(bare_handler).oneshot(request(None)).await;
            black_box(response.expect("bare"))
        });
    });
    group.bench_function("no_key", |b| {
        b.to_async(&rt).iter(|| async {
            let response = service.clone().oneshot(request(None)).await.expect("stack");
            assert_eq!(response.status(), 200);
            black_box(response)
        });
    });
    let counter = AtomicU64::new(0);
    group.bench_function("new_key", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!("k-{}", counter.fetch_add(1, Ordering::Relaxed));
            let response = service
                .clone()
                .oneshot(request(Some(&key)))
                .await
                .expect("stack");
            assert_eq!(response.status(), 200);
            black_box(response)
        });
    });
    group.bench_function("replay", |b| {
        b.to_async(&rt).iter(|| async {
            let response = service
                .clone()
                .oneshot(request(Some("the-same-key")))
                .await
                .expect("stack");
            assert_eq!(response.status(), 200);
            black_box(response)
        });
    });
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
