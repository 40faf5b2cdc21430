//! [`IdempotencyLayer`] and its builder.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method, StatusCode};
use tower_layer::Layer;

use crate::{
    memory::MemoryStore, protocol::Protocol, service::Idempotency, store::IdempotencyStore,
    ScopeExtractor,
};

/// The default time a completed response is kept and replayed: 600 s (the seed's 10 min).
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The default in-flight lease: how long a claim blocks retries if its attempt never ends.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The default limit for buffered request and response bodies: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Applies `Idempotency-Key` semantics to the wrapped service (see the crate docs).
///
/// Cheap to clone: the configuration is shared.
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) protocol: Protocol,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: bool,
    pub(crate) store_status: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
}

impl Clone for IdempotencyLayer {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("protocol", &self.protocol)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl IdempotencyLayer {
    /// A layer with the defaults and the given store.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self::builder().store(store).build()
    }

    /// A builder with the defaults: an in-memory store, `Idempotency-Key` then
    /// `X-Idempotency-Key`, POST and PATCH, key optional, [`DefaultScope`](crate::DefaultScope), no fingerprinted
    /// headers, TTL 600 s, lease 30 s, 1 MiB body limits, [`DEFAULT_REPLAYED_HEADERS`](crate::protocol::DEFAULT_REPLAYED_HEADERS), and
    /// final responses with status < 500 stored (a `101 Switching Protocols` is never a
    /// result to replay).
    pub fn builder() -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder {
            store: None,
            protocol: Protocol::new(),
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            heartbeat: true,
            store_status: Arc::new(|status: StatusCode| (200..500).contains(&status.as_u16())),
        }
    }

    /// The store this layer uses.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.config.store
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, Arc::clone(&self.config))
    }
}

/// Builds an [`IdempotencyLayer`]; see [`IdempotencyLayer::builder`] for the defaults.
#[must_use]
pub struct IdempotencyLayerBuilder {
    store: Option<Arc<dyn IdempotencyStore>>,
    protocol: Protocol,
    ttl: Duration,
    lease: Duration,
    heartbeat: bool,
    store_status: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
}

impl fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("protocol", &self.protocol)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayerBuilder {
    /// The store (default: a fresh [`MemoryStore`]).
    pub fn store(self, store: impl IdempotencyStore) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// A store shared with other layers or code.
    pub fn shared_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// All request-side rules at once (key headers, methods, required, scope, fingerprinted
    /// headers, body limits, replayed headers), e.g. rules shared with another layer.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The headers the key is read from, first present wins (default: `Idempotency-Key`,
    /// `X-Idempotency-Key`).
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.key_headers(names);
        self
    }

    /// The methods the layer applies to (default: POST, PATCH). Others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.protocol = self.protocol.methods(methods);
        self
    }

    /// Whether a key is required on those methods: without one the answer is 400 and the
    /// handler does not run (default: optional, a request without a key passes through).
    pub fn required(mut self, required: bool) -> Self {
        self.protocol = self.protocol.required(required);
        self
    }

    /// The scope extractor (default: [`DefaultScope`](crate::DefaultScope)).
    pub fn scope(mut self, scope: impl ScopeExtractor) -> Self {
        self.protocol = self.protocol.scope(scope);
        self
    }

    /// A scope extractor shared with other layers (e.g. the billable layer).
    pub fn shared_scope(mut self, scope: Arc<dyn ScopeExtractor>) -> Self {
        self.protocol = self.protocol.shared_scope(scope);
        self
    }

    /// Request headers included in the fingerprint (default: none).
    pub fn fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.fingerprint_headers(names);
        self
    }

    /// How long a completed response is kept and replayed (default 600 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a claim blocks retries if its attempt never completes, e.g. after a crash
    /// (default 30 s). While the handler runs, the lease heartbeat (see
    /// [`lease_heartbeat`](Self::lease_heartbeat)) keeps pushing it forward, so a slow
    /// handler is not overtaken; the lease only has to outlast a crashed attempt.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Whether a running attempt extends its lease every third of it (default `true`), so
    /// a handler slower than the lease is neither taken over by a retry nor run twice. The
    /// beats stop with the request (and with the process), so a crashed replica's key still
    /// frees itself after one lease. Off, an attempt still running when its lease ends can
    /// be overtaken by a retry, and its own response is then not stored.
    pub fn lease_heartbeat(mut self, enabled: bool) -> Self {
        self.heartbeat = enabled;
        self
    }

    /// The largest request body buffered; larger is 413 (default 1 MiB).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.protocol = self.protocol.max_request_body(bytes);
        self
    }

    /// The largest response body stored; a larger or streaming (unknown size) response is
    /// passed through unstored and the key released (default 1 MiB).
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.protocol = self.protocol.max_response_body(bytes);
        self
    }

    /// The response headers stored and replayed (default [`DEFAULT_REPLAYED_HEADERS`](crate::protocol::DEFAULT_REPLAYED_HEADERS);
    /// `Set-Cookie`, `Date` and framing headers are never replayed).
    pub fn replayed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.replayed_headers(names);
        self
    }

    /// Which statuses are stored (default: 200..=499, i.e. < 500 without 1xx). A response not stored releases the key,
    /// so a retry runs the handler again.
    pub fn store_status(
        mut self,
        store: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.store_status = Arc::new(store);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> IdempotencyLayer {
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::default()));
        IdempotencyLayer {
            config: Arc::new(Config {
                store,
                protocol: self.protocol,
                ttl: self.ttl,
                lease: self.lease,
                heartbeat: self.heartbeat,
                store_status: self.store_status,
            }),
        }
    }
}
