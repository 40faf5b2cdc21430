//! IETF `Idempotency-Key` semantics as a tower layer, with memory, Redis and PostgreSQL stores.
//!
//! The building blocks (key parsing, scopes, fingerprints, stored responses and the problem
//! responses) are shared with the billable layer.

pub mod fingerprint;
pub mod key;
mod layer;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres_store;
pub mod problems;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod scope;
mod service;
pub mod store;
pub mod stored;

pub use fingerprint::Fingerprint;
pub use key::{key_from_headers, IdempotencyKey, KeyError, DEFAULT_KEY_HEADERS, MAX_KEY_LEN};
pub use layer::{
    IdempotencyLayer, IdempotencyLayerBuilder, DEFAULT_LEASE, DEFAULT_MAX_BODY, DEFAULT_TTL,
};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "postgres")]
pub use postgres_store::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "redis")]
pub use redis_store::{RedisStore, RedisStoreBuilder};
pub use scope::{DefaultScope, ScopeExtractor};
pub use service::{Idempotency, ResponseFuture, LOG_TARGET};
pub use store::{
    Claim, ClaimRequest, Completion, FencingToken, IdempotencyStore, StoreError, StoreFuture,
};
pub use stored::{CorruptRecord, StoredResponse, DEFAULT_REPLAYED_HEADERS, IDEMPOTENT_REPLAYED};

/// The trace id of a request, from the `dreamnet-trace-id` layer's extension, if present.
pub fn trace_id_of(extensions: &http::Extensions) -> Option<&str> {
    extensions
        .get::<dreamnet_trace_id::TraceContext>()
        .map(dreamnet_trace_id::TraceContext::trace_id)
}
