//! The [`StateStore`] suite (run by [`state_store_tests!`](crate::state_store_tests)), and
//! the epoch check for a store implementing both traits
//! ([`epoch_tests!`](crate::epoch_tests)).

use std::sync::Arc;

use super::now;
use crate::{
    config::WindowConfig,
    store::{AuditEntry, ControlState, Count, CounterStore, StateStore, Switch},
};

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        version: 0,
        action: action.to_owned(),
        cluster: Some("c1".to_owned()),
        reason: Some("test".to_owned()),
        actor: Some("suite".to_owned()),
        at: dreamnet_common::time::rfc3339(now()),
        before: serde_json::Value::Null,
        after: serde_json::json!({"n": action}),
    }
}

/// Versions start at 0, a stale compare-and-swap loses, the audit trail is newest first.
pub async fn compare_and_swap_and_audit(store: Arc<dyn StateStore>) {
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
    let swapped = store.compare_and_swap(0, &state, &entry("one")).await;
    assert_eq!(swapped.unwrap(), Some(1));
    // A writer that read version 0 loses.
    let loser = ControlState::default();
    let lost = store.compare_and_swap(0, &loser, &entry("lost")).await;
    assert_eq!(lost.unwrap(), None);
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.state, state);
    for (v, action) in [(2, "two"), (3, "three"), (4, "four")] {
        let swapped = store.compare_and_swap(v - 1, &state, &entry(action)).await;
        assert_eq!(swapped.unwrap(), Some(v));
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

/// `notify` succeeds (a no-op for an unshared store).
pub async fn notify_is_accepted(store: Arc<dyn StateStore>) {
    store.notify(&["c1".to_owned()]).await.unwrap();
    store.notify(&[]).await.unwrap();
}

/// On a shared store, `notify` bumps the epoch `count` reports; an unshared store reports
/// none.
pub async fn notify_bumps_the_epoch(counters: Arc<dyn CounterStore>, state: Arc<dyn StateStore>) {
    let windows: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("w", 100, 60)]);
    let cluster: Arc<str> = Arc::from("c1");
    let epoch = || async {
        let taken = counters
            .count(&cluster, &windows, None, now(), Count::Take)
            .await;
        taken.unwrap().epoch
    };
    let before = epoch().await;
    state.notify(&["c1".to_owned()]).await.unwrap();
    let after = epoch().await;
    assert_eq!(before.is_some(), state.is_shared());
    if let (Some(b), Some(a)) = (before, after) {
        assert!(a > b, "epoch did not move: {b} -> {a}");
    }
}
