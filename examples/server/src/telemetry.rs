//! Logging through `tracing-subscriber`, and the access-log line of every request
//! (tower-http's `TraceLayer`).

use std::{io::IsTerminal, time::Duration};

use axum::body::Body;
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};
use tracing::Span;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`); text or JSON lines.
///
/// JSON lines carry the whole span list, so every line of a request has the request span's
/// `trace_id` and `span_id` even when a layer opened a nested span.
///
/// # Errors
/// When a global subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .try_init(),
    }
}

/// The access log: tower-http's [`TraceLayer`], one `request finished` line per request with
/// `status` and `elapsed_ms` (`WARN` for 5xx, `INFO` otherwise).
///
/// It sits inside the trace-id layer and reuses that layer's `request` span (method, path,
/// `trace_id`, `span_id`) instead of opening a second one, so the line carries the trace ids
/// exactly as before. Its own failure classification is off: a 5xx is already the `WARN` line.
pub(crate) fn access_log() -> AccessLog {
    TraceLayer::new_for_http()
        .make_span_with(current_span as fn(&http::Request<Body>) -> Span)
        .on_request(())
        .on_response(log_response as fn(&http::Response<Body>, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// The access-log layer's type: the request span reused, one line on response, nothing else.
pub(crate) type AccessLog = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&http::Request<Body>) -> Span,
    (),
    fn(&http::Response<Body>, Duration, &Span),
    (),
    (),
    (),
>;

fn current_span(_: &http::Request<Body>) -> Span {
    Span::current()
}

fn log_response(response: &http::Response<Body>, latency: Duration, _: &Span) {
    let status = response.status().as_u16();
    let elapsed_ms = format_args!("{:.3}", latency.as_secs_f64() * 1000.0);
    if status >= 500 {
        tracing::warn!(status, %elapsed_ms, "request finished");
    } else {
        tracing::info!(status, %elapsed_ms, "request finished");
    }
}
