//! Changing the control state: the compare-and-swap loop every change runs through, and
//! the commands an operator issues (kill switch, clusters, rate limits, breakers).

use std::time::Duration;

use serde::Serialize;

use super::{runtime::Inner, ControlPlane};
use crate::{
    breaker::BreakerState,
    config::{validate_client_windows, validate_windows, WindowConfig},
    store::{
        AuditEntry, BreakerOp, ClusterState, ControlState, RateLimitSettings, StoreError, Switch,
        Versioned,
    },
    views::{BreakerView, ClusterView, KillSwitchView, RateLimitView},
};
use dreamnet_common::time::rfc3339;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No cluster has this id.
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// The change is malformed (e.g. an empty reason, a bad window).
    #[error("{0}")]
    Invalid(String),
    /// The store could not be reached; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other replicas kept changing the state; nothing was changed.
    #[error("the control state kept changing concurrently; retry")]
    Contended,
}

/// A partial rate-limit change (`POST /cluster/{id}/rate-limit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitUpdate {
    /// Sets (or adds) the `second` window (1 s).
    pub requests_per_second: Option<u64>,
    /// Sets (or adds) the `minute` window (60 s).
    pub requests_per_minute: Option<u64>,
    /// Sets (or adds) the `hour` window (3600 s).
    pub requests_per_hour: Option<u64>,
    /// Sets (or adds) the `day` window (86400 s).
    pub requests_per_day: Option<u64>,
    /// Turns enforcement on or off.
    pub enabled: Option<bool>,
    /// Replaces every window (applied before the `requestsPer*` fields).
    pub windows: Option<Vec<WindowConfig>>,
    /// Changes the per-client windows (only the fields given).
    pub per_client: Option<PerClientUpdate>,
}

/// A partial change of a cluster's per-client windows (`"perClient"` of
/// `POST /cluster/{id}/rate-limit`): a limit sets (or adds) its window, `null` removes it,
/// an absent field leaves it alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PerClientUpdate {
    /// Each client's `second` window (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, maximum = 4_294_967_295_u64))]
    pub requests_per_second: Option<Option<u64>>,
    /// Each client's `minute` window (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, maximum = 4_294_967_295_u64))]
    pub requests_per_minute: Option<Option<u64>>,
    /// Each client's `hour` window (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, maximum = 4_294_967_295_u64))]
    pub requests_per_hour: Option<Option<u64>>,
    /// Each client's `day` window (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, maximum = 4_294_967_295_u64))]
    pub requests_per_day: Option<Option<u64>>,
}

/// A field that is present (`null` included): `Some(value)`; an absent one stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    <Option<u64> as serde::Deserialize>::deserialize(d).map(Some)
}

/// The standard windows a `requestsPer*` field names.
const NAMED_WINDOWS: [(&str, u64); 4] = [
    ("second", 1),
    ("minute", 60),
    ("hour", 3600),
    ("day", 86_400),
];

/// Sets (`Some(Some)`), removes (`Some(None)`) or keeps (`None`) each named window, then
/// orders the windows shortest first.
fn apply_named(windows: &mut Vec<WindowConfig>, changes: [Option<Option<u64>>; 4]) {
    for (&(name, seconds), change) in NAMED_WINDOWS.iter().zip(changes) {
        match change {
            None => {}
            Some(None) => windows.retain(|w| w.name != name),
            Some(Some(limit)) => match windows.iter_mut().find(|w| w.name == name) {
                Some(w) => {
                    w.limit = limit;
                    w.seconds = seconds;
                }
                None => windows.push(WindowConfig::new(name, limit, seconds)),
            },
        }
    }
    windows.sort_by_key(|w| w.seconds);
}

