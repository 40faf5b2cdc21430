use crate::{
    scope::{in_scope, with_current, Scoped},
    text::{span_hex, Ids},
    traceparent::{w3c_span_id, w3c_trace_id, TraceFlags, Traceparent},
    tracestate::TraceState,
};
use http::HeaderValue;
use std::{cell::Cell, future::Future, sync::Arc};

/// The trace a request belongs to, stored in the request's extensions by the trace-id layer.
///
/// Two ids name the trace, and most of the time they are the same trace:
///
/// - [`trace_id`](Self::trace_id), the **correlation id**: the `X-Trace-Id` value that logs,
///   problem+json bodies and the `X-Trace-Id` response header carry (an incoming valid
///   `X-Trace-Id`, else the `traceparent` trace id, else a generated id);
/// - the **W3C part**: [`w3c_trace_id`](Self::w3c_trace_id),
///   [`parent_span_id`](Self::parent_span_id), [`trace_flags`](Self::trace_flags) and
///   [`tracestate`](Self::tracestate), continued from a valid incoming `traceparent` and sent
///   on in outbound `traceparent` / `tracestate`. Without one, the W3C trace id is the
///   [W3C form](crate::w3c_trace_id) of the correlation id.
///
/// When a request brings a valid `X-Trace-Id` and a valid `traceparent` of another trace,
/// both are kept: the correlation id is the `X-Trace-Id`, the W3C part continues the
/// `traceparent` (see the [crate documentation](crate) for the table).
///
/// Handlers and inner layers read it with [`TraceContext::from_extensions`];
/// [`TraceContext::child`] makes the context of a nested operation (same trace, new span
/// id, this span as parent).
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
    /// The correlation id, span id, parent span id and the continued W3C trace id when it
    /// is not the correlation id itself (`None` means "the W3C form of the correlation id",
    /// no allocation in the common cases).
    ids: Ids,
    w3c: W3c,
}

/// The W3C Trace Context part of a [`TraceContext`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct W3c {
    flags: TraceFlags,
    /// Shared, so a context stays small (it is moved into the extensions and in and out of
    /// the thread's scope on every poll) and a clone is one count whatever the state's size.
    tracestate: Option<Arc<TraceState>>,
}

impl W3c {
    /// A trace this service starts: sampled (the request's logs are recorded), no state.
    const fn root() -> Self {
        Self {
            flags: TraceFlags::SAMPLED,
            tracestate: None,
        }
    }
}

impl TraceContext {
    /// A root context for `trace_id` with a fresh span id and no parent.
    ///
    /// The W3C trace id is the [W3C form](crate::w3c_trace_id) of `trace_id`, the flags are
    /// [`TraceFlags::SAMPLED`], there is no `tracestate`.
    pub fn new(trace_id: impl Into<Arc<str>>) -> Self {
        Self::root(trace_id.into().as_bytes())
    }

    /// A root context for a trace id given as its (UTF-8) bytes.
    pub(crate) fn root(trace_id: &[u8]) -> Self {
        Self {
            ids: Ids::new(trace_id, &new_span_id(), None, None),
            w3c: W3c::root(),
        }
    }

    /// The root context the layer makes for a valid trace id header (received or
    /// generated): it shares the header's bytes and makes the ids' text only when one is
    /// read, so a request whose ids nobody reads allocates nothing for them.
    pub(crate) fn root_header(trace_id: &HeaderValue) -> Self {
        Self {
            ids: Ids::root(trace_id.clone(), new_span_bits()),
            w3c: W3c::root(),
        }
    }

    /// A context with every id given, W3C part as in [`TraceContext::new`].
    // The public signature predates the one-allocation ids: kept, though the `Arc` is now
    // copied from rather than kept.
    #[allow(clippy::needless_pass_by_value)]
    pub fn from_parts(
        trace_id: impl Into<Arc<str>>,
        span_id: impl Into<Arc<str>>,
        parent_span_id: Option<Arc<str>>,
    ) -> Self {
        Self {
            ids: Ids::new(
                trace_id.into().as_bytes(),
                span_id.into().as_bytes(),
                parent_span_id.as_deref().map(str::as_bytes),
                None,
            ),
            w3c: W3c::root(),
        }
    }

    /// The context of a request that continues the W3C trace of `traceparent`: a fresh span
    /// id whose parent is the caller's, the caller's trace id and flags, and `tracestate`.
    /// `trace_id` is the correlation id (the `traceparent` trace id itself, or an
    /// `X-Trace-Id`).
    ///
    /// ```
    /// use dreamnet_trace_id::{TraceContext, TraceState, Traceparent};
    ///
    /// let tp = Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
    /// let state = TraceState::parse("congo=t61rcWkgMzE").unwrap();
    /// let ctx = TraceContext::from_traceparent("checkout-42", &tp, state);
    /// assert_eq!(ctx.trace_id(), "checkout-42");
    /// assert_eq!(ctx.w3c_trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// assert_eq!(ctx.parent_span_id(), Some("00f067aa0ba902b7"));
    /// assert!(!ctx.trace_flags().sampled());
    /// assert_eq!(ctx.tracestate().unwrap().as_str(), "congo=t61rcWkgMzE");
    /// ```
    pub fn from_traceparent(
        trace_id: impl Into<Arc<str>>,
        traceparent: &Traceparent<'_>,
        tracestate: Option<TraceState>,
    ) -> Self {
        Self::continued(trace_id.into().as_bytes(), traceparent, tracestate)
    }

