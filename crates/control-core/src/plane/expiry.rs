//! Recording switches that ended by their TTL. Traffic never waits for this (every check
//! evaluates `expiresAt` with the clock); it completes the audit trail and the state.

use super::{
    commands::{json, released},
    runtime::Inner,
};
use crate::store::{AuditEntry, ControlState, StoreError};
use dreamnet_common::time::rfc3339;

/// The audit reason of a switch released by its TTL.
pub(crate) const ENDED_BY_TTL: &str = "ended by ttl";
/// The audit actor of changes the plane makes by itself.
const SYSTEM_ACTOR: &str = "system";

/// What one round of [`Inner::end_expired`] found.
enum Round {
    /// One switch ended (or another writer won the race): look again.
    Again,
    /// The stored state has no expired switch any more: take it.
    Reload,
    /// Nothing left to do.
    Settled,
}

/// The engaged switch whose TTL ended first, if any is over at `now` (`None` = the global
/// kill switch, else the cluster id), with its expiry.
fn expired_switch(state: &ControlState, now: u64) -> Option<(Option<String>, u64)> {
    let expiry = |s: &crate::store::Switch| s.expires_at.filter(|&at| s.engaged && at <= now);
    let global = expiry(&state.kill_switch).map(|at| (None, at));
    let clusters = state
        .clusters
        .iter()
        .filter_map(|(id, c)| expiry(&c.disabled).map(|at| (Some(id.clone()), at)));
    // The earliest first, so the audit trail lists endings in the order they happened.
    global.into_iter().chain(clusters).min_by_key(|(_, at)| *at)
}

/// Releases the switch of `cluster` (`None` = the global kill switch) in `state` as ended
/// at `at`, and describes that change for the audit trail (`version` is the stored one).
fn release(
    state: &mut ControlState,
    version: u64,
    cluster: Option<&str>,
    at: u64,
) -> Option<AuditEntry> {
    let switch = match cluster {
        None => &mut state.kill_switch,
        Some(id) => &mut state.clusters.get_mut(id)?.disabled,
    };
    let before = json(switch);
    *switch = released(Some(ENDED_BY_TTL), SYSTEM_ACTOR, at);
    let action = if cluster.is_some() {
        "cluster.enable"
    } else {
        "kill_switch.disable"
    };
    Some(AuditEntry {
        version: version + 1,
        action: action.to_owned(),
        cluster: cluster.map(str::to_owned),
        reason: Some(ENDED_BY_TTL.to_owned()),
        actor: Some(SYSTEM_ACTOR.to_owned()),
        at: rfc3339(at),
        before,
        after: json(switch),
    })
}

impl Inner {
    /// Records every engaged switch whose TTL is over as released ("ended by ttl", actor
    /// `system`), one audit entry each, through the state compare-and-swap: when several
    /// planes notice the same expiry, exactly one stores it and the others, on reloading,
    /// find the switch already released. Runs in the background refresher, before every
    /// change and before the audit trail is read.
    pub(crate) async fn end_expired(&self) -> Result<(), StoreError> {
        // Bounded: each round ends one switch or loses a race to another writer.
        for _ in 0..64 {
            let now = self.clock.now_millis();
            if expired_switch(&self.state.read().state, now).is_none() {
                return Ok(());
            }
            match self.end_first_expired(now).await {
                Ok(Round::Again) => {}
                Ok(Round::Reload) => return self.refresh(true).await,
                Ok(Round::Settled) => return Ok(()),
                Err(e) => {
                    self.store_failed(&e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One round: the stored state's earliest expired switch, released and stored.
    async fn end_first_expired(&self, now: u64) -> Result<Round, StoreError> {
        let mut base = self.base().await?;
        let Some((cluster, at)) = expired_switch(&base.state, now) else {
            // Someone else released it.
            return Ok(Round::Reload);
        };
        let Some(entry) = release(&mut base.state, base.version, cluster.as_deref(), at) else {
            return Ok(Round::Settled);
        };
        if let Some(version) = self.commit(base, &entry, cluster.as_deref()).await? {
            tracing::info!(
                action = entry.action,
                cluster = entry.cluster,
                version,
                "control switch ended by its ttl"
            );
        }
        // Ended, or another writer got there first: reload and look again.
        Ok(Round::Again)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn switches_ended_by_their_ttl_are_audited_once_in_order() {
        let (plane, clock) = plane(100);
        plane
            .engage_kill_switch("deploy", "ops", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        plane
            .disable_cluster("alpha", "bad deploy", "ops", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(5));
        assert_eq!(plane.audit(10).await.unwrap().len(), 2, "nothing ended yet");
        clock.advance(Duration::from_secs(40));
        for _ in 0..3 {
            let audit = plane.audit(10).await.unwrap();
            let seen: Vec<_> = audit
                .iter()
                .map(|e| {
                    (
                        e.action.as_str(),
                        e.cluster.as_deref(),
                        e.reason.as_deref(),
                        e.actor.as_deref(),
                        e.at.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                seen,
                [
                    (
                        "kill_switch.disable",
                        None,
                        Some("ended by ttl"),
                        Some("system"),
                        "2026-01-01T00:00:30.000Z"
                    ),
                    (
                        "cluster.enable",
                        Some("alpha"),
                        Some("ended by ttl"),
                        Some("system"),
                        "2026-01-01T00:00:10.000Z"
                    ),
                    (
                        "cluster.disable",
                        Some("alpha"),
                        Some("bad deploy"),
                        Some("ops"),
                        "2026-01-01T00:00:00.000Z"
                    ),
                    (
                        "kill_switch.enable",
                        None,
                        Some("deploy"),
                        Some("ops"),
                        "2026-01-01T00:00:00.000Z"
                    ),
                ]
            );
            assert_eq!(audit[0].before["engaged"], true);
            assert_eq!(audit[0].after["engaged"], false);
            assert_eq!(audit[0].after["expiresAt"], serde_json::Value::Null);
        }
        let kill = plane.kill_switch();
        assert!(!kill.enabled);
        assert_eq!(kill.disabled_by.as_deref(), Some("system"));
        assert_eq!(kill.expires_at, None);
        assert_eq!(
            plane.cluster("alpha").unwrap().reason.as_deref(),
            Some("ended by ttl")
        );
        // The next change is recorded after the endings.
        plane
            .disable_cluster("beta", "noisy", "ops", Some(Duration::from_secs(1)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(1));
        plane.reset_breaker("alpha", None, "ops").await.unwrap();
        let actions: Vec<_> = plane
            .audit(3)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.cluster, e.version))
            .collect();
        assert_eq!(
            actions,
            [
                (
                    "circuit_breaker.reset".to_owned(),
                    Some("alpha".to_owned()),
                    7
                ),
                ("cluster.enable".to_owned(), Some("beta".to_owned()), 6),
                ("cluster.disable".to_owned(), Some("beta".to_owned()), 5),
            ]
        );
    }
}
