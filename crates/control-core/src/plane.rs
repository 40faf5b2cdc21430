//! [`ControlPlane`]: the shared state, admission decisions, changes and views.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::{
    breaker::{Breaker, BreakerState, ClassifyFailure, Outcome, ServerErrors, Ticket},
    config::{validate_windows, ControlConfig, WindowConfig},
    state::{AuditEntry, ClusterState, ControlState, RateLimitSettings, Switch, Versioned},
    store::{memory::MemoryStore, BoxFuture, ControlStore, StoreError},
    time::rfc3339,
    window::{policy_header, Taken, Verdict},
};
use dreamnet_common::{Problem, SharedClock, SystemClock};

/// The `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How often a plane on a shared store polls it for changes by default.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Why a guarded request was rejected.
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

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
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

/// A cluster's rate-limit settings as the plane uses them.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) enabled: bool,
    pub(crate) windows: Vec<WindowConfig>,
    pub(crate) policy: Option<HeaderValue>,
}

impl Limits {
    fn new(settings: &RateLimitSettings) -> Self {
        Self {
            enabled: settings.enabled,
            windows: settings.windows.clone(),
            policy: policy_header(&settings.windows),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    rejected: [AtomicU64; 5],
}

/// Per-cluster runtime: atomics for the cheap checks, a mutex for the breaker.
pub(crate) struct ClusterRuntime {
    pub(crate) id: Arc<str>,
    disabled_until: AtomicU64,
    limits: RwLock<Arc<Limits>>,
    breaker: Mutex<Breaker>,
    breaker_resets_seen: AtomicU64,
    epoch_seen: AtomicU64,
    counters: Counters,
}

impl fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    clock: SharedClock,
    store: Arc<dyn ControlStore>,
    config: ControlConfig,
    classifier: Arc<dyn ClassifyFailure>,
    fail_open: bool,
    kill_until: AtomicU64,
    clusters: HashMap<Arc<str>, Arc<ClusterRuntime>>,
    state: RwLock<Versioned>,
    totals: Counters,
    store_errors: AtomicU64,
    fail_open_admissions: AtomicU64,
    last_warning: AtomicU64,
    reload: tokio::sync::Mutex<()>,
}

/// The control plane: kill switches, rate limits and breakers for a set of clusters.
///
/// Cheap to clone (an `Arc` inside); every clone, every layer made from it and the
/// [`ControlApi`](crate::ControlApi) see the same state.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dreamnet_control_core::ControlPlane;
///
/// let plane = ControlPlane::builder().build(); // the seed's 12 clusters, memory store
/// plane.engage_kill_switch("maintenance", "ops", None).await.unwrap();
/// assert!(plane.kill_switch().enabled);
/// # }
/// ```
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.inner.store)
            .field("clusters", &self.inner.clusters.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ControlPlane`].
pub struct ControlPlaneBuilder {
    config: ControlConfig,
    store: Option<Arc<dyn ControlStore>>,
    clock: Option<SharedClock>,
    classifier: Arc<dyn ClassifyFailure>,
    refresh_interval: Duration,
}

impl fmt::Debug for ControlPlaneBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneBuilder {
    /// Replaces the configuration (default: the seed's clusters).
    #[must_use]
    pub fn config(mut self, config: ControlConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses this store (default: a fresh [`MemoryStore`]).
    #[must_use]
    pub fn store(mut self, store: impl ControlStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses this shared store.
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn ControlStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this clock (default: the system clock). Tests pass a `ManualClock`.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Decides which call outcomes count as breaker failures (default: [`ServerErrors`]).
    #[must_use]
    pub fn classifier(mut self, classifier: impl ClassifyFailure) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// How often a plane on a shared store polls it (default 250 ms).
    #[must_use]
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Builds the plane. On a shared store it also starts a background task (when called
    /// inside a tokio runtime) that polls the store; call [`ControlPlane::sync`] to load
    /// the shared state right away.
    ///
    /// # Panics
    /// When the configuration is invalid (configurations from [`ControlConfig::from_toml_str`]
    /// are already validated).
    pub fn build(self) -> ControlPlane {
        if let Err(e) = self.config.validate() {
            panic!("{e}");
        }
        let state = ControlState::from_config(&self.config);
        let clusters = state
            .clusters
            .iter()
            .map(|(id, cluster)| {
                let id: Arc<str> = Arc::from(id.as_str());
                let rt = ClusterRuntime {
                    id: Arc::clone(&id),
                    disabled_until: AtomicU64::new(cluster.disabled.blocked_until()),
                    limits: RwLock::new(Arc::new(Limits::new(&cluster.rate_limit))),
                    breaker: Mutex::new(Breaker::new(self.config.breaker_for(&id))),
                    breaker_resets_seen: AtomicU64::new(0),
                    epoch_seen: AtomicU64::new(u64::MAX),
                    counters: Counters::default(),
                };
                (id, Arc::new(rt))
            })
            .collect();
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let inner = Arc::new(Inner {
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            fail_open: self.config.fail_open,
            config: self.config,
            classifier: self.classifier,
            kill_until: AtomicU64::new(0),
            clusters,
            state: RwLock::new(Versioned { version: 0, state }),
            totals: Counters::default(),
            store_errors: AtomicU64::new(0),
            fail_open_admissions: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(()),
            store,
        });
        // Polls a shared store and, on any store, records switches that ended by their TTL.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(refresher(Arc::downgrade(&inner), self.refresh_interval));
        }
        ControlPlane { inner }
    }
}

async fn refresher(plane: Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = plane.upgrade() else { return };
        if inner.store.is_shared() {
            let _ = inner.refresh(false).await;
        }
        let _ = inner.end_expired().await;
    }
}

/// What the admission check decided.
pub(crate) enum Admission {
    Admitted(CallGuard),
    Rejected(Rejection),
    Pending(BoxFuture<'static, Result<CallGuard, Rejection>>),
}

/// An admitted call: records its outcome in the breaker and decorates its response.
/// Dropped without [`CallGuard::finish`], it gives a half-open probe permit back.
pub(crate) struct CallGuard {
    plane: Arc<Inner>,
    cluster: Arc<ClusterRuntime>,
    ticket: Option<Ticket>,
    started: u64,
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
}

impl CallGuard {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            let failed = self.plane.classifier.is_failure(outcome);
            let now = self.plane.clock.now_millis();
            let took = now.saturating_sub(self.started);
            self.cluster
                .breaker
                .lock()
                .record(ticket, failed, took, now);
        }
    }

    /// Moves the rate-limit headers into `headers` (a second call adds nothing).
    pub(crate) fn decorate(&mut self, headers: &mut HeaderMap) {
        if let Some(policy) = self.policy.take() {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
        }
        if let Some(ratelimit) = self.ratelimit.take() {
            headers.insert(RATELIMIT.clone(), ratelimit);
        }
    }
}

/// A refused call: why, and the problem+json response to answer with.
#[derive(Debug)]
pub struct Rejection {
    reason: Option<RejectReason>,
    response: Response<Full<Bytes>>,
}

impl Rejection {
    /// Why the call was refused (`None`: the cluster does not exist).
    pub fn reason(&self) -> Option<RejectReason> {
        self.reason
    }

    /// The response status (503, 429 or 404).
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The problem+json response, with `Retry-After` and rate-limit headers where they apply.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.response
    }
}

/// A call admitted by [`ControlPlane::acquire`]. Report how it ended with
/// [`Permit::finish`]; dropped unfinished, it records nothing and gives a half-open probe
/// permit back.
pub struct Permit {
    guard: CallGuard,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("cluster", &self.guard.cluster.id)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// Records the outcome in the cluster's breaker (classified by the plane's classifier).
    pub fn finish(self, outcome: Outcome) {
        self.guard.finish(outcome);
    }

    /// Moves `RateLimit-Policy` and `RateLimit` into a response's headers (once).
    pub fn decorate(&mut self, headers: &mut HeaderMap) {
        self.guard.decorate(headers);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.cluster.breaker.lock().release(ticket);
        }
    }
}

impl Inner {
    fn reject(
        &self,
        cluster: &ClusterRuntime,
        reason: RejectReason,
        problem: Problem,
        trace_id: Option<&str>,
    ) -> Rejection {
        cluster.counters.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.totals.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(cluster = %cluster.id, reason = reason.as_str(), trace_id, "request rejected by control plane");
        let mut problem = problem;
        if reason != RejectReason::RateLimited {
            // The limiter was not consulted; `RateLimit` is added by `with_ratelimit`.
            let limits = cluster.limits.read();
            if let (true, Some(policy)) = (limits.enabled, &limits.policy) {
                problem = problem.header(RATELIMIT_POLICY.clone(), policy.clone());
            }
        }
        let response = problem
            .type_uri(format!(
                "urn:dreamnet:control:{}",
                reason.as_str().replace('_', "-")
            ))
            .maybe_trace_id(trace_id)
            .into_response();
        Rejection {
            reason: Some(reason),
            response,
        }
    }

    /// The global kill switch or the cluster's disable, if either blocks at `now`.
    fn switched_off(
        &self,
        rt: &ClusterRuntime,
        now: u64,
        trace_id: Option<&str>,
    ) -> Option<Rejection> {
        let kill = self.kill_until.load(Ordering::Acquire);
        if now < kill {
            let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .detail(self.switch_detail("the global kill switch is engaged", None));
            if kill != u64::MAX {
                p = p.retry_after_millis(kill - now);
            }
            return Some(self.reject(rt, RejectReason::KillSwitch, p, trace_id));
        }
        let disabled = rt.disabled_until.load(Ordering::Acquire);
        if now < disabled {
            let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .detail(
                    self.switch_detail(&format!("cluster {} is disabled", rt.id), Some(&rt.id)),
                );
            if disabled != u64::MAX {
                p = p.retry_after_millis(disabled - now);
            }
            return Some(self.reject(rt, RejectReason::ClusterDisabled, p, trace_id));
        }
        None
    }

    /// Answers a rejection made before the limiter (kill switch, disabled cluster, open
    /// breaker) with the cluster's `RateLimit` read from the store without taking anything:
    /// synchronously on memory, with one read-only round trip on a shared store. When the
    /// store cannot be read the header is omitted (and the error counted).
    fn with_ratelimit(
        self: &Arc<Self>,
        rt: &ClusterRuntime,
        mut rejection: Rejection,
        now: u64,
    ) -> Admission {
        let limits = Arc::clone(&rt.limits.read());
        if !limits.enabled || limits.windows.is_empty() {
            return Admission::Rejected(rejection);
        }
        if let Some(peeked) = self.store.peek_now(&rt.id, &limits.windows, now) {
            self.add_ratelimit(&mut rejection, &limits, peeked);
            return Admission::Rejected(rejection);
        }
        let plane = Arc::clone(self);
        let cluster = Arc::clone(&rt.id);
        Admission::Pending(Box::pin(async move {
            let peeked = plane.store.peek(&cluster, &limits.windows, now).await;
            plane.add_ratelimit(&mut rejection, &limits, peeked);
            Err(rejection)
        }))
    }

    /// Returns the unit an admitted `take` spent, for a request refused after it (a kill
    /// switch or disable noticed through the epoch), so the refusal consumes nothing like
    /// every other rejection. One more round trip, only on this rare path; until it lands,
    /// a concurrent request may see that unit as used. If it fails the unit stays spent
    /// (counted in `store_errors`). Answers the counts as they are afterwards.
    async fn give_back(&self, rt: &ClusterRuntime, limits: &Limits, taken: &Taken) -> Taken {
        let mut left = Taken {
            admitted: false,
            ..taken.clone()
        };
        if taken.admitted {
            match self.store.give_back(&rt.id, &limits.windows, taken).await {
                Ok(()) => left
                    .counts
                    .iter_mut()
                    .for_each(|c| *c = c.saturating_sub(1)),
                Err(error) => self.store_failed(&error),
            }
        }
        left
    }

    fn add_ratelimit(
        &self,
        rejection: &mut Rejection,
        limits: &Limits,
        peeked: Result<Taken, StoreError>,
    ) {
        match peeked {
            Ok(taken) => {
                if let Some(verdict) = Verdict::read(&taken, &limits.windows) {
                    rejection
                        .response
                        .headers_mut()
                        .insert(RATELIMIT.clone(), verdict.header(&limits.windows));
                }
            }
            Err(error) => self.store_failed(&error),
        }
    }

    fn admit(self: &Arc<Self>, rt: &Arc<ClusterRuntime>, trace_id: Option<&str>) -> Admission {
        let now = self.clock.now_millis();
        if let Some(rejection) = self.switched_off(rt, now, trace_id) {
            return self.with_ratelimit(rt, rejection, now);
        }
        let acquired = rt.breaker.lock().try_acquire(now);
        let ticket = match acquired {
            Ok(ticket) => ticket,
            Err(retry_after) => {
                let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .detail(format!("the circuit breaker of cluster {} is open", rt.id));
                if let Some(ms) = retry_after {
                    p = p.retry_after_millis(ms);
                }
                let rejection = self.reject(rt, RejectReason::CircuitOpen, p, trace_id);
                return self.with_ratelimit(rt, rejection, now);
            }
        };
        let guard = CallGuard {
            plane: Arc::clone(self),
            cluster: Arc::clone(rt),
            ticket: Some(ticket),
            started: now,
            policy: None,
            ratelimit: None,
        };
        let limits = Arc::clone(&rt.limits.read());
        if !limits.enabled || limits.windows.is_empty() {
            return Admission::Admitted(self.admitted(guard));
        }
        if let Some(taken) = self.store.take_now(&rt.id, &limits.windows, now) {
            return match self.rate_limited(guard, &limits, taken, trace_id) {
                Ok(guard) => Admission::Admitted(guard),
                Err(rejection) => Admission::Rejected(rejection),
            };
        }
        let plane = Arc::clone(self);
        let trace_id = trace_id.map(str::to_owned);
        Admission::Pending(Box::pin(async move {
            let taken = plane
                .store
                .take(&guard.cluster.id, &limits.windows, now)
                .await;
            if let Ok(
                spent @ Taken {
                    epoch: Some(epoch), ..
                },
            ) = &taken
            {
                let seen = guard.cluster.epoch_seen.swap(*epoch, Ordering::AcqRel);
                if seen != *epoch {
                    // Someone changed the shared state: reload before answering. A kill
                    // switch or disable found this way stops this very request.
                    let _ = plane.refresh(true).await;
                    let now = plane.clock.now_millis();
                    if let Some(mut rejection) =
                        plane.switched_off(&guard.cluster, now, trace_id.as_deref())
                    {
                        let left = plane.give_back(&guard.cluster, &limits, spent).await;
                        plane.add_ratelimit(&mut rejection, &limits, Ok(left));
                        return Err(rejection);
                    }
                }
            }
            plane.rate_limited(guard, &limits, taken, trace_id.as_deref())
        }))
    }

    fn admitted(&self, guard: CallGuard) -> CallGuard {
        guard
            .cluster
            .counters
            .admitted
            .fetch_add(1, Ordering::Relaxed);
        self.totals.admitted.fetch_add(1, Ordering::Relaxed);
        guard
    }

    #[allow(clippy::result_large_err)] // the rejection is the response itself
    fn rate_limited(
        &self,
        mut guard: CallGuard,
        limits: &Limits,
        taken: Result<Taken, StoreError>,
        trace_id: Option<&str>,
    ) -> Result<CallGuard, Rejection> {
        guard.policy.clone_from(&limits.policy);
        let taken = match taken {
            Ok(taken) => taken,
            Err(error) => {
                self.store_failed(&error);
                if self.fail_open {
                    self.fail_open_admissions.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.admitted(guard));
                }
                let p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .detail("the rate limiter is unavailable")
                    .retry_after_millis(1000);
                let cluster = Arc::clone(&guard.cluster);
                drop(guard);
                return Err(self.reject(&cluster, RejectReason::StoreUnavailable, p, trace_id));
            }
        };
        let Some(verdict) = Verdict::read(&taken, &limits.windows) else {
            return Ok(self.admitted(guard));
        };
        let ratelimit = verdict.header(&limits.windows);
        if verdict.admitted {
            guard.ratelimit = Some(ratelimit);
            return Ok(self.admitted(guard));
        }
        let window = &limits.windows[verdict.reported];
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            .detail(format!(
                "cluster {} is over its rate limit ({} requests per {} s)",
                guard.cluster.id, window.limit, window.seconds
            ))
            .retry_after_millis(verdict.retry_after_millis)
            .header(RATELIMIT.clone(), ratelimit);
        if let Some(policy) = &limits.policy {
            p = p.header(RATELIMIT_POLICY.clone(), policy.clone());
        }
        let cluster = Arc::clone(&guard.cluster);
        drop(guard); // a rejected request keeps no half-open probe permit
        Err(self.reject(&cluster, RejectReason::RateLimited, p, trace_id))
    }

    fn switch_detail(&self, what: &str, cluster: Option<&str>) -> String {
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

    fn store_failed(&self, error: &StoreError) {
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

    /// Polls the store and applies a newer state. `force` skips the version check.
    async fn refresh(&self, force: bool) -> Result<(), StoreError> {
        let result = async {
            let _one_at_a_time = self.reload.lock().await;
            if !force {
                let version = self.store.version().await?;
                if version == self.state.read().version {
                    return Ok(());
                }
            }
            if let Some(loaded) = self.store.load().await? {
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
    fn apply(&self, loaded: Versioned) {
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
            let current = Arc::clone(&rt.limits.read());
            if current.enabled != cluster.rate_limit.enabled
                || current.windows != cluster.rate_limit.windows
            {
                *rt.limits.write() = Arc::new(Limits::new(&cluster.rate_limit));
            }
            let mut breaker = rt.breaker.lock();
            let resets = rt
                .breaker_resets_seen
                .swap(cluster.breaker_resets, Ordering::AcqRel);
            if resets != cluster.breaker_resets
                || (breaker.is_forced_open() && !cluster.breaker_forced_open)
            {
                breaker.reset();
            }
            if cluster.breaker_forced_open {
                breaker.force_open();
            }
        }
        *local = loaded;
    }

    /// Records every engaged switch whose TTL is over as released ("ended by ttl", actor
    /// `system`), one audit entry each, through the state compare-and-swap: when several
    /// planes notice the same expiry, exactly one stores it and the others, on reloading,
    /// find the switch already released. Traffic does not wait for this (every check
    /// evaluates `expiresAt` with the clock); it only completes the audit trail and the
    /// state. Runs in the background refresher, before every change and before the audit
    /// trail is read.
    async fn end_expired(&self) -> Result<(), StoreError> {
        // Bounded: each round ends one switch or loses a race to another writer.
        for _ in 0..64 {
            let now = self.clock.now_millis();
            if expired_switch(&self.state.read().state, now).is_none() {
                return Ok(());
            }
            let mut base = match self.base().await {
                Ok(base) => base,
                Err(e) => {
                    self.store_failed(&e);
                    return Err(e);
                }
            };
            let Some((cluster, at)) = expired_switch(&base.state, now) else {
                // Someone else released it; take their state.
                return self.refresh(true).await;
            };
            let switch = match &cluster {
                None => &mut base.state.kill_switch,
                Some(id) => match base.state.clusters.get_mut(id) {
                    Some(c) => &mut c.disabled,
                    None => return Ok(()),
                },
            };
            let before = json(switch);
            *switch = released(Some(ENDED_BY_TTL), SYSTEM_ACTOR, at);
            let entry = AuditEntry {
                version: base.version + 1,
                action: if cluster.is_some() {
                    "cluster.enable"
                } else {
                    "kill_switch.disable"
                }
                .to_owned(),
                cluster: cluster.clone(),
                reason: Some(ENDED_BY_TTL.to_owned()),
                actor: Some(SYSTEM_ACTOR.to_owned()),
                at: rfc3339(at),
                before,
                after: json(switch),
            };
            let swapped = self
                .store
                .compare_and_swap(base.version, &base.state, &entry)
                .await;
            match swapped {
                Ok(Some(version)) => {
                    tracing::info!(
                        action = entry.action,
                        cluster = entry.cluster,
                        version,
                        "control switch ended by its ttl"
                    );
                    self.apply(Versioned {
                        version,
                        state: base.state,
                    });
                    let affected: Vec<String> = match cluster {
                        Some(id) => vec![id],
                        None => self.clusters.keys().map(ToString::to_string).collect(),
                    };
                    if let Err(e) = self.store.notify(&affected).await {
                        self.store_failed(&e);
                    }
                }
                // Another writer got there first: reload and look again.
                Ok(None) => {}
                Err(e) => {
                    self.store_failed(&e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The stored state (or, before anything was stored, this plane's initial state) with
    /// any cluster this plane knows but the document lacks added from the configuration.
    async fn base(&self) -> Result<Versioned, StoreError> {
        let mut base = match self.store.load().await? {
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

/// Who changes what, and why: the audit entry's fixed fields.
struct Change<'a> {
    action: &'static str,
    cluster: Option<&'a str>,
    reason: Option<&'a str>,
    actor: &'a str,
}

fn opt(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

impl ControlPlane {
    /// A builder with the seed's clusters and a memory store.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder {
            config: ControlConfig::default(),
            store: None,
            clock: None,
            classifier: Arc::new(ServerErrors),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }

    /// A plane with this configuration and a memory store.
    pub fn new(config: ControlConfig) -> Self {
        Self::builder().config(config).build()
    }

    pub(crate) fn runtime(&self, cluster: &str) -> Option<&Arc<ClusterRuntime>> {
        self.inner.clusters.get(cluster)
    }

    pub(crate) fn admit(&self, rt: &Arc<ClusterRuntime>, trace_id: Option<&str>) -> Admission {
        self.inner.admit(rt, trace_id)
    }

    /// Runs the admission checks for one call outside the layer (a job, a queue consumer,
    /// a benchmark): kill switch, cluster, breaker, rate limit, in that order.
    ///
    /// # Errors
    /// The [`Rejection`] (with its problem response) when the call must not run.
    #[allow(clippy::result_large_err)] // the rejection carries the response to answer with
    pub async fn acquire(
        &self,
        cluster: &str,
        trace_id: Option<&str>,
    ) -> Result<Permit, Rejection> {
        let Some(rt) = self.runtime(cluster) else {
            let response = Problem::new(StatusCode::NOT_FOUND, "Not Found")
                .detail(format!("unknown cluster {cluster:?}"))
                .maybe_trace_id(trace_id)
                .into_response();
            return Err(Rejection {
                reason: None,
                response,
            });
        };
        let guard = match self.admit(rt, trace_id) {
            Admission::Admitted(guard) => guard,
            Admission::Rejected(rejection) => return Err(rejection),
            Admission::Pending(decision) => decision.await?,
        };
        Ok(Permit { guard })
    }

    /// Whether a cluster with this id exists.
    pub fn has_cluster(&self, cluster: &str) -> bool {
        self.inner.clusters.contains_key(cluster)
    }

    /// The cluster ids, sorted.
    pub fn cluster_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .clusters
            .keys()
            .map(ToString::to_string)
            .collect();
        ids.sort();
        ids
    }

    /// The configuration the plane was built with.
    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// Loads the shared state now (a plane on a shared store also does this in the
    /// background every 250 ms).
    ///
    /// # Errors
    /// When the store is unreachable; the last known state stays in force.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.inner.refresh(true).await
    }

    async fn change(
        &self,
        change: Change<'_>,
        mutate: impl Fn(
            &mut ControlState,
            u64,
        ) -> Result<(serde_json::Value, serde_json::Value), ControlError>,
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
            if let Some(version) = inner
                .store
                .compare_and_swap(base.version, &base.state, &entry)
                .await?
            {
                tracing::info!(
                    action = change.action,
                    cluster = change.cluster,
                    reason = change.reason,
                    actor = change.actor,
                    version,
                    "control state changed"
                );
                inner.apply(Versioned {
                    version,
                    state: base.state,
                });
                let affected: Vec<String> = match change.cluster {
                    Some(id) => vec![id.to_owned()],
                    None => self.cluster_ids(),
                };
                if let Err(e) = inner.store.notify(&affected).await {
                    // The change is stored; replicas still see it within a refresh interval.
                    inner.store_failed(&e);
                }
                return Ok(());
            }
        }
        Err(ControlError::Contended)
    }

    fn cluster_change<'a>(
        state: &'a mut ControlState,
        id: &str,
    ) -> Result<&'a mut ClusterState, ControlError> {
        state
            .clusters
            .get_mut(id)
            .ok_or_else(|| ControlError::UnknownCluster(id.to_owned()))
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
            let c = Self::cluster_change(state, cluster)?;
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
            let c = Self::cluster_change(state, cluster)?;
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
            let c = Self::cluster_change(state, cluster)?;
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
            let c = Self::cluster_change(state, cluster)?;
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
        self.breaker(cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))
    }

    /// The global kill switch as the API shows it.
    pub fn kill_switch(&self) -> KillSwitchView {
        let now = self.inner.clock.now_millis();
        let state = self.inner.state.read();
        KillSwitchView::new(&state.state.kill_switch, now)
    }

    /// One cluster's rate-limit settings.
    pub fn rate_limit(&self, cluster: &str) -> Option<RateLimitView> {
        let rt = self.runtime(cluster)?;
        let limits = Arc::clone(&rt.limits.read());
        Some(RateLimitView::new(&limits))
    }

    /// One cluster's breaker.
    pub fn breaker(&self, cluster: &str) -> Option<BreakerView> {
        let rt = self.runtime(cluster)?;
        let now = self.inner.clock.now_millis();
        let breaker = rt.breaker.lock();
        let totals = breaker.totals();
        Some(BreakerView {
            state: breaker.state(now),
            calls: totals.calls,
            failures: totals.failures,
            slow_calls: totals.slow,
            window: breaker.config().window,
            window_size: breaker.config().window_size,
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
        let limits = Arc::clone(&rt.limits.read());
        if limits.windows.is_empty() {
            return Ok(Vec::new());
        }
        // A zero-limit probe window makes `take` a pure read: nothing can be admitted.
        let mut probe = limits.windows.clone();
        probe.push(WindowConfig::new("__probe", 0, 1));
        let taken = self
            .inner
            .store
            .take(cluster, &probe, self.inner.clock.now_millis())
            .await?;
        let now = taken.now_millis;
        Ok(limits
            .windows
            .iter()
            .zip(&taken.counts)
            .map(|(w, &used)| {
                let len = crate::window::window_millis(w);
                WindowUsage {
                    name: w.name.clone(),
                    limit: w.limit,
                    seconds: w.seconds,
                    used,
                    remaining: w.limit.saturating_sub(used),
                    reset_seconds: (crate::window::window_start(w, now) + len - now).div_ceil(1000),
                }
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
        // Switches whose TTL is over are recorded first ("ended by ttl").
        self.inner.end_expired().await?;
        Ok(self.inner.store.audit(limit).await?)
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
                    breaker: rt.breaker.lock().state(now),
                    enabled: now >= rt.disabled_until.load(Ordering::Acquire),
                    cluster: id,
                })
            })
            .collect();
        MetricsSnapshot {
            clusters,
            admitted: self.inner.totals.admitted.load(Ordering::Relaxed),
            rejected: Rejections::read(&self.inner.totals.rejected),
            kill_switch_engaged: now < self.inner.kill_until.load(Ordering::Acquire),
            store_errors: self.inner.store_errors.load(Ordering::Relaxed),
            fail_open_admissions: self.inner.fail_open_admissions.load(Ordering::Relaxed),
            state_version: self.inner.state.read().version,
        }
    }
}

/// The audit reason of a switch released by its TTL.
pub(crate) const ENDED_BY_TTL: &str = "ended by ttl";
/// The audit actor of changes the plane makes by itself.
const SYSTEM_ACTOR: &str = "system";

/// The engaged switch whose TTL ended first, if any is over at `now` (`None` = the global
/// kill switch, else the cluster id), with its expiry.
fn expired_switch(state: &ControlState, now: u64) -> Option<(Option<String>, u64)> {
    let expiry = |s: &Switch| s.expires_at.filter(|&at| s.engaged && at <= now);
    let global = expiry(&state.kill_switch).map(|at| (None, at));
    let clusters = state
        .clusters
        .iter()
        .filter_map(|(id, c)| expiry(&c.disabled).map(|at| (Some(id.clone()), at)));
    // The earliest first, so the audit trail lists endings in the order they happened.
    global.into_iter().chain(clusters).min_by_key(|(_, at)| *at)
}

fn require_reason(reason: &str) -> Result<(), ControlError> {
    if reason.trim().is_empty() {
        return Err(ControlError::Invalid(
            "a non-empty reason is required".to_owned(),
        ));
    }
    Ok(())
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

fn released(reason: Option<&str>, actor: &str, now: u64) -> Switch {
    Switch {
        engaged: false,
        reason: opt(reason),
        changed_by: Some(actor.to_owned()),
        changed_at: Some(now),
        expires_at: None,
    }
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
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
}

impl RateLimitUpdate {
    fn apply(&self, settings: &mut RateLimitSettings) -> Result<(), ControlError> {
        if let Some(windows) = &self.windows {
            settings.windows.clone_from(windows);
        }
        for (name, seconds, limit) in [
            ("second", 1, self.requests_per_second),
            ("minute", 60, self.requests_per_minute),
            ("hour", 3600, self.requests_per_hour),
            ("day", 86_400, self.requests_per_day),
        ] {
            let Some(limit) = limit else { continue };
            match settings.windows.iter_mut().find(|w| w.name == name) {
                Some(w) => {
                    w.limit = limit;
                    w.seconds = seconds;
                }
                None => settings
                    .windows
                    .push(WindowConfig::new(name, limit, seconds)),
            }
        }
        settings.windows.sort_by_key(|w| w.seconds);
        if let Some(enabled) = self.enabled {
            settings.enabled = enabled;
        }
        validate_windows(&settings.windows).map_err(ControlError::Invalid)
    }
}

/// The global kill switch (`GET /api/control/kill-switch`). `enabled: true` = blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    fn new(switch: &Switch, now: u64) -> Self {
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
}

impl RateLimitView {
    fn new(limits: &Limits) -> Self {
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
            windows: limits.windows.clone(),
        }
    }
}

/// One window's current usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    fn read(counters: &[AtomicU64; 5]) -> Self {
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
    pub window: crate::config::SlidingWindow,
    /// Calls or seconds.
    pub window_size: u32,
}

/// One cluster (`GET /api/control` → `clusters.{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[serde(rename_all = "camelCase")]
pub struct ControlView {
    /// The global kill switch.
    pub kill_switch: KillSwitchView,
    /// Every cluster by id.
    pub clusters: BTreeMap<String, ClusterView>,
}

/// One cluster's counters in a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// [`ControlPlane::metrics`]: counters since this plane was built (this replica only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
