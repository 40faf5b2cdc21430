//! Overhead of `TraceIdLayer` per request against the bare service, and the id generator.
//!
//! Every case builds the same request for the bare service and for the layered one, so the
//! difference is the layer's own cost. No `tracing` subscriber is installed: the span is
//! disabled, as in a service that logs at `warn`.
//!
//! `cargo bench -p dreamnet-benches --bench trace_id -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_benches::{bare_handler, poll_now, runtime};
use dreamnet_common::ManualClock;
use dreamnet_trace_id::{PropagateTraceLayer, TimestampHex, TraceContext, TraceIdLayer};
use http::{HeaderValue, Request};
use http_body_util::Full;
use std::{hint::black_box, sync::Arc};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Clone, Copy)]
enum Case {
    NoHeader,
    XTraceId,
    Traceparent,
}

impl Case {
    const ALL: [Case; 3] = [Case::NoHeader, Case::XTraceId, Case::Traceparent];

    fn name(self) -> &'static str {
        match self {
            Case::NoHeader => "generate",
            Case::XTraceId => "x_trace_id",
            Case::Traceparent => "traceparent",
        }
    }

    fn request(self) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method("POST")
            .uri("/api/wolf-pack/echo")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        match self {
            Case::NoHeader => {}
            Case::XTraceId => {
                request.headers_mut().insert(
                    "x-trace-id",
                    HeaderValue::from_static("mbx2k9q1-3f9a0c1e77d24b6a"),
                );
            }
            Case::Traceparent => {
                request
                    .headers_mut()
                    .insert("traceparent", HeaderValue::from_static(TRACEPARENT));
            }
        }
        request
    }
}

/// The bare service and the layered one, each driven by the runtime (`trace_id/...`) and by
/// one synchronous poll per request (`trace_id/direct/...`).
fn layer_overhead(c: &mut Criterion) {
    let rt = runtime();
    let bare = service_fn(bare_handler);
    let layered = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(bare_handler));

    let mut group = c.benchmark_group("trace_id");
    for case in Case::ALL {
        group.bench_function(format!("bare/{}", case.name()), |b| {
            b.to_async(&rt).iter(|| async {
                black_box(bare.oneshot(case.request()).await.expect("infallible"))
            });
        });
        group.bench_function(format!("layer/{}", case.name()), |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    layered
                        .clone()
                        .oneshot(case.request())
                        .await
                        .expect("infallible"),
                )
            });
        });
    }
    group.finish();

    // The same comparison without a runtime: one synchronous poll per request.
    let mut group = c.benchmark_group("trace_id/direct");
    for case in Case::ALL {
        group.bench_function(format!("bare/{}", case.name()), |b| {
            b.iter(|| black_box(poll_now(bare.oneshot(case.request())).expect("infallible")));
        });
        group.bench_function(format!("layer/{}", case.name()), |b| {
            b.iter(|| {
                black_box(poll_now(layered.clone().oneshot(case.request())).expect("infallible"))
            });
        });
    }
    group.finish();
}

fn generator(c: &mut Criterion) {
    let make = TimestampHex::new();
    c.bench_function("trace_id/generate_id", |b| {
        b.iter(|| black_box(make.generate()));
    });
    // The same without the system clock read, to tell the clock's share apart.
    let fixed = TimestampHex::with_clock(Arc::new(ManualClock::new(1_749_000_000_000)));
    c.bench_function("trace_id/generate_id/fixed_clock", |b| {
        b.iter(|| black_box(fixed.generate()));
    });
    c.bench_function("trace_id/system_time_now", |b| {
        b.iter(|| black_box(std::time::SystemTime::now()));
    });
}

fn propagate(c: &mut Criterion) {
    let rt = runtime();
    let client = ServiceBuilder::new()
        .layer(PropagateTraceLayer::new())
        .service(service_fn(bare_handler));
    let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    c.bench_function("trace_id/propagate/timestamp_hex", |b| {
        b.to_async(&rt).iter(|| {
            let mut request = Case::NoHeader.request();
            request.extensions_mut().insert(ctx.clone());
            let client = client.clone();
            async move { black_box(client.oneshot(request).await.expect("infallible")) }
        });
    });
    c.bench_function("trace_id/propagate/none", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                client
                    .clone()
                    .oneshot(Case::NoHeader.request())
                    .await
                    .expect("infallible"),
            )
        });
    });
}

criterion_group!(benches, layer_overhead, generator, propagate);
criterion_main!(benches);
