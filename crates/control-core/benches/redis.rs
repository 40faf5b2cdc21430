//! The control layer on Redis: latency of one guarded request (one `EVALSHA` per decision),
//! the same with the cluster's breaker fleet-wide (plus one `EVALSHA` per outcome, sent
//! after the response), and of a kill-switch 503 (no round trip), and Redis round trips per
//! request.
//!
//! Run: `cargo bench -p dreamnet-control-core --features redis --bench redis`
#![allow(missing_docs, clippy::print_stdout)]

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_control_core::{ClusterConfig, ControlConfig, ControlPlane, RedisStore, WindowConfig};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = dreamnet_test_support::redis_url();
    let prefix = format!("dreamnet-bench:{}:", std::process::id());
    let store = match rt.block_on(RedisStore::connect(&url)) {
        Ok(store) => store.prefix(&prefix),
        Err(e) => {
            println!("SKIPPED: redis unreachable ({e})");
            return;
        }
    };
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "wolf-pack".to_owned(),
        ClusterConfig {
            windows: vec![
                WindowConfig::new("minute", 1_000_000_000_000, 60),
                WindowConfig::new("hour", 1_000_000_000_000, 3600),
                WindowConfig::new("day", 1_000_000_000_000, 86_400),
            ],
            ..ClusterConfig::per_minute_hour_day(1, 1, 1)
        },
    );
    let config = ControlConfig {
        clusters,
        ..ControlConfig::default()
    };
    let plane = rt.block_on(async {
        ControlPlane::builder()
            .config(config.clone())
            .store(store.clone())
            .refresh_interval(Duration::from_secs(3600))
            .build()
    });
    let svc = ServiceBuilder::new()
        .layer(plane.layer("wolf-pack"))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    // The same on another prefix, with the breaker fleet-wide.
    let fleet_store = store.clone().prefix(&format!("{prefix}fleet:"));
    let fleet_plane = rt.block_on(async {
        ControlPlane::builder()
            .config(config)
            .store(fleet_store.clone())
            .breaker_store(Arc::new(fleet_store.clone()))
            .refresh_interval(Duration::from_secs(3600))
            .build()
    });
    let fleet_svc = ServiceBuilder::new()
        .layer(fleet_plane.layer("wolf-pack"))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    let trips_before = fleet_store.round_trips();
    let admitted_before = fleet_plane.metrics().admitted;
    c.bench_function("control/layer_redis_3_windows_fleet_breaker", |b| {
        b.to_async(&rt).iter(|| {
            let svc = fleet_svc.clone();
            async move {
                let response = svc
                    .oneshot(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    });
    // Let the last outcomes land before counting.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    let requests = fleet_plane.metrics().admitted - admitted_before;
    let trips = fleet_store.round_trips() - trips_before;
    #[allow(clippy::cast_precision_loss)]
    let per_request = trips as f64 / requests.max(1) as f64;
    println!(
        "control/redis round trips per request, fleet-wide breaker: {per_request:.3} ({trips} round trips for {requests} requests)"
    );
    let trips_before = store.round_trips();
    let admitted_before = plane.metrics().admitted;
    c.bench_function("control/layer_redis_3_windows", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                let response = svc
                    .oneshot(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    });
    let requests = plane.metrics().admitted - admitted_before;
    let trips = store.round_trips() - trips_before;
    #[allow(clippy::cast_precision_loss)]
    let per_request = trips as f64 / requests.max(1) as f64;
    println!(
        "control/redis round trips per request: {per_request:.3} ({trips} round trips for {requests} requests; the background refresher was slowed to 1/h)"
    );
    // A kill-switch 503: no round trip (`RateLimit-Policy` only; the counters are not read).
    rt.block_on(plane.engage_kill_switch("bench", "bench", None))
        .expect("engage");
    let trips_before = store.round_trips();
    let rejected_before = plane.metrics().rejected.kill_switch;
    c.bench_function("control/layer_redis_kill_switch_503", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                let response = svc
                    .oneshot(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 503);
                assert!(response.headers().contains_key("ratelimit-policy"));
            }
        });
    });
    let rejected = plane.metrics().rejected.kill_switch - rejected_before;
    let trips = store.round_trips() - trips_before;
    #[allow(clippy::cast_precision_loss)]
    let per_rejection = trips as f64 / rejected.max(1) as f64;
    println!(
        "control/redis round trips per kill-switch 503: {per_rejection:.3} ({trips} for {rejected})"
    );
    rt.block_on(store.purge()).ok();
    rt.block_on(fleet_store.purge()).ok();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = redis
}
criterion_main!(benches);
