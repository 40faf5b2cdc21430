//! The memory ledger's latency as it grows: p99 of one reserve + settle with 10k actions
//! held and with 1M held, measured in one run, and their ratio.
//!
//! `cargo run --release -p dreamnet-billable --example memory_ledger_growth`
//! (optional: `-- --threads 2 --samples 20000`).
//!
//! Each sample is one reserve and one settle (fresh key, one of 32 unlimited accounts,
//! a small stored response), timed on its own, from `threads` OS threads at once so the
//! shards' locks are contended as under a server. The ledger keeps everything (nothing is
//! past the default 24 h retention), so it really holds 10k and then 1M actions.
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_billable::{
    ledger::{Reservation, ReserveRequest},
    Ledger, MemoryLedger,
};
use futures_util::FutureExt;

const SMALL: usize = 10_000;
const LARGE: usize = 1_000_000;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// One reserve + settle of a fresh key; returns how long it took.
fn mint(ledger: &MemoryLedger, key: &str, account: usize) -> Duration {
    let request = ReserveRequest {
        scope: format!("acct-{account}"),
        idempotency_key: key.to_owned(),
        fingerprint: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned(),
        action: "mint-dream".to_owned(),
        account: format!("acct-{account}").parse().expect("a valid account"),
        amount: 100,
        currency: "USD".to_owned(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
        timeout: Duration::from_secs(300),
    };
    let response = Bytes::from_static(b"{\"status\":201,\"body\":\"{\\\"dream\\\":\\\"ok\\\"}\"}");
    let started = Instant::now();
    let reserved = ledger
        .reserve(request)
        .now_or_never()
        .expect("memory calls are ready at once")
        .expect("reserve");
    let Reservation::Reserved(action) = reserved else {
        panic!("a fresh key reserves: {reserved:?}");
    };
    ledger
        .settle(&action.id, response, None)
        .now_or_never()
        .expect("memory calls are ready at once")
        .expect("settle");
    started.elapsed()
}

/// Runs `count` mints from `threads` threads, keys `{tag}-{thread}-{i}`; returns each
/// mint's duration.
fn run(ledger: &MemoryLedger, tag: &str, threads: usize, count: usize) -> Vec<Duration> {
    let per_thread = count / threads;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let ledger = ledger.clone();
            let tag = tag.to_owned();
            thread::spawn(move || {
                (0..per_thread)
                    .map(|i| mint(&ledger, &format!("{tag}-{t}-{i}"), (t + i) % 32))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64) * p).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Actions the ledger holds (all charged here).
fn held(ledger: &MemoryLedger) -> usize {
    let stats = dreamnet_billable::LedgerAdmin::stats(ledger)
        .now_or_never()
        .expect("memory calls are ready at once")
        .expect("stats");
    usize::try_from(stats.charged).expect("fits")
}

fn measure(ledger: &MemoryLedger, threads: usize, samples: usize) -> Duration {
    let held = held(ledger);
    let mut timings = run(ledger, &format!("sample-{held}"), threads, samples);
    let p50 = percentile(&mut timings, 0.50);
    let p99 = percentile(&mut timings, 0.99);
    println!(
        "{held:>9} actions held: reserve+settle p50 {:>7.2} us, p99 {:>7.2} us ({} samples, {threads} threads)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        timings.len(),
    );
    p99
}

fn main() {
    let threads = arg("--threads", 2).max(1);
    let samples = arg("--samples", 20_000).max(threads);
    // Room for the 1M actions, both sample runs and the accounts.
    let ledger = MemoryLedger::builder()
        .max_entries(LARGE + 2 * samples + 1_000)
        .build();

    let started = Instant::now();
    run(&ledger, "fill-a", threads, SMALL);
    let small = measure(&ledger, threads, samples);
    run(&ledger, "fill-b", threads, LARGE - held(&ledger));
    let large = measure(&ledger, threads, samples);
    println!(
        "p99 at {}k / p99 at {}k = {:.2}x (target <= 1.50x); {:.1} s in all",
        LARGE / 1000,
        SMALL / 1000,
        large.as_secs_f64() / small.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