impl RateLimitUpdate {
    fn apply(&self, settings: &mut RateLimitSettings) -> Result<(), ControlError> {
        if let Some(windows) = &self.windows {
            settings.windows.clone_from(windows);
        }
        let set = |limit: Option<u64>| limit.map(Some);
        apply_named(
            &mut settings.windows,
            [
                set(self.requests_per_second),
                set(self.requests_per_minute),
                set(self.requests_per_hour),
                set(self.requests_per_day),
            ],
        );
        if let Some(per_client) = &self.per_client {
            apply_named(
                &mut settings.per_client,
                [
                    per_client.requests_per_second,
                    per_client.requests_per_minute,
                    per_client.requests_per_hour,
                    per_client.requests_per_day,
                ],
            );
        }
        if let Some(enabled) = self.enabled {
            settings.enabled = enabled;
        }
        validate_windows(&settings.windows)
            .and_then(|()| validate_client_windows(&settings.per_client))
            .map_err(ControlError::Invalid)
    }
}

/// Who changes what, and why: the audit entry's fixed fields.
struct Change<'a> {
    action: &'static str,
    cluster: Option<&'a str>,
    reason: Option<&'a str>,
    actor: &'a str,
}

/// The part of the state a change touched, before and after (for the audit trail).
type BeforeAfter = (serde_json::Value, serde_json::Value);

impl Inner {
    /// Stores `base` with `entry` if nobody changed the state since `base` was loaded; then
    /// applies it here and tells the replicas reading `cluster` (all clusters for `None`).
    /// `Ok(None)`: someone else changed it first.
    pub(crate) async fn commit(
        &self,
        base: Versioned,
        entry: &AuditEntry,
        cluster: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let swapped = self
            .state_store
            .compare_and_swap(base.version, &base.state, entry)
            .await?;
        let Some(version) = swapped else {
            return Ok(None);
        };
        self.apply(Versioned {
            version,
            state: base.state,
        });
        let affected: Vec<String> = match cluster {
            Some(id) => vec![id.to_owned()],
            None => {
                let mut all: Vec<String> = self.clusters.keys().map(ToString::to_string).collect();
                all.sort();
                all
            }
        };
        if let Err(e) = self.state_store.notify(&affected).await {
            // The change is stored; replicas still see it within a refresh interval.
            self.store_failed(&e);
        }
        Ok(Some(version))
    }
}

impl ControlPlane {
    /// The compare-and-swap loop: load, `mutate`, store if nobody changed it meanwhile.
    async fn change(
        &self,
        change: Change<'_>,
        mutate: impl Fn(&mut ControlState, u64) -> Result<BeforeAfter, ControlError>,
    ) -> Result<(), ControlError> {
        if let Some(id) = change.cluster {
            if !self.has_cluster(id) {
                return Err(ControlError::UnknownCluster(id.to_owned()));
            }
        }
        let inner = &self.inner;
        // A switch that ended by its TTL is recorded before this change (the audit trail
        // stays in order); if the store is unreachable the change below fails anyway.
        let _ = inner.end_expired().await;
        for _ in 0..32 {
            let mut base = inner.base().await?;
            let now = inner.clock.now_millis();
            let (before, after) = mutate(&mut base.state, now)?;
            let entry = AuditEntry {
                version: base.version + 1,
                action: change.action.to_owned(),
                cluster: change.cluster.map(str::to_owned),
                reason: opt(change.reason),
                actor: Some(change.actor.to_owned()),
                at: rfc3339(now),
                before,
                after,
            };
            if let Some(version) = inner.commit(base, &entry, change.cluster).await? {
                tracing::info!(
                    action = change.action,
                    cluster = change.cluster,
                    reason = change.reason,
                    actor = change.actor,
                    version,
                    "control state changed"
                );
                return Ok(());
            }
        }
        Err(ControlError::Contended)
    }

    /// Engages the global kill switch: every guarded route answers 503. With `ttl`, traffic
    /// flows again by itself when it ends.
    ///
    /// # Errors
    /// An empty reason ([`ControlError::Invalid`]) or an unreachable store.
    pub async fn engage_kill_switch(
        &self,
        reason: &str,
        actor: &str,
        ttl: Option<Duration>,
    ) -> Result<KillSwitchView, ControlError> {
        require_reason(reason)?;
        let change = Change {
            action: "kill_switch.enable",
            cluster: None,
            reason: Some(reason),
            actor,
        };
        self.change(change, |state, now| {
            let before = json(&state.kill_switch);
            state.kill_switch = engaged(reason, actor, now, ttl);
            Ok((before, json(&state.kill_switch)))
        })
        .await?;
        Ok(self.kill_switch())
    }

