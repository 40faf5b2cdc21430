//! Where control state and rate-limit counters live.
//!
//! A [`ControlStore`] only performs atomic state changes; the algorithms live in the plane
//! ([`crate::window::decide`] for rate limits). The Redis backend necessarily runs the
//! counting in its Lua script: it mirrors `decide` and the same conformance suite checks both.

use std::{fmt, future::Future, pin::Pin};

use crate::{
    config::WindowConfig,
    state::{AuditEntry, ControlState, Versioned},
    window::Taken,
};

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(test)]
pub(crate) mod conformance;

/// A boxed, sendable future (stores are used as `Arc<dyn ControlStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store failure. The plane keeps its last known state and applies the fail-open policy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("control store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version cannot read.
    #[error("control store returned corrupt data: {0}")]
    Corrupt(String),
}

/// Storage for control state, its audit trail and rate-limit counters.
///
/// Versions: 0 means nothing is stored yet; every successful
/// [`compare_and_swap`](ControlStore::compare_and_swap) adds one.
pub trait ControlStore: Send + Sync + fmt::Debug + 'static {
    /// Checks every window of `cluster` and, only if all admit, takes one unit from each
    /// (see [`crate::window::decide`]). `now_millis` is the caller's clock; a shared store
    /// uses its own clock instead and reports it in [`Taken::now_millis`].
    fn take<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        now_millis: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>>;

    /// [`take`](ControlStore::take) without a future, for stores that never wait (memory);
    /// `None` means "use `take`". Saves the boxed future on the hot path.
    fn take_now(
        &self,
        _cluster: &str,
        _windows: &[WindowConfig],
        _now_millis: u64,
    ) -> Option<Result<Taken, StoreError>> {
        None
    }

    /// Reads every window's count at the store's clock without taking anything
    /// (`admitted` is `false`; `epoch` may be `None`). Used for the `RateLimit` header of
    /// requests rejected before the limiter (kill switch, disabled cluster, open breaker).
    ///
    /// The default runs [`take`](ControlStore::take) with an extra zero-limit window, which
    /// can admit nothing and so takes nothing.
    fn peek<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        now_millis: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>> {
        Box::pin(async move {
            let mut probe = windows.to_vec();
            probe.push(WindowConfig::new("__probe", 0, 1));
            let mut taken = self.take(cluster, &probe, now_millis).await?;
            taken.counts.truncate(windows.len());
            taken.admitted = false;
            Ok(taken)
        })
    }

    /// [`peek`](ControlStore::peek) without a future, for stores that never wait (memory);
    /// `None` means "use `peek`".
    fn peek_now(
        &self,
        _cluster: &str,
        _windows: &[WindowConfig],
        _now_millis: u64,
    ) -> Option<Result<Taken, StoreError>> {
        None
    }

    /// Gives back the unit an admitted [`take`](ControlStore::take) took from each window,
    /// for a request that was then refused anyway (a kill switch noticed through the epoch).
    /// A window that has rolled over since `taken` (or is already at 0) is left alone, so
    /// this never lends quota to a later window.
    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        taken: &'a Taken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The stored state, or `None` when nothing was stored yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<Versioned>, StoreError>>;

    /// The current version (cheap: used to poll for changes).
    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Replaces the state and appends `audit` if the stored version is still `expected`.
    /// Returns the new version, or `None` when someone else changed it first.
    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// The newest `limit` audit entries, newest first.
    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// Tells replicas reading these clusters' counters that the state changed (bumps the
    /// epoch [`take`](ControlStore::take) reports). A no-op for unshared stores.
    fn notify<'a>(&'a self, _clusters: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether other processes may change this store (the plane then polls it).
    fn is_shared(&self) -> bool {
        false
    }
}
