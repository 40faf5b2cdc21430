//! IETF `Idempotency-Key` semantics as a tower layer, with memory, Redis and PostgreSQL stores.
//!
//! Put [`IdempotencyLayer`] in front of a non-idempotent endpoint: the first request with a
//! key runs the handler and its response is stored; a retry with the same key and payload
//! gets the stored response back (with `Idempotent-Replayed: true`) and the handler does not
//! run again.
//!
//! ```
//! use axum::{routing::post, Router};
//! use dreamnet_idempotency::IdempotencyLayer;
//! use http::StatusCode;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/charges", post(|body: String| async move { (StatusCode::CREATED, body) }))
//!     .route_layer(IdempotencyLayer::builder().required(true).build());
//!
//! let charge = || {
//!     http::Request::post("/charges")
//!         .header("idempotency-key", "order-42")
//!         .body(axum::body::Body::from("{\"amount\":100}"))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(charge()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = app.clone().oneshot(charge()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! # Semantics
//!
//! | request | answer |
//! |---|---|
//! | POST / PATCH with a new key | handler runs once; a final response with status < 500 (2xx-4xx) and a known size up to 1 MiB is stored for the TTL (600 s) |
//! | same key, same method, path, query and body, completed | stored status, body and allow-listed headers, `Idempotent-Replayed: true`; handler not run |
//! | same key while the first is still running | 409 with `Retry-After` (time left on its lease) |
//! | same key, different method, path, query or body | 422 |
//! | no key on a route with `.required(true)` | 400 |
//! | key empty, over 255 chars, not printable ASCII, not an RFC 8941 sf-string (an integer `42`, a boolean `?1`, ...; a bare token is accepted), or sent twice | 400 |
//! | request body over the limit (1 MiB) | 413 |
//! | the store unreachable | 503 with `Retry-After` (fail closed: the handler does not run) |
//! | the stored value under the key is corrupt or foreign | 500 |
//! | handler 5xx, error or panic; streaming or too-large response | passed through, key released: a retry runs again |
//! | GET, HEAD and other methods; POST without a key on an optional route | passed through untouched |
//!
//! Keys are scoped ([`ScopeExtractor`], default [`DefaultScope`]): one client never replays or
//! blocks another's key. A claim holds a lease (default 30 s): if the attempt crashes, the key
//! is free again when the lease ends, and a late completion of the superseded attempt is
//! rejected by its fencing token. Panics are caught, the key released, and the panic resumed;
//! a request future dropped mid-flight (client gone) releases its key from a spawned task when
//! a tokio runtime is present (otherwise the lease frees it).
//!
//! # Bodies
//!
//! The layer takes any request body `B: http_body::Body<Data = Bytes>` (hyper's `Incoming`,
//! `tonic::body::Body`, axum's `Body`, ...). It buffers guarded request bodies (up to the
//! limit, `Content-Length` checked first) and hands the inner service a [`RequestBody<B>`]:
//! the buffered bytes, or `B` untouched on requests it does not guard. An axum `Router` or
//! tonic `Routes` takes that body as it takes any other, so the layer composes with
//! `Router::layer`, `Router::route_layer`, tonic's `Routes` and a plain hyper service
//! (`hyper_util::service::TowerToHyperService`) unchanged; `tests/frameworks.rs` runs all four.
//! Responses come back as [`dreamnet_common::ResponseBody`]: the inner body streamed through
//! untouched, or a buffered one.
//!
//! # Stores
//!
//! [`MemoryStore`] (default; sharded, bounded, injectable clock), `RedisStore` (feature
//! `redis`; one Lua script per operation, server time) and `PostgresStore` (feature
//! `postgres`; one table, one statement per operation). Store operations are atomic, so two
//! replicas sharing a Redis or PostgreSQL store behave as one.
//!
//! A store of your own implements [`IdempotencyStore`] with the types in [`store`], and runs
//! the store-level behaviour suite of the `conformance` feature
//! (`idempotency_store_tests!(make_store)`).
//!
//! # Protocol
//!
//! The service is three steps of [`protocol`] over the store: prepare (key, scope, body,
//! fingerprint), claim (proceed, or replay / 409 / 422 / 503), settle (store the response
//! under the fencing token, or release the key). A layer with its own record of keys (the
//! billable layer's ledger) composes the same steps around its own claim.
//!
//! # Logs
//!
//! `tracing` events (target [`LOG_TARGET`]) in the DeployKeeper format, with fields
//! `idempotency_key`, `trace_id` (from `dreamnet-trace-id`'s `TraceContext`), `digest`,
//! `status` / `outcome` and `original_trace_id`:
//! `[DeployKeeper] Idempotency-Key: K, Trace-ID: T, Digest: D, Status: NEW` and
//! `[Idempotency] Duplicate detected - Key: K, Trace: T, Digest: D, Original: T0`.

mod body;
#[cfg(feature = "conformance")]
pub mod conformance;
mod fingerprint;
mod future;
mod key;
mod layer;
mod memory;
#[cfg(feature = "postgres")]
mod postgres_store;
pub mod protocol;
#[cfg(feature = "redis")]
mod redis_store;
mod scope;
mod service;
pub mod store;
mod stored;

pub use body::RequestBody;
pub use future::ResponseFuture;
pub use layer::{
    IdempotencyLayer, IdempotencyLayerBuilder, DEFAULT_LEASE, DEFAULT_MAX_BODY, DEFAULT_TTL,
};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "postgres")]
pub use postgres_store::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "redis")]
pub use redis_store::{RedisStore, RedisStoreBuilder};
pub use scope::{DefaultScope, ScopeExtractor};
pub use service::{Idempotency, LOG_TARGET};
pub use store::IdempotencyStore;

// Crate-internal short paths to the types the modules share.
use fingerprint::Fingerprint;
use key::IdempotencyKey;
use stored::StoredResponse;