    /// Releases the global kill switch.
    ///
    /// # Errors
    /// An unreachable store.
    pub async fn release_kill_switch(
        &self,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<KillSwitchView, ControlError> {
        let change = Change {
            action: "kill_switch.disable",
            cluster: None,
            reason,
            actor,
        };
        self.change(change, |state, now| {
            let before = json(&state.kill_switch);
            state.kill_switch = released(reason, actor, now);
            Ok((before, json(&state.kill_switch)))
        })
        .await?;
        Ok(self.kill_switch())
    }

    /// Disables a cluster: its guarded routes answer 503 (until `ttl` ends, when given).
    ///
    /// # Errors
    /// Unknown cluster, empty reason, unreachable store.
    pub async fn disable_cluster(
        &self,
        cluster: &str,
        reason: &str,
        actor: &str,
        ttl: Option<Duration>,
    ) -> Result<ClusterView, ControlError> {
        require_reason(reason)?;
        let change = Change {
            action: "cluster.disable",
            cluster: Some(cluster),
            reason: Some(reason),
            actor,
        };
        self.change(change, |state, now| {
            let c = cluster_state(state, cluster)?;
            let before = json(&c.disabled);
            c.disabled = engaged(reason, actor, now, ttl);
            Ok((before, json(&c.disabled)))
        })
        .await?;
        self.cluster(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))
    }

    /// Enables a cluster again.
    ///
    /// # Errors
    /// Unknown cluster, unreachable store.
    pub async fn enable_cluster(
        &self,
        cluster: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<ClusterView, ControlError> {
        let change = Change {
            action: "cluster.enable",
            cluster: Some(cluster),
            reason,
            actor,
        };
        self.change(change, |state, now| {
            let c = cluster_state(state, cluster)?;
            let before = json(&c.disabled);
            c.disabled = released(reason, actor, now);
            Ok((before, json(&c.disabled)))
        })
        .await?;
        self.cluster(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))
    }

    /// Changes a cluster's rate-limit settings (only the fields given).
    ///
    /// # Errors
    /// Unknown cluster, invalid windows, unreachable store.
    pub async fn set_rate_limit(
        &self,
        cluster: &str,
        update: &RateLimitUpdate,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<RateLimitView, ControlError> {
        let change = Change {
            action: "rate_limit.update",
            cluster: Some(cluster),
            reason,
            actor,
        };
        self.change(change, |state, _now| {
            let c = cluster_state(state, cluster)?;
            let before = json(&c.rate_limit);
            update.apply(&mut c.rate_limit)?;
            Ok((before, json(&c.rate_limit)))
        })
        .await?;
        self.rate_limit(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))
    }

