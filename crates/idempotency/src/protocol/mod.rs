//! The idempotency protocol in three steps, for layers that guard requests with a key:
//! [`IdempotencyLayer`](crate::IdempotencyLayer) composes them over an
//! [`IdempotencyStore`](crate::IdempotencyStore), and a layer with its own record of keys
//! (the billable layer, whose ledger claims the key in the same transaction as the hold)
//! composes the same steps around its own claim.
//!
//! 1. **Prepare** ([`Protocol`]): [`Protocol::admit`] (in `call`, no await) decides from the
//!    method and the key headers whether a request is guarded ([`Admission`]); then
//!    [`Protocol::prepare`] buffers the body within the limit and computes the scope and the
//!    fingerprint ([`Prepared`]), or gives the problem to answer (400 / 413).
//! 2. **Claim**: [`claim`] asks an [`IdempotencyStore`](crate::IdempotencyStore) and logs the
//!    DeployKeeper line; it either lets the attempt proceed with a fencing token or answers
//!    ([`Claimed`]: replay, 409 in flight, 422 mismatch, 503 store down, 500 corrupt). A
//!    layer with its own claim maps a live record to a [`Duplicate`] and answers with
//!    [`Duplicate::into_response`].
//! 3. **Run and settle**: [`run`] calls the inner service, catching a panic ([`Ran`]);
//!    [`Protocol::capture`] buffers a response that can be kept ([`Captured`]); a
//!    [`Settlement`] stores it under the fencing token or releases the key (and releases it
//!    from a spawned task if the request is dropped first).
//!
//! ```
//! use dreamnet_idempotency::{protocol::{self, Admission, Claimed, Protocol}, MemoryStore};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let rules = Protocol::new().required(true);
//! let store = MemoryStore::new();
//! let request = || {
//!     http::Request::post("/charges")
//!         .header("idempotency-key", "order-42")
//!         .body(http_body_util::Full::new(bytes::Bytes::from("{}")))
//!         .unwrap()
//! };
//! let Admission::Guard(key) = rules.admit(&request()) else { panic!("guarded") };
//! let prepared = rules.prepare(key, request()).await.unwrap();
//! assert_eq!(prepared.scope, "anonymous");
//! let Claimed::Proceed(_token) = protocol::claim(&store, &prepared, Duration::from_secs(30)).await
//! else { panic!("a new key proceeds") };
//! // The same key again while the first attempt runs: 409.
//! let Claimed::Answered(busy) = protocol::claim(&store, &prepared, Duration::from_secs(30)).await
//! else { panic!("in flight") };
//! assert_eq!(busy.status(), 409);
//! # }
//! ```

mod claim;
mod prepare;
pub mod problems;
mod settle;

pub use claim::{claim, Claimed, Duplicate};
pub use prepare::{Admission, Prepared, Protocol};
pub use settle::{run, Captured, Ran, Settlement};

pub use crate::key::{IdempotencyKey, KeyError, DEFAULT_KEY_HEADERS, MAX_KEY_LEN};
pub use crate::stored::{DEFAULT_REPLAYED_HEADERS, IDEMPOTENT_REPLAYED};
