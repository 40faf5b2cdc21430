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
//! Cases: `bare`, `server` (guarded `GET /api/load/echo`, memory stores), `server_keyed`
//! (keyed `POST` with a fresh `Idempotency-Key`).
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

/// One cluster whose windows never refuse (and `dream-state`, which the mint routes need).
const CONFIG: &str = include_str!("../../examples/server/fixtures/unlimited-load.toml");

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Starts the case's server; the `App` (if any) is returned to be kept alive.
async fn start(case: &str) -> (SocketAddr, Option<App>) {
    let (listener, addr) = listener().await;
    if case == "bare" {
        tokio::spawn(async move { axum::serve(listener, bare::bare_router()).await });
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

fn request(uri: &str, keyed: bool, n: u64) -> Request<Full<Bytes>> {
    let builder = Request::builder().uri(uri);
    if keyed {
        builder
            .method(Method::POST)
            .header("idempotency-key", format!("k{n}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
    } else {
        builder.body(Full::new(Bytes::new()))
    }
    .expect("a valid request")
}

async fn requests(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    keyed: bool,
    from: u64,
    n: u64,
) {
    for i in from..from + n {
        let response = client
            .request(request(uri, keyed, i))
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
    keyed: bool,
    n: u64,
) {
    runtime.block_on(requests(client, uri, keyed, 1_000, n));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "server".to_owned());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5_000);
    assert!(
        ["bare", "server", "server_keyed"].contains(&case.as_str()),
        "cases: bare, server, server_keyed"
    );
    let keyed = case == "server_keyed";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (addr, _app) = runtime.block_on(start(&case));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}/api/load/echo");
    // Warm up: the connection, the maps and the allocator's free lists.
    runtime.block_on(requests(&client, &uri, keyed, 0, 200));
    drive(&runtime, &client, &uri, keyed, n);
    println!("{case}: {n} requests");
}
