//! A PostgreSQL that stops answering (this test's ledger tables locked by a transaction that
//! never ends; the shared server and everyone else's tables are untouched): mints and the
//! billing stats answer 503 within the ledger's deadline, and `/metrics` answers within its
//! own short deadline with the last known billing figures, marked stale.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use dreamnet_server::Config;
use dreamnet_test_support::{backends, unique_schema};

const MINT: &str = r#"{"dreamId": "dream-hung", "wallet": "0x1"}"#;
/// The ledger's deadline on every call (`--database-timeout-ms`), short for the test.
const LEDGER_DEADLINE: Duration = Duration::from_secs(2);

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgres_gives_503s_within_the_deadline_and_stale_metrics() {
    let Some(admin) = backends::pg_pool().await else {
        return;
    };
    let schema = unique_schema("pghung");
    let server = TestServer::start_with(Config {
        database_url: Some(backends::database_url()),
        database_schema: Some(schema.clone()),
        database_timeout: LEDGER_DEADLINE,
        ..Config::default()
    })
    .await;
    let http = &server.http;
    let minted = http
        .post_json(
            "/api/mint-dream",
            &[("idempotency-key", "\"before\"")],
            MINT,
        )
        .await;
    assert_eq!(minted.status, 201);
    let fresh = http.get("/metrics").await.text();
    assert_eq!(
        sample(&fresh, "dreamnet_billable_ledger_up"),
        Some(1.0),
        "{fresh}"
    );
    assert_eq!(sample(&fresh, "dreamnet_billable_stats_stale"), Some(0.0));

    let mut locker = admin.get().await.expect("a connection");
    let hold = locker.transaction().await.expect("a transaction");
    hold.batch_execute(&format!(
        "LOCK TABLE \"{schema}\".dreamnet_billable_accounts, \"{schema}\".dreamnet_billable_actions
         IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .expect("lock the ledger tables");

    let bound = LEDGER_DEADLINE + Duration::from_secs(2);
    let started = Instant::now();
    let mint = http
        .post_json(
            "/api/mint-dream",
            &[("idempotency-key", "\"during\"")],
            MINT,
        )
        .await;
    mint.assert_problem(503);
    assert!(mint.header("retry-after").is_some());
    assert!(
        started.elapsed() < bound,
        "mint took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    http.admin_get("/api/billable/stats")
        .await
        .assert_problem(503);
    assert!(
        started.elapsed() < bound,
        "stats took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let stale = http.get("/metrics").await;
    assert_eq!(stale.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "/metrics took {:?}",
        started.elapsed()
    );
    let stale = stale.text();
    assert_eq!(
        sample(&stale, "dreamnet_billable_ledger_up"),
        Some(0.0),
        "{stale}"
    );
    assert_eq!(sample(&stale, "dreamnet_billable_stats_stale"), Some(1.0));
    assert!(
        stale.contains("dreamnet_billable_actions{state=\"charged\"} 1"),
        "the last known figures: {stale}"
    );

    hold.rollback().await.expect("unlock");
    drop(locker);
    let after = http
        .post_json("/api/mint-dream", &[("idempotency-key", "\"after\"")], MINT)
        .await;
    assert_eq!(after.status, 201, "{}", after.text());
    server.stop().await;
    let client = admin.get().await.expect("a connection");
    let _ = client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await;
}
