//! Redis unreachable: rate limiting fails open with a `tracing` warning. Its own test
//! binary, because `tracing`'s per-thread capture must not race other tests' callsites.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{guarded, send, yearly};
use dreamnet_control_core::{ControlConfig, ControlPlane, RedisStore};
use dreamnet_test_support::logs::Capture;
use http::StatusCode;

mod common;

#[tokio::test(flavor = "current_thread")]
async fn unreachable_redis_fails_open_by_default_with_a_warning() {
    let (logs, _guard) = Capture::text(tracing::Level::WARN);
    let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
    let mut clusters = BTreeMap::new();
    clusters.insert("alpha".to_owned(), yearly(1));
    let config = ControlConfig {
        clusters,
        ..ControlConfig::default()
    };
    let plane = ControlPlane::builder().config(config).store(store).build();
    let alpha = guarded(&plane, "alpha");
    let started = Instant::now();
    for _ in 0..3 {
        let response = send(&alpha).await;
        assert_eq!(response.status(), StatusCode::OK, "fail open admits");
        assert!(response.headers().contains_key("ratelimit-policy"));
        assert!(
            !response.headers().contains_key("ratelimit"),
            "no usage is known"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let metrics = plane.metrics();
    assert_eq!(metrics.fail_open_admissions, 3);
    assert!(metrics.store_errors >= 3);
    assert!(
        logs.output().contains("control store unreachable"),
        "{}",
        logs.output()
    );
    assert!(logs.output().contains("WARN"));
    // Changes cannot be stored: refused, nothing changes locally either.
    assert!(plane.engage_kill_switch("x", "ops", None).await.is_err());
    assert!(!plane.kill_switch().enabled);
}
