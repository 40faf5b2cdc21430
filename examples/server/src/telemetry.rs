//! Logging through `tracing-subscriber`, and the access-log line of every request.

use std::{io::IsTerminal, time::Instant};

use axum::{extract::Request, middleware::Next, response::Response};
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

/// Middleware (inside the trace-id layer, so inside the request span, which already carries
/// method, path and trace id): one line per request with status and latency.
pub(crate) async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
    if status >= 500 {
        tracing::warn!(status, %elapsed_ms, "request finished");
    } else {
        tracing::info!(status, %elapsed_ms, "request finished");
    }
    response
}
