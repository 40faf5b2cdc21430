//! Dev-only helpers shared by the DreamNet tests (never a runtime dependency).
//!
//! - [`backends`]: the Redis and PostgreSQL the tests use, which skip loudly when a server is
//!   unreachable, or fail under `DREAMNET_REQUIRE_BACKENDS=1` (as `.ci/run` sets);
//! - [`unique_prefix`] / [`unique_schema`]: names no other test (or test process) shares;
//! - [`eventually`] / [`holds_within`]: poll a condition with a deadline instead of sleeping;
//! - [`logs::Capture`]: the `tracing` output of a test, for assertions on log lines;
//! - [`redis_server::OwnRedis`]: a redis-server of the test's own, to stop and restart;
//! - [`redis_cluster::OwnRedisCluster`]: a 3-master Redis Cluster of the test's own (or one
//!   shared by the test binary), whose masters can be killed and restarted.
//!
//! ```
//! let a = dreamnet_test_support::unique_prefix("idem");
//! let b = dreamnet_test_support::unique_prefix("idem");
//! assert_ne!(a, b);
//! assert!(a.starts_with("dreamnet-test:idem:") && a.ends_with(':'));
//! ```

pub mod backends;
pub mod logs;
mod poll;
pub mod redis_cluster;
pub mod redis_server;
mod unique;

pub use backends::{database_url, pg_pool, redis_connection, redis_url, unavailable};
pub use poll::{eventually, holds_within};
pub use unique::{unique_prefix, unique_schema};
