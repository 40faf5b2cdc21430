//! Trace ids for every request: the `X-Trace-Id` / W3C `traceparent` tower layer.
//!
//! The layer itself is being written; [`TraceContext`] is the stable contract the other
//! DreamNet layers read from request extensions.

mod context;

pub use context::TraceContext;
