//! The behaviour suites, run against every store (memory always; Redis — a single server
//! and a 3-master Redis Cluster of the test's own — and PostgreSQL with their features, skipped loudly when the server is unreachable unless
//! `DREAMNET_REQUIRE_BACKENDS=1`):
//!
//! - layer level (`support::suite`): the HTTP behaviour of `IdempotencyLayer` on the store;
//! - store level (`idempotency_store_tests!`, feature `conformance`): the store trait's own
//!   contract, the suite a backend outside this crate runs too.
//!
//! Time: the memory store runs on a `ManualClock`; Redis and PostgreSQL take time from the
//! server, so their runs use short leases and TTLs and poll with a deadline.
#![allow(missing_docs, clippy::missing_panics_doc)]

mod support;

use support::Backend;

macro_rules! layer_conformance {
    ($make:path) => {
        layer_conformance!(@tests $make;
            t01_new_key_runs_once_and_replays,
            t01b_client_errors_are_stored,
            t02_concurrent_duplicates_run_once,
            t03_different_payload_is_422,
            t04_missing_or_invalid_key_is_400,
            t05_scopes_are_isolated,
            t06_failures_release_the_key,
            t06b_dropped_request_releases_the_key,
            t07_lease_end_unblocks_and_late_completion_is_rejected,
            t07b_a_handler_slower_than_its_lease_runs_once,
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
    layer_conformance!(Backend::memory);

    #[cfg(feature = "conformance")]
    mod store {
        use std::sync::Arc;

        use dreamnet_common::ManualClock;
        use dreamnet_idempotency::{conformance::Harness, idempotency_store_tests, MemoryStore};

        async fn memory() -> Option<Harness> {
            let clock = ManualClock::new(1_700_000_000_000);
            let store = MemoryStore::builder()
                .clock(Arc::new(clock.clone()))
                .build();
            Some(Harness::new(store.clone()).replica(store).clock(clock))
        }

        idempotency_store_tests!(memory);
    }
}

/// The store-level harness on Redis at `endpoint` (one server or a cluster): a store, a
/// second connection as its replica, and a cleanup of their keys through `raw`.
#[cfg(all(feature = "redis", feature = "conformance"))]
async fn redis_harness(
    endpoint: dreamnet_common::redis_connection::RedisEndpoint,
    raw: dreamnet_common::redis_connection::RedisConnection,
) -> dreamnet_idempotency::conformance::Harness {
    use dreamnet_idempotency::{conformance::Harness, RedisStore};
    let prefix = dreamnet_test_support::unique_prefix("idem-store");
    let connect = || {
        RedisStore::builder_for(endpoint.clone())
            .prefix(&prefix)
            .connect()
    };
    let store = connect().await.expect("redis answered the fixture");
    let replica = connect().await.expect("second connection");
    let cleanup = support::delete_redis_keys(raw, prefix);
    Harness::new(store).replica(replica).cleanup(cleanup)
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    layer_conformance!(Backend::redis);

    #[cfg(feature = "conformance")]
    mod store {
        use dreamnet_idempotency::{conformance::Harness, idempotency_store_tests};

        async fn redis() -> Option<Harness> {
            let (endpoint, raw) = crate::support::redis_server().await?;
            Some(crate::redis_harness(endpoint, raw).await)
        }

        idempotency_store_tests!(redis);
    }
}

/// The same suites on a 3-master Redis Cluster of the test binary's own
/// (`OwnRedisCluster::shared`): the records spread over every master.
#[cfg(feature = "redis")]
mod redis_cluster {
    use super::*;
    layer_conformance!(Backend::redis_cluster);

    #[cfg(feature = "conformance")]
    mod store {
        use dreamnet_idempotency::{conformance::Harness, idempotency_store_tests};

        async fn redis_cluster() -> Option<Harness> {
            let (endpoint, raw) = crate::support::redis_cluster()?;
            Some(crate::redis_harness(endpoint, raw).await)
        }

        idempotency_store_tests!(redis_cluster);
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    layer_conformance!(Backend::postgres);

    #[cfg(feature = "conformance")]
    mod store {
        use dreamnet_idempotency::{conformance::Harness, idempotency_store_tests, PostgresStore};

        async fn postgres() -> Option<Harness> {
            let pool = dreamnet_test_support::pg_pool().await?;
            let schema = dreamnet_test_support::unique_schema("idem_store");
            let store = PostgresStore::builder_with_pool(pool.clone())
                .schema(&schema)
                .connect()
                .await
                .expect("store");
            let replica = PostgresStore::builder(&dreamnet_test_support::database_url())
                .schema(&schema)
                .connect()
                .await
                .expect("replica store");
            let cleanup = async move {
                if let Ok(admin) = pool.get().await {
                    let _ = admin
                        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                        .await;
                }
            };
            Some(Harness::new(store).replica(replica).cleanup(cleanup))
        }

        idempotency_store_tests!(postgres);
    }
}
