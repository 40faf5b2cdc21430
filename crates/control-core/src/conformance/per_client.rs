//! The per-client part of the [`CounterStore`] suite (run by
//! [`counter_store_tests!`](crate::counter_store_tests)): a take with a [`ClientQuota`]
//! counts the cluster's windows and the client's in one all-or-nothing decision.

use std::sync::Arc;

use super::{now, YEAR};
use crate::{
    config::WindowConfig,
    store::{ClientQuota, Count, CounterStore, Taken},
};

/// The cluster's windows: a tight one and a loose one named like a client window, so a
/// store that mixed up cluster and client counters would fail.
fn cluster(limit: u64) -> Arc<[WindowConfig]> {
    Arc::from([
        WindowConfig::new("minute", limit, YEAR),
        WindowConfig::new("day", 1000, YEAR),
    ])
}

fn quota(client: &str, limit: u64) -> ClientQuota {
    ClientQuota {
        client: Arc::from(client),
        windows: Arc::from([WindowConfig::new("minute", limit, YEAR)]),
    }
}

async fn count(
    store: &dyn CounterStore,
    windows: &Arc<[WindowConfig]>,
    client: &ClientQuota,
    mode: Count,
) -> Taken {
    store
        .count(&Arc::from("c1"), windows, Some(client), now(), mode)
        .await
        .expect("count")
}

async fn take(
    store: &dyn CounterStore,
    windows: &Arc<[WindowConfig]>,
    client: &ClientQuota,
) -> Taken {
    count(store, windows, client, Count::Take).await
}

/// Each client gets its own limit; the counts list the cluster's windows, then the client's.
pub async fn each_client_gets_its_own_limit(store: Arc<dyn CounterStore>) {
    let windows = cluster(100);
    let (x, y) = (quota("x", 3), quota("y", 3));
    for i in 1..=3u64 {
        let taken = take(&*store, &windows, &x).await;
        assert!(taken.admitted, "request {i} of client x rejected");
        assert_eq!(taken.counts, vec![i, i, i]);
    }
    let refused = take(&*store, &windows, &x).await;
    assert!(!refused.admitted, "client x over its limit was admitted");
    assert_eq!(
        refused.counts,
        vec![3, 3, 3],
        "a rejected request took quota"
    );
    for i in 1..=3u64 {
        let taken = take(&*store, &windows, &y).await;
        assert!(taken.admitted, "client y was limited by client x's use");
        assert_eq!(taken.counts, vec![3 + i, 3 + i, i]);
    }
}

/// The cluster's windows still bind: a client with room is refused when the cluster has
/// none, and neither refusal consumes anything anywhere.
pub async fn the_aggregate_still_binds_and_refusals_take_nothing(store: Arc<dyn CounterStore>) {
    let windows = cluster(4);
    let (x, y) = (quota("x", 3), quota("y", 3));
    for _ in 0..3 {
        assert!(take(&*store, &windows, &x).await.admitted);
    }
    // Client x is out of its own quota: refused, the cluster keeps its last unit.
    assert!(!take(&*store, &windows, &x).await.admitted);
    let taken = take(&*store, &windows, &y).await;
    assert!(taken.admitted, "the cluster's last unit went to a refusal");
    assert_eq!(taken.counts, vec![4, 4, 1]);
    // The cluster is out: client y, with room of its own, is refused and charged nothing.
    let refused = take(&*store, &windows, &y).await;
    assert!(!refused.admitted, "the cluster's limit did not bind");
    assert_eq!(refused.counts, vec![4, 4, 1]);
    let peeked = count(&*store, &windows, &y, Count::Peek).await;
    assert_eq!(peeked.counts, vec![4, 4, 1]);
    assert_eq!(
        count(&*store, &windows, &quota("never-seen", 3), Count::Peek)
            .await
            .counts,
        vec![4, 4, 0]
    );
}

/// Concurrent takes of many clients admit exactly each client's limit.
pub async fn concurrent_clients_admit_exactly_their_limits(store: Arc<dyn CounterStore>) {
    let windows = cluster(1000);
    let cluster_id: Arc<str> = Arc::from("c1");
    let attempts = (0..200).map(|i| {
        let client = quota(&format!("client-{}", i % 10), 5);
        let future = store.count(&cluster_id, &windows, Some(&client), now(), Count::Take);
        tokio::spawn(async move { (i % 10, future.await.expect("take").admitted) })
    });
    let mut admitted = [0u32; 10];
    for result in futures_util::future::join_all(attempts).await {
        let (client, ok) = result.unwrap();
        admitted[client] += u32::from(ok);
    }
    assert_eq!(admitted, [5; 10], "admissions per client");
    let peeked = count(&*store, &windows, &quota("client-0", 5), Count::Peek).await;
    assert_eq!(peeked.counts, vec![50, 50, 5]);
}

/// `give_back` returns the client's unit along with the cluster's.
pub async fn give_back_returns_the_clients_unit_too(store: Arc<dyn CounterStore>) {
    let windows = cluster(100);
    let x = quota("x", 2);
    let first = take(&*store, &windows, &x).await;
    let second = take(&*store, &windows, &x).await;
    assert!(first.admitted && second.admitted);
    let refused = take(&*store, &windows, &x).await;
    assert!(!refused.admitted);
    store
        .give_back("c1", &windows, Some(&x), &refused)
        .await
        .unwrap();
    assert_eq!(
        count(&*store, &windows, &x, Count::Peek).await.counts,
        vec![2, 2, 2]
    );
    store
        .give_back("c1", &windows, Some(&x), &second)
        .await
        .unwrap();
    assert_eq!(
        count(&*store, &windows, &x, Count::Peek).await.counts,
        vec![1, 1, 1]
    );
    assert!(
        take(&*store, &windows, &x).await.admitted,
        "the unit given back is usable"
    );
}
