//! How tests find the Redis and PostgreSQL servers.
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
