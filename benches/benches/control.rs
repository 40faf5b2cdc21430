//! The control plane: one admission decision (kill switch, disabled, breaker, 3 windows on
//! the memory store, outcome recorded) uncontended and from 2 threads on one cluster, and the
//! layer (same decision plus response headers) against the bare service, and a kill-switch
//! 503 (problem+json plus both rate-limit headers). Redis round trips are benched in `crates/control-core/benches/redis.rs`
//! (it needs the crate's `redis` feature).
//!
//! Run: `cargo bench -p dreamnet-benches --bench control`
#![allow(missing_docs)]

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_benches::{bare_handler, poll_now, unlimited_plane};
use dreamnet_control_core::Outcome;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder};

fn request() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::new()))
}

fn decision(c: &mut Criterion) {
    let plane = unlimited_plane();
    let mut guarded = ServiceBuilder::new()
        .layer(plane.layer("wolf-pack"))
        .service(service_fn(bare_handler));
    let mut bare = service_fn(bare_handler);
    let mut group = c.benchmark_group("control");
    // One admission decision: kill switch, cluster, breaker, 3 windows on the memory store,
    // then the breaker records the outcome.
    group.bench_function("decision_memory_3_windows", |b| {
        b.iter(|| {
            let permit = poll_now(plane.acquire("wolf-pack", None)).unwrap();
            permit.finish(Outcome::Status(StatusCode::OK));
        });
    });
    group.bench_function("decision_memory_3_windows_2_threads_one_cluster", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let plane = plane.clone();
                    s.spawn(move || {
                        for _ in 0..iters {
                            let permit = poll_now(plane.acquire("wolf-pack", None)).unwrap();
                            permit.finish(Outcome::Status(StatusCode::OK));
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    group.bench_function("bare_service", |b| {
        b.iter(|| black_box(poll_now(bare.call(request())).unwrap()));
    });
    group.bench_function("layer_memory_3_windows", |b| {
        b.iter(|| {
            let response = poll_now(guarded.call(request())).unwrap();
            assert_eq!(response.status(), 200);
            black_box(response)
        });
    });
    // Two threads deciding for the same cluster at once: per-decision latency under
    // contention on the cluster's counter and breaker mutexes.
    group.bench_function("layer_memory_3_windows_2_threads_one_cluster", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let mut svc = guarded.clone();
                    s.spawn(move || {
                        for _ in 0..iters {
                            black_box(poll_now(svc.call(request())).unwrap());
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    // A 503 from the kill switch: problem+json plus `RateLimit-Policy` (no `RateLimit`:
    // the counters are not read).
    let stopped = unlimited_plane();
    poll_now(stopped.engage_kill_switch("bench", "bench", None)).unwrap();
    let mut stopped_svc = ServiceBuilder::new()
        .layer(stopped.layer("wolf-pack"))
        .service(service_fn(bare_handler));
    group.bench_function("layer_memory_kill_switch_503", |b| {
        b.iter(|| {
            let response = poll_now(stopped_svc.call(request())).unwrap();
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("ratelimit-policy"));
            black_box(response)
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decision
}
criterion_main!(benches);
