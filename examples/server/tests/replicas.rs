//! Two `dreamnet-server` processes on one Redis + PostgreSQL act as one service.
//!
//! Each test gets its own Redis key prefix and PostgreSQL schema, dropped at the end, so
//! parallel runs (and other engineers' tests on the same servers) never collide. Without the
//! backends the tests say so and skip, unless `DREAMNET_REQUIRE_BACKENDS=1`.

mod common;

use std::time::{Duration, Instant};

use common::ReplicaPair;
use dreamnet_test_support::holds_within;

const MINT: &str = r#"{"dreamId": "dream-123", "wallet": "0xabc"}"#;

#[tokio::test]
async fn kill_switch_set_through_one_is_enforced_by_the_other() {
    let Some(replicas) = ReplicaPair::start().await else {
        return;
    };
    let (a, b) = (&replicas.a, &replicas.b);

    assert_eq!(b.http.get("/api/wolf-pack/echo").await.status, 200);
    let enabled = a.http.kill_switch_on("Emergency maintenance").await;
    assert_eq!(enabled.status, 200, "{}", enabled.text());
    let started = Instant::now();
    let enforced = holds_within(Duration::from_secs(1), || async {
        b.http.get("/api/wolf-pack/echo").await.status == 503
    })
    .await;
    assert!(enforced, "replica B still admits 1 s after the kill switch");
    eprintln!(
        "kill switch enforced by the other replica after {:?}",
        started.elapsed()
    );
    assert_eq!(
        b.http.admin_get("/api/control/kill-switch").await.json()["enabled"],
        true
    );

    // A cluster switch and a manual breaker trip travel too; releasing works through B.
    a.http
        .admin_post("/api/control/kill-switch/disable", "{}")
        .await;
    a.http
        .admin_post(
            "/api/control/cluster/orca-pack/disable",
            r#"{"reason": "maintenance", "disabledBy": "ops"}"#,
        )
        .await;
    assert!(
        holds_within(Duration::from_secs(1), || async {
            b.http.get("/api/orca-pack/echo").await.status == 503
                && b.http.get("/api/wolf-pack/echo").await.status == 200
        })
        .await
    );
    b.http
        .admin_post("/api/control/cluster/orca-pack/enable", "{}")
        .await;
    assert!(
        holds_within(Duration::from_secs(1), || async {
            a.http.get("/api/orca-pack/echo").await.status == 200
        })
        .await
    );

    replicas.stop().await;
}

#[tokio::test]
async fn rate_limit_is_shared_exactly() {
    let Some(replicas) = ReplicaPair::start().await else {
        return;
    };
    let (a, b) = (&replicas.a, &replicas.b);

    // A day window of 10 (the day boundary is the only one a burst could straddle), 30
    // concurrent requests spread over both replicas: exactly 10 admitted.
    let (admitted, limited) = common::exact_day_limit_across(&a.http, &b.http).await;
    assert_eq!((admitted, limited), (10, 20));
    let usage = b.http.admin_get("/api/control").await.json();
    let windows = &usage["clusters"]["whale-pack"]["usage"]["windows"];
    let day = windows
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "day")
        .expect("day window");
    assert_eq!(day["used"], 10, "{usage}");

    replicas.stop().await;
}

#[tokio::test]
async fn retried_mint_through_the_other_replica_replays_and_charges_once() {
    let Some(replicas) = ReplicaPair::start().await else {
        return;
    };
    let (a, b) = (&replicas.a, &replicas.b);
    let headers = [
        ("x-idempotency-key", "unique-key-123"),
        ("x-account-id", "acct-replicas"),
    ];

    common::replays_across((&a.http, &b.http), "/api/mint-dream", &headers, MINT, 201).await;

    // Concurrent duplicates of a new key through both replicas: one runs, the other
    // replays or is told to retry (409); one charge either way.
    let concurrent = [
        ("x-idempotency-key", "concurrent-key"),
        ("x-account-id", "acct-replicas"),
    ];
    let (ra, rb) = tokio::join!(
        a.http.post_json("/api/mint-dream", &concurrent, MINT),
        b.http.post_json("/api/mint-dream", &concurrent, MINT),
    );
    let statuses = [ra.status.as_u16(), rb.status.as_u16()];
    assert!(statuses.contains(&201), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}: {} / {}",
        ra.text(),
        rb.text()
    );

    for replica in [a, b] {
        let account = replica
            .http
            .admin_get("/api/billable/accounts/acct-replicas")
            .await
            .json();
        assert_eq!(account["charged"], 200, "two keys, two charges: {account}");
        assert_eq!(account["pending"], 0);
        let stats = replica.http.admin_get("/api/billable/stats").await.json();
        assert_eq!(stats["charged"], 2, "{stats}");
        assert_eq!(stats["failed"], 0, "{stats}");
    }

    // Idempotent echo records are shared through Redis too.
    let echo = [("idempotency-key", "echo-shared")];
    let echo_across = (&a.http, &b.http);
    common::replays_across(
        echo_across,
        "/api/spider-web/echo",
        &echo,
        r#"{"n":1}"#,
        200,
    )
    .await;

    replicas.stop().await;
}
