//! A settle whose reply is lost (issue 9 item 6): the PostgreSQL connection drops after the
//! server committed, or before it saw the call. The client is told the truth (503
//! `outcome-unknown`, or a plain 503 when the hold was provably released), and a retry with
//! the same Idempotency-Key charges exactly once: a replay, or one run.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use common::{reply_cutter::Cut, reply_cutter::ReplyCutter, *};
use dreamnet_billable::{
    ledger::postgres::pool_for, problems, recover, LedgerAdmin, PostgresLedger,
};
use dreamnet_common::ManualClock;
use futures_util::FutureExt;
use http::StatusCode;

mod common;

/// A PostgreSQL ledger (fresh schema) whose connections all go through a [`ReplyCutter`].
async fn ledger_behind_cutter() -> Option<(Fixture, ReplyCutter)> {
    let direct = dreamnet_test_support::pg_pool().await?;
    let config: tokio_postgres::Config = dreamnet_test_support::database_url()
        .parse()
        .expect("a PostgreSQL URL");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[allow(unreachable_patterns)]
        other => panic!("the test needs a TCP host, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let cutter = ReplyCutter::start(upstream).await;
    let url = format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or("postgres"),
        cutter.addr(),
        config.get_dbname().unwrap_or("test")
    );
    let schema = dreamnet_test_support::unique_schema("bill_cut");
    let clock = ManualClock::new(1_800_000_000_000);
    let ledger = PostgresLedger::builder(pool_for(&url).expect("pool"))
        .schema(schema.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("tables created");
    let fixture = Fixture::new(Arc::new(ledger), clock)
        .on_cleanup(move || async move { drop_schema(&direct, &schema).await }.boxed());
    Some((fixture, cutter))
}

fn problem_type(body: &[u8]) -> String {
    let problem: serde_json::Value = serde_json::from_slice(body).expect("problem+json");
    problem["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_503_outcome_unknown_then_charged_once() {
    let Some((f, cutter)) = ledger_behind_cutter().await else {
        return;
    };
    let acct = account("lost-reply");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(&f, &runs);

    cutter.arm(Cut::AfterCommit);
    let (status, headers, body) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(cutter.cuts(), 1, "the settle's reply was lost");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(problem_type(&body), problems::OUTCOME_UNKNOWN);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("retry with the same Idempotency-Key"));
    // The server did commit: the charge is posted, once.
    let action = f.ledger.find(&scope_of(&acct), "k").await.unwrap().unwrap();
    assert_eq!(
        action.state,
        dreamnet_billable::ledger::ActionState::Charged
    );

    // The retry with the same key replays the kept response of run 1: not run, not charged.
    let (status, _, body) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(std::str::from_utf8(&body).unwrap().contains("\"run\":1"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let report = recover(&*f.ledger).await.unwrap();
    assert_eq!(
        (report.voided, report.charged),
        (0, 0),
        "nothing left to recover"
    );
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, PRICE));
    assert_eq!(f.ledger.stats().await.unwrap().charged, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_lost_before_the_server_is_503_and_the_retry_runs_once() {
    let Some((f, cutter)) = ledger_behind_cutter().await else {
        return;
    };
    let acct = account("lost-call");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(&f, &runs);

    cutter.arm(Cut::BeforeSend);
    let (status, _, body) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(cutter.cuts(), 1);
    // The hold was released on another connection: provably nothing charged, so a plain
    // store-unavailable 503, not an unknown outcome.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(problem_type(&body), problems::OUTCOME_UNKNOWN);
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, 0));

    let (status, _, body) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(std::str::from_utf8(&body).unwrap().contains("\"run\":2"));
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, PRICE));
    let stats = f.ledger.stats().await.unwrap();
    assert_eq!((stats.charged, stats.failed), (1, 1));
    f.finish().await;
}
