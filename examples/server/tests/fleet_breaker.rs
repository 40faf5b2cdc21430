//! Two servers on one Redis share each cluster's circuit breaker: failures spread over the
//! replicas trip it at the combined threshold, and a reset through one closes it for both.
//!
//! Each replica alone sees fewer calls than the breaker's minimum, so with per-replica
//! breakers (the memory store, or a Redis breaker under another prefix) neither would open.
//! Without the backends the test says so and skips, unless `DREAMNET_REQUIRE_BACKENDS=1`.

mod common;

use std::time::Duration;

use common::{Backends, TestServer, TOUCHY_BREAKER};
use dreamnet_server::{Config, FileConfig};
use dreamnet_test_support::holds_within;

async fn replica(backends: &Backends) -> TestServer {
    let mut config = Config {
        file: FileConfig::from_toml(TOUCHY_BREAKER).expect("a valid breaker config"),
        ..Config::default()
    };
    backends.configure(&mut config);
    TestServer::start_with(config).await
}

/// `clusters.<cluster>.circuitBreaker` of one replica's `GET /api/control`.
async fn breaker_of(server: &TestServer, cluster: &str) -> serde_json::Value {
    server.http.admin_get("/api/control").await.json()["clusters"][cluster]["circuitBreaker"]
        .clone()
}

/// Waits (up to 3 s: a replica learns of a change from the reply to its next failure or
/// batch of successes, sent at once or by the refresher every 250 ms, or from its peek of
/// copies older than 1 s) until `server` answers `path` with `status`.
async fn answers_within(server: &TestServer, path: &str, status: u16) {
    let seen = holds_within(Duration::from_secs(3), || async {
        server.http.get(path).await.status == status
    })
    .await;
    if !seen {
        let view = breaker_of(server, "jaggy-core").await;
        let last = server.http.get(path).await;
        panic!(
            "{} still not {status} on {path} after 3 s: {} {}; breaker {view}",
            server.addr,
            last.status,
            last.text()
        );
    }
}

/// Two failed calls through each replica, alternating: 4 calls, 100 % failed.
async fn fail_twice_each(a: &TestServer, b: &TestServer) {
    for server in [a, b, a, b] {
        server
            .http
            .get("/api/jaggy-core/status/500")
            .await
            .assert_problem(500);
    }
}

#[tokio::test]
async fn failures_spread_over_two_replicas_trip_one_breaker() {
    let Some(backends) = Backends::reserve().await else {
        return;
    };
    let (a, b) = (replica(&backends).await, replica(&backends).await);

    // The polling below sends more than jaggy-core's 20 requests a minute.
    let unlimited = a
        .http
        .admin_post(
            "/api/control/cluster/jaggy-core/rate-limit",
            r#"{"requestsPerMinute": 100000, "requestsPerHour": 100000, "requestsPerDay": 100000}"#,
        )
        .await;
    assert_eq!(unlimited.status, 200, "{}", unlimited.text());

    let view = breaker_of(&a, "jaggy-core").await;
    assert_eq!(view["fleetWide"], true, "{view}");
    assert_eq!(view["state"], "closed", "{view}");

    // Two failures through each replica: 4 calls, 100% failed, fleet-wide. Each replica's
    // own window would hold only 2 calls, below the minimum of 4.
    fail_twice_each(&a, &b).await;

    // Outcomes are recorded after the response; each replica learns of the trip from the
    // reply to its next outcome or from its refresher's peek (copies older than 1 s).
    for (name, server) in [("a", &a), ("b", &b)] {
        answers_within(server, "/api/jaggy-core/status/200", 503).await;
        let open = server.http.get("/api/jaggy-core/status/200").await;
        open.assert_problem(503);
        assert!(open.header("retry-after").is_some());
        let view = breaker_of(server, "jaggy-core").await;
        assert_eq!(view["state"], "open", "replica {name}: {view}");
        assert!(
            view["failures"].as_u64() >= Some(2),
            "replica {name}: {view}"
        );
    }
    // Another cluster is unaffected.
    assert_eq!(b.http.get("/api/ai-seo/status/200").await.status, 200);
    let metrics = b.http.get("/metrics").await.text();
    assert!(
        metrics.contains("dreamnet_circuit_breaker_state{cluster=\"jaggy-core\",state=\"open\"} 1"),
        "{metrics}"
    );

    // A reset through one replica closes the breaker for both.
    let reset = a
        .http
        .admin_post(
            "/api/control/cluster/jaggy-core/circuit-breaker/reset",
            "{}",
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    for server in [&a, &b] {
        answers_within(server, "/api/jaggy-core/status/200", 200).await;
    }

    // A manual trip through b refuses on a too, and both views say so.
    let trip = b
        .http
        .admin_post("/api/control/cluster/jaggy-core/circuit-breaker/trip", "{}")
        .await;
    assert_eq!(trip.status, 200, "{}", trip.text());
    answers_within(&a, "/api/jaggy-core/echo", 503).await;
    assert_eq!(breaker_of(&a, "jaggy-core").await["state"], "forced_open");

    a.stop().await;
    b.stop().await;
    backends.drop_all().await;
}

#[tokio::test]
async fn replicas_under_different_prefixes_keep_their_own_breakers() {
    let Some(first) = Backends::reserve().await else {
        return;
    };
    let Some(second) = Backends::reserve().await else {
        return;
    };
    let (a, b) = (replica(&first).await, replica(&second).await);

    // The same four failures, but on two fleets: neither window reaches its minimum.
    fail_twice_each(&a, &b).await;
    // Wait past a peek so that a copy which could have changed has been refreshed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for (name, server) in [("a", &a), ("b", &b)] {
        assert_eq!(
            server.http.get("/api/jaggy-core/status/200").await.status,
            200,
            "replica {name}"
        );
        let view = breaker_of(server, "jaggy-core").await;
        assert_eq!(view["state"], "closed", "replica {name}: {view}");
    }

    a.stop().await;
    b.stop().await;
    first.drop_all().await;
    second.drop_all().await;
}
