//! The middleware that turns each request into one OTLP server span.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use dreamnet_trace_id::TraceContext;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span, Status};

use super::exporter::{int, string, Exporter};
use crate::metrics::ProblemType;

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The guarded cluster of a route, when it has one.
fn cluster(route: &str, path: &str) -> Option<String> {
    if route.starts_with("/api/{cluster}/") {
        path.split('/').nth(2).map(str::to_owned)
    } else if route.starts_with("/api/mint-dream") {
        Some("dream-state".to_owned())
    } else {
        None
    }
}

/// Middleware (just inside the trace-id layer): one span per request, exported when the
/// response head is ready.
pub(crate) async fn record(
    State(exporter): State<Exporter>,
    request: Request,
    next: Next,
) -> Response {
    let started = SystemTime::now();
    let Some(context) = TraceContext::from_extensions(request.extensions()).cloned() else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let keyed = ["idempotency-key", "x-idempotency-key"]
        .iter()
        .any(|h| request.headers().contains_key(*h));
    let response = next.run(request).await;
    let ended = SystemTime::now();

    let status = response.status().as_u16();
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let problem = response
        .extensions()
        .get::<ProblemType>()
        .map(|p| p.0.as_str());
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let suffix = |namespace: &str| problem.and_then(|t| t.strip_prefix(namespace));

    let mut attributes = vec![
        string("http.request.method", method.as_str()),
        string("url.path", path.as_str()),
        int("http.response.status_code", i64::from(status)),
        string("dreamnet.trace_id", context.trace_id()),
    ];
    if let Some(route) = &route {
        attributes.push(string("http.route", route.as_str()));
        if let Some(cluster) = cluster(route, &path) {
            attributes.push(string("dreamnet.cluster", cluster));
            let decision = suffix("urn:dreamnet:control:").unwrap_or("admitted");
            attributes.push(string("dreamnet.decision", decision));
        }
        if keyed {
            let outcome = if replayed {
                "replayed"
            } else if let Some(refusal) = suffix("urn:dreamnet:idempotency:") {
                refusal
            } else if status < 500 {
                "new"
            } else {
                "failed"
            };
            attributes.push(string("dreamnet.idempotency.outcome", outcome));
        }
        if route.starts_with("/api/mint-dream") {
            let billing = if (200..300).contains(&status) {
                if replayed {
                    "replayed"
                } else {
                    "charged"
                }
            } else if status == 402 {
                "insufficient_funds"
            } else {
                "not_charged"
            };
            attributes.push(string("dreamnet.billing.state", billing));
        }
    }
    if let Some(problem) = problem {
        attributes.push(string("dreamnet.problem.type", problem));
    }

    let span = Span {
        trace_id: hex::decode(context.w3c_trace_id().as_ref()).unwrap_or_default(),
        span_id: hex::decode(context.span_id()).unwrap_or_default(),
        parent_span_id: context
            .parent_span_id()
            .and_then(|p| hex::decode(p).ok())
            .unwrap_or_default(),
        name: format!(
            "{} {}",
            method.as_str(),
            route.as_deref().unwrap_or("unmatched")
        ),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(started),
        end_time_unix_nano: unix_nanos(ended),
        attributes,
        status: Some(Status {
            // OpenTelemetry's HTTP conventions: a server span is an error on 5xx only.
            code: if status >= 500 {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Span::default()
    };
    exporter.export(span);
    response
}
