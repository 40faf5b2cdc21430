//! Per-client quotas: a guarded echo with per-client windows driven by 10 000 distinct
//! clients, on the memory store and on a Redis Cluster of its own (3 masters, started by
//! `OwnRedisCluster`), beside the bare echo in the same run; and the memory store's
//! footprint per client.
//!
//! ```text
//! cargo build --release -p dreamnet-benches --example per_client
//! target/release/examples/per_client load 7 20000      # rounds, requests per round
//! target/release/examples/per_client footprint 1000000 # clients
//! ```
//!
//! `load` runs the three services in turn every round (bare, memory, cluster: the machine's
//! load hits them alike), 64 requests in flight, and prints each one's median requests per
//! second and its ratio to the bare echo of the same round (median, min, max). `footprint`
//! measures the store's bytes for that many distinct clients, each admitted once, as the
//! growth of the process's resident set (`VmRSS`; the clients' keys are freed after each
//! take, so what stays is the store's table).
#![allow(missing_docs, clippy::print_stdout)]

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use dreamnet_common::{redis_connection::RedisEndpoint, Clock, SystemClock};
use dreamnet_control_core::{
    store::Count, ClientQuota, ClusterConfig, ControlConfig, ControlPlane, CounterStore,
    MemoryStore, RedisStore, WindowConfig, MAX_CLIENT_LIMIT, MAX_LIMIT,
};
use dreamnet_test_support::redis_cluster::OwnRedisCluster;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};

/// This process's resident set (bytes), from `/proc/self/status` (Linux).
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const CLIENTS: usize = 10_000;
const IN_FLIGHT: usize = 64;

/// Every case as one type: the guarded echo's body type differs from the bare one's.
type Svc = BoxCloneService<Request<()>, http::StatusCode, Infallible>;

/// The cluster: unlimited aggregate windows, and a per-client minute and day no client of
/// the run exhausts (every request does the full per-client decision).
/// Without `per_client`, the same cluster with its aggregate windows only (the baseline of
/// the per-client cost).
fn config(per_client: bool) -> ControlConfig {
    let mut cluster = ClusterConfig::per_minute_hour_day(MAX_LIMIT, MAX_LIMIT, MAX_LIMIT);
    if per_client {
        cluster.per_client = vec![
            WindowConfig::new("minute", MAX_CLIENT_LIMIT, 60),
            WindowConfig::new("day", MAX_CLIENT_LIMIT, 86_400),
        ];
    }
    ControlConfig {
        clusters: [("echo".to_owned(), cluster)].into_iter().collect(),
        ..ControlConfig::default()
    }
}

async fn ok(_req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn echo() -> Svc {
    BoxCloneService::new(service_fn(ok).map_response(|r| r.status()))
}

fn guarded(plane: &ControlPlane) -> Svc {
    let svc = ServiceBuilder::new()
        .layer(plane.layer("echo"))
        .service(service_fn(ok));
    BoxCloneService::new(svc.map_response(|r| r.status()))
}

/// `n` requests, `IN_FLIGHT` at a time, clients in turn; requests per second.
async fn round(svc: &Svc, n: usize) -> f64 {
    let started = Instant::now();
    let workers = (0..IN_FLIGHT).map(|w| {
        let svc = svc.clone();
        tokio::spawn(async move {
            for i in (w..n).step_by(IN_FLIGHT) {
                let req = Request::get("/")
                    .header("x-account-id", format!("acct-{}", i % CLIENTS))
                    .body(())
                    .unwrap();
                let status = svc.clone().oneshot(req).await.unwrap();
                assert_eq!(status, 200);
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await.expect("a worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn load(rounds: usize, n: usize) {
    let cluster = OwnRedisCluster::start().expect("redis-server for the cluster");
    let redis = RedisStore::connect_to(&RedisEndpoint::cluster(cluster.urls()))
        .await
        .expect("the cluster answers");
    let plane = |per_client: bool, redis: Option<&RedisStore>| {
        let builder = ControlPlane::builder().config(config(per_client));
        match redis {
            Some(redis) => builder.store(redis.clone().prefix(if per_client {
                "bench-pc:"
            } else {
                "bench-agg:"
            })),
            None => builder,
        }
        .build()
    };
    let planes = [
        ("memory, aggregate only", plane(false, None)),
        ("memory, per client", plane(true, None)),
        ("cluster, aggregate only", plane(false, Some(&redis))),
        ("cluster, per client", plane(true, Some(&redis))),
    ];
    let mut cases = vec![("bare", echo())];
    for (name, plane) in &planes {
        plane.sync().await.expect("the store answers");
        cases.push((name, guarded(plane)));
    }
    for (_, svc) in &cases {
        round(svc, CLIENTS).await; // warm up: every client's counters exist
    }
    let mut rates = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (i, (_, svc)) in cases.iter().enumerate() {
            rates[i].push(round(svc, n).await);
        }
    }
    for (i, (name, _)) in cases.iter().enumerate() {
        let ratios: Vec<f64> = rates[0].iter().zip(&rates[i]).map(|(b, r)| b / r).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "{name:24} {:>9.0} req/s  bare/this {:.2}x (min {lo:.2}, max {hi:.2})",
            median(rates[i].clone()),
            median(ratios),
        );
    }
}

fn footprint(clients: usize) {
    let store = MemoryStore::new();
    let cluster: Arc<str> = Arc::from("echo");
    let windows: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("day", MAX_LIMIT, 86_400)]);
    let per_client: Arc<[WindowConfig]> = Arc::from([
        WindowConfig::new("minute", 1000, 60),
        WindowConfig::new("day", 10_000, 86_400),
    ]);
    let now = SystemClock.now_millis();
    let take = |client: String| {
        let quota = ClientQuota {
            client: Arc::from(client),
            windows: Arc::clone(&per_client),
        };
        let taken = store
            .count(&cluster, &windows, Some(&quota), now, Count::Take)
            .into_ready()
            .expect("the memory store never waits")
            .unwrap();
        assert!(taken.admitted);
    };
    take("warm-up".to_owned()); // the cluster's own counters and table
    let before = rss();
    for i in 0..clients {
        take(format!("account:acct-{i}"));
    }
    let bytes = rss() - before;
    println!(
        "{} clients kept, {bytes} bytes: {:.1} bytes per client",
        store.clients("echo"),
        bytes as f64 / clients as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("footprint") => footprint(arg(2, 1_000_000)),
        Some("load") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(load(arg(2, 7), arg(3, 20_000))),
        _ => eprintln!("usage: per_client load [rounds] [requests] | footprint [clients]"),
    }
}
