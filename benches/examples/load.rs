//! The example server against a bare axum server with the same echo route, over loopback
//! HTTP/1.1 in this process, interleaved: every round loads the bare server, then the
//! project's, for the same time with the same 32 keep-alive clients, so the machine's load
//! hits both alike. Prints each round's req/s and p99 and the median project/bare ratio.
//!
//! ```text
//! cargo run --release -p dreamnet-benches --example load
//! DREAMNET_LOAD_SECS=5 DREAMNET_LOAD_ROUNDS=3 cargo run --release -p dreamnet-benches --example load
//! ```
//!
//! Memory stores, and with `DREAMNET_LOAD_REDIS=redis://127.0.0.1:6379` a second project
//! server whose control plane and idempotency records live in that Redis (under a fresh
//! prefix). Routes: the guarded `GET /api/load/echo` (trace id, control plane with three
//! windows, the idempotency layer passing a GET through) and a keyed `POST /api/load/echo`
//! with a fresh `Idempotency-Key` per request (claim + store); on memory only, with
//! `DREAMNET_LOAD_MINT=1`, also `POST /api/mint-dream` with a fresh key (control on
//! `dream-state`, the billable layer's reserve and settle on the memory ledger) against the
//! bare server's keyed `POST` echo of the same body. Each line prints every round's ratio,
//! then the median and the spread (lowest-highest) over the rounds.
//!
//! ```text
//! DREAMNET_LOAD_REDIS=redis://127.0.0.1:6379 DREAMNET_LOAD_SECS=3 DREAMNET_LOAD_ROUNDS=5 \
//!     cargo run --release -p dreamnet-benches --example load
//! ```
#![allow(missing_docs, clippy::print_stdout)]

#[path = "shared/bare.rs"]
mod bare;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_server::{serve, App, Config, FileConfig};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// One cluster whose windows never refuse, so every request takes the full path (and
/// `dream-state`, which the server's mint routes need).
const CONFIG: &str = include_str!("../../examples/server/fixtures/unlimited-load.toml");

/// Concurrent keep-alive clients per run (as in the issue's `wrk -c32`).
const CLIENTS: usize = 32;

async fn start_bare() -> SocketAddr {
    let router = bare::bare_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The example server, on memory stores or (with `redis`) on that Redis under a fresh
/// prefix; the `App` is returned to be kept alive (it owns the background tasks its router
/// relies on).
async fn start_project(redis: Option<&str>) -> (SocketAddr, App) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let config = Config {
        file: FileConfig::from_toml(CONFIG).expect("a valid config"),
        admin_token: Some("load-bench-admin-token-0123456789".to_owned()),
        redis_url: redis.map(str::to_owned),
        redis_prefix: format!("dreamnet-load-{nanos}:"),
        ..Config::default()
    };
    let app = App::build(config).await.expect("the app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router();
    tokio::spawn(serve(
        listener,
        router,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    (addr, app)
}

/// What one run measured.
struct Run {
    per_sec: f64,
    p99: Duration,
}

/// What the clients send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /api/load/echo`.
    Guarded,
    /// `POST /api/load/echo` with a fresh `Idempotency-Key`.
    Keyed,
    /// `POST /api/mint-dream` with a fresh `Idempotency-Key` (the bare server: its echo).
    Mint,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Guarded => "guarded GET echo",
            Self::Keyed => "keyed POST echo",
            Self::Mint => "POST mint-dream",
        }
    }
}

/// The mint body, also posted to the bare echo in the mint rounds.
const MINT_BODY: &[u8] = br#"{"dreamId": "dream-123", "wallet": "0xabc"}"#;

/// `CLIENTS` clients send `route`'s requests to `addr` for `window` (`bare`: the bare
/// server, which has the echo route only).
async fn run(addr: SocketAddr, route: Route, bare: bool, window: Duration) -> Run {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let keyed = route != Route::Guarded;
    let uri = if route == Route::Mint && !bare {
        format!("http://{addr}/api/mint-dream")
    } else {
        format!("http://{addr}/api/load/echo")
    };
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, uri, counter) = (client.clone(), uri.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < window {
                    let mut request = Request::builder().uri(uri.as_str());
                    let body = if keyed {
                        let key = format!("k{}", counter.fetch_add(1, Ordering::Relaxed));
                        request = request
                            .method(Method::POST)
                            .header("idempotency-key", key)
                            .header("content-type", "application/json")
                            .header("x-account-id", "load");
                        if route == Route::Mint {
                            Bytes::from_static(MINT_BODY)
                        } else {
                            Bytes::from_static(b"{\"n\":1}")
                        }
                    } else {
                        Bytes::new()
                    };
                    let request = request.body(Full::new(body)).expect("a valid request");
                    let t = Instant::now();
                    let response = client.request(request).await.expect("an HTTP answer");
                    let status = response.status();
                    response.into_body().collect().await.expect("a body");
                    assert!(status.is_success(), "{status}");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client task"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let p99 = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)];
    Run {
        per_sec: all.len() as f64 / secs,
        p99,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median and the spread (lowest, highest) of `values`.
fn median_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let window = Duration::from_secs_f64(env_or("DREAMNET_LOAD_SECS", 2.0));
    let rounds: usize = env_or("DREAMNET_LOAD_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let bare = start_bare().await;
        let mut projects = vec![("memory", start_project(None).await)];
        if let Ok(url) = std::env::var("DREAMNET_LOAD_REDIS") {
            projects.push(("redis", start_project(Some(&url)).await));
        }
        for (store, (project, _app)) in &projects {
            let mut routes = vec![Route::Guarded, Route::Keyed];
            if *store == "memory" && std::env::var_os("DREAMNET_LOAD_MINT").is_some() {
                routes.push(Route::Mint);
            }
            for route in routes {
                let label = format!("{}, {store}", route.label());
                let mut ratios = Vec::new();
                for round in 1..=rounds {
                    let b = run(bare, route, true, window).await;
                    let p = run(*project, route, false, window).await;
                    let ratio = p.per_sec / b.per_sec;
                    ratios.push(ratio);
                    println!(
                        "{label:<24} round {round}: bare {:>7.0} req/s p99 {:>6.2?} | project {:>7.0} req/s p99 {:>6.2?} | project/bare {ratio:.3}",
                        b.per_sec, b.p99, p.per_sec, p.p99
                    );
                }
                let (median, low, high) = median_spread(ratios);
                println!("{label:<24} project/bare over {rounds} rounds: median {median:.3} (spread {low:.3}-{high:.3})");
            }
        }
    });
}
