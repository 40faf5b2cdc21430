//! `/metrics` through `prometheus-client`: the live families (HTTP, store calls, build info)
//! and the snapshot families (control plane, admin auth, edge, ledger) in one registry per
//! scrape, as Prometheus text 0.0.4 or, when the scraper asks for it, OpenMetrics 1.0.

mod http;
mod snapshot;
pub(crate) mod stores;

use ::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::info::Info,
    registry::Registry,
};

pub use self::http::HttpMetrics;
#[cfg(feature = "otlp")]
pub(crate) use self::http::ProblemType;
pub(crate) use self::http::UNMATCHED;
pub(crate) use snapshot::LastStats;
pub(crate) use stores::StoreMetrics;

/// The content type of an OpenMetrics 1.0 exposition.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one scrape renders: the live metrics and the owners of the snapshot ones.
pub(crate) struct Scrape<'a> {
    pub(crate) http: &'a HttpMetrics,
    pub(crate) stores: &'a StoreMetrics,
    pub(crate) plane: &'a dreamnet_control_core::ControlPlane,
    pub(crate) admin: &'a dreamnet_admin::AuthThrottle,
    pub(crate) edge: &'a crate::edge::EdgeMetrics,
    pub(crate) ledger: &'a dyn dreamnet_billable::LedgerAdmin,
    pub(crate) last_stats: &'a LastStats,
}

impl Scrape<'_> {
    /// Collects every family into a fresh registry (the live ones are shared handles).
    pub(crate) async fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "dreamnet_build",
            "The server's version (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        self.http.register(&mut registry);
        snapshot::control(&mut registry, &self.plane.metrics());
        snapshot::admin(&mut registry, self.admin);
        snapshot::edge(&mut registry, self.edge);
        self.stores.register(&mut registry);
        snapshot::billing(&mut registry, self.ledger, self.last_stats).await;
        registry
    }

    /// The `/metrics` response, in the format the `Accept` header asks for.
    pub(crate) async fn respond(&self, request_headers: &HeaderMap) -> Response {
        let registry = self.registry().await;
        let mut out = String::with_capacity(16 * 1024);
        let (content_type, encoded) = if wants_openmetrics(request_headers) {
            (OPENMETRICS, text::encode(&mut out, &registry))
        } else {
            (
                prometheus_text::CONTENT_TYPE,
                prometheus_text::encode(&mut out, &registry),
            )
        };
        if let Err(err) = encoded {
            // Writing into a String cannot fail; a library bug should still not panic.
            tracing::error!(%err, "encoding /metrics failed");
        }
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            out,
        )
            .into_response()
    }
}

/// Whether `Accept` lists `application/openmetrics-text` with a non-zero quality (what
/// Prometheus sends first); everything else gets the classic text format.
pub(crate) fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut params = item.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn negotiates_openmetrics_only_when_asked() {
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(wants_openmetrics(&accept("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(&accept("text/plain")));
        assert!(!wants_openmetrics(&accept("*/*")));
        assert!(!wants_openmetrics(&accept(
            "application/openmetrics-text;q=0, text/plain"
        )));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn counts_codes_and_routes() {
        let metrics = HttpMetrics::default().with_routes(["/healthz"]);
        metrics.record("/healthz", 200, std::time::Duration::from_millis(2));
        metrics.record("/healthz", 200, std::time::Duration::from_millis(2));
        metrics.record(http::UNMATCHED, 404, std::time::Duration::from_millis(1));
        metrics.record("/x", 999, std::time::Duration::from_millis(1));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("# TYPE dreamnet_http_responses_total counter"),
            "{out}"
        );
        assert!(
            out.contains("dreamnet_http_responses_total{code=\"200\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("dreamnet_http_responses_total{code=\"404\"} 1\n"),
            "{out}"
        );
        assert!(!out.contains("code=\"999\""), "{out}");
        assert!(out.contains(
            "dreamnet_http_request_duration_seconds_count{route=\"/healthz\",status_class=\"2xx\"} 2\n"
        ), "{out}");
        // Pre-registered: the 5xx series of /healthz exists at 0.
        assert!(out.contains(
            "dreamnet_http_request_duration_seconds_count{route=\"/healthz\",status_class=\"5xx\"} 0\n"
        ), "{out}");
    }
}
