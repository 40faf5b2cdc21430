//! PostgreSQL dropping every connection of the server (what a PostgreSQL restart or failover
//! looks like to a client: each backend ends with `admin_shutdown`), without touching the
//! shared server: the ledger's connections carry an `application_name` of this test's own and
//! only those are terminated. The first mint afterwards must succeed (the pool recycles the
//! dead connections instead of handing one out), and nothing is charged twice.

mod common;

use common::TestServer;
use dreamnet_server::Config;
use std::time::Duration;

use dreamnet_test_support::{backends, eventually, unique_schema};

const MINT: &str = r#"{"dreamId": "dream-restart", "wallet": "0x1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_mint_after_postgres_drops_every_connection_succeeds() {
    let Some(admin) = backends::pg_pool().await else {
        return;
    };
    let schema = unique_schema("pgrestart");
    let application = schema.replace('_', "-");
    let url = format!(
        "{}?application_name={application}",
        backends::database_url()
    );
    let server = TestServer::start_with(Config {
        database_url: Some(url),
        database_schema: Some(schema),
        ..Config::default()
    })
    .await;
    let http = &server.http;
    let mint = |key: &'static str| async move {
        http.post_json("/api/mint-dream", &[("idempotency-key", key)], MINT)
            .await
    };

    assert_eq!(mint("\"before\"").await.status, 201);

    let client = admin.get().await.expect("an admin connection");
    let terminated: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) AS t",
            &[&application],
        )
        .await
        .expect("terminate the server's connections")
        .get(0);
    assert!(terminated >= 1, "the server had ledger connections to drop");
    // pg_terminate_backend only signals: wait until those backends are gone, as they are
    // once a restarted PostgreSQL accepts connections again.
    eventually(
        "the terminated backends exit",
        Duration::from_secs(10),
        || {
            let (client, application) = (&client, &application);
            async move {
                let left: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[application],
                    )
                    .await
                    .ok()?
                    .get(0);
                (left == 0).then_some(())
            }
        },
    )
    .await;

    let first = mint("\"after\"").await;
    assert_eq!(
        first.status,
        201,
        "first mint after the drop: {}",
        first.text()
    );
    let replay = mint("\"after\"").await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    let stats = http.admin_get("/api/billable/stats").await.json();
    assert_eq!(stats["charged"], 2, "charged once per key: {stats}");
    server.stop().await;
}
