//! A full memory ledger over HTTP: a 503 `ledger-full` problem with `Retry-After`, the
//! handler not run, nothing held; the same key runs once room frees up.
#![allow(missing_docs)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use dreamnet_billable::{problems, LedgerAdmin, MemoryLedger};
use dreamnet_common::ManualClock;
use http::StatusCode;

mod common;

#[tokio::test]
async fn a_full_ledger_answers_503_ledger_full_and_runs_nothing() {
    let clock = ManualClock::new(1_800_000_000_000);
    // One account and two actions fill it.
    let memory = MemoryLedger::builder()
        .clock(Arc::new(clock.clone()))
        .retention(Some(Duration::from_secs(60)))
        .max_entries(3)
        .build();
    let f = Fixture::new(
        Arc::new(memory.clone()) as Arc<dyn LedgerAdmin>,
        clock.clone(),
    );
    let acct = account("full");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(&f, &runs);
    for key in ["k1", "k2"] {
        let (status, _, _) = send(svc.clone(), request(&acct, Some(key), "{}", "")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let stats = f.ledger.stats().await.unwrap();

    let (status, headers, body) = send(svc.clone(), request(&acct, Some("k3"), "{}", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "1");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], problems::LEDGER_FULL);
    assert!(problem["detail"].as_str().unwrap().contains("maximum of 3"));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the handler did not run");
    assert_eq!(f.ledger.stats().await.unwrap(), stats, "nothing changed");
    assert_eq!(memory.entries(), 3);

    // Past the retention the charged actions are forgotten and the same key runs.
    clock.advance(Duration::from_secs(60));
    // Forget them all first: a reserve prunes only its own shard (randomly seeded), so when
    // k3 shares a shard with k1 or k2 the ledger is no longer full, nothing else is pruned
    // and the account stays with the other action (seen in CI, ~1 run in 30).
    assert_eq!(memory.prune_all(), 2);
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k3"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // The unlimited account went with its forgotten actions (it held no money); the
    // stats keep counting every charge.
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, PRICE));
    assert_eq!(memory.dropped_accounts_total(), 1);
    let stats = f.ledger.stats().await.unwrap();
    assert_eq!(
        (stats.charged, stats.amounts["USD"].charged),
        (3, 3 * PRICE)
    );
}
