use crate::traceparent::{w3c_span_id, w3c_trace_id};
use std::{future::Future, sync::Arc};

tokio::task_local! {
    /// The context of the request whose future is being polled (set by the trace-id layer).
    static CURRENT: TraceContext;
}

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
            span_id: new_span_id(),
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
            span_id: new_span_id(),
            parent_span_id: Some(Arc::clone(&self.span_id)),
        }
    }
}

impl TraceContext {
    /// The context the trace-id layer stored in a request's (or response's) extensions.
    ///
    /// The one way every layer reads a request's trace: idempotency and billing log it,
    /// problem+json bodies carry its id.
    ///
    /// ```
    /// use dreamnet_trace_id::TraceContext;
    ///
    /// let mut extensions = http::Extensions::new();
    /// assert!(TraceContext::from_extensions(&extensions).is_none());
    /// extensions.insert(TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a"));
    /// let ctx = TraceContext::from_extensions(&extensions).unwrap();
    /// assert_eq!(ctx.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
    /// ```
    #[inline]
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// The context of the request being served by the current task, if any.
    ///
    /// [`TraceIdLayer`](crate::TraceIdLayer) scopes each request's context while the inner
    /// service's future is polled, so handlers and the outbound
    /// [`PropagateTraceLayer`](crate::PropagateTraceLayer) can find it without access to the
    /// request. A task started with `tokio::spawn` does not inherit it: wrap the spawned
    /// future with [`TraceContext::scope`].
    ///
    /// ```
    /// use dreamnet_trace_id::TraceContext;
    ///
    /// assert!(TraceContext::current().is_none());
    /// let ctx = TraceContext::new("job-42");
    /// let seen = ctx.clone().sync_scope(TraceContext::current);
    /// assert_eq!(seen, Some(ctx));
    /// ```
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with this context as [`TraceContext::current`] while it is polled.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The future of [`TraceContext::scope`], with its type spelled out for hand-written
    /// futures.
    pub(crate) fn scoped<F: Future>(
        self,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` with this context as [`TraceContext::current`].
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// The trace id in W3C form (32 lowercase hex digits, not all zero).
    ///
    /// A trace id that already has that form (any case) is returned in lower case; a
    /// hyphenated UUID gives its 32 digits; any other id (e.g. a generated `timestamp-hex` id)
    /// is mapped to the first 128 bits of its SHA-256, so the mapping is the same on every
    /// service. See [`w3c_trace_id`](crate::w3c_trace_id).
    #[must_use]
    pub fn w3c_trace_id(&self) -> std::borrow::Cow<'_, str> {
        w3c_trace_id(&self.trace_id)
    }

    /// The W3C `traceparent` naming this span as the parent of an outbound call:
    /// `00-<w3c trace id>-<span id>-01`.
    ///
    /// ```
    /// use dreamnet_trace_id::{TraceContext, Traceparent};
    ///
    /// let ctx = TraceContext::from_parts("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None);
    /// assert_eq!(ctx.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ///
    /// // Non-W3C trace ids are mapped, so the header is always valid.
    /// let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    /// assert!(Traceparent::parse(&ctx.traceparent()).is_some());
    /// ```
    #[must_use]
    pub fn traceparent(&self) -> String {
        let trace_id = self.w3c_trace_id();
        let span_id = w3c_span_id(&self.span_id);
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(&trace_id);
        out.push('-');
        out.push_str(&span_id);
        out.push_str("-01");
        out
    }
}

/// A random, non-zero W3C span id: 16 lowercase hex digits, in one allocation.
pub(crate) fn new_span_id() -> Arc<str> {
    let mut rng = rand::rng();
    loop {
        let id = rand::RngCore::next_u64(&mut rng);
        if id != 0 {
            let mut digits = [0u8; 16];
            for (i, digit) in digits.iter_mut().enumerate() {
                *digit = crate::id::HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
            }
            return Arc::from(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
        }
    }
}
