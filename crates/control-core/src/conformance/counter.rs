//! The [`CounterStore`] suite (run by [`counter_store_tests!`](crate::counter_store_tests)).

use std::sync::Arc;

use super::{now, YEAR};
use crate::{
    config::WindowConfig,
    store::{Count, CounterStore, Taken},
};

fn windows(list: &[WindowConfig]) -> Arc<[WindowConfig]> {
    Arc::from(list)
}

async fn take(store: &dyn CounterStore, cluster: &str, windows: &Arc<[WindowConfig]>) -> Taken {
    store
        .count(&Arc::from(cluster), windows, None, now(), Count::Take)
        .await
        .expect("take")
}

async fn peek(store: &dyn CounterStore, cluster: &str, windows: &Arc<[WindowConfig]>) -> Taken {
    store
        .count(&Arc::from(cluster), windows, None, now(), Count::Peek)
        .await
        .expect("peek")
}

/// A burst admits exactly the limit, and rejected requests take nothing.
pub async fn burst_admits_exactly_the_limit(store: Arc<dyn CounterStore>) {
    let windows = windows(&[
        WindowConfig::new("a", 5, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ]);
    for i in 1..=5u64 {
        let taken = take(&*store, "c1", &windows).await;
        assert!(taken.admitted, "request {i} of 5 rejected");
        assert_eq!(taken.counts, vec![i, i]);
    }
    for _ in 0..3 {
        let taken = take(&*store, "c1", &windows).await;
        assert!(!taken.admitted);
        assert_eq!(taken.counts, vec![5, 5], "a rejected request took quota");
    }
}

/// A request needs room in every window; a rejection charges none of them.
pub async fn all_windows_or_none(store: Arc<dyn CounterStore>) {
    let tight = WindowConfig::new("tight", 1, YEAR);
    let loose = WindowConfig::new("loose", 5, YEAR);
    let both = windows(&[tight, loose.clone()]);
    assert!(take(&*store, "c1", &both).await.admitted);
    let taken = take(&*store, "c1", &both).await;
    assert!(!taken.admitted);
    assert_eq!(taken.counts, vec![1, 1]);
    let taken = take(&*store, "c1", &windows(&[loose])).await;
    assert!(taken.admitted);
    assert_eq!(
        taken.counts,
        vec![2],
        "the loose window was charged for a rejection"
    );
}

/// Clusters, and windows of the same name but another length, count apart.
pub async fn clusters_and_windows_are_isolated(store: Arc<dyn CounterStore>) {
    let one = windows(&[WindowConfig::new("w", 1, YEAR)]);
    assert!(take(&*store, "c1", &one).await.admitted);
    assert!(!take(&*store, "c1", &one).await.admitted);
    assert!(take(&*store, "c2", &one).await.admitted);
    // Same name, another length: another counter.
    let other = windows(&[WindowConfig::new("w", 1, YEAR - 1)]);
    assert!(take(&*store, "c1", &other).await.admitted);
}

/// A zero limit admits nothing.
pub async fn zero_limit_rejects(store: Arc<dyn CounterStore>) {
    let zero = windows(&[WindowConfig::new("w", 0, 60)]);
    let taken = take(&*store, "c1", &zero).await;
    assert!(!taken.admitted);
    assert_eq!(taken.counts, vec![0]);
}

/// The answer reports the clock the decision was made at.
pub async fn reports_its_clock(store: Arc<dyn CounterStore>) {
    let taken = take(&*store, "c1", &windows(&[WindowConfig::new("w", 9, 60)])).await;
    assert!(
        taken.now_millis.abs_diff(now()) < 10_000,
        "store clock far off"
    );
}

/// 200 concurrent takes admit exactly the limit.
pub async fn concurrent_burst_admits_exactly_the_limit(store: Arc<dyn CounterStore>) {
    let windows = windows(&[
        WindowConfig::new("a", 50, YEAR),
        WindowConfig::new("b", 70, YEAR),
    ]);
    let cluster: Arc<str> = Arc::from("c1");
    let attempts = (0..200).map(|_| {
        let future = store.count(&cluster, &windows, None, now(), Count::Take);
        tokio::spawn(async move { future.await.expect("take").admitted })
    });
    let results = futures_util::future::join_all(attempts).await;
    let admitted = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(admitted, 50);
}

/// [`Count::Peek`] reads the counts and takes (or creates) nothing.
pub async fn peek_reads_without_taking(store: Arc<dyn CounterStore>) {
    let windows = windows(&[
        WindowConfig::new("a", 3, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ]);
    let peeked = peek(&*store, "c1", &windows).await;
    assert_eq!(peeked.counts, vec![0, 0], "an unused cluster");
    assert!(!peeked.admitted);
    assert!(peeked.now_millis.abs_diff(now()) < 10_000);
    for _ in 0..2 {
        assert!(take(&*store, "c1", &windows).await.admitted);
    }
    for _ in 0..5 {
        assert_eq!(peek(&*store, "c1", &windows).await.counts, vec![2, 2]);
    }
    // Peeks took nothing: exactly one more unit fits the limit of 3.
    assert!(take(&*store, "c1", &windows).await.admitted);
    assert!(!take(&*store, "c1", &windows).await.admitted);
    // A window the cluster never counted reads as empty.
    let other = self::windows(&[WindowConfig::new("c", 1, YEAR)]);
    assert_eq!(peek(&*store, "c1", &other).await.counts, vec![0]);
}

/// `give_back` returns one unit per window, never to a later window.
pub async fn give_back_returns_one_unit_per_window(store: Arc<dyn CounterStore>) {
    let windows = windows(&[
        WindowConfig::new("a", 2, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ]);
    let first = take(&*store, "c1", &windows).await;
    let second = take(&*store, "c1", &windows).await;
    assert!(first.admitted && second.admitted);
    let refused = take(&*store, "c1", &windows).await;
    assert!(!refused.admitted);
    // Giving back a refused attempt changes nothing (it took nothing).
    store
        .give_back("c1", &windows, None, &refused)
        .await
        .unwrap();
    assert_eq!(peek(&*store, "c1", &windows).await.counts, vec![2, 2]);
    store
        .give_back("c1", &windows, None, &second)
        .await
        .unwrap();
    assert_eq!(peek(&*store, "c1", &windows).await.counts, vec![1, 1]);
    let again = take(&*store, "c1", &windows).await;
    assert!(again.admitted, "the unit given back is usable");
    assert_eq!(again.counts, vec![2, 2]);
    // A unit taken in an older window is not given back to the current one.
    let mut stale = again.clone();
    stale.now_millis -= YEAR * 1000;
    store.give_back("c1", &windows, None, &stale).await.unwrap();
    assert_eq!(peek(&*store, "c1", &windows).await.counts, vec![2, 2]);
}
