//! The example server over real loopback HTTP/1.1 (its own accept loop and connection
//! watchdog, `dreamnet_server::serve`) against a bare `axum::serve` with the same echo route:
//! N sequential keep-alive requests from one hyper client, everything on one current-thread
//! runtime, for instruction counts per request under callgrind. Unlike
//! `stack_per_request` (the router alone) this counts what the server does per request
//! around its router too; the client's and the kernel's share is the same for both servers
//! (syscalls are counted on the user side only).
//!
//! ```text
//! cargo build --release -p dreamnet-benches --example http_per_request
//! valgrind --tool=callgrind --toggle-collect='http_per_request::drive*' \
//!     --callgrind-out-file=http.out target/release/examples/http_per_request server 5000
//! callgrind_annotate http.out | head -30    # totals / 5000 = one request
//! ```
//!
//! Cases: `bare` (a `GET` of the echo), `bare_post` (a keyed `POST` of the mint body to
//! the echo), `server` (guarded `GET /api/load/echo`, memory stores), `server_keyed` (keyed
//! `POST` with a fresh `Idempotency-Key`), `server_mint` (`POST /api/mint-dream`, fresh key,
//! memory ledger), and `peers` (the bare echo behind what a user would otherwise assemble
//! from crates for the same edge work: tower-http's request id set + propagated, access log
//! (`TraceLayer`), request timeout, body deadline, body limit and panic catcher, and
//! tower_governor with its headers: the floor the server's stack is measured against).
#![allow(missing_docs, clippy::print_stdout)]

#[path = "shared/bare.rs"]
mod bare;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use dreamnet_server::{serve, App, Config, FileConfig};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::ServiceBuilder;
use tower_governor::{
    governor::GovernorConfigBuilder, key_extractor::GlobalKeyExtractor, GovernorLayer,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::{RequestBodyDeadlineLayer, TimeoutLayer},
    trace::TraceLayer,
};

/// One cluster whose windows never refuse (and `dream-state`, which the mint routes need).
const CONFIG: &str = include_str!("../../examples/server/fixtures/unlimited-load.toml");

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Starts the bare server, the peers' stack or the example server; the `App` (if any) is returned to be kept
/// alive.
async fn start(bare: bool, peers: bool) -> (SocketAddr, Option<App>) {
    let (listener, addr) = listener().await;
    if bare {
        tokio::spawn(async move { axum::serve(listener, bare::bare_router()).await });
        return (addr, None);
    }
    if peers {
        tokio::spawn(async move { axum::serve(listener, peers_router()).await });
        return (addr, None);
    }
    let config = Config {
        file: FileConfig::from_toml(CONFIG).expect("a valid config"),
        admin_token: Some("http-bench-admin-token-0123456789".to_owned()),
        ..Config::default()
    };
    let app = App::build(config).await.expect("the app builds");
    tokio::spawn(serve(
        listener,
        app.router(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    (addr, Some(app))
}

/// The mint body (posted to the bare echo too, in `bare_post`).
const MINT_BODY: &[u8] = br#"{"dreamId": "dream-123", "wallet": "0xabc"}"#;

/// A `GET` of `uri`, or with `body` a `POST` of it with a fresh `Idempotency-Key`.
/// The bare echo behind the peer crates' layers for the server's edge work, outermost first
/// as the server orders its own (ids, access log, panic catcher, timeout, body limit, body
/// deadline, rate limit with headers).
fn peers_router() -> axum::Router {
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(GlobalKeyExtractor)
        .use_headers()
        .finish()
        .expect("a valid governor config");
    bare::bare_router().layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TraceLayer::new_for_http())
            .layer(CatchPanicLayer::new())
            .layer(TimeoutLayer::with_status_code(
                http::StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(30),
            ))
            .layer(RequestBodyLimitLayer::new(1 << 20))
            .layer(RequestBodyDeadlineLayer::new(Duration::from_secs(10)))
            .layer(GovernorLayer::new(governor)),
    )
}

fn request(uri: &str, body: Option<&'static [u8]>, n: u64) -> Request<Full<Bytes>> {
    let builder = Request::builder().uri(uri);
    match body {
        Some(body) => builder
            .method(Method::POST)
            .header("idempotency-key", format!("k{n}"))
            .header("content-type", "application/json")
            .header("x-account-id", "load")
            .body(Full::new(Bytes::from_static(body))),
        None => builder.body(Full::new(Bytes::new())),
    }
    .expect("a valid request")
}

async fn requests(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    body: Option<&'static [u8]>,
    from: u64,
    n: u64,
) {
    for i in from..from + n {
        let response = client
            .request(request(uri, body, i))
            .await
            .expect("an HTTP answer");
        let status = response.status();
        response.into_body().collect().await.expect("a body");
        assert!(status.is_success(), "{status}");
    }
}

/// The measured loop (a plain function, so callgrind's `--toggle-collect` finds it).
#[inline(never)]
fn drive(
    runtime: &tokio::runtime::Runtime,
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    body: Option<&'static [u8]>,
    n: u64,
) {
    runtime.block_on(requests(client, uri, body, 1_000, n));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "server".to_owned());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5_000);
    let (path, body): (&str, Option<&'static [u8]>) = match case.as_str() {
        "bare" | "server" | "peers" => ("/api/load/echo", None),
        "bare_post" => ("/api/load/echo", Some(MINT_BODY)),
        "server_keyed" => ("/api/load/echo", Some(b"{\"n\":1}")),
        "server_mint" => ("/api/mint-dream", Some(MINT_BODY)),
        _ => panic!("cases: bare, bare_post, peers, server, server_keyed, server_mint"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (addr, _app) = runtime.block_on(start(case.starts_with("bare"), case == "peers"));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}{path}");
    // Warm up: the connection, the maps and the allocator's free lists.
    runtime.block_on(requests(&client, &uri, body, 0, 200));
    drive(&runtime, &client, &uri, body, n);
    println!("{case}: {n} requests");
}
