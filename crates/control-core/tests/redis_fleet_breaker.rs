//! The fleet-wide breaker: two replicas (two `RedisStore` handles on one prefix) share one
//! window, one state machine and one set of half-open permits, on one Redis and on a Redis
//! Cluster. Each test uses its own key prefix.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use dreamnet_common::redis_connection::RedisEndpoint;
use dreamnet_control_core::{
    BreakerConfig, BreakerState, ClusterConfig, ControlConfig, ControlPlane, FleetTicket, Outcome,
    RedisStore, RejectReason, SlidingWindow,
};
use dreamnet_test_support::redis_cluster::OwnRedisCluster;

const WAIT_MS: u64 = 300;

/// Trips at 50 % failures once 10 calls are in the window; 2 half-open probes.
fn config() -> BreakerConfig {
    BreakerConfig {
        window_size: 10,
        minimum_calls: 10,
        failure_rate_threshold: 50.0,
        wait_in_open_ms: WAIT_MS,
        half_open_calls: 2,
        ..BreakerConfig::default()
    }
}

async fn single() -> Option<RedisStore> {
    match RedisStore::connect(&dreamnet_test_support::redis_url()).await {
        Ok(store) => Some(store.timeout(Duration::from_secs(2))),
        Err(e) => {
            dreamnet_test_support::unavailable("redis", &e);
            None
        }
    }
}

async fn ticket(store: &RedisStore) -> FleetTicket {
    let reply = store.breaker_acquire("api", &config()).await.unwrap();
    assert_eq!(reply.state, BreakerState::Closed);
    reply.ticket.expect("a closed breaker admits")
}

