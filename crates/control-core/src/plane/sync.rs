//! Keeping the local copy of the shared state current: the refresher task, a reload, and
//! applying a loaded state to the runtime atomics.

use std::{
    sync::{atomic::Ordering, Arc, Weak},
    time::Duration,
};

use super::{
    runtime::{Inner, Limits},
    ControlPlane,
};
use crate::store::{ControlState, StoreError, Versioned};

/// Polls a shared store and, on any store, records switches that ended by their TTL. Ends
/// when the last clone of the plane is dropped.
pub(crate) async fn refresher(plane: Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = plane.upgrade() else { return };
        if inner.state_store.is_shared() {
            let _ = inner.refresh(false).await;
        }
        inner.sync_fleet().await;
        let _ = inner.end_expired().await;
    }
}

impl Inner {
    /// Polls the store and applies a newer state. `force` skips the version check.
    pub(crate) async fn refresh(&self, force: bool) -> Result<(), StoreError> {
        let result = async {
            let _one_at_a_time = self.reload.lock().await;
            if !force {
                let version = self.state_store.version().await?;
                if version == self.state.read().version {
                    return Ok(());
                }
            }
            if let Some(loaded) = self.state_store.load().await? {
                self.apply(loaded);
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            self.store_failed(e);
        }
        result
    }

    /// Makes `loaded` the local state (if it is not older than what we have).
    pub(crate) fn apply(&self, loaded: Versioned) {
        let mut local = self.state.write();
        if loaded.version < local.version {
            return;
        }
        let state = &loaded.state;
        self.kill_until
            .store(state.kill_switch.blocked_until(), Ordering::Release);
        for (id, cluster) in &state.clusters {
            let Some(rt) = self.clusters.get(id.as_str()) else {
                continue;
            };
            rt.disabled_until
                .store(cluster.disabled.blocked_until(), Ordering::Release);
            let current = rt.limits();
            if current.enabled != cluster.rate_limit.enabled
                || *current.windows != *cluster.rate_limit.windows
                || *current.per_client != *cluster.rate_limit.per_client
            {
                *rt.limits.write() = Arc::new(Limits::new(&cluster.rate_limit));
            }
            let mut breaker = rt.breaker.lock();
            let resets = rt
                .breaker_resets_seen
                .swap(cluster.breaker_resets, Ordering::AcqRel);
            let reset = resets != cluster.breaker_resets
                || (breaker.is_forced_open() && !cluster.breaker_forced_open);
            if reset {
                breaker.reset();
            }
            let tripped = cluster.breaker_forced_open && !breaker.is_forced_open();
            if tripped {
                breaker.force_open();
            }
            if let Some(fleet) = rt.fleet.as_ref().filter(|_| reset || tripped) {
                // A manual trip or reset on another replica: the fleet's state changed too.
                fleet.mark_stale();
            }
        }
        *local = loaded;
    }

    /// The stored state (or, before anything was stored, this plane's initial state) with
    /// any cluster this plane knows but the document lacks added from the configuration.
    pub(crate) async fn base(&self) -> Result<Versioned, StoreError> {
        let mut base = match self.state_store.load().await? {
            Some(v) => v,
            None => Versioned {
                version: 0,
                state: ControlState::from_config(&self.config),
            },
        };
        let defaults = ControlState::from_config(&self.config);
        for (id, cluster) in defaults.clusters {
            base.state.clusters.entry(id).or_insert(cluster);
        }
        Ok(base)
    }
}

impl ControlPlane {
    /// Loads the shared state now (a plane on a shared store also does this in the
    /// background every 250 ms).
    ///
    /// # Errors
    /// When the store is unreachable; the last known state stays in force.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.inner.refresh(true).await
    }
}
