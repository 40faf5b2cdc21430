//! The JSON shapes the control API answers with (and [`ControlPlane`](crate::ControlPlane)'s
//! read methods return): camelCase, timestamps in RFC 3339.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::Serialize;

use crate::{
    breaker::BreakerState,
    config::{PerClientLimits, SlidingWindow, WindowConfig},
    plane::{Limits, RejectReason},
    store::Switch,
};
use dreamnet_common::time::rfc3339;

/// The global kill switch (`GET /api/control/kill-switch`). `enabled: true` = blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchView {
    /// Whether guarded traffic is blocked now.
    pub enabled: bool,
    /// The reason of the last change.
    pub reason: Option<String>,
    /// Who made the last change.
    pub disabled_by: Option<String>,
    /// When (RFC 3339).
    pub changed_at: Option<String>,
    /// When an engaged switch ends by itself (RFC 3339).
    pub expires_at: Option<String>,
}

impl KillSwitchView {
    pub(crate) fn new(switch: &Switch, now: u64) -> Self {
        let switch = &switch.as_seen_at(now);
        Self {
            enabled: switch.blocks_at(now),
            reason: switch.reason.clone(),
            disabled_by: switch.changed_by.clone(),
            changed_at: switch.changed_at.map(rfc3339),
            expires_at: switch.expires_at.map(rfc3339),
        }
    }
}

/// A cluster's rate-limit settings (`GET /api/control/cluster/{id}/rate-limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitView {
    /// The `minute` window's limit, if there is one.
    pub requests_per_minute: Option<u64>,
    /// The `hour` window's limit, if there is one.
    pub requests_per_hour: Option<u64>,
    /// The `day` window's limit, if there is one.
    pub requests_per_day: Option<u64>,
    /// Whether the limit is enforced.
    pub enabled: bool,
    /// Every window.
    pub windows: Vec<WindowConfig>,
    /// Each client's own windows (`{}` when the cluster has none).
    pub per_client: PerClientLimits,
}

impl RateLimitView {
    pub(crate) fn new(limits: &Limits) -> Self {
        let find = |name: &str| {
            limits
                .windows
                .iter()
                .find(|w| w.name == name)
                .map(|w| w.limit)
        };
        Self {
            requests_per_minute: find("minute"),
            requests_per_hour: find("hour"),
            requests_per_day: find("day"),
            enabled: limits.enabled,
            windows: limits.windows.to_vec(),
            per_client: PerClientLimits::of_windows(&limits.per_client),
        }
    }
}

/// One window's current usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WindowUsage {
    /// Window name.
    pub name: String,
    /// Its limit.
    pub limit: u64,
    /// Its length in seconds.
    pub seconds: u64,
    /// Requests admitted in the current window (all replicas, on a shared store).
    pub used: u64,
    /// Requests left.
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_seconds: u64,
}

/// Rejections by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rejections {
    /// Global kill switch.
    pub kill_switch: u64,
    /// Cluster disabled.
    pub cluster_disabled: u64,
    /// Breaker open.
    pub circuit_open: u64,
    /// Rate limited (429).
    pub rate_limited: u64,
    /// Store unreachable with fail-closed rate limiting.
    pub store_unavailable: u64,
}

impl Rejections {
    pub(crate) fn read(counters: &[AtomicU64; 5]) -> Self {
        let get = |r: RejectReason| counters[r.index()].load(Ordering::Relaxed);
        Self {
            kill_switch: get(RejectReason::KillSwitch),
            cluster_disabled: get(RejectReason::ClusterDisabled),
            circuit_open: get(RejectReason::CircuitOpen),
            rate_limited: get(RejectReason::RateLimited),
            store_unavailable: get(RejectReason::StoreUnavailable),
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: RejectReason) -> u64 {
        match reason {
            RejectReason::KillSwitch => self.kill_switch,
            RejectReason::ClusterDisabled => self.cluster_disabled,
            RejectReason::CircuitOpen => self.circuit_open,
            RejectReason::RateLimited => self.rate_limited,
            RejectReason::StoreUnavailable => self.store_unavailable,
        }
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

/// This replica's request counters for a cluster, plus its window usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// Current windows (shared across replicas on a shared store).
    pub windows: Vec<WindowUsage>,
    /// Requests admitted by this replica since start.
    pub admitted: u64,
    /// Requests rejected by this replica since start.
    pub rejected: Rejections,
}

/// A cluster's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// `closed`, `open`, `half_open` or `forced_open`.
    pub state: BreakerState,
    /// Calls in the sliding window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// `count` or `time`.
    pub window: SlidingWindow,
    /// Calls or seconds.
    pub window_size: u32,
    /// Whether the window and state are shared by every replica (a fleet-wide breaker on
    /// the shared store) rather than this replica's own.
    pub fleet_wide: bool,
}

/// One cluster (`GET /api/control` → `clusters.{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Whether traffic is allowed (not disabled, or the disable expired).
    pub enabled: bool,
    /// The reason of the last enable/disable.
    pub reason: Option<String>,
    /// Who made it.
    pub disabled_by: Option<String>,
    /// When (RFC 3339).
    pub changed_at: Option<String>,
    /// When a disable ends by itself (RFC 3339).
    pub expires_at: Option<String>,
    /// Rate-limit settings.
    pub rate_limit: RateLimitView,
    /// Usage.
    pub usage: UsageView,
    /// The breaker.
    pub circuit_breaker: BreakerView,
}

/// `GET /api/control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ControlView {
    /// The global kill switch.
    pub kill_switch: KillSwitchView,
    /// Every cluster by id.
    pub clusters: BTreeMap<String, ClusterView>,
}

/// One cluster's counters in a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterMetrics {
    /// Cluster id.
    pub cluster: String,
    /// Admitted requests.
    pub admitted: u64,
    /// Rejected requests by reason.
    pub rejected: Rejections,
    /// Breaker state now.
    pub breaker: BreakerState,
    /// Whether the cluster is enabled now.
    pub enabled: bool,
}

/// [`ControlPlane::metrics`](crate::ControlPlane::metrics): counters since this plane was built (this replica only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    /// Per cluster, sorted by id.
    pub clusters: Vec<ClusterMetrics>,
    /// Admitted requests, all clusters.
    pub admitted: u64,
    /// Rejected requests by reason, all clusters.
    pub rejected: Rejections,
    /// Whether the global kill switch blocks traffic now.
    pub kill_switch_engaged: bool,
    /// Failed store operations (requests and background refreshes).
    pub store_errors: u64,
    /// Requests admitted without a rate-limit check because the store was unreachable.
    pub fail_open_admissions: u64,
    /// The version of the control state this replica enforces.
    pub state_version: u64,
}
