//! Redis stopped and restarted under a running server (a redis-server of this test's own on a
//! free port; the shared 6379 is never touched): keyed POSTs get 503 while it is down,
//! guarded GETs stay 200 (control fails open), the cluster's breaker does not count our own
//! store's outage, and the first request after Redis returns succeeds.

mod common;

use std::time::Duration;

// `TOUCHY_BREAKER` opens after 2 failures out of 4 calls: 20 store-fault 503s would open
// it many times over if they were counted.
use common::{TestServer, TOUCHY_BREAKER};
use dreamnet_server::{Config, FileConfig};
use dreamnet_test_support::redis_server::OwnRedis;

const ECHO: &str = "/api/jaggy-core/echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_a_store_fault_not_an_upstream_failure_and_recovers_at_once() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let config = Config {
        file: FileConfig::from_toml(TOUCHY_BREAKER).expect("breaker config"),
        ..Config::default()
    };
    let server = TestServer::on_own_redis(&redis, config).await;
    let http = &server.http;
    let keyed = |key: String| async move {
        http.post_json(ECHO, &[("idempotency-key", &key)], r#"{"n": 1}"#)
            .await
    };

    assert_eq!(keyed("\"before\"".into()).await.status, 200, "Redis is up");

    redis.stop().await;
    for n in 0..10 {
        let reply = keyed(format!("\"down-{n}\"")).await;
        let problem = reply.assert_problem(503);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains("idempotency store"),
            "the 503 names the store: {problem}"
        );
        assert_eq!(http.get(ECHO).await.status, 200, "a guarded GET fails open");
    }
    let overview = http.admin_get("/api/control").await.json();
    assert_eq!(
        overview["clusters"]["jaggy-core"]["circuitBreaker"]["state"], "closed",
        "our own store's 503s are not failures of the cluster: {overview}"
    );

    // Down a while with no traffic (not a wait for state): the connection manager's
    // background reconnect gives up, the case that used to fail the first request after the
    // restart with a stale `Connection refused`.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;

    let first = keyed("\"after\"".into()).await;
    assert_eq!(
        first.status, 200,
        "first keyed POST after the restart: {first:?}"
    );
    let replay = keyed("\"after\"".into()).await;
    assert_eq!(replay.status, 200);
    assert_eq!(
        replay.body, first.body,
        "the record is in the restarted Redis"
    );
    assert_eq!(http.get(ECHO).await.status, 200);

    server.stop().await;
    redis.stop().await;
}
