//! OpenTelemetry export (cargo feature `otlp`, flag `--otlp-endpoint`): one server span per
//! request, with the W3C trace id the trace-id layer chose, sent in batches over OTLP/HTTP
//! protobuf to `<endpoint>/v1/traces`.
//!
//! The spans are built from what the request and its response show (route template, status,
//! problem type, the replay header), so the layer crates need no OpenTelemetry dependency.
//! Export never slows or fails a request: spans go through a bounded queue (full: dropped,
//! counted in the log) to a background task.

mod exporter;
mod span;

pub(crate) use exporter::{Exporter, Flush};
pub(crate) use span::record;
