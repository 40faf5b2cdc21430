//! [`TraceId`]: the server-side service.

use crate::{
    context::TraceContext,
    future::ResponseFuture,
    id::{is_valid_trace_id_bytes, MakeTraceId, TimestampHex},
    incoming::{Field, Incoming},
    layer::{Shared, TraceIdLayer},
    scope::Scoped,
    traceparent::Traceparent,
    tracestate::{TraceState, TraceStateError},
};
use http::{HeaderValue, Request, Response};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tower_service::Service;
use tracing::{level_filters::LevelFilter, Span};

/// The service made by [`TraceIdLayer`]: resolves the request's trace id, stores a
/// [`TraceContext`] in its extensions, runs the inner service inside the request's span and
/// context, and sets the trace id header on the response.
pub struct TraceId<S, M = TimestampHex> {
    inner: S,
    shared: Arc<Shared<M>>,
}

impl<S> TraceId<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&TraceIdLayer::new(), inner)
    }

    /// A [`TraceIdLayer`] with the default configuration.
    #[must_use]
    pub fn layer() -> TraceIdLayer {
        TraceIdLayer::new()
    }
}

impl<S, M> TraceId<S, M> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<M>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M> Clone for TraceId<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for TraceId<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceId")
            .field("inner", &self.inner)
            .field("trace_id_header", &self.shared.names.trace_id)
            .field("make_trace_id", &std::any::type_name::<M>())
            .finish()
    }
}

/// Where the request's trace id came from (the span's `trace_source` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Header,
    Traceparent,
    Generated,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Traceparent => "traceparent",
            Self::Generated => "generated",
        }
    }
}

/// Why an incoming trace id header was not used. Never holds the value itself.
#[derive(Clone, Copy, Debug)]
enum Rejected {
    Invalid { len: usize },
    Repeated,
}

/// Why the request's `tracestate` was dropped. Never holds the value itself.
#[derive(Clone, Copy, Debug)]
enum DroppedState {
    NoTraceparent,
    Invalid(TraceStateError),
}

struct Resolved {
    context: TraceContext,
    header: HeaderValue,
    source: Source,
    rejected: Option<Rejected>,
    dropped_state: Option<DroppedState>,
}

fn resolve<B, M: MakeTraceId>(shared: &Shared<M>, request: &Request<B>) -> Resolved {
    let names = &shared.names;
    let headers = request.headers();
    let found = Incoming::find(headers, names);
    let (incoming, rejected) = match found.trace_id {
        Field::Absent => (None, None),
        // Checked here by the allow-list only: the context checks UTF-8 once, over all ids.
        Field::One(value) if is_valid_trace_id_bytes(value.as_bytes()) => {
            (Some((value.as_bytes(), value)), None)
        }
        Field::One(value) => (None, Some(Rejected::Invalid { len: value.len() })),
        // Intermediaries disagree on which of several values counts: use none of them.
        Field::Repeated => (None, Some(Rejected::Repeated)),
    };

    // W3C: tracestate is only parsed after a valid traceparent, and an invalid traceparent
    // takes its tracestate with it; an invalid tracestate does not affect traceparent.
    let traceparent = Traceparent::from_field(found.traceparent);
    let (tracestate, dropped_state) = match (&traceparent, found.tracestate) {
        (_, false) => (None, None),
        (Some(_), true) => match TraceState::from_headers(headers, &names.tracestate) {
            Ok(state) => (state, None),
            Err(error) => (None, Some(DroppedState::Invalid(error))),
        },
        (None, true) => (None, Some(DroppedState::NoTraceparent)),
    };

    let (context, header, source) = match (incoming, traceparent) {
        // The traceparent continues the W3C trace (even of another trace id), X-Trace-Id
        // stays the correlation id.
        (Some((id, value)), Some(tp)) => (
            TraceContext::continued(id, &tp, tracestate),
            value.clone(),
            Source::Header,
        ),
        (Some((_, value)), None) => (
            TraceContext::root_header(value),
            value.clone(),
            Source::Header,
        ),
        (None, Some(tp)) => {
            let header = HeaderValue::from_str(tp.trace_id())
                .expect("32 lowercase hex digits are a valid header value");
            (
                TraceContext::continued(tp.trace_id().as_bytes(), &tp, tracestate),
                header,
                Source::Traceparent,
            )
        }
        (None, None) => {
            let header = generate(&*shared.make, request);
            (
                TraceContext::root_header(&header),
                header,
                Source::Generated,
            )
        }
    };

    Resolved {
        context,
        header,
        source,
        rejected,
        dropped_state,
    }
}

