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

/// One of the [`IdempotencyStore`] methods, as handed to the wrapping expression of
/// [`forward_idempotency_store!`](crate::forward_idempotency_store) (a metrics label, a
/// fault to inject for one method only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// [`IdempotencyStore::claim`].
    Claim,
    /// [`IdempotencyStore::complete`].
    Complete,
    /// [`IdempotencyStore::release`].
    Release,
    /// [`IdempotencyStore::extend`].
    Extend,
}

impl StoreOp {
    /// The method's name: `claim`, `complete`, `release` or `extend`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::Extend => "extend",
        }
    }
}

/// Implements [`IdempotencyStore`] for a wrapper by forwarding every method to the store
/// it wraps, so a wrapper writes what it adds once instead of repeating the four
/// signatures (and cannot forget `extend`, whose default would silently drop the lease
/// heartbeat).
///
/// `|this| inner` names the wrapped store from `this` (the wrapper, `&Self`). The optional
/// `|op, call| wrap` builds each method's [`StoreFuture`] knowing which method it is (`op`,
/// a [`StoreOp`]); `call()` makes the forwarded call. It is a closure, not the inner
/// future, because a store may do its work in the call itself (the memory store answers
/// at once): a wrapper that times a call starts its clock before `call()`, and one that
/// injects a fault need not call at all. Without `wrap` the inner future is returned as
/// is. Generic parameters go in brackets after `impl`.
///
/// ```
/// use dreamnet_idempotency::{forward_idempotency_store, store::StoreOp, IdempotencyStore};
///
/// /// Logs every store call's method.
/// struct Logged<S>(S);
///
/// forward_idempotency_store!(impl[S: IdempotencyStore] for Logged<S> => |this| this.0, |op, call| {
///     println!("store call: {}", op.as_str());
///     call()
/// });
///
/// let _store = Logged(dreamnet_idempotency::MemoryStore::new());
/// ```
#[macro_export]
macro_rules! forward_idempotency_store {
    (impl $([$($generics:tt)*])? for $ty:ty => |$this:ident| $inner:expr) => {
        $crate::forward_idempotency_store!(
            impl $([$($generics)*])? for $ty => |$this| $inner, |_op, call| call()
        );
    };
    (
        impl $([$($generics:tt)*])? for $ty:ty => |$this:ident| $inner:expr,
        |$op:ident, $call:ident| $wrap:expr $(,)?
    ) => {
        impl $(<$($generics)*>)? $crate::IdempotencyStore for $ty {
            fn claim<'a>(
                &'a self,
                request: $crate::store::ClaimRequest<'a>,
            ) -> $crate::store::StoreFuture<'a, $crate::store::Claim> {
                let $this = self;
                let $op = $crate::store::StoreOp::Claim;
                let $call = move || $inner.claim(request);
                $wrap
            }

            fn complete<'a>(
                &'a self,
                scope: &'a str,
                key: &'a str,
                token: $crate::store::FencingToken,
                response: &'a $crate::store::StoredResponse,
                ttl: ::std::time::Duration,
            ) -> $crate::store::StoreFuture<'a, $crate::store::Completion> {
                let $this = self;
                let $op = $crate::store::StoreOp::Complete;
                let $call = move || $inner.complete(scope, key, token, response, ttl);
                $wrap
            }

            fn release<'a>(
                &'a self,
                scope: &'a str,
                key: &'a str,
                token: $crate::store::FencingToken,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $this = self;
                let $op = $crate::store::StoreOp::Release;
                let $call = move || $inner.release(scope, key, token);
                $wrap
            }

            fn extend<'a>(
                &'a self,
                scope: &'a str,
                key: &'a str,
                token: $crate::store::FencingToken,
                lease: ::std::time::Duration,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $this = self;
                let $op = $crate::store::StoreOp::Extend;
                let $call = move || $inner.extend(scope, key, token, lease);
                $wrap
            }
        }
    };
}

forward_idempotency_store!(impl[T: IdempotencyStore + ?Sized] for std::sync::Arc<T> => |this| (**this));
