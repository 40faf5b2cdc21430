//! The behavioural suite every [`ControlStore`] backend runs.
//!
//! Long windows (365 days) keep the counting tests clear of window boundaries, because the
//! Redis backend uses server time, which tests cannot move.

use std::sync::Arc;

use super::ControlStore;
use crate::{
    config::WindowConfig,
    state::{AuditEntry, ControlState, Switch},
};
use dreamnet_common::{Clock, SystemClock};

const YEAR: u64 = 365 * 86_400;

fn now() -> u64 {
    SystemClock.now_millis()
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        version: 0,
        action: action.to_owned(),
        cluster: Some("c1".to_owned()),
        reason: Some("test".to_owned()),
        actor: Some("suite".to_owned()),
        at: crate::time::rfc3339(now()),
        before: serde_json::Value::Null,
        after: serde_json::json!({"n": action}),
    }
}

pub(crate) async fn burst_admits_exactly_the_limit(store: Arc<dyn ControlStore>) {
    let windows = [
        WindowConfig::new("a", 5, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ];
    for i in 1..=5u64 {
        let taken = store.take("c1", &windows, now()).await.unwrap();
        assert!(taken.admitted, "request {i} of 5 rejected");
        assert_eq!(taken.counts, vec![i, i]);
    }
    for _ in 0..3 {
        let taken = store.take("c1", &windows, now()).await.unwrap();
        assert!(!taken.admitted);
        assert_eq!(taken.counts, vec![5, 5], "a rejected request took quota");
    }
}

pub(crate) async fn all_windows_or_none(store: Arc<dyn ControlStore>) {
    let tight = WindowConfig::new("tight", 1, YEAR);
    let loose = WindowConfig::new("loose", 5, YEAR);
    let both = [tight, loose.clone()];
    assert!(store.take("c1", &both, now()).await.unwrap().admitted);
    let taken = store.take("c1", &both, now()).await.unwrap();
    assert!(!taken.admitted);
    assert_eq!(taken.counts, vec![1, 1]);
    let taken = store.take("c1", &[loose], now()).await.unwrap();
    assert!(taken.admitted);
    assert_eq!(
        taken.counts,
        vec![2],
        "the loose window was charged for a rejection"
    );
}

pub(crate) async fn clusters_and_windows_are_isolated(store: Arc<dyn ControlStore>) {
    let one = [WindowConfig::new("w", 1, YEAR)];
    assert!(store.take("c1", &one, now()).await.unwrap().admitted);
    assert!(!store.take("c1", &one, now()).await.unwrap().admitted);
    assert!(store.take("c2", &one, now()).await.unwrap().admitted);
    // Same name, another length: another counter.
    let other = [WindowConfig::new("w", 1, YEAR - 1)];
    assert!(store.take("c1", &other, now()).await.unwrap().admitted);
}

pub(crate) async fn zero_limit_rejects(store: Arc<dyn ControlStore>) {
    let zero = [WindowConfig::new("w", 0, 60)];
    let taken = store.take("c1", &zero, now()).await.unwrap();
    assert!(!taken.admitted);
    assert_eq!(taken.counts, vec![0]);
}

pub(crate) async fn reports_its_clock(store: Arc<dyn ControlStore>) {
    let taken = store
        .take("c1", &[WindowConfig::new("w", 9, 60)], now())
        .await
        .unwrap();
    assert!(
        taken.now_millis.abs_diff(now()) < 10_000,
        "store clock far off"
    );
}

pub(crate) async fn concurrent_burst_admits_exactly_the_limit(store: Arc<dyn ControlStore>) {
    let windows = [
        WindowConfig::new("a", 50, YEAR),
        WindowConfig::new("b", 70, YEAR),
    ];
    let attempts = (0..200).map(|_| {
        let store = Arc::clone(&store);
        let windows = windows.clone();
        tokio::spawn(async move { store.take("c1", &windows, now()).await.unwrap().admitted })
    });
    let results = futures_util::future::join_all(attempts).await;
    let admitted = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(admitted, 50);
}

pub(crate) async fn state_compare_and_swap_and_audit(store: Arc<dyn ControlStore>) {
    assert!(store.load().await.unwrap().is_none());
    assert_eq!(store.version().await.unwrap(), 0);
    let state = ControlState {
        kill_switch: Switch {
            engaged: true,
            reason: Some("r".to_owned()),
            ..Switch::default()
        },
        ..ControlState::default()
    };
    assert_eq!(
        store
            .compare_and_swap(0, &state, &entry("one"))
            .await
            .unwrap(),
        Some(1)
    );
    // A writer that read version 0 loses.
    let loser = ControlState::default();
    assert_eq!(
        store
            .compare_and_swap(0, &loser, &entry("lost"))
            .await
            .unwrap(),
        None
    );
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.state, state);
    for (v, action) in [(2, "two"), (3, "three"), (4, "four")] {
        assert_eq!(
            store
                .compare_and_swap(v - 1, &state, &entry(action))
                .await
                .unwrap(),
            Some(v)
        );
    }
    assert_eq!(store.version().await.unwrap(), 4);
    let audit = store.audit(2).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .map(|e| (e.version, e.action.as_str()))
            .collect::<Vec<_>>(),
        vec![(4, "four"), (3, "three")]
    );
    assert_eq!(audit[0].after, serde_json::json!({"n": "four"}));
    assert_eq!(
        store.audit(100).await.unwrap().len(),
        4,
        "the lost change was audited"
    );
}

