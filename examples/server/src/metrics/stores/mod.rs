//! Store call latency and errors, per store, backend and operation: wrappers around the
//! store traits the server constructs (idempotency, control, ledger), so the layer crates
//! stay free of any metrics library.

mod control;
mod idempotency;
mod ledger;

use std::{borrow::Borrow, future::Future, time::Instant};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub(crate) use control::TimedControl;
pub(crate) use idempotency::TimedIdempotency;
pub(crate) use ledger::TimedLedger;

/// Buckets in seconds: 0.1 ms (a memory store, a local Redis) to 2.5 s (past every deadline).
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOp {
    store: &'static str,
    backend: &'static str,
    op: &'static str,
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

/// The store-call families (cheap to clone: clones count into the same figures).
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    latency: Family<StoreOp, Histogram, fn() -> Histogram>,
    errors: Family<StoreOp, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            latency: Family::new_with_constructor(store_histogram),
            errors: Family::default(),
        }
    }
}

impl StoreMetrics {
    /// The handles of one operation, created (and so exported at 0) now: a wrapper holds
    /// them, so a call touches no map or lock.
    fn op(&self, store: &'static str, backend: &'static str, op: &'static str) -> Op {
        let labels = StoreOp { store, backend, op };
        Op {
            latency: self.latency.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
        }
    }

    /// Adds the families to a scrape's registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "dreamnet_store_call_duration_seconds",
            "Store calls by store (idempotency, control, ledger), backend and operation",
            self.latency.clone(),
        );
        registry.register(
            "dreamnet_store_call_errors",
            "Store calls that failed in the backend (unreachable, timed out, broken), by store, backend and operation; state conflicts are not errors",
            self.errors.clone(),
        );
    }
}

/// One operation's latency histogram and error counter.
#[derive(Clone)]
struct Op {
    latency: Histogram,
    errors: Counter,
}

impl Op {
    fn record(&self, started: Instant, failed: bool) {
        self.latency.observe(started.elapsed().as_secs_f64());
        if failed {
            self.errors.inc();
        }
    }
}

/// `call`, recorded into `op` once it resolves: its latency counted from `started` and,
/// when `failed` says so of its output, an error. The one timing path of every store
/// wrapper; `op` is borrowed by futures that may borrow the wrapper and owned by `'static`
/// ones.
async fn timed<R>(
    op: impl Borrow<Op>,
    started: Instant,
    call: impl Future<Output = R>,
    failed: fn(&R) -> bool,
) -> R {
    let result = call.await;
    op.borrow().record(started, failed(&result));
    result
}
