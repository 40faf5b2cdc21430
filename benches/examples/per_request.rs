//! Runs N requests through one service of the peers bench, for instruction counts per
//! request under callgrind (deterministic, unlike wall time on a loaded machine).
//!
//! ```text
//! cargo build --release -p dreamnet-benches --example per_request
//! valgrind --tool=callgrind --toggle-collect='per_request::drive*' \
//!     --callgrind-out-file=control.out target/release/examples/per_request control 20000
//! callgrind_annotate control.out | head -40
//! ```
//!
//! Only `drive` (the request loop) is counted, so setup is left out: the `totals` `Ir`
//! over N is the cost of one request, handler included; subtract the baseline case for the
//! layer's own cost. Cases: `bare`; `bare_header` (the bare handler, the request carrying an
//! `X-Trace-Id`: the baseline of the `_valid` cases); `trace_id_valid`, `trace_id_none`,
//! `tower_http_valid`, `tower_http_none`; `control`, `governor`, `governor_headers`
//! (governor's `use_headers()`).
//!
//! Wall time, interleaved (every round runs each case in turn, so the machine's load hits
//! them alike; medians of 20 rounds of 20 000 requests; the first case is the baseline):
//!
//! ```text
//! target/release/examples/per_request ab 20 20000 bare control governor governor_headers
//! target/release/examples/per_request ab 20 20000 bare_header trace_id_valid tower_http_valid
//! ```
#![allow(missing_docs, clippy::print_stdout)]

#[path = "../benches/peers/services.rs"]
mod services;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use dreamnet_control_core::ControlPlane;

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

/// A case's loop, timed: `n` requests, the elapsed wall time.
type Timed = Box<dyn FnMut(u64) -> Duration>;

/// Each case as a timed loop (the same `drive` as under callgrind).
fn timed(case: &str, plane: &ControlPlane) -> Timed {
    fn time<S>(mut svc: S, incoming: Incoming) -> Timed
    where
        S: Service<Request<()>> + 'static,
        S::Error: std::fmt::Debug,
    {
        Box::new(move |n| {
            let start = Instant::now();
            drive(&mut svc, n, incoming);
            start.elapsed()
        })
    }
    match case {
        "bare" => time(services::bare(), Incoming::Nothing),
        "bare_header" => time(services::bare(), Incoming::TraceId),
        "trace_id_valid" => time(services::trace_id(), Incoming::TraceId),
        "trace_id_none" => time(services::trace_id(), Incoming::Nothing),
        "tower_http_valid" => time(services::tower_http_request_id(), Incoming::RequestId),
        "tower_http_none" => time(services::tower_http_request_id(), Incoming::Nothing),
        "control" => time(services::control(plane), Incoming::Nothing),
        "governor" => time(services::governor(), Incoming::Nothing),
        "governor_headers" => time(services::governor_with_headers(), Incoming::Nothing),
        other => panic!("unknown case {other:?} (see the module docs)"),
    }
}

/// `ab ROUNDS N CASE...`: every round runs N requests of each case in turn, so load on
/// the machine hits all cases alike; prints each case's median ns per request and its
/// median overhead over the first case (the baseline, e.g. `bare`).
fn interleaved(mut args: impl Iterator<Item = String>) {
    let rounds: usize = args.next().map_or(20, |r| r.parse().expect("ROUNDS"));
    let n: u64 = args.next().map_or(20_000, |n| n.parse().expect("N"));
    let cases: Vec<String> = args.collect();
    assert!(cases.len() >= 2, "ab ROUNDS N BASELINE CASE...");
    let plane = dreamnet_benches::unlimited_plane();
    let mut loops: Vec<Timed> = cases.iter().map(|c| timed(c, &plane)).collect();
    for run in &mut loops {
        run(n); // warm up
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (run, samples) in loops.iter_mut().zip(&mut ns) {
            samples.push(run(n).as_nanos() as f64 / n as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Overhead per round (case minus baseline in the same round), then its median.
    let overheads: Vec<Vec<f64>> = ns
        .iter()
        .map(|case| case.iter().zip(&ns[0]).map(|(c, b)| c - b).collect())
        .collect();
    println!(
        "{rounds} rounds x {n} requests, interleaved; baseline {}",
        cases[0]
    );
    for ((case, samples), mut overhead) in cases.iter().zip(ns).zip(overheads) {
        let mut samples = samples;
        println!(
            "{case:>18}: {:8.1} ns/request, overhead {:8.1} ns",
            median(&mut samples),
            median(&mut overhead)
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "bare".to_owned());
    if case == "ab" {
        return interleaved(args);
    }
    let n: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("N: a number of requests"));
    let plane = dreamnet_benches::unlimited_plane();
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
