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
//! Two ids name a request's trace: the **correlation id** ([`TraceContext::trace_id`], the
//! `X-Trace-Id` of requests, responses, logs and problem+json bodies) and the **W3C trace**
//! ([`TraceContext::w3c_trace_id`], parent span id, [`TraceFlags`], [`TraceState`]), which
//! continues a valid `traceparent` whenever there is one, so W3C continuation never breaks:
//!
//! | `X-Trace-Id` | `traceparent` | correlation id | W3C trace id | parent span id | flags out | `tracestate` out |
//! |---|---|---|---|---|---|---|
//! | valid | valid (same or another trace) | the `X-Trace-Id` | the `traceparent`'s | its parent-id | as received | validated, forwarded |
//! | valid | absent / invalid | the `X-Trace-Id` | [W3C form](w3c_trace_id) of it | none | `01` | dropped |
//! | absent / invalid / repeated | valid | the `traceparent` trace id | the same | its parent-id | as received | validated, forwarded |
//! | absent / invalid / repeated | absent / invalid | new [`TimestampHex`] id (or your [`MakeTraceId`] policy's) | W3C form of it | none | `01` | dropped |
//!
//! - Valid `X-Trace-Id`: exactly one field of 1..=128 `[A-Za-z0-9._-]`. A rejected one is
//!   never echoed nor logged: a `debug` event records its length only, and the request's
//!   header is replaced by the effective id before inner services see it.
//! - Valid `traceparent` ([`Traceparent`]): one field; version `00` exactly 55 characters;
//!   a future version `01`..`fe` parsed by the version-00 fields, longer only when
//!   character 56 is `-`; `ff`, upper case, all-zero ids invalid; surrounding whitespace
//!   ignored. Flags: `sampled` and `random` are kept, reserved bits cleared. Outbound it is
//!   always version `00`.
//! - `tracestate` ([`TraceState`]): only read with a valid `traceparent`; several fields
//!   combined in order; whitespace and empty list-members ignored; key and value grammar
//!   checked; at most 32 list-members; a duplicate key keeps its left-most entry; any
//!   invalid list-member drops the whole `tracestate`. Dropped (also when `traceparent` is
//!   absent or invalid), it is removed from the request and a `debug` event says why,
//!   never with the value.
//! - Every response of the inner service, including another layer's rejection, gets the
//!   `X-Trace-Id` header (replacing any value the inner service set). An `Err` from the
//!   inner service has no response to carry it; keep rejections as responses.
//! - A [`TraceContext`] (ids, new span id, W3C part) is inserted into the request's
//!   extensions and is [`TraceContext::current`] while the inner future is polled.
//! - The inner future runs inside an `info`-level `request` span with the fields `method`,
//!   `path`, `trace_id`, `span_id`, `parent_span_id`, `w3c_trace_id` (only when it is not
//!   the correlation id) and `trace_source` (`header`, `traceparent` or `generated`). With
//!   the span disabled no field is evaluated.
//!
//! [`PropagateTraceLayer`] is the client side: each outbound request is a child span of the
//! current context and carries `X-Trace-Id`, `traceparent` (version `00`, the call's span as
//! parent-id, the flags kept) and the `tracestate`.

mod context;
mod future;
mod id;
mod incoming;
mod layer;
mod propagate;
mod scope;
mod service;
mod text;
mod traceparent;
mod tracestate;

pub use context::TraceContext;
pub use future::ResponseFuture;
pub use id::{is_valid_trace_id, MakeTraceId, TimestampHex, MAX_TRACE_ID_LEN};
pub use layer::{TraceIdLayer, TRACEPARENT, TRACESTATE, X_TRACE_ID};
pub use propagate::{PropagateTrace, PropagateTraceLayer};
pub use service::TraceId;
pub use traceparent::{w3c_trace_id, TraceFlags, Traceparent};
pub use tracestate::{TraceState, TraceStateError, MAX_TRACESTATE_MEMBERS};

#[cfg(test)]
mod tests;
