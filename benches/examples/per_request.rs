//! Runs N requests through one service of the peers bench, for instruction counts per
//! request under callgrind (deterministic, unlike wall time on a loaded machine).
//!
//! ```text
//! cargo build --release -p dreamnet-benches --example per_request
//! valgrind --tool=callgrind --toggle-collect='per_request::drive*' \
//!     --callgrind-out-file=control.out target/release/examples/per_request control 100000
//! callgrind_annotate control.out | head -40
//! ```
//!
//! Only `drive` (the request loop) is counted, so setup is left out: the total `Ir` over N
//! is the cost of one request, handler included; subtract `bare` for the layer's own cost.
//! Cases: `bare`, `bare_header` (the bare handler, the request carrying an `X-Trace-Id`:
//! the baseline of the `_valid` cases), `trace_id_valid`, `trace_id_none`, `tower_http_valid`, `tower_http_none`,
//! `control`, `governor`, `governor_headers` (governor's `use_headers()`).
#![allow(missing_docs, clippy::print_stdout)]

#[path = "../benches/peers/services.rs"]
mod services;

use std::hint::black_box;

use dreamnet_benches::poll_now;
use http::Request;
use services::Incoming;
use tower::Service;

/// The measured loop: `n` requests, each polled once.
#[inline(never)]
fn drive<S>(svc: &mut S, n: u64, incoming: Incoming)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        black_box(poll_now(svc.call(services::request(incoming))).expect("infallible"));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "bare".to_owned());
    let n: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("N: a number of requests"));
    let plane = services::plane();
    match case.as_str() {
        "bare" => drive(&mut services::bare(), n, Incoming::Nothing),
        "bare_header" => drive(&mut services::bare(), n, Incoming::TraceId),
        "trace_id_valid" => drive(&mut services::trace_id(), n, Incoming::TraceId),
        "trace_id_none" => drive(&mut services::trace_id(), n, Incoming::Nothing),
        "tower_http_valid" => drive(
            &mut services::tower_http_request_id(),
            n,
            Incoming::RequestId,
        ),
        "tower_http_none" => drive(&mut services::tower_http_request_id(), n, Incoming::Nothing),
        "control" => drive(&mut services::control(&plane), n, Incoming::Nothing),
        "governor" => drive(&mut services::governor(), n, Incoming::Nothing),
        "governor_headers" => drive(&mut services::governor_with_headers(), n, Incoming::Nothing),
        other => panic!("unknown case {other:?} (see the module docs)"),
    }
    println!("{case}: {n} requests");
}
