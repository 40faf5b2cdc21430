//! Redis stopped and restarted under a plane (a redis-server of the test's own on a free
//! loopback port, started and stopped by this test; the shared 6379 is never touched):
//! guarded calls fail open while it is down, the breaker stays closed, and the first call
//! after it returns is counted by Redis again (no stale `Connection refused`).

use std::{collections::BTreeMap, time::Duration};

use common::{counted, guarded};
use dreamnet_control_core::{BreakerState, ClusterConfig, ControlConfig, ControlPlane, RedisStore};
use dreamnet_test_support::redis_server::OwnRedis;
use http::StatusCode;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_open_keeps_the_breaker_closed_and_recovers_at_once() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let url = redis.url();
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "alpha".to_owned(),
        ClusterConfig::per_minute_hour_day(1000, 10_000, 100_000),
    );
    let config = ControlConfig {
        clusters,
        ..ControlConfig::default()
    };
    let store = RedisStore::connect(&url).await.unwrap();
    let plane = ControlPlane::builder().config(config).store(store).build();
    let svc = guarded(&plane, "alpha");
    let call = || counted(&svc);
    assert_eq!(call().await, (StatusCode::OK, true), "counted by Redis");

    redis.stop().await;
    for _ in 0..20 {
        assert_eq!(
            call().await,
            (StatusCode::OK, false),
            "fails open, no usage known"
        );
    }
    assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    assert!(plane.metrics().fail_open_admissions >= 20);
    // Redis stays down a while with no traffic (not a wait for state): the connection
    // manager's background reconnect gives up, so it holds a failed attempt when Redis
    // returns, the case that used to fail the first call with a stale `Connection refused`.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    redis.restart().await;
    let errors_before = plane.metrics().store_errors;
    // The very first call after Redis returns is counted by Redis again.
    assert_eq!(
        call().await,
        (StatusCode::OK, true),
        "first call after the restart"
    );
    assert_eq!(
        plane.metrics().store_errors,
        errors_before,
        "no stale error"
    );
    assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    redis.stop().await;
}
