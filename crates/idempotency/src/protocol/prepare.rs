//! Step 1: which requests are guarded, and what a guarded request is (key, scope, body,
//! fingerprint).

use std::{fmt, sync::Arc};

use bytes::Bytes;
use dreamnet_common::{
    body::{buffer_limited, BufferError},
    Problem,
};
use dreamnet_trace_id::TraceContext;
use http::{request::Parts, HeaderName, Method, Request};
use http_body::Body;

use super::problems;
use crate::{
    key::{key_from_headers, IdempotencyKey, DEFAULT_KEY_HEADERS},
    layer::DEFAULT_MAX_BODY,
    scope::{DefaultScope, ScopeExtractor},
    stored::DEFAULT_REPLAYED_HEADERS,
    Fingerprint, LOG_TARGET,
};

/// The request-side rules of the protocol: which methods are guarded, where the key is read
/// from, whether it is required, how keys are scoped and fingerprinted, and the body limits.
///
/// The defaults are the IETF draft's: `Idempotency-Key` then `X-Idempotency-Key`, POST and
/// PATCH, key optional, [`DefaultScope`], no fingerprinted headers, 1 MiB request and
/// response bodies, [`DEFAULT_REPLAYED_HEADERS`].
#[derive(Clone)]
#[must_use]
pub struct Protocol {
    key_headers: Vec<HeaderName>,
    /// `None`: every method is guarded.
    methods: Option<Vec<Method>>,
    required: bool,
    scope: Arc<dyn ScopeExtractor>,
    fingerprint_headers: Vec<HeaderName>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) replayed_headers: Vec<HeaderName>,
}

/// What [`Protocol::admit`] decided about a request.
#[derive(Debug)]
pub enum Admission {
    /// Not guarded (another method, or no key on an optional route): pass it through.
    Skip,
    /// Guarded under this key: [`Protocol::prepare`] it.
    Guard(IdempotencyKey),
    /// Refused before the body is read (400: key missing on a required route, or invalid).
    Reject(Problem),
}

/// A guarded request, ready to be claimed: its key, scope and fingerprint, and the request
/// itself with the body buffered.
#[derive(Debug)]
#[non_exhaustive]
pub struct Prepared {
    /// The idempotency key.
    pub key: IdempotencyKey,
    /// The key's scope (see [`ScopeExtractor`]).
    pub scope: String,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// The request's trace id, from `dreamnet-trace-id`'s `TraceContext`, if present.
    pub trace_id: Option<String>,
    /// The request head.
    pub parts: Parts,
    /// The whole request body.
    pub body: Bytes,
}

impl Prepared {
    /// The request's trace id, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protocol")
            .field("key_headers", &self.key_headers)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("replayed_headers", &self.replayed_headers)
            .finish_non_exhaustive()
    }
}

impl Protocol {
    /// The defaults (see the type's docs).
    pub fn new() -> Self {
        Self {
            key_headers: DEFAULT_KEY_HEADERS.to_vec(),
            methods: Some(vec![Method::POST, Method::PATCH]),
            required: false,
            scope: Arc::new(DefaultScope),
            fingerprint_headers: Vec::new(),
            max_request_body: DEFAULT_MAX_BODY,
            max_response_body: DEFAULT_MAX_BODY,
            replayed_headers: DEFAULT_REPLAYED_HEADERS.to_vec(),
        }
    }

