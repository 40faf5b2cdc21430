use std::sync::Arc;

/// The trace a request belongs to, stored in the request's extensions by the trace-id layer.
///
/// Handlers and inner layers read it with
/// `request.extensions().get::<TraceContext>()`; [`TraceContext::child`] makes the context of
/// a nested operation (same trace id, new span id, this span as parent).
///
/// ```
/// use dreamnet_trace_id::TraceContext;
///
/// let root = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
/// let child = root.child();
/// assert_eq!(child.trace_id(), root.trace_id());
/// assert_eq!(child.parent_span_id(), Some(root.span_id()));
/// assert_ne!(child.span_id(), root.span_id());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: Arc<str>,
    span_id: Arc<str>,
    parent_span_id: Option<Arc<str>>,
}

impl TraceContext {
    /// A root context for `trace_id` with a fresh span id and no parent.
    pub fn new(trace_id: impl Into<Arc<str>>) -> Self {
        Self {
            trace_id: trace_id.into(),
            span_id: new_span_id().into(),
            parent_span_id: None,
        }
    }

    /// A context with every part given (e.g. continued from a W3C `traceparent`).
    pub fn from_parts(
        trace_id: impl Into<Arc<str>>,
        span_id: impl Into<Arc<str>>,
        parent_span_id: Option<Arc<str>>,
    ) -> Self {
        Self {
            trace_id: trace_id.into(),
            span_id: span_id.into(),
            parent_span_id,
        }
    }

    /// The trace id shared by every span of the trace (the `X-Trace-Id` value).
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// This span's id: 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The id of the span this one was started from, if any.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.parent_span_id.as_deref()
    }

    /// The context of a nested operation: same trace, a new span, this span as its parent.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: Arc::clone(&self.trace_id),
            span_id: new_span_id().into(),
            parent_span_id: Some(Arc::clone(&self.span_id)),
        }
    }
}

/// A random, non-zero W3C span id: 16 lowercase hex digits.
pub(crate) fn new_span_id() -> String {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}
