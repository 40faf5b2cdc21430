//! Overhead of `IdempotencyLayer` (memory store) per request against the bare service, for a
//! 1 KiB POST: the first call with a key (buffer, fingerprint, claim, run, store) and a replay
//! (buffer, fingerprint, claim answers with the stored response; the handler does not run).
//!
//! Every case builds the same request (with the same headers) for the bare service and for
//! the layered one, so the difference is the layer's own cost. No `tracing` subscriber is
//! installed, as in a service that logs at `warn`.
//!
//! Redis round trips per request (not benched here, see the crate README): first call 2
//! (claim script + completion script), replay 1, 409 / 422 1; the first use of each script
//! on a connection adds one `NOSCRIPT` retry with the script body.
//!
//! `cargo bench -p dreamnet-benches --bench idempotency -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dreamnet_benches::{bare_handler, poll_now, runtime};
use dreamnet_idempotency::IdempotencyLayer;
use http::{HeaderValue, Request};
use http_body_util::Full;
use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
};
use tower::{service_fn, ServiceBuilder, ServiceExt};

static BODY: [u8; 1024] = [b'x'; 1024];

fn post(key: &str) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method("POST")
        .uri("/api/charges?currency=EUR")
        .header("content-type", "application/json")
        .header("x-account-id", "acct_bench")
        .body(Full::new(Bytes::from_static(&BODY)))
        .expect("request");
    request
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_str(key).expect("key"));
    request
}

fn fresh_key(counter: &AtomicU64) -> String {
    format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed))
}

fn direct(c: &mut Criterion) {
    let bare = service_fn(bare_handler);
    let layered = ServiceBuilder::new()
        .layer(IdempotencyLayer::default())
        .service(service_fn(bare_handler));
    poll_now(layered.clone().oneshot(post("replayed"))).expect("seed");
    // The lease heartbeat's own cost on a handler that answers at once (it arms no timer).
    let no_heartbeat = ServiceBuilder::new()
        .layer(IdempotencyLayer::builder().lease_heartbeat(false).build())
        .service(service_fn(bare_handler));
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("idempotency/direct");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare/post_1k", |b| {
        b.iter(|| black_box(poll_now(bare.oneshot(post(&fresh_key(&counter)))).expect("ok")));
    });
    group.bench_function("layer/first_call", |b| {
        b.iter(|| {
            let request = post(&fresh_key(&counter));
            black_box(poll_now(layered.clone().oneshot(request)).expect("ok"))
        });
    });
    group.bench_function("layer/first_call_no_heartbeat", |b| {
        b.iter(|| {
            let request = post(&fresh_key(&counter));
            black_box(poll_now(no_heartbeat.clone().oneshot(request)).expect("ok"))
        });
    });
    group.bench_function("layer/replay", |b| {
        b.iter(|| black_box(poll_now(layered.clone().oneshot(post("replayed"))).expect("ok")));
    });
    let get = || {
        Request::get("/api/charges")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    group.bench_function("bare/get", |b| {
        b.iter(|| black_box(poll_now(bare.oneshot(get())).expect("ok")));
    });
    group.bench_function("layer/get_passthrough", |b| {
        b.iter(|| black_box(poll_now(layered.clone().oneshot(get())).expect("ok")));
    });
    group.finish();
}

fn on_runtime(c: &mut Criterion) {
    let rt = runtime();
    let bare = service_fn(bare_handler);
    let layered = ServiceBuilder::new()
        .layer(IdempotencyLayer::default())
        .service(service_fn(bare_handler));
    rt.block_on(layered.clone().oneshot(post("replayed")))
        .expect("seed");
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("idempotency/runtime");
    group.bench_function("bare/post_1k", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(bare.oneshot(post(&fresh_key(&counter))).await.expect("ok"))
        });
    });
    group.bench_function("layer/first_call", |b| {
        b.to_async(&rt).iter(|| async {
            let request = post(&fresh_key(&counter));
            black_box(layered.clone().oneshot(request).await.expect("ok"))
        });
    });
    group.bench_function("layer/replay", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(layered.clone().oneshot(post("replayed")).await.expect("ok"))
        });
    });
    group.finish();
}

criterion_group!(benches, direct, on_runtime);
criterion_main!(benches);