/// A new id from the policy, as the header value: checked by the allow-list however the
/// policy made it, replaced by a [`TimestampHex`] id when invalid.
fn generate<B, M: MakeTraceId>(make: &M, request: &Request<B>) -> HeaderValue {
    let id = make.make_trace_id_bytes(request);
    let id = if is_valid_trace_id_bytes(&id) {
        id
    } else {
        tracing::warn!(
            len = id.len(),
            "MakeTraceId policy produced an invalid trace id; generated a timestamp-hex id instead"
        );
        TimestampHex::new().make_trace_id_bytes(request)
    };
    HeaderValue::from_maybe_shared(id).expect("a valid trace id is a valid header value")
}

/// Whether an `info` span could be seen by anyone: a `tracing` subscriber that enables
/// `info` (the level filter every subscriber registers, the one `info_span!` checks first),
/// or a `log` logger that does (the fallback of tracing's `log` feature, used while no
/// subscriber is set).
///
/// When neither is, `info_span!` would still build a disabled span and, with tracing's
/// `log` feature on (another crate in the build may turn it on), record its fields for a
/// logger that then drops them, and check the logger again on every enter, exit and drop:
/// [`Span::none`] does none of that, and nobody can tell the difference.
#[inline]
fn span_observable() -> bool {
    LevelFilter::current() >= LevelFilter::INFO || log::max_level() >= log::LevelFilter::Info
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for TraceId<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: MakeTraceId,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let names = &self.shared.names;
        let Resolved {
            context,
            header,
            source,
            rejected,
            dropped_state,
        } = resolve(&self.shared, &request);

        // Inner layers and handlers see the effective id, never a rejected one.
        if source != Source::Header {
            request
                .headers_mut()
                .insert(&names.trace_id, header.clone());
        }
        if dropped_state.is_some() {
            request.headers_mut().remove(&names.tracestate);
        }

        // Field values are only evaluated when the span is enabled; when nothing could
        // observe it, not even tracing's `log` fallback, the macro is not reached at all.
        let span = if span_observable() {
            tracing::info_span!(
                "request",
                method = request.method().as_str(),
                path = request.uri().path(),
                trace_id = context.trace_id(),
                span_id = context.span_id(),
                parent_span_id = context.parent_span_id(),
                w3c_trace_id = context.distinct_w3c_trace_id(),
                trace_source = source.as_str(),
            )
        } else {
            Span::none()
        };
        request.extensions_mut().insert(context.clone());

        // One scope for `call` and the future: the context moves in, no second clone.
        let inner = Scoped::make(context, span, || {
            match rejected {
                Some(Rejected::Invalid { len }) => tracing::debug!(
                    header = names.trace_id.as_str(),
                    len,
                    "ignored an invalid incoming trace id"
                ),
                Some(Rejected::Repeated) => tracing::debug!(
                    header = names.trace_id.as_str(),
                    "ignored a trace id header sent more than once"
                ),
                None => {}
            }
            match dropped_state {
                Some(DroppedState::NoTraceparent) => {
                    tracing::debug!("dropped tracestate: no valid traceparent");
                }
                Some(DroppedState::Invalid(error)) => {
                    tracing::debug!(%error, "dropped an invalid tracestate");
                }
                None => {}
            }
            self.inner.call(request)
        });

        ResponseFuture::new(inner, names.trace_id.clone(), header)
    }
}
