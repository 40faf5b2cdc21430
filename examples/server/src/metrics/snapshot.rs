//! Families read from a snapshot at scrape time: the control plane's counters and states,
//! the admin auth counters, the edge's connections and the ledger's stats. Each scrape
//! builds them afresh from the owners' own counters (nothing is counted twice).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dreamnet_billable::{
    ledger::{ActionState, Stats},
    LedgerAdmin,
};
use dreamnet_control_core::{views::MetricsSnapshot, BreakerState, RejectReason};
use parking_lot::Mutex;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The control plane's counters (this replica's, since start) and current states.
pub(crate) fn control(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    let requests = Family::<Labels, Counter>::default();
    let admitted = Family::<Labels, Counter>::default();
    let rejections = Family::<Labels, Counter>::default();
    let breaker = Family::<Labels, Gauge>::default();
    let enabled = Family::<Labels, Gauge>::default();
    for c in &snapshot.clusters {
        let cluster = || vec![("cluster", c.cluster.to_string())];
        requests
            .get_or_create(&cluster())
            .inc_by(c.admitted + c.rejected.total());
        admitted.get_or_create(&cluster()).inc_by(c.admitted);
        for reason in RejectReason::ALL {
            let mut labels = cluster();
            labels.push(("reason", reason.as_str().to_owned()));
            rejections
                .get_or_create(&labels)
                .inc_by(c.rejected.get(reason));
        }
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
        ] {
            let mut labels = cluster();
            labels.push(("state", state.as_str().to_owned()));
            breaker
                .get_or_create(&labels)
                .set(i64::from(c.breaker == state));
        }
        enabled.get_or_create(&cluster()).set(i64::from(c.enabled));
    }
    registry.register(
        "dreamnet_requests",
        "Guarded requests seen by the control plane (admitted + rejected), by cluster",
        requests,
    );
    registry.register(
        "dreamnet_admitted",
        "Guarded requests admitted, by cluster",
        admitted,
    );
    registry.register(
        "dreamnet_rejections",
        "Guarded requests rejected, by cluster and reason",
        rejections,
    );
    registry.register(
        "dreamnet_circuit_breaker_state",
        "1 for the breaker's current state, 0 for the others, by cluster",
        breaker,
    );
    registry.register(
        "dreamnet_cluster_enabled",
        "1 when the cluster is enabled, 0 when disabled",
        enabled,
    );
    gauge(
        registry,
        "dreamnet_kill_switch_engaged",
        "1 when the global kill switch blocks guarded traffic",
        i64::from(snapshot.kill_switch_engaged),
    );
    counter(
        registry,
        "dreamnet_control_store_errors",
        "Failed control-store operations (Redis unreachable or timing out)",
        snapshot.store_errors,
    );
    counter(
        registry,
        "dreamnet_rate_limit_fail_open",
        "Requests admitted without a rate-limit check because the store was unreachable",
        snapshot.fail_open_admissions,
    );
}

/// The admin authentication counters (this replica's, since start).
pub(crate) fn admin(registry: &mut Registry, throttle: &dreamnet_admin::AuthThrottle) {
    counter(
        registry,
        "dreamnet_admin_auth_failures",
        "Admin requests refused for a missing or wrong bearer token",
        throttle.failures_total(),
    );
    counter(
        registry,
        "dreamnet_admin_auth_throttled",
        "Admin requests answered 429 because their address failed too often",
        throttle.throttled_total(),
    );
}

/// The edge's connection counters.
pub(crate) fn edge(registry: &mut Registry, edge: &crate::edge::EdgeMetrics) {
    counter(
        registry,
        "dreamnet_edge_connections_accepted",
        "TCP connections accepted",
        edge.accepted_total(),
    );
    counter(
        registry,
        "dreamnet_edge_connections_refused",
        "Connections closed at once because --max-connections were open",
        edge.refused_total(),
    );
    gauge(
        registry,
        "dreamnet_edge_connections_open",
        "Connections open now",
        saturating(edge.open()),
    );
    counter(
        registry,
        "dreamnet_edge_header_timeouts",
        "Connections closed because a request head took longer than --header-read-timeout",
        edge.header_timeouts_total(),
    );
    counter(
        registry,
        "dreamnet_edge_idle_timeouts",
        "Keep-alive connections closed after --idle-timeout without a request",
        edge.idle_timeouts_total(),
    );
}

/// How long a scrape waits for the ledger's stats before it serves the last known ones: a
/// hung PostgreSQL must not hang `/metrics` (Prometheus would time the whole scrape out).
pub(crate) const STATS_DEADLINE: Duration = Duration::from_secs(1);

/// The last stats the ledger answered, and when: what a scrape serves, marked stale, while
/// the ledger does not answer.
#[derive(Clone, Default)]
pub(crate) struct LastStats(Arc<Mutex<Option<(Stats, Instant)>>>);

/// The ledger's counts and amounts per state (`dreamnet_billable_actions{state}`,
/// `dreamnet_billable_amount{state,currency}`, minor units), whether the ledger answered
/// within [`STATS_DEADLINE`], and, when it did not, the last figures it gave with their age
/// (`dreamnet_billable_stats_stale 1`, `dreamnet_billable_stats_age_seconds`).
pub(crate) async fn billing(registry: &mut Registry, ledger: &dyn LedgerAdmin, last: &LastStats) {
    let answered = tokio::time::timeout(STATS_DEADLINE, ledger.stats())
        .await
        .ok()
        .and_then(Result::ok);
    gauge(
        registry,
        "dreamnet_billable_ledger_up",
        "1 when the billing ledger answered the stats query in time, 0 otherwise",
        i64::from(answered.is_some()),
    );
    let (stats, age) = match answered {
        Some(stats) => {
            *last.0.lock() = Some((stats.clone(), Instant::now()));
            (stats, None)
        }
        None => match last.0.lock().clone() {
            Some((stats, at)) => (stats, Some(at.elapsed())),
            None => return,
        },
    };
    gauge(
        registry,
        "dreamnet_billable_stats_stale",
        "1 when the billing figures below are the last known ones (the ledger did not answer)",
        i64::from(age.is_some()),
    );
    gauge(
        registry,
        "dreamnet_billable_stats_age_seconds",
        "How old the billing figures below are (0 when fresh)",
        age.map_or(0, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX)),
    );
    let actions = Family::<Labels, Gauge>::default();
    for state in ActionState::ALL {
        actions
            .get_or_create(&vec![("state", state.as_str().to_owned())])
            .set(saturating(stats.count(state)));
    }
    registry.register(
        "dreamnet_billable_actions",
        "Billable actions in the ledger, by state",
        actions,
    );
    let amounts = Family::<Labels, Gauge>::default();
    for (currency, by_state) in &stats.amounts {
        for state in ActionState::ALL {
            amounts
                .get_or_create(&vec![
                    ("state", state.as_str().to_owned()),
                    ("currency", currency.clone()),
                ])
                .set(by_state.get(state));
        }
    }
    registry.register(
        "dreamnet_billable_amount",
        "Amounts of billable actions in minor units (cents), by state and currency",
        amounts,
    );
}
