//! HTTP counters and the Prometheus text rendering of `/metrics`.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use dreamnet_billable::{ledger::ActionState, LedgerAdmin};
use dreamnet_control_core::{views::MetricsSnapshot, BreakerState, RejectReason};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

/// Requests answered, by status code (an array indexed by code keeps the hot path lock-free).
#[derive(Clone)]
pub struct HttpMetrics {
    by_status: Arc<[AtomicU64; 600]>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            by_status: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// Counts one response.
    pub fn record(&self, status: u16) {
        if let Some(counter) = self.by_status.get(usize::from(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `dreamnet_http_responses_total{code}` in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "dreamnet_http_responses_total",
            "counter",
            "HTTP responses sent, by status code.",
        );
        for (code, counter) in self.by_status.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "dreamnet_http_responses_total{{code=\"{code}\"}} {n}");
            }
        }
    }
}

/// Middleware counting every response by status.
pub(crate) async fn count(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    metrics.record(response.status().as_u16());
    response
}

/// Writes the admin authentication counters (this replica's, since start).
pub(crate) fn render_admin(out: &mut String, throttle: &dreamnet_admin::AuthThrottle) {
    family(
        out,
        "dreamnet_admin_auth_failures_total",
        "counter",
        "Admin requests refused for a missing or wrong bearer token.",
    );
    let _ = writeln!(
        out,
        "dreamnet_admin_auth_failures_total {}",
        throttle.failures_total()
    );
    family(
        out,
        "dreamnet_admin_auth_throttled_total",
        "counter",
        "Admin requests answered 429 because their address failed too often.",
    );
    let _ = writeln!(
        out,
        "dreamnet_admin_auth_throttled_total {}",
        throttle.throttled_total()
    );
}

/// Writes the control plane's counters (this replica's, since start).
pub(crate) fn render_control(out: &mut String, snapshot: &MetricsSnapshot) {
    family(
        out,
        "dreamnet_requests_total",
        "counter",
        "Guarded requests seen by the control plane (admitted + rejected), by cluster.",
    );
    for c in &snapshot.clusters {
        let _ = writeln!(
            out,
            "dreamnet_requests_total{{cluster=\"{}\"}} {}",
            label(&c.cluster),
            c.admitted + c.rejected.total()
        );
    }
    family(
        out,
        "dreamnet_admitted_total",
        "counter",
        "Guarded requests admitted, by cluster.",
    );
    for c in &snapshot.clusters {
        let _ = writeln!(
            out,
            "dreamnet_admitted_total{{cluster=\"{}\"}} {}",
            label(&c.cluster),
            c.admitted
        );
    }
    family(
        out,
        "dreamnet_rejections_total",
        "counter",
        "Guarded requests rejected, by cluster and reason.",
    );
    for c in &snapshot.clusters {
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "dreamnet_rejections_total{{cluster=\"{}\",reason=\"{}\"}} {}",
                label(&c.cluster),
                reason.as_str(),
                c.rejected.get(reason)
            );
        }
    }
    family(
        out,
        "dreamnet_circuit_breaker_state",
        "gauge",
        "1 for the breaker's current state, 0 for the others, by cluster.",
    );
    for c in &snapshot.clusters {
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
        ] {
            let _ = writeln!(
                out,
                "dreamnet_circuit_breaker_state{{cluster=\"{}\",state=\"{}\"}} {}",
                label(&c.cluster),
                state.as_str(),
                u8::from(c.breaker == state)
            );
        }
    }
    family(
        out,
        "dreamnet_cluster_enabled",
        "gauge",
        "1 when the cluster is enabled, 0 when disabled.",
    );
    for c in &snapshot.clusters {
        let _ = writeln!(
            out,
            "dreamnet_cluster_enabled{{cluster=\"{}\"}} {}",
            label(&c.cluster),
            u8::from(c.enabled)
        );
    }
    family(
        out,
        "dreamnet_kill_switch_engaged",
        "gauge",
        "1 when the global kill switch blocks guarded traffic.",
    );
    let _ = writeln!(
        out,
        "dreamnet_kill_switch_engaged {}",
        u8::from(snapshot.kill_switch_engaged)
    );
    family(
        out,
        "dreamnet_control_store_errors_total",
        "counter",
        "Failed control-store operations (Redis unreachable or timing out).",
    );
    let _ = writeln!(
        out,
        "dreamnet_control_store_errors_total {}",
        snapshot.store_errors
    );
    family(
        out,
        "dreamnet_rate_limit_fail_open_total",
        "counter",
        "Requests admitted without a rate-limit check because the store was unreachable.",
    );
    let _ = writeln!(
        out,
        "dreamnet_rate_limit_fail_open_total {}",
        snapshot.fail_open_admissions
    );
}

/// Writes the ledger's counts and amounts per state (`dreamnet_billable_actions{state}`,
/// `dreamnet_billable_amount{state,currency}`, minor units) and whether the ledger answered.
pub(crate) async fn render_billing(out: &mut String, ledger: &dyn LedgerAdmin) {
    let stats = ledger.stats().await;
    family(
        out,
        "dreamnet_billable_ledger_up",
        "gauge",
        "1 when the billing ledger answered the stats query, 0 otherwise.",
    );
    let _ = writeln!(
        out,
        "dreamnet_billable_ledger_up {}",
        u8::from(stats.is_ok())
    );
    let Ok(stats) = stats else {
        return;
    };
    family(
        out,
        "dreamnet_billable_actions",
        "gauge",
        "Billable actions in the ledger, by state.",
    );
    for state in ActionState::ALL {
        let _ = writeln!(
            out,
            "dreamnet_billable_actions{{state=\"{}\"}} {}",
            state.as_str(),
            stats.count(state)
        );
    }
    family(
        out,
        "dreamnet_billable_amount",
        "gauge",
        "Amounts of billable actions in minor units (cents), by state and currency.",
    );
    for (currency, amounts) in &stats.amounts {
        for state in ActionState::ALL {
            let _ = writeln!(
                out,
                "dreamnet_billable_amount{{state=\"{}\",currency=\"{}\"}} {}",
                state.as_str(),
                label(currency),
                amounts.get(state)
            );
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
pub(crate) fn label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counted_codes_only() {
        let metrics = HttpMetrics::default();
        metrics.record(200);
        metrics.record(200);
        metrics.record(404);
        metrics.record(999);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("# TYPE dreamnet_http_responses_total counter"));
        assert!(out.contains("dreamnet_http_responses_total{code=\"200\"} 2\n"));
        assert!(out.contains("dreamnet_http_responses_total{code=\"404\"} 1\n"));
        assert!(!out.contains("code=\"500\""));
    }

    #[test]
    fn escapes_labels() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
