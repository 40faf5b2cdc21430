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
use dreamnet_control_core::{
    ClusterConfig, Control, ControlConfig, ControlPlane, RedisStore, WindowConfig,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{service_fn, util::ServiceFn, ServiceBuilder, ServiceExt};

type Handler =
    fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
type Guarded = Control<ServiceFn<Handler>>;

fn ok(_req: Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

/// One cluster, `wolf-pack`, with three windows that never refuse.
fn config() -> ControlConfig {
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
    ControlConfig {
        clusters,
        ..ControlConfig::default()
    }
}

/// A plane on `store` (its breaker fleet-wide when `fleet`) and the guarded handler; the
/// background refresher slowed to 1/h so that it adds no round trips.
fn guarded(rt: &Runtime, store: &RedisStore, fleet: bool) -> (ControlPlane, Guarded) {
    let plane = rt.block_on(async {
        let builder = ControlPlane::builder()
            .config(config())
            .store(store.clone())
            .refresh_interval(Duration::from_secs(3600));
        let builder = if fleet {
            builder.breaker_store(Arc::new(store.clone()))
        } else {
            builder
        };
        builder.build()
    });
    let svc = ServiceBuilder::new()
        .layer(plane.layer("wolf-pack"))
        .service(service_fn(ok as Handler));
    (plane, svc)
}

/// Benches one request through `svc` answered `status`, and prints the store's round trips
/// per request (`count` reads how many requests the plane saw).
fn bench(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    (svc, store): (&Guarded, &RedisStore),
    status: StatusCode,
    count: impl Fn() -> u64,
) {
    let (trips_before, requests_before) = (store.round_trips(), count());
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let svc = svc.clone();
            async move {
                let response = svc
                    .oneshot(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap();
                assert_eq!(response.status(), status);
                assert!(response.headers().contains_key("ratelimit-policy"));
            }
        });
    });
    // Let outcomes sent after their responses land before counting.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    let requests = count() - requests_before;
    let trips = store.round_trips() - trips_before;
    #[allow(clippy::cast_precision_loss)]
    let per_request = trips as f64 / requests.max(1) as f64;
    println!("{name}: {per_request:.3} Redis round trips per request ({trips} for {requests})");
}

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
    // The same on another prefix, with the breaker fleet-wide.
    let fleet_store = store.clone().prefix(&format!("{prefix}fleet:"));
    let (plane, svc) = guarded(&rt, &store, false);
    let (fleet_plane, fleet_svc) = guarded(&rt, &fleet_store, true);

    bench(
        c,
        &rt,
        "control/layer_redis_3_windows",
        (&svc, &store),
        StatusCode::OK,
        || plane.metrics().admitted,
    );
    bench(
        c,
        &rt,
        "control/layer_redis_3_windows_fleet_breaker",
        (&fleet_svc, &fleet_store),
        StatusCode::OK,
        || fleet_plane.metrics().admitted,
    );
    // A kill-switch 503: no round trip (`RateLimit-Policy` only; the counters are not read).
    rt.block_on(plane.engage_kill_switch("bench", "bench", None))
        .expect("engage");
    bench(
        c,
        &rt,
        "control/layer_redis_kill_switch_503",
        (&svc, &store),
        StatusCode::SERVICE_UNAVAILABLE,
        || plane.metrics().rejected.kill_switch,
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
