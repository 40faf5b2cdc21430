//! Where rate-limit counters and control state live: two small traits, in the shape of
//! governor's `StateStore` and tower-sessions' `SessionStore` (and a third, optional one,
//! [`BreakerStore`], for breakers shared by the fleet).
//!
//! - [`CounterStore`]: one atomic take-or-peek over a cluster's windows ([`Count`]), plus
//!   [`give_back`](CounterStore::give_back). The algorithm stays in the plane:
//!   [`decide`] is what a store runs atomically (the memory store under a per-cluster mutex;
//!   the Redis store mirrors it in one Lua script on Redis server time).
//! - [`StateStore`]: the versioned [`ControlState`] document, its compare-and-swap, the
//!   audit trail, and a change notification for replicas sharing the store.
//!
//! Both return a [`StoreFuture`], so a store that never waits answers without a boxed
//! future and `Arc<dyn CounterStore>` / `Arc<dyn StateStore>` still work.
//! [`MemoryStore`](crate::MemoryStore) and (feature `redis`) `RedisStore` implement both;
//! the behaviour suite an outside backend can run is `dreamnet_control_core::conformance`
//! (feature `conformance`).
//!
//! # Why fixed windows
//!
//! A request is admitted only if *every* window has room; then one unit is taken from every
//! window, otherwise nothing is taken (a rejected request consumes no quota). Fixed windows
//! aligned to the epoch were chosen over a sliding-window counter because they are *exact*:
//! a burst in a fresh window admits exactly the limit, the `RateLimit` header's `t` is the
//! true time until the quota is restored, and `Retry-After` is a promise, not an estimate (a
//! weighted sliding counter can only approximate both). The price is the well-known boundary
//! effect: up to twice a window's limit can pass in a short span straddling its boundary.
//! Stacking windows bounds it (the hour window caps what a minute boundary can leak), and it
//! is the model Kong, Envoy and Redis-counter limiters use, so operators already know it.

use std::{fmt, sync::Arc};

use crate::config::WindowConfig;

mod clients;
mod fleet;
mod forward;
mod future;
mod layout;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod state;

pub use crate::window::{decide, Slot, Taken};
pub use clients::DEFAULT_CLIENT_CAPACITY;
pub use fleet::{BreakerOp, BreakerStore, FleetReply, FleetTicket, OutcomeBatch};
pub use forward::StoreOp;
pub use future::StoreFuture;
pub use memory::AUDIT_CAPACITY;
pub use state::{AuditEntry, ClusterState, ControlState, RateLimitSettings, Switch, Versioned};

/// A boxed error, the cause a [`StoreError`] keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store failure. The plane keeps its last known state and applies the fail-open policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("control store unavailable: {source}")]
    Unavailable {
        /// What went wrong (the client's error, or a timeout).
        #[source]
        source: BoxError,
    },
    /// The store answered something this version cannot read.
    #[error("control store returned corrupt data: {source}")]
    Corrupt {
        /// What could not be read.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// The store could not be reached (keeps `source` as the cause).
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            source: source.into(),
        }
    }

    /// The store answered something unreadable (keeps `source` as the cause).
    pub fn corrupt(source: impl Into<BoxError>) -> Self {
        Self::Corrupt {
            source: source.into(),
        }
    }
}

/// What [`CounterStore::count`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    /// Checks every window and, only if all admit, takes one unit from each ([`decide`]).
    Take,
    /// Reads every window's count without taking (or creating) anything; the answer's
    /// `admitted` is `false` and its `epoch` may be `None`.
    Peek,
}

/// One client's windows inside a cluster: what a per-client take counts besides the
/// cluster's aggregate windows. Cheap to clone (two `Arc`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientQuota {
    /// The client's key (from the plane's [`ClientKey`](crate::ClientKey) policy).
    pub client: Arc<str>,
    /// The client's windows (per-client windows are named `second`, `minute`, `hour`,
    /// `day`; at most [`MAX_CLIENT_WINDOWS`](crate::config::MAX_CLIENT_WINDOWS)).
    pub windows: Arc<[WindowConfig]>,
}

/// Rate-limit counters: one atomic decision per request.
///
/// With a [`ClientQuota`], one decision covers the cluster's windows *and* the client's:
/// all admit or nothing is taken, and [`Taken::counts`] lists the cluster's windows first,
/// then the client's. A store keeps a client's counters no longer than its windows last
/// (a TTL, or expiry in memory), so millions of clients stay bounded.
///
/// `count` hands back a `'static` future (it owns what it needs: the arguments are cheap
/// `Arc`s to clone) so a plane can keep waiting on it after the request's borrow ends.
pub trait CounterStore: Send + Sync + fmt::Debug + 'static {
    /// Runs [`Count::Take`] or [`Count::Peek`] over `windows` of `cluster` (and `client`'s
    /// windows, when given). `now_millis` is
    /// the caller's clock; a shared store uses its own clock instead and reports it in
    /// [`Taken::now_millis`], with its change counter for the cluster in [`Taken::epoch`].
    fn count(
        &self,
        cluster: &Arc<str>,
        windows: &Arc<[WindowConfig]>,
        client: Option<&ClientQuota>,
        now_millis: u64,
        mode: Count,
    ) -> StoreFuture<'static, Result<Taken, StoreError>>;

    /// Gives back the unit an admitted [`Count::Take`] took from each window, for a request
    /// that was then refused anyway (a kill switch noticed through the epoch). A window that
    /// has rolled over since `taken` (or is already at 0) is left alone, so this never lends
    /// quota to a later window. A `taken` that was not admitted changes nothing. `client`
    /// is the quota the take counted (its windows get their unit back too).
    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
        taken: &'a Taken,
    ) -> StoreFuture<'a, Result<(), StoreError>>;
}

/// The control state document, its audit trail and change notification.
///
/// Versions: 0 means nothing is stored yet; every successful
/// [`compare_and_swap`](StateStore::compare_and_swap) adds one.
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// The stored state, or `None` when nothing was stored yet.
    fn load(&self) -> StoreFuture<'_, Result<Option<Versioned>, StoreError>>;

    /// The current version (cheap: used to poll for changes).
    fn version(&self) -> StoreFuture<'_, Result<u64, StoreError>>;

    /// Replaces the state and appends `audit` (with its version set to the new one) if the
    /// stored version is still `expected`. Returns the new version, or `None` when someone
    /// else changed it first.
    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> StoreFuture<'a, Result<Option<u64>, StoreError>>;

    /// The newest `limit` audit entries, newest first.
    fn audit(&self, limit: usize) -> StoreFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// Tells replicas reading these clusters' counters that the state changed (bumps the
    /// epoch [`CounterStore::count`] reports). A no-op for unshared stores.
    fn notify<'a>(&'a self, _clusters: &'a [String]) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::ready(Ok(()))
    }

    /// Whether other processes may change this store (the plane then polls it).
    fn is_shared(&self) -> bool {
        false
    }
}
