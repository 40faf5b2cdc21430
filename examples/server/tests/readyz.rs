//! `/readyz` over a real TCP socket: every configured store probed, 503 problem+json naming
//! the ones that do not answer; `/healthz` stays liveness (200 whatever the stores do).

mod common;

use common::{Stores, TestServer};
use dreamnet_server::Config;
use dreamnet_test_support::redis_server::OwnRedis;
use serde_json::Value;

fn store<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["stores"]
        .as_array()
        .expect("stores list")
        .iter()
        .find(|s| s["store"] == name)
        .unwrap_or_else(|| panic!("no store {name} in {body}"))
}

async fn ready_when_every_store_answers(stores: Stores) {
    let Some(server) = TestServer::on(stores, Config::default()).await else {
        return;
    };
    let reply = server.http.get("/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["status"], "ready");
    let (redis, postgres) = stores.backends();
    for (name, backend) in [
        ("idempotency", redis),
        ("control", redis),
        ("ledger", postgres),
    ] {
        let s = store(&body, name);
        assert_eq!(s["ok"], true, "{body}");
        assert_eq!(s["backend"], backend, "{body}");
        assert!(s["latencyMs"].is_number(), "{body}");
    }
    server.stop().await;
}

on_every_backend!(own_server: ready_when_every_store_answers);

/// The server's Redis dies (its port then has no listener): `/readyz` answers 503 naming the
/// Redis-backed stores while `/healthz` stays 200;
/// once Redis is back on the same port, `/readyz` is 200 again.
#[tokio::test]
async fn a_dead_redis_port_is_503_naming_redis_and_recovers() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let server = TestServer::on_own_redis(&redis, Config::default()).await;
    let http = &server.http;
    assert_eq!(http.get("/readyz").await.status, 200);

    redis.stop().await;
    let reply = http.get("/readyz").await;
    let body = reply.assert_problem(503);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("idempotency (redis") && detail.contains("control (redis"),
        "{detail}"
    );
    assert!(
        !detail.contains("ledger"),
        "memory ledger is ready: {detail}"
    );
    assert_eq!(store(&body, "idempotency")["ok"], false);
    assert_eq!(store(&body, "control")["ok"], false);
    assert!(store(&body, "control")["error"].is_string());
    assert_eq!(store(&body, "ledger")["ok"], true);
    assert_eq!(body["type"], "urn:dreamnet:server:not-ready");
    // Liveness does not depend on the stores.
    assert_eq!(http.get("/healthz").await.status, 200);

    redis.restart().await; // on the same port
    let reply = http.get("/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server.stop().await;
    redis.stop().await;
}
