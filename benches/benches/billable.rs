//! The billable layer's overhead: the full reserve -> run -> confirm -> charge path with the
//! memory ledger, and a same-key replay, against the bare service.
//!
//! Run: `cargo bench -p dreamnet-benches --bench billable`
//!
//! PostgreSQL is not benchmarked here; a billable request costs 3 round trips on it (one
//! server-side function call each for reserve, confirm and charge; see
//! `dreamnet_billable::ledger::postgres`), so its latency is dominated by the database's three
//! commits (fsync). Measure it with
//! `cargo run --release -p dreamnet-billable --features postgres --example pg_latency -- 500`.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_benches::{bare_handler, runtime};
use dreamnet_billable::{BillableLayer, MemoryLedger};
use http::Request;
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("/api/mint-dream")
        .header("x-account-id", "bench-account")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(
            b"{\"dreamId\":\"d-1\",\"wallet\":\"w\"}",
        )))
        .expect("valid request")
}

fn billable(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("billable");

    let bare = service_fn(bare_handler);
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let svc = bare;
            async move { black_box(svc.oneshot(request("k")).await.expect("bare")) }
        });
    });

    let ledger = Arc::new(MemoryLedger::new());
    let svc = ServiceBuilder::new()
        .layer(BillableLayer::with_shared_ledger(
            ledger.clone(),
            "mint-dream",
            250,
        ))
        .service(service_fn(bare_handler));

    // Every iteration is a new key: reserve, run, store the response, charge.
    let counter = Arc::new(AtomicU64::new(0));
    group.bench_function("memory/reserve_confirm_charge", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            let key = format!("key-{}", counter.fetch_add(1, Ordering::Relaxed));
            async move {
                let response = svc.oneshot(request(&key)).await.expect("billable");
                assert_eq!(response.status(), 200);
                black_box(response)
            }
        });
    });

    // The same key again: the stored response is replayed, nothing is charged.
    rt.block_on(svc.clone().oneshot(request("replayed")))
        .expect("first request");
    group.bench_function("memory/replay", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { black_box(svc.oneshot(request("replayed")).await.expect("replay")) }
        });
    });
    group.finish();
}

criterion_group!(benches, billable);
criterion_main!(benches);
