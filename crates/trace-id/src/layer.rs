//! [`TraceIdLayer`]: the server-side layer and its configuration.

use crate::{
    id::{MakeTraceId, TimestampHex},
    service::TraceId,
};
use http::HeaderName;
use std::{fmt, sync::Arc};
use tower_layer::Layer;

/// `x-trace-id`, the header carrying the trace id in both directions.
pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
/// `traceparent`, the W3C Trace Context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`, the W3C vendor-specific trace state, only meaningful with a valid `traceparent`
/// (see [`TraceState`](crate::TraceState)).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The header names a layer reads and writes: [`TraceIdLayer`] on the way in,
/// [`PropagateTraceLayer`](crate::PropagateTraceLayer) on the way out.
#[derive(Clone, Debug)]
pub(crate) struct HeaderNames {
    pub(crate) trace_id: HeaderName,
    pub(crate) traceparent: HeaderName,
    pub(crate) tracestate: HeaderName,
}

impl HeaderNames {
    /// `x-trace-id`, `traceparent` and `tracestate`.
    pub(crate) const DEFAULT: Self = Self {
        trace_id: X_TRACE_ID,
        traceparent: TRACEPARENT,
        tracestate: TRACESTATE,
    };
}

/// What every clone of a [`TraceId`] service shares.
pub(crate) struct Shared<M> {
    pub(crate) names: HeaderNames,
    pub(crate) make: Arc<M>,
}

/// Gives every request a trace id; see the [crate documentation](crate) for the rules.
///
/// Wraps services in [`TraceId`]. Builder methods change the header names and the id policy:
///
/// ```
/// use dreamnet_trace_id::TraceIdLayer;
/// use http::HeaderName;
///
/// let layer = TraceIdLayer::new()
///     .trace_id_header(HeaderName::from_static("x-request-id"))
///     .make_trace_id(|| "my-own-id".to_owned());
/// # let _ = layer;
/// ```
pub struct TraceIdLayer<M = TimestampHex> {
    names: HeaderNames,
    make: Arc<M>,
}

impl TraceIdLayer {
    /// A layer reading `X-Trace-Id`, `traceparent` and `tracestate`, generating
    /// [`TimestampHex`] ids.
    #[must_use]
    pub fn new() -> Self {
        Self {
            names: HeaderNames::DEFAULT,
            make: Arc::new(TimestampHex::new()),
        }
    }
}

impl Default for TraceIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> TraceIdLayer<M> {
    /// The header that carries the trace id in requests and responses (default `x-trace-id`).
    #[must_use]
    pub fn trace_id_header(mut self, name: HeaderName) -> Self {
        self.names.trace_id = name;
        self
    }

    /// The W3C trace context header (default `traceparent`).
    #[must_use]
    pub fn traceparent_header(mut self, name: HeaderName) -> Self {
        self.names.traceparent = name;
        self
    }

    /// The W3C trace state header, read with a valid `traceparent`, removed from the request
    /// when it or the `traceparent` is invalid (default `tracestate`).
    #[must_use]
    pub fn tracestate_header(mut self, name: HeaderName) -> Self {
        self.names.tracestate = name;
        self
    }

    /// The policy that makes ids for requests without a usable one (default [`TimestampHex`]).
    #[must_use]
    pub fn make_trace_id<M2: MakeTraceId>(self, make: M2) -> TraceIdLayer<M2> {
        TraceIdLayer {
            names: self.names,
            make: Arc::new(make),
        }
    }
}

impl<M> Clone for TraceIdLayer<M> {
    fn clone(&self) -> Self {
        Self {
            names: self.names.clone(),
            make: Arc::clone(&self.make),
        }
    }
}

impl<M> fmt::Debug for TraceIdLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceIdLayer")
            .field("trace_id_header", &self.names.trace_id)
            .field("traceparent_header", &self.names.traceparent)
            .field("tracestate_header", &self.names.tracestate)
            .field("make_trace_id", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, M> Layer<S> for TraceIdLayer<M> {
    type Service = TraceId<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceId::from_shared(
            inner,
            Arc::new(Shared {
                names: self.names.clone(),
                make: Arc::clone(&self.make),
            }),
        )
    }
}
