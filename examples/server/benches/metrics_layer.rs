//! What the HTTP metrics layer costs on the guarded echo: the same in-process router (trace
//! id -> control with 3 windows -> idempotency -> a small JSON handler, memory stores), once
//! bare and once with the route tag and the observing middleware of `/metrics`.
//!
//! Run: `cargo bench -p dreamnet-server --bench metrics_layer -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::sync::Arc;

use axum::{body::Body, routing::any, Router};
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_control_core::{
    ClusterConfig, ControlConfig, ControlLayer, ControlPlane, PathSegment, MAX_LIMIT,
};
use dreamnet_idempotency::{DefaultScope, IdempotencyLayer, MemoryStore};
use dreamnet_server::HttpMetrics;
use dreamnet_trace_id::TraceIdLayer;
use http::{Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};

/// Windows so large that no request is ever limited: every iteration takes all three.
fn plane() -> ControlPlane {
    let cluster = ClusterConfig::per_minute_hour_day(MAX_LIMIT, MAX_LIMIT, MAX_LIMIT);
    ControlPlane::new(ControlConfig {
        clusters: [("wolf-pack".to_owned(), cluster)].into(),
        ..ControlConfig::default()
    })
}

fn guarded_echo() -> Router {
    let idempotency = IdempotencyLayer::builder()
        .shared_store(Arc::new(MemoryStore::new()))
        .scope(DefaultScope)
        .build();
    Router::new().route(
        "/api/{cluster}/echo",
        any(|| async { axum::Json(serde_json::json!({ "cluster": "wolf-pack" })) }).layer(
            ServiceBuilder::new()
                .layer(ControlLayer::dynamic(plane(), PathSegment::new(1)))
                .layer(idempotency),
        ),
    )
}

fn request() -> Request<Body> {
    Request::get("/api/wolf-pack/echo")
        .body(Body::empty())
        .expect("request")
}

fn metrics_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bare = guarded_echo().layer(TraceIdLayer::new());
    let metrics = HttpMetrics::default().with_routes(["/api/{cluster}/echo"]);
    let measured = metrics
        .observe(HttpMetrics::tag_routes(guarded_echo()))
        .layer(TraceIdLayer::new());

    let mut group = c.benchmark_group("guarded_echo");
    for (name, router) in [("bare", bare), ("with_metrics", measured)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let response = router.oneshot(request()).await.expect("infallible");
                    assert_eq!(response.status(), StatusCode::OK);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, metrics_layer);
criterion_main!(benches);
