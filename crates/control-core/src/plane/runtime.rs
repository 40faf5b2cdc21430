//! The plane's runtime state: atomics for the cheap checks, a mutex per cluster breaker,
//! the local copy of the shared state, and the counters behind the metrics.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use http::HeaderValue;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use super::fleet::FleetBreaker;
use crate::{
    breaker::{Breaker, BreakerState, ClassifyFailure, Totals},
    client_key::SharedClientKey,
    config::{ControlConfig, WindowConfig},
    store::{CounterStore, RateLimitSettings, StateStore, StoreError, Versioned},
    window::policy_text,
};
use dreamnet_common::SharedClock;

/// A cluster's rate-limit settings as the plane uses them (replaced whole on a change, so
/// a request holds one consistent `Arc`).
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) enabled: bool,
    /// The cluster's (aggregate) windows.
    pub(crate) windows: Arc<[WindowConfig]>,
    /// Each client's windows (empty: no per-client quota), as the store counts them.
    pub(crate) per_client: Arc<[WindowConfig]>,
    /// Every window a decision reports on, in the order of the store's counts: the
    /// cluster's, then the client's named `client-<name>` (the same `Arc` as `windows`
    /// without per-client windows).
    pub(crate) reported: Arc<[WindowConfig]>,
    /// `RateLimit-Policy`'s value, rendered and validated once here rather than per
    /// request (a clone is a reference count).
    pub(crate) policy: Option<HeaderValue>,
}

/// The prefix of per-client windows in `RateLimit` headers (`client-minute`).
pub(crate) const CLIENT_WINDOW_PREFIX: &str = "client-";

impl Limits {
    pub(crate) fn new(settings: &RateLimitSettings) -> Self {
        let windows: Arc<[WindowConfig]> = Arc::from(settings.windows.as_slice());
        let reported = if settings.per_client.is_empty() {
            Arc::clone(&windows)
        } else {
            let client = settings.per_client.iter().map(|w| {
                WindowConfig::new(
                    format!("{CLIENT_WINDOW_PREFIX}{}", w.name),
                    w.limit,
                    w.seconds,
                )
            });
            settings.windows.iter().cloned().chain(client).collect()
        };
        Self {
            enabled: settings.enabled,
            // Window names are validated to [a-z0-9_-], so the text is a valid value.
            policy: policy_text(&reported)
                .and_then(|text| HeaderValue::from_maybe_shared(text).ok()),
            windows,
            per_client: Arc::from(settings.per_client.as_slice()),
            reported,
        }
    }

    /// Whether requests are counted at all.
    #[inline]
    pub(crate) fn enforced(&self) -> bool {
        self.enabled && !self.reported.is_empty()
    }
}

/// Admitted and rejected requests (per cluster, and in total).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: [AtomicU64; 5],
}

/// Per-cluster runtime: atomics for the cheap checks, a mutex for the breaker.
pub(crate) struct ClusterRuntime {
    pub(crate) id: Arc<str>,
    /// 0 = enabled, `u64::MAX` = disabled without expiry, else the expiry (Unix ms).
    pub(crate) disabled_until: AtomicU64,
    pub(crate) limits: RwLock<Arc<Limits>>,
    /// This replica's own breaker: it holds a manual trip (from the state document), and it
    /// decides alone when the cluster has no fleet-wide breaker or its store is failing.
    pub(crate) breaker: Mutex<Breaker>,
    /// The fleet-wide breaker, when the plane has a [`BreakerStore`](crate::BreakerStore)
    /// and the cluster's window is count-based.
    pub(crate) fleet: Option<Arc<FleetBreaker>>,
    pub(crate) breaker_resets_seen: AtomicU64,
    /// The shared store's epoch for this cluster last seen (`u64::MAX` = none yet).
    pub(crate) epoch_seen: AtomicU64,
    pub(crate) counters: Counters,
}

impl ClusterRuntime {
    pub(crate) fn limits(&self) -> Arc<Limits> {
        Arc::clone(&self.limits.read())
    }

    /// The breaker as the views show it: the fleet-wide state and window when the cluster
    /// has a fleet breaker whose store answers, else this replica's own; a manual trip
    /// (every replica has it from the state document) reads as forced open either way.
    pub(crate) fn breaker_seen(&self, now: u64) -> (BreakerState, Totals) {
        let local = self.breaker.lock();
        let fleet = self.fleet.as_ref().and_then(|f| f.view(now));
        let (state, totals) = fleet.unwrap_or_else(|| (local.state(now), local.totals()));
        if local.is_forced_open() {
            return (BreakerState::ForcedOpen, totals);
        }
        (state, totals)
    }
}

impl fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Everything a plane and its clones share.
pub(crate) struct Inner {
    pub(crate) clock: SharedClock,
    pub(crate) counter_store: Arc<dyn CounterStore>,
    pub(crate) state_store: Arc<dyn StateStore>,
    pub(crate) config: ControlConfig,
    pub(crate) classifier: Arc<dyn ClassifyFailure>,
    /// Who a request is, for per-client windows.
    pub(crate) client_key: SharedClientKey,
    pub(crate) fail_open: bool,
    /// The global kill switch as one number (see `Switch::blocked_until`).
    pub(crate) kill_until: AtomicU64,
    /// FxHash: looked up per request by the dynamic resolver, keyed by configured cluster
    /// ids (a lookup of an unknown id costs the same), so SipHash's DoS resistance buys
    /// nothing here.
    pub(crate) clusters: FxHashMap<Arc<str>, Arc<ClusterRuntime>>,
    pub(crate) state: RwLock<Versioned>,
    pub(crate) totals: Counters,
    pub(crate) store_errors: AtomicU64,
    pub(crate) fail_open_admissions: AtomicU64,
    pub(crate) last_warning: AtomicU64,
    /// One reload at a time: concurrent requests noticing the same epoch wait for one load.
    pub(crate) reload: tokio::sync::Mutex<()>,
}

impl Inner {
    /// Counts a failed store operation and warns (at most once per 10 s).
    pub(crate) fn store_failed(&self, error: &StoreError) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        // One warning per 10 s: an unreachable store must not flood the logs.
        let now = self.clock.now_millis();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last.saturating_add(10_000)
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %error,
                fail_open = self.fail_open,
                "control store unreachable: keeping the last known control state; rate limiting fails {}",
                if self.fail_open { "open" } else { "closed" }
            );
        }
    }

    /// `what`, followed by the operator's reason for the switch, when there is one.
    pub(crate) fn switch_detail(&self, what: &str, cluster: Option<&str>) -> String {
        let state = self.state.read();
        let reason = match cluster {
            None => state.state.kill_switch.reason.clone(),
            Some(id) => state
                .state
                .clusters
                .get(id)
                .and_then(|c| c.disabled.reason.clone()),
        };
        match reason {
            Some(reason) if !reason.is_empty() => format!("{what}: {reason}"),
            _ => what.to_owned(),
        }
    }
}