    /// [`TraceContext::from_traceparent`] for a trace id the layer has already stored.
    pub(crate) fn continued(
        trace_id: &[u8],
        traceparent: &Traceparent<'_>,
        tracestate: Option<TraceState>,
    ) -> Self {
        let w3c_trace_id = traceparent.trace_id().as_bytes();
        Self {
            ids: Ids::new(
                trace_id,
                &new_span_id(),
                Some(traceparent.parent_id().as_bytes()),
                (trace_id != w3c_trace_id).then_some(w3c_trace_id),
            ),
            w3c: W3c {
                flags: traceparent.trace_flags(),
                tracestate: tracestate.map(Arc::new),
            },
        }
    }

    /// This context with other trace flags (e.g. a sampling decision of this service).
    #[must_use]
    pub fn with_trace_flags(mut self, flags: TraceFlags) -> Self {
        self.w3c.flags = flags;
        self
    }

    /// This context with another `tracestate` (e.g. with this service's own entry added).
    #[must_use]
    pub fn with_tracestate(mut self, tracestate: Option<TraceState>) -> Self {
        self.w3c.tracestate = tracestate.map(Arc::new);
        self
    }

    /// The correlation id: the `X-Trace-Id` value, shared by every span of the trace.
    pub fn trace_id(&self) -> &str {
        self.ids.trace_id()
    }

    /// This span's id: 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        self.ids.span_id()
    }

    /// The id of the span this one was started from, if any (for a continued W3C trace,
    /// the caller's `parent-id`).
    pub fn parent_span_id(&self) -> Option<&str> {
        self.ids.parent_span_id()
    }

    /// The W3C trace flags sent on in `traceparent`.
    #[must_use]
    pub fn trace_flags(&self) -> TraceFlags {
        self.w3c.flags
    }

    /// The validated `tracestate` sent on with `traceparent`, if any.
    #[must_use]
    pub fn tracestate(&self) -> Option<&TraceState> {
        self.w3c.tracestate.as_deref()
    }

    /// The continued W3C trace id when it differs from the correlation id (the span's
    /// `w3c_trace_id` field).
    pub(crate) fn distinct_w3c_trace_id(&self) -> Option<&str> {
        self.ids.w3c_trace_id()
    }

    /// The context of a nested operation: same trace, a new span, this span as its parent.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            ids: Ids::new(
                self.trace_id().as_bytes(),
                &new_span_id(),
                Some(self.span_id().as_bytes()),
                self.ids.w3c_trace_id().map(str::as_bytes),
            ),
            w3c: self.w3c.clone(),
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
        with_current(Clone::clone)
    }

    /// Runs `future` with this context as [`TraceContext::current`] while it is polled
    /// (and when it is dropped).
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        Scoped::new(self, future)
    }

    /// A child of the current context, if any, without cloning the current one first.
    pub(crate) fn current_child() -> Option<Self> {
        with_current(Self::child)
    }

    /// Runs `f` with this context as [`TraceContext::current`].
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        in_scope(&mut Some(self), f)
    }

    /// The W3C trace id (32 lowercase hex digits, not all zero) of outbound `traceparent`s.
    ///
    /// The trace id continued from an incoming `traceparent`, else the
    /// [W3C form](crate::w3c_trace_id) of the correlation id: a trace id that already has that
    /// form (any case) in lower case, a hyphenated UUID's 32 digits, or for any other id
    /// (e.g. a generated `timestamp-hex` id) the first 128 bits of its SHA-256, so the
    /// mapping is the same on every service.
    #[must_use]
    pub fn w3c_trace_id(&self) -> std::borrow::Cow<'_, str> {
        match self.ids.w3c_trace_id() {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => w3c_trace_id(self.trace_id()),
        }
    }

    /// The version-00 W3C `traceparent` naming this span as the parent of an outbound call:
    /// `00-<w3c trace id>-<span id>-<flags>`.
    ///
    /// [`PropagateTraceLayer`](crate::PropagateTraceLayer) sends the `traceparent` of a
    /// [`child`](Self::child) of the request's context, so every outbound call is a span of
    /// its own.
    ///
    /// ```
    /// use dreamnet_trace_id::{TraceContext, TraceFlags, Traceparent};
    ///
    /// let ctx = TraceContext::from_parts("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None);
    /// assert_eq!(ctx.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// let unsampled = ctx.with_trace_flags(TraceFlags::NONE);
    /// assert!(unsampled.traceparent().ends_with("-00"));
    ///
    /// // Non-W3C trace ids are mapped, so the header is always valid.
    /// let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    /// assert!(Traceparent::parse(&ctx.traceparent()).is_some());
    /// ```
    #[must_use]
    pub fn traceparent(&self) -> String {
        let trace_id = self.w3c_trace_id();
        let span_id = w3c_span_id(self.span_id());
        let flags = self.w3c.flags.hex();
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(&trace_id);
        out.push('-');
        out.push_str(&span_id);
        out.push('-');
        out.push(char::from(flags[0]));
        out.push(char::from(flags[1]));
        out
    }
}

