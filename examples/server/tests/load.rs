//! A loopback load run: 32 concurrent keep-alive clients must all get success answers.
//!
//! In CI it runs for a fraction of a second per route (a concurrency check). For the README's
//! figure, run it longer in release:
//!
//! `DREAMNET_LOAD_SECS=3 cargo test -p dreamnet-server --release --test load -- --nocapture`
//!
//! In-process server on memory stores, 32 keep-alive clients per route: `/healthz`
//! (no guard) against `/api/load/echo` (trace id, control plane with three windows, the
//! idempotency layer passing a GET through) and a keyed POST echo (claim + store per request).

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::TestServer;
use dreamnet_server::{Config, FileConfig};
use http::Method;

const CONFIG: &str = include_str!("../fixtures/unlimited-load.toml");

async fn run(server: &TestServer, label: &str, method: Method, path: &'static str, keyed: bool) {
    let clients = 32;
    let window = load_window();
    let done = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let http = server.http.clone();
        let done = done.clone();
        let counter = counter.clone();
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < window {
                let key = format!("k{}", counter.fetch_add(1, Ordering::Relaxed));
                let headers: Vec<(&str, &str)> = if keyed {
                    vec![
                        ("idempotency-key", key.as_str()),
                        ("content-type", "application/json"),
                    ]
                } else {
                    Vec::new()
                };
                let body = if keyed {
                    Bytes::from_static(b"{\"n\":1}")
                } else {
                    Bytes::new()
                };
                let t = Instant::now();
                let reply = http.send(method.clone(), path, &headers, body).await;
                latencies.push(t.elapsed());
                assert!(reply.status.is_success(), "{}", reply.status);
                done.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert!(!all.is_empty(), "{label}: no request completed");
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    eprintln!(
        "{label:<28} {:>8.0} req/s   p50 {:>7.0?}   p99 {:>7.0?}   ({} requests, {clients} clients)",
        done.load(Ordering::Relaxed) as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.len()
    );
}

/// How long each route is loaded: `DREAMNET_LOAD_SECS` (e.g. `3` for a figure), else 0.3 s.
fn load_window() -> Duration {
    std::env::var("DREAMNET_LOAD_SECS")
        .ok()
        .and_then(|secs| secs.parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .unwrap_or(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_succeed_under_loopback_load() {
    let server = TestServer::start_with(Config {
        file: FileConfig::from_toml(CONFIG).unwrap(),
        ..Config::default()
    })
    .await;
    run(&server, "GET /healthz", Method::GET, "/healthz", false).await;
    run(
        &server,
        "GET /api/load/echo",
        Method::GET,
        "/api/load/echo",
        false,
    )
    .await;
    run(
        &server,
        "POST /api/load/echo (key)",
        Method::POST,
        "/api/load/echo",
        true,
    )
    .await;
    server.stop().await;
}