/// Ten calls alternate between the replicas, every other one failing (5 of 10 = 50 %):
/// the tenth trips the breaker, exactly once fleet-wide, and both replicas see it open.
/// Then, after the wait, exactly 2 probes are admitted across both replicas, and their
/// successes close it (again once).
async fn two_replicas_share_one_breaker(a: RedisStore, b: RedisStore) {
    let replicas = [&a, &b];
    let mut transitions = 0;
    for i in 0..10 {
        let r = replicas[i % 2];
        let t = ticket(r).await;
        // Failures on calls 1, 3, 5, 7, 9: replica b sees all five, a none.
        let reply = r
            .breaker_record("api", &config(), t, i % 2 == 1, 5)
            .await
            .unwrap();
        if i < 9 {
            assert_eq!(reply.state, BreakerState::Closed, "call {i}");
        } else {
            assert_eq!(
                reply.state,
                BreakerState::Open,
                "the 10th combined call trips it"
            );
        }
        transitions += usize::from(reply.transitioned);
    }
    assert_eq!(transitions, 1, "the opening happens once fleet-wide");
    for r in replicas {
        let reply = r.breaker_acquire("api", &config()).await.unwrap();
        assert_eq!(reply.state, BreakerState::Open);
        assert!(reply.ticket.is_none());
        assert!(reply.retry_after_ms.is_some_and(|ms| ms <= WAIT_MS));
    }

    tokio::time::sleep(Duration::from_millis(WAIT_MS + 50)).await;
    let mut probes = Vec::new();
    for i in 0..6 {
        let r = replicas[i % 2];
        let reply = r.breaker_acquire("api", &config()).await.unwrap();
        assert_eq!(reply.state, BreakerState::HalfOpen);
        if let Some(t) = reply.ticket {
            assert!(t.probe);
            probes.push((r, t));
        }
    }
    assert_eq!(
        probes.len(),
        2,
        "exactly the configured permits across both replicas"
    );
    // A released permit is handed out again, still within the 2.
    let (r, t) = probes.pop().unwrap();
    r.breaker_release("api", &config(), t).await.unwrap();
    let again = b.breaker_acquire("api", &config()).await.unwrap();
    probes.push((&b, again.ticket.expect("the given-back permit")));
    assert!(b
        .breaker_acquire("api", &config())
        .await
        .unwrap()
        .ticket
        .is_none());

    let mut closings = 0;
    for (r, t) in probes {
        let reply = r
            .breaker_record("api", &config(), t, false, 5)
            .await
            .unwrap();
        closings += usize::from(reply.transitioned);
    }
    assert_eq!(closings, 1, "the closing happens once fleet-wide");
    assert!(!ticket(&a).await.probe);
    assert!(!ticket(&b).await.probe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_spread_over_two_replicas_trip_at_the_combined_threshold() {
    let Some(store) = single().await else { return };
    let prefix = dreamnet_test_support::unique_prefix("fleet-breaker");
    two_replicas_share_one_breaker(store.clone().prefix(&prefix), store.prefix(&prefix)).await;
}

/// The control: the same ten calls with per-replica statistics (each replica its own
/// prefix) never trip: each window holds 5 calls, below the 10-call minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_replica_statistics_would_not_trip() {
    let Some(store) = single().await else { return };
    let a = store
        .clone()
        .prefix(&dreamnet_test_support::unique_prefix("fleet-a"));
    let b = store.prefix(&dreamnet_test_support::unique_prefix("fleet-b"));
    let replicas = [&a, &b];
    for i in 0..10 {
        let r = replicas[i % 2];
        let t = ticket(r).await;
        let reply = r
            .breaker_record("api", &config(), t, true, 5)
            .await
            .unwrap();
        assert_eq!(reply.state, BreakerState::Closed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_breaker_works_on_a_redis_cluster() {
    let Some(cluster) = OwnRedisCluster::shared() else {
        return;
    };
    let store = RedisStore::connect_to(&RedisEndpoint::cluster(cluster.urls()))
        .await
        .expect("the test's own cluster answers")
        .timeout(Duration::from_secs(2));
    let prefix = dreamnet_test_support::unique_prefix("fleet-breaker-cluster");
    two_replicas_share_one_breaker(store.clone().prefix(&prefix), store.prefix(&prefix)).await;
}

/// Forced open is fleet-wide too, until a reset; a stale ticket's outcome is ignored; a
/// time-based window is refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_open_reset_stale_tickets_and_time_windows() {
    let Some(store) = single().await else { return };
    let prefix = dreamnet_test_support::unique_prefix("fleet-force");
    let (a, b) = (store.clone().prefix(&prefix), store.prefix(&prefix));
    let stale = ticket(&a).await;
    assert!(
        a.breaker_force_open("api", &config())
            .await
            .unwrap()
            .transitioned
    );
    let seen = b.breaker_acquire("api", &config()).await.unwrap();
    assert_eq!(seen.state, BreakerState::ForcedOpen);
    assert!(seen.ticket.is_none());
    assert!(
        b.breaker_reset("api", &config())
            .await
            .unwrap()
            .transitioned
    );
    for _ in 0..10 {
        let reply = a
            .breaker_record("api", &config(), stale, true, 5)
            .await
            .unwrap();
        assert_eq!(
            reply.state,
            BreakerState::Closed,
            "an older generation's outcome"
        );
    }
    let time = BreakerConfig {
        window: SlidingWindow::Time,
        ..config()
    };
    let err = a.breaker_acquire("api", &time).await.unwrap_err();
    assert!(
        err.to_string().contains("count-based windows only"),
        "{err}"
    );
}

/// Two planes on one Redis prefix, sharing their breakers ([`ControlPlaneBuilder::breaker_store`]).
fn fleet_plane(store: &RedisStore) -> ControlPlane {
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "api".to_owned(),
        ClusterConfig::per_minute_hour_day(1000, 10_000, 100_000),
    );
    let config = ControlConfig {
        clusters,
        // Open long enough for every check below to see it open.
        breaker: BreakerConfig {
            wait_in_open_ms: 60_000,
            ..config()
        },
        ..ControlConfig::default()
    };
    ControlPlane::builder()
        .config(config)
        .store(store.clone())
        .breaker_store(Arc::new(store.clone()))
        .build()
}

/// One call through `plane`, ending with `status` (a 500 is a failure); `None` when refused.
async fn call(plane: &ControlPlane, status: u16) -> Option<()> {
    let permit = plane.acquire("api", None).await.ok()?;
    permit.finish(Outcome::Status(http::StatusCode::from_u16(status).unwrap()));
    Some(())
}

async fn wait_until(what: &str, mut holds: impl FnMut() -> bool) {
    dreamnet_test_support::eventually(what, Duration::from_secs(3), || {
        let held = holds();
        async move { held.then_some(()) }
    })
    .await;
}

/// Through the plane: ten calls alternating between two replicas, every other one failing,
/// trip the breaker at the combined threshold (each replica alone saw 5 calls, below the
/// 10-call minimum); both replicas then refuse and show it open; a manual trip and reset on
/// one are seen by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_planes_trip_one_fleet_breaker_at_the_combined_threshold() {
    let Some(store) = single().await else { return };
    let store = store.prefix(&dreamnet_test_support::unique_prefix("fleet-plane"));
    let (a, b) = (fleet_plane(&store), fleet_plane(&store));
    assert!(a.breaker("api").unwrap().fleet_wide);
    for i in 0..10 {
        let plane = if i % 2 == 0 { &a } else { &b };
        let status = if i % 2 == 1 { 500 } else { 200 };
        call(plane, status).await.expect("closed: admitted");
        // Outcomes travel from a spawned task: let each land before the next call.
        let calls = i + 1;
        wait_until("the outcome is in the shared window", || {
            let seen = plane.breaker("api").unwrap();
            seen.calls == calls || seen.state == BreakerState::Open
        })
        .await;
    }
    for plane in [&a, &b] {
        wait_until("both replicas see the fleet breaker open", || {
            plane.breaker("api").unwrap().state == BreakerState::Open
        })
        .await;
        let refused = plane.acquire("api", None).await.unwrap_err();
        assert_eq!(refused.reason(), Some(RejectReason::CircuitOpen));
        assert!(refused.retry_after().is_some());
    }

    b.reset_breaker("api", None, "ops").await.unwrap();
    wait_until("A sees B's reset", || {
        a.breaker("api").unwrap().state == BreakerState::Closed
    })
    .await;
    call(&a, 200).await.expect("closed again");
    a.trip_breaker("api", Some("upstream down"), "ops")
        .await
        .unwrap();
    wait_until("B sees A's manual trip", || {
        b.breaker("api").unwrap().state == BreakerState::ForcedOpen
    })
    .await;
    assert!(call(&b, 200).await.is_none());
    store.purge().await.unwrap();
}
