//! The storage trait and what a store implementor needs: atomic state changes only; the
//! algorithm lives in the [`protocol`](crate::protocol).
//!
//! A backend implements [`IdempotencyStore`]'s three methods (claim, complete, release) and
//! runs the behaviour suite behind the `conformance` feature
//! (`dreamnet_idempotency::idempotency_store_tests!`).

use std::{future::Future, pin::Pin, time::Duration};

pub use crate::fingerprint::Fingerprint;
pub use crate::stored::{CorruptRecord, StoredResponse};

/// A boxed store future (a store round trip dominates the allocation).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Proves that an attempt owns a key. Every claim (also a take-over after a lease ended)
/// gets a larger token than any earlier claim of the same key, so a superseded attempt can
/// never complete or release a key a newer attempt owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// What a store is asked to claim.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    /// The key's scope (see [`ScopeExtractor`](crate::ScopeExtractor)).
    pub scope: &'a str,
    /// The idempotency key.
    pub key: &'a str,
    /// The request's fingerprint, compared with the stored one.
    pub fingerprint: &'a Fingerprint,
    /// The trace id of the claiming request, kept so duplicates can log the original.
    pub trace_id: Option<&'a str>,
    /// How long the claim blocks other attempts if it is never completed or released.
    pub lease: Duration,
}

/// The outcome of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (new, expired, released, or its lease ended): run the handler.
    Proceed(FencingToken),
    /// Another attempt with the same fingerprint holds the key.
    InFlight {
        /// Time until that attempt's lease ends.
        retry_after: Duration,
        /// The trace id of the attempt holding the key.
        original_trace_id: Option<String>,
    },
    /// The key is live with a different fingerprint.
    Mismatch {
        /// The trace id of the request that used the key first.
        original_trace_id: Option<String>,
    },
    /// The key completed with the same fingerprint: replay this response.
    Completed {
        /// The stored response.
        response: StoredResponse,
        /// The trace id of the request that produced it.
        original_trace_id: Option<String>,
    },
}

/// The outcome of a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The response is stored for the TTL.
    Stored,
    /// The token no longer owns the key (its lease ended and the key was claimed again,
    /// expired, or was released): nothing was written.
    Superseded,
    /// The store could not keep a response this large; the claim was released instead.
    Dropped,
}

/// A store failure. The layer fails closed: the request is refused, never run unprotected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or failed (the layer answers 503 with `Retry-After`).
    #[error("idempotency store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The value under the key is not a record we wrote (the layer answers 500).
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The store is at capacity with records it must keep (the layer answers 503).
    #[error("idempotency store is full")]
    Full,
}

impl StoreError {
    /// Wraps any error as [`StoreError::Unavailable`].
    pub fn unavailable(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(err.into())
    }
}

/// Atomic operations on (scope, key) records. Implementations must make each operation a
/// single atomic step (one lock, one Lua script, one SQL statement): two concurrent claims of
/// a free key never both get [`Claim::Proceed`].
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims the key, or reports why not.
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim>;

    /// Stores the response of the attempt holding `token`, for `ttl`.
    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion>;

    /// Frees the key if `token` still holds it; `true` when it did.
    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool>;

    /// Pushes the lease of the attempt holding `token` to `lease` from now (never shortens
    /// it): the layer's heartbeat while a handler runs, so a handler slower than the lease
    /// is not taken over and run a second time. `false` when `token` no longer holds a live
    /// lease (completed, released, lapsed or taken over): nothing was changed.
    ///
    /// The default keeps no heartbeat (`false`: the lease runs out as it always did), so a
    /// store written before this method still works unchanged.
    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let _ = (scope, key, token, lease);
        Box::pin(std::future::ready(Ok(false)))
    }
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<T> {
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        (**self).claim(request)
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion> {
        (**self).complete(scope, key, token, response, ttl)
    }

    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool> {
        (**self).release(scope, key, token)
    }

    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).extend(scope, key, token, lease)
    }
}
