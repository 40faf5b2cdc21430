//! What an admission check decides: [`Decision`], [`Permit`], [`Rejection`], and the
//! rate-limit figures both carry ([`RateLimitStatus`]). Plain data: the layer turns it into
//! HTTP (problem+json, `Retry-After`, `RateLimit` headers).

use std::{fmt, sync::Arc, time::Duration};

use super::runtime::{ClusterRuntime, Inner, Limits};
use crate::{
    breaker::{Classification, Outcome, Ticket},
    config::WindowConfig,
    store::{BreakerOp, FleetTicket},
    window::Verdict,
};

/// Which breaker admitted a call: this replica's own, or the fleet-wide one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerTicket {
    Local(Ticket),
    Fleet(FleetTicket),
}

/// Why a guarded call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The global kill switch is engaged (503).
    KillSwitch,
    /// The cluster is disabled (503).
    ClusterDisabled,
    /// The cluster's breaker is open, half-open without a free probe, or forced open (503).
    CircuitOpen,
    /// A rate-limit window is exhausted (429).
    RateLimited,
    /// The shared store is unreachable and rate limiting fails closed (503).
    StoreUnavailable,
}

impl RejectReason {
    /// All reasons, in check order.
    pub const ALL: [Self; 5] = [
        Self::KillSwitch,
        Self::ClusterDisabled,
        Self::CircuitOpen,
        Self::RateLimited,
        Self::StoreUnavailable,
    ];

    /// The metric label: `kill_switch`, `cluster_disabled`, `circuit_open`, `rate_limited`,
    /// `store_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KillSwitch => "kill_switch",
            Self::ClusterDisabled => "cluster_disabled",
            Self::CircuitOpen => "circuit_open",
            Self::RateLimited => "rate_limited",
            Self::StoreUnavailable => "store_unavailable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of an admission check ([`ControlPlane::decide`](crate::ControlPlane::decide)).
#[derive(Debug)]
pub enum Decision {
    /// The call may run; report how it ended through the permit.
    Admit(Permit),
    /// The call must not run.
    Deny(Rejection),
}

/// A cluster's rate-limit figures for one decision: the policy (every window) and, when
/// the counters were read, the window with the least remaining (on a tie the longer one).
/// The layer renders them as `RateLimit-Policy` and `RateLimit`.
#[derive(Debug, Clone)]
pub struct RateLimitStatus {
    limits: Arc<Limits>,
    verdict: Option<Verdict>,
}

impl RateLimitStatus {
    pub(crate) fn new(limits: Arc<Limits>, verdict: Option<Verdict>) -> Self {
        Self { limits, verdict }
    }

    /// Every window of the cluster's policy: its own, then the per-client ones (named
    /// `client-<name>`).
    #[allow(clippy::misnamed_getters)] // the policy is every window, not only the cluster's
    pub fn windows(&self) -> &[WindowConfig] {
        &self.limits.reported
    }

    /// The window reported in `RateLimit`, when the counters were read: the binding one
    /// (least remaining), a cluster's or the client's.
    pub fn reported(&self) -> Option<&WindowConfig> {
        self.verdict.map(|v| &self.limits.reported[v.reported])
    }

    /// Units left in the reported window.
    pub fn remaining(&self) -> Option<u64> {
        self.verdict.map(|v| v.remaining)
    }

    /// Seconds until the reported window resets (rounded up).
    pub fn reset_seconds(&self) -> Option<u64> {
        self.verdict.map(|v| v.reset_secs)
    }

    /// The policy's header value, rendered once per settings change.
    pub(crate) fn policy_header(&self) -> Option<&http::HeaderValue> {
        self.limits.policy.as_ref()
    }
}

/// A refused call: why, what to tell the caller, how long to wait, and the cluster's
/// rate-limit figures. [`into_response`](Rejection::into_response) renders it as
/// problem+json.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub(crate) reason: Option<RejectReason>,
    pub(crate) detail: String,
    pub(crate) retry_after_millis: Option<u64>,
    pub(crate) rate_limit: Option<RateLimitStatus>,
    pub(crate) trace_id: Option<String>,
}

impl Rejection {
    /// Why the call was refused (`None`: the cluster does not exist).
    pub fn reason(&self) -> Option<RejectReason> {
        self.reason
    }

    /// What happened, for a human (the operator's reason included, e.g. `the global kill
    /// switch is engaged: Emergency maintenance`).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// How long the caller should wait, when that is known (a TTL, an open breaker, a
    /// window reset; none for a switch without TTL or a forced-open breaker).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_millis.map(Duration::from_millis)
    }

    /// The cluster's rate-limit figures (`None` when the limit is off).
    pub fn rate_limit(&self) -> Option<&RateLimitStatus> {
        self.rate_limit.as_ref()
    }

    /// The trace id of the refused call, when the caller gave one.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    pub(crate) fn unknown_cluster(cluster: &str, trace_id: Option<&str>) -> Self {
        Self {
            reason: None,
            detail: format!("unknown cluster {cluster:?}"),
            retry_after_millis: None,
            rate_limit: None,
            trace_id: trace_id.map(str::to_owned),
        }
    }
}

/// An admitted call. Report how it ended with [`Permit::finish`]; dropped unfinished, it
/// records nothing and gives a half-open probe permit back.
pub struct Permit {
    pub(crate) plane: Arc<Inner>,
    pub(crate) cluster: Arc<ClusterRuntime>,
    pub(crate) ticket: Option<BreakerTicket>,
    pub(crate) started: u64,
    pub(crate) rate_limit: Option<RateLimitStatus>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("cluster", &self.cluster.id)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The cluster this call was admitted to.
    pub fn cluster(&self) -> &str {
        &self.cluster.id
    }

    /// The cluster's rate-limit figures after this call was counted (`None` when the
    /// limit is off).
    pub fn rate_limit(&self) -> Option<&RateLimitStatus> {
        self.rate_limit.as_ref()
    }

    /// Moves the rate-limit figures out (a second call gives `None`).
    pub(crate) fn take_rate_limit(&mut self) -> Option<RateLimitStatus> {
        self.rate_limit.take()
    }

    /// Records the outcome in the cluster's breaker (classified by the plane's classifier;
    /// an ignored outcome records nothing and gives a half-open probe permit back). A
    /// fleet-wide breaker gets the outcome from a spawned task: the response never waits
    /// for it.
    pub fn finish(mut self, outcome: Outcome) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let failed = match self.plane.classifier.classify(outcome) {
            Classification::Ignored => return self.release(ticket),
            Classification::Failure => true,
            Classification::Success => false,
        };
        let now = self.plane.clock.now_millis();
        let took = now.saturating_sub(self.started);
        match ticket {
            BreakerTicket::Local(ticket) => {
                self.cluster
                    .breaker
                    .lock()
                    .record(ticket, failed, took, now);
            }
            BreakerTicket::Fleet(ticket) => {
                self.plane
                    .record_in_fleet(&self.cluster, ticket, failed, took);
            }
        }
    }

    /// Gives a half-open probe permit back (a closed breaker's ticket needs nothing).
    fn release(&self, ticket: BreakerTicket) {
        match ticket {
            BreakerTicket::Local(ticket) => self.cluster.breaker.lock().release(ticket),
            BreakerTicket::Fleet(ticket) if ticket.probe => {
                self.plane
                    .send_to_fleet(&self.cluster, BreakerOp::Release(ticket));
            }
            BreakerTicket::Fleet(_) => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.release(ticket);
        }
    }
}