    /// Trips a cluster's breaker by hand: forced open on every replica until reset.
    ///
    /// # Errors
    /// Unknown cluster, unreachable store.
    pub async fn trip_breaker(
        &self,
        cluster: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<BreakerView, ControlError> {
        self.breaker_change(cluster, reason, actor, true).await
    }

    /// Closes a cluster's breaker (forced or not) with an empty window, on every replica.
    ///
    /// # Errors
    /// Unknown cluster, unreachable store.
    pub async fn reset_breaker(
        &self,
        cluster: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<BreakerView, ControlError> {
        self.breaker_change(cluster, reason, actor, false).await
    }

    async fn breaker_change(
        &self,
        cluster: &str,
        reason: Option<&str>,
        actor: &str,
        trip: bool,
    ) -> Result<BreakerView, ControlError> {
        let before_state = self.breaker(cluster).map(|b| b.state);
        let change = Change {
            action: if trip {
                "circuit_breaker.trip"
            } else {
                "circuit_breaker.reset"
            },
            cluster: Some(cluster),
            reason,
            actor,
        };
        self.change(change, |state, _now| {
            let c = cluster_state(state, cluster)?;
            let before =
                serde_json::json!({ "state": before_state, "forcedOpen": c.breaker_forced_open });
            c.breaker_forced_open = trip;
            if !trip {
                c.breaker_resets += 1;
            }
            let after = serde_json::json!({
                "state": if trip { BreakerState::ForcedOpen } else { BreakerState::Closed },
                "forcedOpen": trip,
            });
            Ok((before, after))
        })
        .await?;
        if let Some(rt) = self.runtime(cluster) {
            if let Some(fleet) = &rt.fleet {
                // The document records the trip for every replica (and the audit); the fleet
                // breaker's own state follows, once: a reset empties the shared window.
                let op = if trip {
                    BreakerOp::ForceOpen
                } else {
                    BreakerOp::Reset
                };
                let reply = fleet
                    .run(&rt.id, op)
                    .await
                    .inspect_err(|_| fleet.mark_stale())?;
                self.inner.learned(rt, fleet, &reply);
            }
        }
        self.breaker(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))
    }
}

fn cluster_state<'a>(
    state: &'a mut ControlState,
    id: &str,
) -> Result<&'a mut ClusterState, ControlError> {
    state
        .clusters
        .get_mut(id)
        .ok_or_else(|| ControlError::UnknownCluster(id.to_owned()))
}

fn require_reason(reason: &str) -> Result<(), ControlError> {
    if reason.trim().is_empty() {
        return Err(ControlError::Invalid(
            "a non-empty reason is required".to_owned(),
        ));
    }
    Ok(())
}

fn opt(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn engaged(reason: &str, actor: &str, now: u64, ttl: Option<Duration>) -> Switch {
    Switch {
        engaged: true,
        reason: Some(reason.to_owned()),
        changed_by: Some(actor.to_owned()),
        changed_at: Some(now),
        expires_at: ttl
            .map(|ttl| now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))),
    }
}

pub(super) fn released(reason: Option<&str>, actor: &str, now: u64) -> Switch {
    Switch {
        engaged: false,
        reason: opt(reason),
        changed_by: Some(actor.to_owned()),
        changed_at: Some(now),
        expires_at: None,
    }
}

pub(super) fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn every_change_is_audited_with_before_and_after() {
        let (plane, _clock) = plane(100);
        plane
            .engage_kill_switch("incident", "alice", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        plane
            .release_kill_switch(Some("fixed"), "bob")
            .await
            .unwrap();
        plane
            .disable_cluster("beta", "noisy", "carol", None)
            .await
            .unwrap();
        plane
            .trip_breaker("alpha", Some("upstream down"), "dave")
            .await
            .unwrap();
        let audit = plane.audit(10).await.unwrap();
        let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "circuit_breaker.trip",
                "cluster.disable",
                "kill_switch.disable",
                "kill_switch.enable"
            ]
        );
        let enable = &audit[3];
        assert_eq!(enable.actor.as_deref(), Some("alice"));
        assert_eq!(enable.reason.as_deref(), Some("incident"));
        assert_eq!(enable.at, "2026-01-01T00:00:00.000Z");
        assert_eq!(enable.before["engaged"], false);
        assert_eq!(enable.after["engaged"], true);
        assert_eq!(enable.after["expiresAt"], T0 + 60_000);
        assert_eq!(audit[1].cluster.as_deref(), Some("beta"));
        assert_eq!(audit[0].after["state"], "forced_open");
        assert_eq!(
            audit.iter().map(|e| e.version).collect::<Vec<_>>(),
            [4, 3, 2, 1]
        );
        // Refused changes are not audited.
        assert!(plane.engage_kill_switch("  ", "eve", None).await.is_err());
        assert!(plane
            .disable_cluster("nope", "x", "eve", None)
            .await
            .is_err());
        assert_eq!(plane.audit(10).await.unwrap().len(), 4);
    }
}
