//! The store-level behaviour suite (feature `conformance`): every [`IdempotencyStore`] must
//! pass it, in this crate or outside it (the tower-sessions form).
//!
//! A backend describes its store in a [`Harness`] and runs every behaviour with one macro:
//!
//! ```
//! use dreamnet_common::ManualClock;
//! use dreamnet_idempotency::{conformance::Harness, idempotency_store_tests, MemoryStore};
//! use std::sync::Arc;
//!
//! async fn memory() -> Option<Harness> {
//!     let clock = ManualClock::new(1_700_000_000_000);
//!     let store = MemoryStore::builder().clock(Arc::new(clock.clone())).build();
//!     Some(Harness::new(store.clone()).replica(store).clock(clock))
//! }
//!
//! idempotency_store_tests!(memory);
//! # fn main() {}
//! ```
//!
//! The macro expands to one `#[test]` per behaviour, each on a 2-worker tokio runtime.
//! Return `None` from the constructor to skip (say so loudly: a skipped backend looks like a
//! passing one). Stores that read time from their server (Redis `TIME`, PostgreSQL `now()`)
//! run without a clock: the suite then uses a 1.5 s lease and a 2 s TTL where it waits for
//! one to end, and polls with a deadline.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use dreamnet_common::ManualClock;

use crate::IdempotencyStore;

mod suite;

pub use suite::*;

type Cleanup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store under test and what the suite needs around it.
pub struct Harness {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) replica: Option<Arc<dyn IdempotencyStore>>,
    pub(crate) clock: Option<ManualClock>,
    cleanup: Option<Cleanup>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("replica", &self.replica.is_some())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// The store under test (an empty key space is not needed: the suite uses fresh keys).
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// The store under test, shared.
    pub fn shared(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            replica: None,
            clock: None,
            cleanup: None,
        }
    }

    /// A second handle on the same state (another connection or pool, as a second replica
    /// would have); without one the replica behaviour is skipped.
    #[must_use]
    pub fn replica(mut self, replica: impl IdempotencyStore) -> Self {
        self.replica = Some(Arc::new(replica));
        self
    }

    /// The fake clock the store reads, so the suite moves time instead of waiting.
    #[must_use]
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Work to run after each behaviour passes (drop a schema, delete a key prefix).
    #[must_use]
    pub fn cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }

    /// Runs the cleanup, if any.
    pub async fn finish(self) {
        if let Some(cleanup) = self.cleanup {
            cleanup.await;
        }
    }

    /// The lease of behaviours that wait for one to end.
    pub(crate) fn short_lease(&self) -> Duration {
        if self.clock.is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(1500)
        }
    }

    /// The TTL of behaviours that wait for one to end.
    pub(crate) fn short_ttl(&self) -> Duration {
        if self.clock.is_some() {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(2)
        }
    }

    /// Moves the fake clock; stores on server time just let time pass while the suite polls.
    pub(crate) fn advance(&self, by: Duration) {
        if let Some(clock) = &self.clock {
            clock.advance(by);
        }
    }
}

/// Runs one behaviour on a fresh 2-worker tokio runtime (what the macro's tests call).
///
/// # Panics
/// When the runtime cannot be built, or the behaviour fails.
pub fn run(behaviour: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(behaviour);
}

/// Expands to one `#[test]` per store behaviour for the [`Harness`] that `$make` (a path
/// to an `async fn() -> Option<Harness>`) builds; see [`conformance`](crate::conformance).
#[macro_export]
macro_rules! idempotency_store_tests {
    ($make:path) => {
        $crate::idempotency_store_tests!(@tests $make;
            a_new_key_proceeds_then_is_in_flight,
            another_fingerprint_is_a_mismatch,
            a_completed_key_replays_its_response,
            scopes_and_keys_never_collide,
            release_needs_the_holding_token,
            extend_pushes_out_only_the_holders_live_lease,
            a_released_key_cannot_be_completed,
            unknown_keys_cannot_be_completed_or_released,
            a_lease_end_lets_a_retry_take_over_and_fences_the_late_attempt,
            a_completed_key_is_new_after_its_ttl,
            concurrent_claims_let_exactly_one_proceed,
            replicas_share_one_key_space,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::run(async {
                    let Some(harness) = $make().await else { return };
                    $crate::conformance::$name(&harness).await;
                    harness.finish().await;
                });
            }
        )*
    };
}