thread_local! {
    /// The state of this thread's span id generator; 0 until first used.
    static SPAN_RNG: Cell<u64> = const { Cell::new(0) };
}

/// A random, non-zero W3C span id: 16 lowercase hex digits, on the stack.
pub(crate) fn new_span_id() -> [u8; 16] {
    span_hex(new_span_bits())
}

/// The bits of a random, non-zero W3C span id (its digits: [`span_hex`]).
///
/// Span ids only need to be unique, not unguessable (the trace id is the correlation id,
/// and a span id grants nothing), so they come from a per-thread wyrand generator seeded
/// once from the thread's CSPRNG: a handful of instructions instead of `rand::rng()`'s
/// reference-counted ChaCha block buffer. Threads are seeded independently, so their
/// sequences do not collide in practice (64-bit seeds, a 2^64 period).
pub(crate) fn new_span_bits() -> u64 {
    loop {
        let id = next_span_random();
        if id != 0 {
            return id;
        }
    }
}

/// The next output of this thread's wyrand (Wang Yi's generator, the one `fastrand` uses).
fn next_span_random() -> u64 {
    SPAN_RNG.with(|state| {
        let mut seed = state.get();
        if seed == 0 {
            // Never 0 again: 0 marks "not seeded yet".
            seed = rand::RngCore::next_u64(&mut rand::rng()) | 1;
        }
        seed = seed.wrapping_add(0xa076_1d64_78bd_642f);
        if seed == 0 {
            seed = 1;
        }
        state.set(seed);
        let product = u128::from(seed) * u128::from(seed ^ 0xe703_7ed1_a0b4_28db);
        // Truncation is the algorithm: fold the 128-bit product into 64 bits.
        ((product >> 64) as u64) ^ (product as u64)
    })
}

#[cfg(test)]
mod span_id_tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn span_ids_are_sixteen_lower_hex_digits_inline_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = new_span_id();
            let text = std::str::from_utf8(&id).unwrap();
            assert_eq!(text.len(), 16);
            assert!(text.bytes().all(|b| crate::id::HEX.contains(&b)), "{text}");
            assert_ne!(text, "0000000000000000");
            // The digits are the id's bytes, most significant first.
            assert!(u64::from_str_radix(text, 16).is_ok());
            assert!(seen.insert(text.to_owned()), "duplicate span id {text}");
        }
    }

    #[test]
    fn threads_get_different_sequences() {
        let first = || (0..4).map(|_| next_span_random()).collect::<Vec<_>>();
        let a = std::thread::spawn(first).join().unwrap();
        let b = std::thread::spawn(first).join().unwrap();
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod root_header_tests {
    use super::*;

    /// The layer's root context reads like the one made from the same strings.
    #[test]
    fn a_header_root_is_the_context_of_its_strings() {
        let header = HeaderValue::from_static("mbx2k9q1-3f9a0c1e77d24b6a");
        let ctx = TraceContext::root_header(&header);
        assert_eq!(ctx.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
        assert_eq!(ctx.parent_span_id(), None);
        assert_eq!(ctx.trace_flags(), TraceFlags::SAMPLED);
        assert!(ctx.tracestate().is_none());
        let span = ctx.span_id().to_owned();
        assert_eq!(span.len(), 16);
        assert!(span.bytes().all(|b| crate::id::HEX.contains(&b)), "{span}");
        assert_ne!(span, "0000000000000000");
        let same = TraceContext::from_parts("mbx2k9q1-3f9a0c1e77d24b6a", span.as_str(), None);
        assert_eq!(ctx, same);
        assert_eq!(ctx.w3c_trace_id(), same.w3c_trace_id());
        assert_eq!(ctx.traceparent(), same.traceparent());
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_eq!(child.parent_span_id(), Some(span.as_str()));
        // Two roots of one header are two spans.
        assert_ne!(TraceContext::root_header(&header), ctx);
    }

    /// A clone taken before any id was read reads the same ids.
    #[test]
    fn a_clone_of_an_unread_root_reads_the_same() {
        let ctx = TraceContext::root_header(&HeaderValue::from_static("checkout-42"));
        let clone = ctx.clone();
        assert_eq!(clone.span_id(), ctx.span_id());
        assert_eq!(clone.trace_id(), "checkout-42");
        assert_eq!(clone, ctx);
    }
}
