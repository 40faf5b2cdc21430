//! [`ControlPlane`] and [`ControlPlaneBuilder`].

use std::{
    fmt,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use parking_lot::{Mutex, RwLock};

use super::{
    fleet::FleetBreaker,
    runtime::{ClusterRuntime, Counters, Inner, Limits},
};
use crate::{
    breaker::{Breaker, ClassifyFailure, ServerErrors},
    client_key::{ClientKey, SharedClientKey},
    config::{ControlConfig, SlidingWindow},
    store::{BreakerStore, ControlState, CounterStore, StateStore, Versioned},
    MemoryStore,
};
use dreamnet_common::{SharedClock, SystemClock};

/// How often a plane on a shared store polls it for changes by default.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// The control plane: kill switches, rate limits and breakers for a set of clusters.
///
/// Cheap to clone (an `Arc` inside); every clone, every layer made from it and the control
/// API see the same state. It decides ([`ControlPlane::decide`]) and changes state; it never
/// speaks HTTP (the [`ControlLayer`](crate::ControlLayer) does).
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
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("counter_store", &self.inner.counter_store)
            .field("state_store", &self.inner.state_store)
            .field("clusters", &self.inner.clusters.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ControlPlane`].
pub struct ControlPlaneBuilder {
    config: ControlConfig,
    counter_store: Option<Arc<dyn CounterStore>>,
    state_store: Option<Arc<dyn StateStore>>,
    breaker_store: Option<Arc<dyn BreakerStore>>,
    clock: Option<SharedClock>,
    classifier: Arc<dyn ClassifyFailure>,
    client_key: SharedClientKey,
    refresh_interval: Duration,
}

impl fmt::Debug for ControlPlaneBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneBuilder")
            .field("config", &self.config)
            .field("counter_store", &self.counter_store)
            .field("state_store", &self.state_store)
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

    /// Keeps both the counters and the state in `store` (default: a fresh
    /// [`MemoryStore`]).
    #[must_use]
    pub fn store<S: CounterStore + StateStore>(self, store: S) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// Keeps both the counters and the state in this shared store.
    #[must_use]
    pub fn shared_store<S: CounterStore + StateStore>(mut self, store: Arc<S>) -> Self {
        self.counter_store = Some(Arc::clone(&store) as Arc<dyn CounterStore>);
        self.state_store = Some(store);
        self
    }

    /// Keeps the rate-limit counters in this store (default: the [`store`](Self::store)).
    #[must_use]
    pub fn counter_store(mut self, store: Arc<dyn CounterStore>) -> Self {
        self.counter_store = Some(store);
        self
    }

    /// Keeps the control state and audit trail in this store (default: the
    /// [`store`](Self::store)).
    #[must_use]
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.state_store = Some(store);
        self
    }

    /// Shares every cluster's circuit breaker with the other replicas on this store (default:
    /// none, each replica has its own): one window of every replica's calls, transitions
    /// once fleet-wide, half-open permits exact across replicas. A closed breaker costs no
    /// round trip before a call (its outcome is sent after the response); a cluster whose
    /// breaker uses a time-based window keeps a per-replica breaker (only count windows are
    /// shared). While the store fails, each replica's own breaker decides.
    ///
    /// ```
    /// # #[cfg(feature = "redis")]
    /// # async fn wire(store: dreamnet_control_core::RedisStore) {
    /// use std::sync::Arc;
    /// use dreamnet_control_core::ControlPlane;
    ///
    /// let store = Arc::new(store);
    /// let plane = ControlPlane::builder()
    ///     .shared_store(Arc::clone(&store))
    ///     .breaker_store(store)
    ///     .build();
    /// # drop(plane);
    /// # }
    /// ```
    #[must_use]
    pub fn breaker_store(mut self, store: Arc<dyn BreakerStore>) -> Self {
        self.breaker_store = Some(store);
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

    /// Names the client of a request for per-client windows (default:
    /// [`DefaultClientKey`](crate::DefaultClientKey): account, else a hash of the
    /// credential, else the peer address).
    #[must_use]
    pub fn client_key(mut self, policy: impl ClientKey) -> Self {
        self.client_key = SharedClientKey(Arc::new(policy));
        self
    }

    /// How often a plane on a shared store polls it (default 250 ms).
    #[must_use]
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Builds the plane. It also starts a background task (when called inside a tokio
    /// runtime) that polls a shared store and records switches that ended by their TTL;
    /// call [`ControlPlane::sync`] to load the shared state right away.
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
                let breaker = self.config.breaker_for(&id);
                let fleet = self
                    .breaker_store
                    .as_ref()
                    .filter(|_| breaker.window == SlidingWindow::Count)
                    .map(|store| Arc::new(FleetBreaker::new(Arc::clone(store), breaker.clone())));
                if self.breaker_store.is_some() && fleet.is_none() {
                    tracing::warn!(cluster = %id, "the breaker's window is time-based: it stays per replica (only count windows are shared)");
                }
                let rt = ClusterRuntime {
                    id: Arc::clone(&id),
                    disabled_until: AtomicU64::new(cluster.disabled.blocked_until()),
                    limits: RwLock::new(Arc::new(Limits::new(&cluster.rate_limit))),
                    breaker: Mutex::new(Breaker::new(breaker)),
                    fleet,
                    breaker_resets_seen: AtomicU64::new(0),
                    epoch_seen: AtomicU64::new(u64::MAX),
                    counters: Counters::default(),
                };
                (id, Arc::new(rt))
            })
            .collect();
        let memory = || Arc::new(MemoryStore::new());
        let (counter_store, state_store) = match (self.counter_store, self.state_store) {
            (Some(counters), Some(state)) => (counters, state),
            (Some(counters), None) => (counters, memory() as Arc<dyn StateStore>),
            (None, Some(state)) => (memory() as Arc<dyn CounterStore>, state),
            (None, None) => {
                let store = memory();
                (
                    Arc::clone(&store) as Arc<dyn CounterStore>,
                    store as Arc<dyn StateStore>,
                )
            }
        };
        let inner = Arc::new(Inner {
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            fail_open: self.config.fail_open,
            config: self.config,
            classifier: self.classifier,
            client_key: self.client_key,
            kill_until: AtomicU64::new(0),
            clusters,
            state: RwLock::new(Versioned { version: 0, state }),
            totals: Counters::default(),
            store_errors: AtomicU64::new(0),
            fail_open_admissions: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(()),
            counter_store,
            state_store,
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(super::sync::refresher(
                Arc::downgrade(&inner),
                self.refresh_interval,
            ));
        }
        ControlPlane { inner }
    }
}

impl ControlPlane {
    /// A builder with the seed's clusters and a memory store.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder {
            config: ControlConfig::default(),
            counter_store: None,
            state_store: None,
            breaker_store: None,
            clock: None,
            classifier: Arc::new(ServerErrors),
            client_key: SharedClientKey::default(),
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
}
