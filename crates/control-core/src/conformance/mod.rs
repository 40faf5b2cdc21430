//! The behaviour suites every store backend runs (feature `conformance`), in the form of
//! tower-sessions' `route_tests!`: an outside crate implementing [`CounterStore`] and
//! [`StateStore`] runs the same checks as [`MemoryStore`](crate::MemoryStore) and
//! `RedisStore`.
//!
//! ```
//! // In a backend crate's tests (needs `tokio` with `macros` and `rt-multi-thread`): a
//! // factory giving `Option<YourStore>` (a fresh, empty store; `None` skips), and an
//! // optional async cleanup taking `Arc<YourStore>`.
//! use dreamnet_control_core::MemoryStore;
//!
//! dreamnet_control_core::counter_store_tests!(async { Some(MemoryStore::new()) });
//! dreamnet_control_core::state_store_tests!(async { Some(MemoryStore::new()) });
//! // A store implementing both traits: `notify` bumps the epoch `count` reports.
//! dreamnet_control_core::epoch_tests!(async { Some(MemoryStore::new()) });
//! # fn main() {}
//! ```
//!
//! A store holding fleet-wide breakers ([`BreakerStore`], e.g. `RedisStore`) runs
//! `breaker_store_tests!` the same way:
//!
//! ```no_run
//! # async fn connect() -> Option<dreamnet_control_core::RedisStore> { None }
//! dreamnet_control_core::breaker_store_tests!(connect());
//! # fn main() {}
//! ```
//!
//! Each test is also a plain `async fn` taking the store as `Arc<dyn ...>`, for a harness of
//! your own. Long windows (365 days) keep the counting tests clear of window boundaries,
//! because a shared store may use its own clock, which tests cannot move.
//!
//! [`CounterStore`]: crate::CounterStore
//! [`StateStore`]: crate::StateStore
//! [`BreakerStore`]: crate::BreakerStore

pub mod breaker;
pub mod counter;
pub mod per_client;
pub mod state;

use dreamnet_common::{Clock, SystemClock};

const YEAR: u64 = 365 * 86_400;

fn now() -> u64 {
    SystemClock.now_millis()
}

/// Runs the [`counter`] and [`per_client`] suites: `$make` is an async expression giving `Option<S>` where
/// `S: CounterStore` (a fresh, empty store; `None` skips the test, e.g. when the backend is
/// unreachable), `$cleanup` an optional `async fn(Arc<S>)`.
#[macro_export]
macro_rules! counter_store_tests {
    ($make:expr) => {
        $crate::counter_store_tests!($make, |_store| async {});
    };
    ($make:expr, $cleanup:expr) => {
        $crate::__store_suite!(counter_store_conformance; counter; CounterStore; $make; $cleanup;
            burst_admits_exactly_the_limit,
            all_windows_or_none,
            clusters_and_windows_are_isolated,
            zero_limit_rejects,
            reports_its_clock,
            concurrent_burst_admits_exactly_the_limit,
            peek_reads_without_taking,
            give_back_returns_one_unit_per_window,
        );
        $crate::__store_suite!(per_client_conformance; per_client; CounterStore; $make; $cleanup;
            each_client_gets_its_own_limit,
            the_aggregate_still_binds_and_refusals_take_nothing,
            concurrent_clients_admit_exactly_their_limits,
            give_back_returns_the_clients_unit_too,
        );
    };
}

/// Runs the [`state`] suite: `$make` gives `Option<S>` where `S: StateStore` (as for
/// [`counter_store_tests!`]).
#[macro_export]
macro_rules! state_store_tests {
    ($make:expr) => {
        $crate::state_store_tests!($make, |_store| async {});
    };
    ($make:expr, $cleanup:expr) => {
        $crate::__store_suite!(state_store_conformance; state; StateStore; $make; $cleanup;
            compare_and_swap_and_audit,
            notify_is_accepted,
        );
    };
}

/// Runs the [`breaker`] suite: `$make` gives `Option<S>` where `S: BreakerStore` (as for
/// [`counter_store_tests!`]).
#[macro_export]
macro_rules! breaker_store_tests {
    ($make:expr) => {
        $crate::breaker_store_tests!($make, |_store| async {});
    };
    ($make:expr, $cleanup:expr) => {
        $crate::__store_suite!(breaker_store_conformance; breaker; BreakerStore; $make; $cleanup;
            opens_at_the_threshold_once,
            stays_closed_below_the_minimum_and_the_rate,
            half_open_permits_are_exact,
            a_failed_probe_reopens,
            forced_open_reset_and_stale_outcomes,
            peek_changes_nothing,
            clusters_are_isolated,
            concurrent_outcomes_open_once,
            batched_outcomes_count_in_order,
        );
    };
}

/// Runs [`state::notify_bumps_the_epoch`] on a store implementing both traits.
#[macro_export]
macro_rules! epoch_tests {
    ($make:expr) => {
        $crate::epoch_tests!($make, |_store| async {});
    };
    ($make:expr, $cleanup:expr) => {
        mod epoch_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn notify_bumps_the_epoch() {
                if let Some(store) = $make.await {
                    let store = ::std::sync::Arc::new(store);
                    let counters: ::std::sync::Arc<dyn $crate::CounterStore> = store.clone();
                    let state: ::std::sync::Arc<dyn $crate::StateStore> = store.clone();
                    $crate::conformance::state::notify_bumps_the_epoch(counters, state).await;
                    ($cleanup)(store).await;
                }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_suite {
    ($module:ident; $suite:ident; $trait:ident; $make:expr; $cleanup:expr; $($name:ident,)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = $make.await {
                        let store = ::std::sync::Arc::new(store);
                        let dyn_store: ::std::sync::Arc<dyn $crate::$trait> = store.clone();
                        $crate::conformance::$suite::$name(dyn_store).await;
                        ($cleanup)(store).await;
                    }
                }
            )*
        }
    };
}
