//! The shared control state (what a store persists) and the audit trail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ControlConfig, WindowConfig};

/// Everything an operator can change, as one versioned document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlState {
    /// The global kill switch.
    pub kill_switch: Switch,
    /// Per-cluster state, by cluster id.
    pub clusters: BTreeMap<String, ClusterState>,
}

/// A kill switch (global, or a cluster's disable): `engaged` blocks traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Switch {
    /// Whether traffic is blocked (until `expires_at`, when set).
    pub engaged: bool,
    /// Why it was last changed.
    pub reason: Option<String>,
    /// Who last changed it.
    pub changed_by: Option<String>,
    /// When it was last changed (Unix milliseconds).
    pub changed_at: Option<u64>,
    /// When an engaged switch lets traffic through again by itself (Unix milliseconds).
    pub expires_at: Option<u64>,
}

impl Switch {
    /// Whether traffic is blocked at `now`.
    #[inline]
    pub fn blocks_at(&self, now: u64) -> bool {
        self.engaged && self.expires_at.is_none_or(|at| now < at)
    }

    /// The switch as an operator should see it at `now`: a switch whose TTL is over reads as
    /// released by `system` at its expiry, even before the expiry has been written back.
    pub(crate) fn as_seen_at(&self, now: u64) -> Self {
        match self.expires_at {
            Some(at) if self.engaged && at <= now => Self {
                engaged: false,
                reason: Some(crate::plane::ENDED_BY_TTL.to_owned()),
                changed_by: Some("system".to_owned()),
                changed_at: Some(at),
                expires_at: None,
            },
            _ => self.clone(),
        }
    }

    /// The switch as one number: 0 = off, `u64::MAX` = on without expiry, else the expiry.
    pub(crate) fn blocked_until(&self) -> u64 {
        match (self.engaged, self.expires_at) {
            (false, _) => 0,
            (true, None) => u64::MAX,
            (true, Some(at)) => at,
        }
    }
}

/// A cluster's rate-limit settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSettings {
    /// Whether the limit is enforced.
    pub enabled: bool,
    /// The windows; a request needs room in all of them.
    pub windows: Vec<WindowConfig>,
    /// Each client's own windows (named `second`..`day`), checked with `windows`; absent
    /// from documents stored before per-client quotas existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_client: Vec<WindowConfig>,
}

/// One cluster's shared state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// The cluster's kill switch (`engaged` = the cluster is disabled).
    pub disabled: Switch,
    /// Rate-limit settings.
    pub rate_limit: RateLimitSettings,
    /// A manual trip: the breaker is forced open on every replica.
    pub breaker_forced_open: bool,
    /// Bumped on every manual reset, so every replica resets its local breaker.
    pub breaker_resets: u64,
}

impl ControlState {
    /// The initial state a configuration describes.
    pub fn from_config(config: &ControlConfig) -> Self {
        let clusters = config
            .clusters
            .iter()
            .map(|(id, c)| {
                let disabled = Switch {
                    engaged: !c.enabled,
                    reason: (!c.enabled).then(|| "disabled in configuration".to_owned()),
                    changed_by: (!c.enabled).then(|| "config".to_owned()),
                    ..Switch::default()
                };
                let state = ClusterState {
                    disabled,
                    rate_limit: RateLimitSettings {
                        enabled: c.rate_limit_enabled,
                        windows: c.windows.clone(),
                        per_client: c.per_client.clone(),
                    },
                    breaker_forced_open: false,
                    breaker_resets: 0,
                };
                (id.clone(), state)
            })
            .collect();
        Self {
            kill_switch: Switch::default(),
            clusters,
        }
    }
}

/// A state document with its version (1 for the first stored document).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// Increases by one with every change.
    pub version: u64,
    /// The state.
    pub state: ControlState,
}

/// One change in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The state version this change produced.
    pub version: u64,
    /// What was done, e.g. `kill_switch.enable`, `cluster.disable`, `rate_limit.update`.
    pub action: String,
    /// The cluster concerned (none for the global kill switch).
    pub cluster: Option<String>,
    /// The operator's reason.
    pub reason: Option<String>,
    /// Who made the change.
    pub actor: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// The affected part of the state before the change.
    pub before: serde_json::Value,
    /// The affected part of the state after the change.
    pub after: serde_json::Value,
}
