//! Our layers beside the peers a user would otherwise pick, in one criterion run on the
//! same bare handler, so the ratios are read from one run on one (loaded) machine:
//!
//! - `peers/trace_id`: `TraceIdLayer` and tower-http's `SetRequestId` +
//!   `PropagateRequestId` (`MakeRequestUuid`), each with a valid incoming id and without;
//! - `peers/control`: `ControlLayer` (memory store, 3 windows, breaker, `RateLimit` headers)
//!   and tower_governor (one global GCRA quota, generous enough never to refuse), without
//!   and with its `X-RateLimit-*` headers (`use_headers()`: ours always writes two headers).
//!
//! Overhead = layer minus `bare`. Each request is polled once on this thread (every
//! service here answers at once), so no runtime scheduling is measured. For deterministic
//! instruction counts per request see `benches/examples/per_request.rs`.
//!
//! Run: `cargo bench -p dreamnet-benches --bench peers -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

#[path = "peers/services.rs"]
mod services;

use std::{hint::black_box, time::Duration};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use dreamnet_benches::poll_now;
use http::Request;
use services::Incoming;
use tower::Service;

/// Benches `svc` under `name`, one fresh request (`header` set) per iteration.
fn case<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S, incoming: Incoming)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter(|| {
            let response = poll_now(svc.call(services::request(incoming))).expect("infallible");
            black_box(response)
        });
    });
}

fn trace_id(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers/trace_id");
    // The bare handler with the incoming header too: building a request with a header
    // costs more than without, and that is not the layer's cost.
    case(
        &mut group,
        "bare/valid_header",
        services::bare(),
        Incoming::TraceId,
    );
    case(
        &mut group,
        "ours/valid_header",
        services::trace_id(),
        Incoming::TraceId,
    );
    case(
        &mut group,
        "tower_http/valid_header",
        services::tower_http_request_id(),
        Incoming::RequestId,
    );
    case(
        &mut group,
        "bare/no_header",
        services::bare(),
        Incoming::Nothing,
    );
    case(
        &mut group,
        "ours/no_header",
        services::trace_id(),
        Incoming::Nothing,
    );
    case(
        &mut group,
        "tower_http/no_header",
        services::tower_http_request_id(),
        Incoming::Nothing,
    );
    group.finish();
}

fn control(c: &mut Criterion) {
    let plane = dreamnet_benches::unlimited_plane();
    let mut group = c.benchmark_group("peers/control");
    case(&mut group, "bare", services::bare(), Incoming::Nothing);
    case(
        &mut group,
        "ours/memory_3_windows",
        services::control(&plane),
        Incoming::Nothing,
    );
    case(
        &mut group,
        "tower_governor/global",
        services::governor(),
        Incoming::Nothing,
    );
    case(
        &mut group,
        "tower_governor/global_with_headers",
        services::governor_with_headers(),
        Incoming::Nothing,
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = trace_id, control
}
criterion_main!(benches);
