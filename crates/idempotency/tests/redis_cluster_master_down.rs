//! One master of a 3-master Redis Cluster killed under the idempotency layer (a cluster of
//! this test's own; the shared 6379 is never touched): requests whose records live on the
//! dead master are 503 with `Retry-After` and never reach the handler, records on the two
//! other masters keep working (new keys run, completed keys replay), and once the master is
//! back (empty: no persistence) its keys work again.
#![cfg(feature = "redis")]
#![allow(missing_docs, clippy::missing_panics_doc)]

mod support;

use std::{sync::Arc, time::Duration};

use dreamnet_common::redis_connection::RedisEndpoint;
use dreamnet_idempotency::{IdempotencyLayer, RedisStore};
use dreamnet_test_support::redis_cluster::OwnRedisCluster;
use http::{header::RETRY_AFTER, StatusCode};
use support::{post, send, service, unique, Handler};

const ACCOUNT: &str = "acct-cluster";
/// The layer's scope for [`ACCOUNT`] (the `X-Account-Id` header).
const SCOPE: &str = "account:acct-cluster";
const VICTIM: usize = 1;
/// Each store call's deadline: generous, since CI runs this beside every other test binary.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_only_its_own_keys_and_they_recover_when_it_returns() {
    let Some(mut cluster) = OwnRedisCluster::start() else {
        return;
    };
    let store = RedisStore::builder_for(RedisEndpoint::cluster(cluster.urls()))
        .prefix(unique("idem-down"))
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .op_timeout(OP_TIMEOUT)
        .connect()
        .await
        .expect("the test's own cluster answers");
    // Idempotency keys by the master their record lives on (enough fresh ones per master).
    let run = unique("k");
    let mut keys: Vec<Vec<String>> = vec![Vec::new(); cluster.masters()];
    for i in 0.. {
        let key = format!("{run}{i}");
        let master = cluster.master_of(&store.record_key(SCOPE, &key));
        if keys[master].len() < 40 {
            keys[master].push(key);
        }
        if keys.iter().all(|k| k.len() == 40) {
            break;
        }
    }
    let mut fresh = keys.into_iter().map(Vec::into_iter).collect::<Vec<_>>();
    let handler = Handler::new();
    let svc = service(
        &IdempotencyLayer::builder()
            .shared_store(Arc::new(store))
            .build(),
        &handler,
    );
    let call = |key: &str| send(&svc, post("/ok", Some(key), ACCOUNT, "x"));

    // All three masters serve: one completed record on each. A fresh cluster's first calls
    // (slot map, script loads) can be slow on a loaded machine: a fresh key per attempt, as
    // an attempt that timed out may have left a lease behind.
    let mut completed = Vec::new();
    for keys in &mut fresh {
        let keys = std::sync::Mutex::new(keys);
        let key =
            dreamnet_test_support::eventually("the master serves", Duration::from_secs(15), || {
                let key = keys.lock().unwrap().next().expect("enough keys");
                let call = &call;
                async move { (call(&key).await.0 == StatusCode::CREATED).then_some(key) }
            })
            .await;
        completed.push(key);
    }
    assert_eq!(handler.calls(), 3);

    cluster.stop_master(VICTIM);
    // A record on the dead master: 503 + Retry-After, the handler never runs.
    for _ in 0..3 {
        let key = fresh[VICTIM].next().unwrap();
        let started = std::time::Instant::now();
        let (status, headers, body) = call(&key).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers[RETRY_AFTER], "1");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_secs(2),
            "the deadline holds: {:?}",
            started.elapsed()
        );
        // A replay of a record that was on it cannot be answered either.
        let (status, _, _) = call(&completed[VICTIM]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        handler.calls(),
        3,
        "nothing ran while its record was unreachable"
    );
    // Records on the two live masters: new keys run once, completed keys replay.
    for master in (0..cluster.masters()).filter(|&m| m != VICTIM) {
        let key = fresh[master].next().unwrap();
        let (status, _, body) = call(&key).await;
        assert_eq!(status, StatusCode::CREATED, "master {master}: {body}");
        let (status, headers, _) = call(&key).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.contains_key("idempotent-replayed"), "replayed");
        let (_, headers, _) = call(&completed[master]).await;
        assert!(headers.contains_key("idempotent-replayed"), "replayed");
    }
    assert_eq!(
        handler.calls(),
        5,
        "one run per new key on the live masters"
    );

    cluster.restart_master(VICTIM);
    // Back (and empty): its keys run again. The client reconnects on its own; poll with a
    // fresh key per attempt (an attempt that timed out may have left a lease behind).
    let started = std::time::Instant::now();
    let victim_keys = std::sync::Mutex::new(fresh.swap_remove(VICTIM));
    dreamnet_test_support::eventually(
        "keys on the restarted master work again",
        Duration::from_secs(15),
        || {
            let key = victim_keys.lock().unwrap().next().expect("enough keys");
            let call = &call;
            async move { (call(&key).await.0 == StatusCode::CREATED).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "the restarted master served again after {:?}",
        started.elapsed()
    );
    assert_eq!(handler.calls(), 6);
}
