//! Names that no other test, and no other test process, uses.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
};

/// A fresh, random-looking 64-bit value: a process-wide counter hashed with a random seed.
fn fresh() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one((n, std::process::id()))
}

/// A Redis key prefix of its own, e.g. `dreamnet-test:control:3f9a0c1e77d24b6a:`.
///
/// Tests on the shared Redis never see each other's keys, so they can run in parallel (and
/// beside another checkout's tests) without flushing anything.
pub fn unique_prefix(tag: &str) -> String {
    format!("dreamnet-test:{tag}:{:016x}:", fresh())
}

/// A PostgreSQL schema name of its own: `t_<tag>_<16 hex>`, lower case, a valid identifier
/// for any `tag` of ASCII letters, digits and `_` (other characters become `_`).
///
/// ```
/// let schema = dreamnet_test_support::unique_schema("ledger-suite");
/// assert!(schema.starts_with("t_ledger_suite_"));
/// assert!(schema.len() <= 63, "PostgreSQL truncates longer identifiers");
/// ```
pub fn unique_schema(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("t_{tag}_{:016x}", fresh())
}
