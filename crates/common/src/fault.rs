//! [`StoreFault`]: a response extension meaning "this rejection is ours: our own store failed".
//!
//! A layer that refuses a call because its *own* store is unavailable (the idempotency
//! store, the billing ledger, a rate-limit counter) inserts it on the response it makes.
//! An outer circuit breaker then knows the protected upstream was never called and leaves
//! the response out of its statistics (resilience4j's `ignoreExceptions`): a Redis blip
//! must not open the breaker of a healthy cluster.
//!
//! ```
//! use dreamnet_common::{Problem, StoreFault};
//! use http::StatusCode;
//!
//! let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
//!     .into_response();
//! StoreFault::new("idempotency").mark(&mut response);
//! assert_eq!(StoreFault::of(&response).map(StoreFault::store), Some("idempotency"));
//! ```

/// Marks a response as a rejection made because the named store of one of our own layers
/// is unavailable. Read it with [`StoreFault::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreFault {
    store: &'static str,
}

impl StoreFault {
    /// A fault of `store` (a short name for logs and metrics: `idempotency`, `billing`).
    pub const fn new(store: &'static str) -> Self {
        Self { store }
    }

    /// The store that failed.
    pub const fn store(&self) -> &'static str {
        self.store
    }

    /// Inserts the marker into the response's extensions.
    pub fn mark<B>(self, response: &mut http::Response<B>) {
        response.extensions_mut().insert(self);
    }

    /// The marker of a response, when it has one.
    pub fn of<B>(response: &http::Response<B>) -> Option<&Self> {
        response.extensions().get::<Self>()
    }
}
