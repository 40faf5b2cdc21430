//! The example server's whole router (every layer and middleware it wires, no sockets)
//! against a bare axum router with the same echo route, N requests each, for instruction
//! counts per request under callgrind: where the server spends what the layers alone do not.
//!
//! ```text
//! cargo build --release -p dreamnet-benches --example stack_per_request
//! valgrind --tool=callgrind --toggle-collect='stack_per_request::drive*' \
//!     --callgrind-out-file=server.out target/release/examples/stack_per_request server 20000
//! callgrind_annotate --inclusive=yes server.out | head -60
//! ```
//!
//! Cases: `bare` (axum, the echo route only), `server` (the example server's router on
//! memory stores, guarded `GET /api/load/echo`), `server_keyed` (a keyed `POST` with a fresh
//! `Idempotency-Key` per request). Only `drive` (the request loop on a current-thread
//! runtime) is counted: the `totals` `Ir` over N is one request's cost, handler and body
//! collection included. Hyper's connection handling is the same for both servers and is
//! not in these figures.
#![allow(missing_docs, clippy::print_stdout)]

#[path = "shared/bare.rs"]
mod bare;

use std::hint::black_box;

use axum::{body::Body, Router};
use dreamnet_server::{App, Config, FileConfig};
use http::{Method, Request};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// One cluster whose windows never refuse (and `dream-state`, which the mint routes need).
const CONFIG: &str = include_str!("../../examples/server/fixtures/unlimited-load.toml");

fn request(keyed: bool, n: u64) -> Request<Body> {
    let builder = Request::builder().uri("/api/load/echo");
    if keyed {
        builder
            .method(Method::POST)
            .header("idempotency-key", format!("k{n}"))
            .header("content-type", "application/json")
            .body(Body::from(&b"{\"n\":1}"[..]))
    } else {
        builder.body(Body::empty())
    }
    .expect("a valid request")
}

/// The measured loop: `n` requests through `router` on `runtime`, each response body
/// collected. A plain function (not `async`) so callgrind's `--toggle-collect` finds it.
#[inline(never)]
fn drive(runtime: &tokio::runtime::Runtime, router: Router, keyed: bool, n: u64) {
    runtime.block_on(requests(router, keyed, n));
}

async fn requests(router: Router, keyed: bool, n: u64) {
    for i in 0..n {
        let response = router
            .clone()
            .oneshot(request(keyed, i))
            .await
            .expect("infallible");
        assert!(response.status().is_success(), "{}", response.status());
        black_box(response.into_body().collect().await.expect("a body"));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "server".to_owned());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (router, keyed, _app) = runtime.block_on(async {
        let config = Config {
            file: FileConfig::from_toml(CONFIG).expect("a valid config"),
            admin_token: Some("stack-bench-admin-token-0123456789".to_owned()),
            ..Config::default()
        };
        let (router, keyed, _app) = match case.as_str() {
            "bare" => (
                // As `axum::serve` serves it (`into_make_service` calls `with_state(())`).
                bare::bare_router().with_state(()),
                false,
                None,
            ),
            "server" | "server_keyed" => {
                let app = App::build(config).await.expect("the app builds");
                (app.router(), case == "server_keyed", Some(app))
            }
            other => panic!("unknown case {other}: bare, server, server_keyed"),
        };
        // Warm-up outside the counted loop (lazy statics, first allocations).
        for i in 0..100 {
            let response = router
                .clone()
                .oneshot(request(keyed, u64::MAX - i))
                .await
                .expect("infallible");
            assert!(response.status().is_success());
        }
        (router, keyed, _app)
    });
    drive(&runtime, router, keyed, n);
    println!("{case}: {n} requests");
}
