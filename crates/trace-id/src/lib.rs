//! A tower layer that gives every request a validated trace id, from `X-Trace-Id` or a W3C
//! `traceparent`, with `tracing` span fields and client-side propagation.
//!
//! ```
//! use dreamnet_trace_id::{TraceContext, TraceIdLayer};
//! use http::{Request, Response};
//! use std::convert::Infallible;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! async fn handler(request: Request<String>) -> Result<Response<String>, Infallible> {
//!     let ctx = TraceContext::from_extensions(request.extensions()).unwrap();
//!     // Every log line of the request carries trace_id and span_id.
//!     tracing::info!("handling");
//!     Ok(Response::new(format!("trace {}", ctx.trace_id())))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(TraceIdLayer::new())
//!     .service(service_fn(handler));
//!
//! // A valid incoming id is kept and echoed.
//! let request = Request::builder()
//!     .header("x-trace-id", "checkout-42")
//!     .body(String::new())
//!     .unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-trace-id"], "checkout-42");
//! assert_eq!(response.body(), "trace checkout-42");
//!
//! // An unsafe one is replaced by a generated `timestamp-hex` id.
//! let request = Request::builder()
//!     .header("x-trace-id", "<script>")
//!     .body(String::new())
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! let id = response.headers()["x-trace-id"].to_str().unwrap();
//! assert_ne!(id, "<script>");
//! assert!(dreamnet_trace_id::is_valid_trace_id(id));
//! # }
//! ```
//!
//! # Rules
//!
//! | request carries | trace id | parent span id |
//! |---|---|---|
//! | one `X-Trace-Id` of 1..=128 `[A-Za-z0-9._-]` | that value | a valid `traceparent`'s parent id, if its trace id is the [W3C form](w3c_trace_id) of that value |
//! | no valid `X-Trace-Id`, one valid `traceparent` (version `00`, lowercase hex, ids not all zero, 55 chars) | its 32-hex trace id | its parent id |
//! | neither | a new [`TimestampHex`] id (or your [`MakeTraceId`] policy's) | none |
//!
//! - A rejected `X-Trace-Id` is never echoed nor logged: a `debug` event records its length
//!   only, and the request's header is replaced by the effective id before inner services
//!   see it.
//! - Without a valid `traceparent` (absent, invalid, or sent twice), `tracestate` is removed
//!   from the request, as W3C Trace Context requires.
//! - Every response of the inner service, including another layer's rejection, gets the
//!   `X-Trace-Id` header (replacing any value the inner service set). An `Err` from the
//!   inner service has no response to carry it; keep rejections as responses.
//! - A [`TraceContext`] (trace id, new span id, parent span id) is inserted into the
//!   request's extensions and is [`TraceContext::current`] while the inner future is polled.
//! - The inner future runs inside an `info`-level `request` span with the fields `method`,
//!   `path`, `trace_id`, `span_id`, `parent_span_id` and `trace_source` (`header`,
//!   `traceparent` or `generated`). With the span disabled no field is evaluated.
//!
//! [`PropagateTraceLayer`] is the client side: it writes `X-Trace-Id` and `traceparent` into
//! outbound requests from the current context.

mod context;
mod future;
mod id;
mod layer;
mod propagate;
mod service;
mod traceparent;

pub use context::TraceContext;
pub use future::ResponseFuture;
pub use id::{is_valid_trace_id, MakeTraceId, TimestampHex, MAX_TRACE_ID_LEN};
pub use layer::{TraceIdLayer, TRACEPARENT, TRACESTATE, X_TRACE_ID};
pub use propagate::{PropagateTrace, PropagateTraceLayer};
pub use service::TraceId;
pub use traceparent::{w3c_trace_id, Traceparent};

#[cfg(test)]
mod tests;
