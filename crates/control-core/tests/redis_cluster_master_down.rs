//! One master of a 3-master Redis Cluster killed under a plane (a cluster of this test's
//! own; the shared 6379 is never touched): the control cluster whose counters live on the
//! dead master fails open — counted in `fail_open_admissions` and `store_errors`, with the
//! warning, its breaker closed — while control clusters on the two other masters keep their
//! exact limits; when the master returns (empty), its cluster is counted by Redis again.
#![cfg(feature = "redis")]
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::{collections::BTreeMap, time::Duration};

use common::{counted as call, guarded, yearly, Svc};
use dreamnet_common::redis_connection::RedisEndpoint;
use dreamnet_control_core::{BreakerState, ClusterConfig, ControlConfig, ControlPlane, RedisStore};
use dreamnet_test_support::{logs::Capture, redis_cluster::OwnRedisCluster};
use http::StatusCode;

mod common;

const LIMIT: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_open_only_its_clusters_with_the_metric_and_recovers() {
    let Some(mut cluster) = OwnRedisCluster::start() else {
        return;
    };
    // The shared state document (`{state}`) stays on a live master, so this test is about
    // counters only (a dead state master keeps the last known state in force, as on one Redis).
    let state_master = cluster.master_of("{state}");
    let victim = (state_master + 1) % cluster.masters();
    // One control cluster id per master: `{<id>}` is the hash tag of its counters.
    let mut ids: Vec<Option<String>> = vec![None; cluster.masters()];
    for i in 0.. {
        let id = format!("pack-{i}");
        let master = cluster.master_of(&format!("{{{id}}}"));
        ids[master].get_or_insert(id);
        if ids.iter().all(Option::is_some) {
            break;
        }
    }
    let ids: Vec<String> = ids.into_iter().map(Option::unwrap).collect();
    let clusters: BTreeMap<String, ClusterConfig> =
        ids.iter().map(|id| (id.clone(), yearly(LIMIT))).collect();
    let config = ControlConfig {
        clusters,
        fail_open: true,
        ..ControlConfig::default()
    };
    let store = RedisStore::connect_to(&RedisEndpoint::cluster(cluster.urls()))
        .await
        .expect("the test's own cluster answers")
        .prefix(&dreamnet_test_support::unique_prefix("control-down"))
        // 2 s rather than 500 ms: CI runs this beside every other test binary on 2 cores,
        // and a fresh cluster's first calls load the scripts; the deadline is not the point.
        .timeout(Duration::from_secs(2));
    let plane = ControlPlane::builder().config(config).store(store).build();
    plane.sync().await.unwrap();
    let svcs: Vec<Svc> = ids.iter().map(|id| guarded(&plane, id)).collect();

    // Every master counts: exactly LIMIT admitted per control cluster, then 429.
    for svc in &svcs {
        for _ in 0..LIMIT {
            assert_eq!(call(svc).await, (StatusCode::OK, true));
        }
        assert_eq!(call(svc).await, (StatusCode::TOO_MANY_REQUESTS, true));
    }
    assert_eq!(plane.metrics().fail_open_admissions, 0);

    cluster.stop_master(victim);
    let (logs, guard) = Capture::text(tracing::Level::WARN);
    let errors_before = plane.metrics().store_errors;
    // The victim's cluster: admitted without a known usage (fail-open), each one counted.
    for _ in 0..5 {
        assert_eq!(call(&svcs[victim]).await, (StatusCode::OK, false));
    }
    drop(guard);
    let metrics = plane.metrics();
    assert_eq!(
        metrics.fail_open_admissions, 5,
        "every fail-open admission is counted"
    );
    assert!(metrics.store_errors >= errors_before + 5);
    assert!(
        logs.output().contains("control store unreachable") && logs.output().contains("fails open"),
        "the warning: {}",
        logs.output()
    );
    assert_eq!(
        plane.breaker(&ids[victim]).unwrap().state,
        BreakerState::Closed
    );
    // The others are still limited by Redis, not failing open.
    for (i, svc) in svcs.iter().enumerate().filter(|&(i, _)| i != victim) {
        assert_eq!(
            call(svc).await,
            (StatusCode::TOO_MANY_REQUESTS, true),
            "{} keeps its limit",
            ids[i]
        );
    }
    assert_eq!(plane.metrics().fail_open_admissions, 5);

    cluster.restart_master(victim);
    // Back, with its counters gone (no persistence): counted by Redis again from zero.
    dreamnet_test_support::eventually(
        "the victim's cluster is counted by Redis again",
        Duration::from_secs(15),
        || async { (call(&svcs[victim]).await == (StatusCode::OK, true)).then_some(()) },
    )
    .await;
    let open_after = plane.metrics().fail_open_admissions;
    for _ in 1..LIMIT {
        assert_eq!(call(&svcs[victim]).await, (StatusCode::OK, true));
    }
    assert_eq!(
        call(&svcs[victim]).await,
        (StatusCode::TOO_MANY_REQUESTS, true)
    );
    assert_eq!(plane.metrics().fail_open_admissions, open_after);
    eprintln!(
        "fail-open admissions while the master was down and until it served again: {open_after}"
    );
}