    /// The headers the key is read from, first present wins.
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.key_headers = names.into_iter().collect();
        self
    }

    /// The methods guarded; others are [`Admission::Skip`].
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Guards every method (a billable route charges whatever the method).
    pub fn any_method(mut self) -> Self {
        self.methods = None;
        self
    }

    /// Whether a guarded method must carry a key (400 without one).
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// The scope extractor.
    pub fn scope(self, scope: impl ScopeExtractor) -> Self {
        self.shared_scope(Arc::new(scope))
    }

    /// A scope extractor shared with other layers.
    pub fn shared_scope(mut self, scope: Arc<dyn ScopeExtractor>) -> Self {
        self.scope = scope;
        self
    }

    /// Request headers included in the fingerprint.
    pub fn fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.fingerprint_headers = names.into_iter().collect();
        self
    }

    /// The largest request body buffered; larger is 413.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// The largest response body [`capture`](Self::capture) keeps.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// The response headers stored and replayed (`Set-Cookie`, `Date` and framing headers
    /// never are).
    pub fn replayed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.replayed_headers = names.into_iter().collect();
        self
    }

    /// Whether (and under which key) the request is guarded. No await and no body read, so
    /// a service calls it in `call` and passes skipped requests straight through.
    pub fn admit<B>(&self, request: &Request<B>) -> Admission {
        if let Some(methods) = &self.methods {
            if !methods.contains(request.method()) {
                return Admission::Skip;
            }
        }
        let trace_id =
            || TraceContext::from_extensions(request.extensions()).map(TraceContext::trace_id);
        match key_from_headers(request.headers(), &self.key_headers) {
            Ok(Some(key)) => Admission::Guard(key),
            Ok(None) if !self.required => Admission::Skip,
            Ok(None) => Admission::Reject(problems::missing_key(trace_id())),
            Err(err) => Admission::Reject(problems::invalid_key(&err, trace_id())),
        }
    }

    /// Buffers the body (`Content-Length` checked first, then counted) and computes the
    /// scope and fingerprint.
    ///
    /// # Errors
    /// The problem to answer: 413 over the limit, 400 for a body that fails while read.
    pub async fn prepare<B>(
        &self,
        key: IdempotencyKey,
        request: Request<B>,
    ) -> Result<Prepared, Problem>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let trace_id =
            TraceContext::from_extensions(&parts.extensions).map(|t| t.trace_id().to_owned());
        let body = match buffer_limited(&parts.headers, body, self.max_request_body).await {
            Ok(body) => body,
            Err(BufferError::TooLarge { limit }) => {
                return Err(problems::body_too_large(limit, trace_id.as_deref()))
            }
            Err(BufferError::Body(err)) => {
                tracing::debug!(target: LOG_TARGET, idempotency_key = key.as_str(), error = %err, "request body unreadable");
                return Err(problems::unreadable_body(trace_id.as_deref()));
            }
        };
        let scope = self.scope.scope(&parts);
        let fingerprint = Fingerprint::compute(&parts, &self.fingerprint_headers, &body);
        Ok(Prepared {
            key,
            scope,
            fingerprint,
            trace_id,
            parts,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn post(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut builder = Request::post("/charges");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    #[test]
    fn admit_skips_other_methods_and_keyless_optional_requests() {
        let rules = Protocol::new();
        let get = Request::get("/")
            .header("idempotency-key", "k")
            .body(())
            .unwrap();
        assert!(matches!(rules.admit(&get), Admission::Skip));
        assert!(matches!(rules.admit(&post(&[])), Admission::Skip));
        assert!(
            matches!(rules.admit(&post(&[("idempotency-key", "k")])), Admission::Guard(k) if k.as_str() == "k")
        );
        let required = Protocol::new().required(true);
        assert!(matches!(required.admit(&post(&[])), Admission::Reject(p) if p.status == 400));
        assert!(
            matches!(rules.admit(&post(&[("idempotency-key", "\"")])), Admission::Reject(p) if p.status == 400)
        );
        let typed = rules.admit(&post(&[("idempotency-key", "?1")]));
        assert!(
            matches!(&typed, Admission::Reject(p) if p.status == 400 && p.detail.as_deref().is_some_and(|d| d.contains("RFC 8941 sf-string") && d.contains("not a boolean"))),
            "{typed:?}"
        );
        let any = Protocol::new().any_method().required(true);
        assert!(matches!(any.admit(&get), Admission::Guard(_)));
    }

    #[tokio::test]
    async fn prepare_scopes_fingerprints_and_limits_the_body() {
        let rules = Protocol::new().max_request_body(4);
        let key = IdempotencyKey::new("k").unwrap();
        let prepared = rules
            .prepare(key.clone(), post(&[("x-account-id", "acct_1")]))
            .await
            .unwrap();
        assert_eq!(prepared.scope, "account:acct_1");
        assert_eq!(prepared.body, "{}");
        assert_eq!(prepared.fingerprint.as_str().len(), 64);
        let big = Request::post("/")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap();
        let problem = rules.prepare(key, big).await.unwrap_err();
        assert_eq!(problem.status, 413);
    }
}
