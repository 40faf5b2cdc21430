//! What the plane shows: the kill switch, clusters, breakers, usage, audit and metrics,
//! as the [`views`](crate::views) types.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use super::{ControlError, ControlPlane};
use crate::{
    store::{AuditEntry, Count},
    views::{
        BreakerView, ClusterMetrics, ClusterView, ControlView, KillSwitchView, MetricsSnapshot,
        RateLimitView, Rejections, UsageView, WindowUsage,
    },
    window::{window_millis, window_start},
};
use dreamnet_common::time::rfc3339;

impl ControlPlane {
    /// The global kill switch as the API shows it.
    pub fn kill_switch(&self) -> KillSwitchView {
        let now = self.inner.clock.now_millis();
        let state = self.inner.state.read();
        KillSwitchView::new(&state.state.kill_switch, now)
    }

    /// One cluster's rate-limit settings.
    pub fn rate_limit(&self, cluster: &str) -> Option<RateLimitView> {
        let rt = self.runtime(cluster)?;
        Some(RateLimitView::new(&rt.limits()))
    }

    /// One cluster's breaker.
    pub fn breaker(&self, cluster: &str) -> Option<BreakerView> {
        let rt = self.runtime(cluster)?;
        let now = self.inner.clock.now_millis();
        let (state, totals) = rt.breaker_seen(now);
        let config = self.inner.config.breaker_for(cluster);
        Some(BreakerView {
            state,
            calls: totals.calls,
            failures: totals.failures,
            slow_calls: totals.slow,
            window: config.window,
            window_size: config.window_size,
            fleet_wide: rt.fleet.is_some(),
        })
    }

    /// One cluster as the API shows it (without store usage; see [`ControlPlane::overview`]).
    pub fn cluster(&self, cluster: &str) -> Option<ClusterView> {
        let rt = self.runtime(cluster)?;
        let now = self.inner.clock.now_millis();
        let switch = self
            .inner
            .state
            .read()
            .state
            .clusters
            .get(cluster)
            .map(|c| c.disabled.as_seen_at(now))
            .unwrap_or_default();
        let c = &rt.counters;
        Some(ClusterView {
            enabled: !switch.blocks_at(now),
            reason: switch.reason,
            disabled_by: switch.changed_by,
            changed_at: switch.changed_at.map(rfc3339),
            expires_at: switch.expires_at.map(rfc3339),
            rate_limit: self.rate_limit(cluster)?,
            usage: UsageView {
                windows: Vec::new(),
                admitted: c.admitted.load(Ordering::Relaxed),
                rejected: Rejections::read(&c.rejected),
            },
            circuit_breaker: self.breaker(cluster)?,
        })
    }

    /// Current window usage of a cluster, read from the store without taking anything.
    ///
    /// # Errors
    /// Unknown cluster, unreachable store.
    pub async fn usage(&self, cluster: &str) -> Result<Vec<WindowUsage>, ControlError> {
        let rt = self
            .runtime(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))?;
        let limits = rt.limits();
        if limits.windows.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.inner.clock.now_millis();
        let peeked = self
            .inner
            .counter_store
            .count(&rt.id, &limits.windows, None, now, Count::Peek)
            .await?;
        let now = peeked.now_millis;
        Ok(limits
            .windows
            .iter()
            .zip(&peeked.counts)
            .map(|(w, &used)| WindowUsage {
                name: w.name.clone(),
                limit: w.limit,
                seconds: w.seconds,
                used,
                remaining: w.limit.saturating_sub(used),
                reset_seconds: (window_start(w, now) + window_millis(w) - now).div_ceil(1000),
            })
            .collect())
    }

    /// `GET /api/control`: the kill switch and every cluster, with window usage.
    ///
    /// Usage that cannot be read (store unreachable) is left empty.
    pub async fn overview(&self) -> ControlView {
        let mut clusters = BTreeMap::new();
        for id in self.cluster_ids() {
            if let Some(mut view) = self.cluster(&id) {
                view.usage.windows = self.usage(&id).await.unwrap_or_default();
                clusters.insert(id, view);
            }
        }
        ControlView {
            kill_switch: self.kill_switch(),
            clusters,
        }
    }

    /// The audit trail, newest first. Switches whose TTL is over are recorded first, so the
    /// trail shows them ("ended by ttl", actor `system`) even before the background task
    /// gets to them.
    ///
    /// # Errors
    /// An unreachable store.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, ControlError> {
        self.inner.end_expired().await?;
        Ok(self.inner.state_store.audit(limit).await?)
    }

    /// Counters for metrics: per cluster admitted, rejected by reason, breaker state.
    pub fn metrics(&self) -> MetricsSnapshot {
        let now = self.inner.clock.now_millis();
        let clusters = self
            .cluster_ids()
            .into_iter()
            .filter_map(|id| {
                let rt = self.runtime(&id)?;
                Some(ClusterMetrics {
                    admitted: rt.counters.admitted.load(Ordering::Relaxed),
                    rejected: Rejections::read(&rt.counters.rejected),
                    breaker: rt.breaker_seen(now).0,
                    enabled: now >= rt.disabled_until.load(Ordering::Acquire),
                    cluster: id,
                })
            })
            .collect();
        let inner = &self.inner;
        MetricsSnapshot {
            clusters,
            admitted: inner.totals.admitted.load(Ordering::Relaxed),
            rejected: Rejections::read(&inner.totals.rejected),
            kill_switch_engaged: now < inner.kill_until.load(Ordering::Acquire),
            store_errors: inner.store_errors.load(Ordering::Relaxed),
            fail_open_admissions: inner.fail_open_admissions.load(Ordering::Relaxed),
            state_version: inner.state.read().version,
        }
    }
}
