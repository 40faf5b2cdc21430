//! How tests find (or loudly skip) the Redis and PostgreSQL servers.
//!
//! Backend tests connect to `redis://127.0.0.1:6379` and
//! `postgres://postgres@127.0.0.1:5432/test` unless `DREAMNET_REDIS_URL` /
//! `DREAMNET_DATABASE_URL` say otherwise. When a server cannot be reached the test says so
//! loudly on stderr and skips, unless `DREAMNET_REQUIRE_BACKENDS=1` (set by `.ci/run`), in
//! which case [`unavailable`] panics so CI can never pass with the backends silently skipped.

use std::io::Write;

/// The default Redis URL for tests.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The default PostgreSQL URL for tests.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The Redis URL tests use (`DREAMNET_REDIS_URL` or the default).
pub fn redis_url() -> String {
    std::env::var("DREAMNET_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The PostgreSQL URL tests use (`DREAMNET_DATABASE_URL` or the default).
pub fn database_url() -> String {
    std::env::var("DREAMNET_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Whether backend tests must fail rather than skip when a server is unreachable.
pub fn backends_required() -> bool {
    matches!(
        std::env::var("DREAMNET_REQUIRE_BACKENDS").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// Reports an unreachable backend: panics when backends are required, otherwise prints a
/// loud skip notice. Call it and return from the test when it returns.
///
/// # Panics
/// When `DREAMNET_REQUIRE_BACKENDS=1`.
pub fn unavailable(backend: &str, error: &dyn std::fmt::Display) {
    assert!(
        !backends_required(),
        "{backend} is required (DREAMNET_REQUIRE_BACKENDS=1) but unreachable: {error}"
    );
    let message = format!(
        "SKIPPED: {backend} unreachable ({error}); set DREAMNET_REQUIRE_BACKENDS=1 to fail instead"
    );
    // The test harness captures the print macros of passing tests, and a skip must be seen:
    // write to the process's stderr handle itself, which the harness leaves alone.
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// A connection to the test Redis, or `None` after [`unavailable`] (a loud skip).
///
/// # Panics
/// When Redis is unreachable and `DREAMNET_REQUIRE_BACKENDS=1`.
pub async fn redis_connection() -> Option<redis::aio::ConnectionManager> {
    let url = redis_url();
    let connected = async {
        let client = redis::Client::open(url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(1);
        let mut connection = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok::<_, redis::RedisError>(connection)
    };
    match connected.await {
        Ok(connection) => Some(connection),
        Err(error) => {
            unavailable("redis", &error);
            None
        }
    }
}

/// A pool on the test PostgreSQL whose first connection has been checked, or `None` after
/// [`unavailable`] (a loud skip).
///
/// # Panics
/// When PostgreSQL is unreachable and `DREAMNET_REQUIRE_BACKENDS=1`.
pub async fn pg_pool() -> Option<deadpool_postgres::Pool> {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(database_url());
    let pool = match config.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    ) {
        Ok(pool) => pool,
        Err(error) => {
            unavailable("postgresql", &error);
            return None;
        }
    };
    let checked = tokio::time::timeout(std::time::Duration::from_secs(5), pool.get()).await;
    match checked {
        Ok(Ok(_client)) => Some(pool),
        Ok(Err(error)) => {
            unavailable("postgresql", &error);
            None
        }
        Err(_) => {
            unavailable("postgresql", &"no connection within 5 s");
            None
        }
    }
}