pub(crate) async fn notify_bumps_the_epoch(store: Arc<dyn ControlStore>) {
    let windows = [WindowConfig::new("w", 100, 60)];
    let before = store.take("c1", &windows, now()).await.unwrap().epoch;
    store.notify(&["c1".to_owned()]).await.unwrap();
    let after = store.take("c1", &windows, now()).await.unwrap().epoch;
    assert_eq!(before.is_some(), store.is_shared());
    if let (Some(b), Some(a)) = (before, after) {
        assert!(a > b, "epoch did not move: {b} -> {a}");
    }
}

pub(crate) async fn peek_reads_without_taking(store: Arc<dyn ControlStore>) {
    let windows = [
        WindowConfig::new("a", 3, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ];
    let peeked = store.peek("c1", &windows, now()).await.unwrap();
    assert_eq!(peeked.counts, vec![0, 0], "an unused cluster");
    assert!(!peeked.admitted);
    assert!(peeked.now_millis.abs_diff(now()) < 10_000);
    for _ in 0..2 {
        assert!(store.take("c1", &windows, now()).await.unwrap().admitted);
    }
    for _ in 0..5 {
        let peeked = store.peek("c1", &windows, now()).await.unwrap();
        assert_eq!(peeked.counts, vec![2, 2]);
    }
    // Peeks took nothing: exactly one more unit fits the limit of 3.
    assert!(store.take("c1", &windows, now()).await.unwrap().admitted);
    assert!(!store.take("c1", &windows, now()).await.unwrap().admitted);
    // A window the cluster never counted reads as empty.
    let other = [WindowConfig::new("c", 1, YEAR)];
    assert_eq!(
        store.peek("c1", &other, now()).await.unwrap().counts,
        vec![0]
    );
}

pub(crate) async fn give_back_returns_one_unit_per_window(store: Arc<dyn ControlStore>) {
    let windows = [
        WindowConfig::new("a", 2, YEAR),
        WindowConfig::new("b", 1000, YEAR),
    ];
    let first = store.take("c1", &windows, now()).await.unwrap();
    let second = store.take("c1", &windows, now()).await.unwrap();
    assert!(first.admitted && second.admitted);
    let refused = store.take("c1", &windows, now()).await.unwrap();
    assert!(!refused.admitted);
    // Giving back a refused attempt changes nothing (it took nothing).
    store.give_back("c1", &windows, &refused).await.unwrap();
    assert_eq!(
        store.peek("c1", &windows, now()).await.unwrap().counts,
        vec![2, 2]
    );
    store.give_back("c1", &windows, &second).await.unwrap();
    assert_eq!(
        store.peek("c1", &windows, now()).await.unwrap().counts,
        vec![1, 1]
    );
    let again = store.take("c1", &windows, now()).await.unwrap();
    assert!(again.admitted, "the unit given back is usable");
    assert_eq!(again.counts, vec![2, 2]);
    // A unit taken in an older window is not given back to the current one.
    let mut stale = again.clone();
    stale.now_millis -= YEAR * 1000;
    store.give_back("c1", &windows, &stale).await.unwrap();
    assert_eq!(
        store.peek("c1", &windows, now()).await.unwrap().counts,
        vec![2, 2]
    );
}

/// Runs the suite against a store factory: an async expression giving `Option<Arc<S>>` (a
/// fresh, empty store; `None` skips, e.g. when Redis is unreachable), and an optional
/// async cleanup taking the `Arc<S>`.
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::store::conformance::conformance_tests!($make, |_s| async {});
    };
    ($make:expr, $cleanup:expr) => {
        $crate::store::conformance::conformance_tests!(@tests $make; $cleanup;
            burst_admits_exactly_the_limit,
            all_windows_or_none,
            clusters_and_windows_are_isolated,
            zero_limit_rejects,
            reports_its_clock,
            concurrent_burst_admits_exactly_the_limit,
            state_compare_and_swap_and_audit,
            notify_bumps_the_epoch,
            peek_reads_without_taking,
            give_back_returns_one_unit_per_window,
        );
    };
    (@tests $make:expr; $cleanup:expr; $($name:ident,)*) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = $make.await {
                        let dyn_store: std::sync::Arc<dyn $crate::store::ControlStore> = store.clone();
                        $crate::store::conformance::$name(dyn_store).await;
                        ($cleanup)(store).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;
