//! One behavioural suite, run against every store (memory always; Redis and PostgreSQL with
//! their features, skipped loudly when the server is unreachable unless
//! `DREAMNET_REQUIRE_BACKENDS=1`).
//!
//! Time: the memory store runs on a `ManualClock`; Redis and PostgreSQL take time from the
//! server, so their runs use short leases and TTLs and poll with a deadline.
#![allow(missing_docs, clippy::missing_panics_doc)]

mod support;

use support::Backend;

macro_rules! conformance {
    ($make:path) => {
        conformance!(@tests $make;
            t01_new_key_runs_once_and_replays,
            t01b_client_errors_are_stored,
            t02_concurrent_duplicates_run_once,
            t03_different_payload_is_422,
            t04_missing_or_invalid_key_is_400,
            t05_scopes_are_isolated,
            t06_failures_release_the_key,
            t06b_dropped_request_releases_the_key,
            t07_lease_end_unblocks_and_late_completion_is_rejected,
            t08_key_is_new_after_ttl,
            t09_body_limits,
            t10_safe_methods_pass_through,
            t11_store_unreachable_is_503,
            t12_two_replicas_behave_as_one,
            t13_corrupt_record_is_500,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = $make().await else { return };
                support::suite::$name(&backend).await;
                backend.cleanup().await;
            }
        )*
    };
}

mod memory {
    use super::*;
    conformance!(Backend::memory);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    conformance!(Backend::redis);
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    conformance!(Backend::postgres);
}
