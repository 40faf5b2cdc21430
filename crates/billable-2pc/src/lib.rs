//! Two-phase commit for billable actions: reserve, run, store the response, charge.
//!
//! [`BillableLayer`] makes a paid endpoint charge exactly once, and only for work that was
//! done and whose response was kept (TigerBeetle's pending transfers, Stripe's manual
//! capture, but the hold is taken *before* the handler runs):
//!
//! 1. an `Idempotency-Key` is required (400 without one); the key, scoped per client, is
//!    recorded with the request fingerprint by [`Ledger::reserve`], which atomically holds the
//!    price on the account, or answers 402 when the account's available credit is short;
//! 2. the handler runs (it finds a [`ReservedAction`] in the request extensions);
//! 3. on 2xx its response is stored with the action and the charge posted in one atomic
//!    step ([`Ledger::settle`], state `charged`); a non-2xx, an error or a panic voids the
//!    hold (state `failed`) and charges nothing;
//! 4. the same key again replays the stored response and charges nothing; while the first is
//!    running it is 409, with another payload 422.
//!
//! [`recover`] (at start-up) and a [`Sweeper`] (in the background) void reservations left
//! pending past their timeout by a crash, and post the charge of any action left
//! `confirmed` (a response stored by a separate [`Ledger::confirm`]). With feature `axum`, `api::BillableApi` builds the admin router: stats,
//! action status and accounts.
//!
//! The store is split like tower-sessions' `SessionStore`: [`Ledger`] is the two-phase
//! steps the layer and recovery need (five required methods, and `settle`, which a backend
//! may do in one transaction); [`LedgerAdmin`] (accounts, credit, stats, action lookup,
//! the recovery listing) is the optional part the API, recovery and metrics need.
//! [`MemoryLedger`] and, with feature `postgres`, [`PostgresLedger`] implement both; feature
//! `conformance` exports the suites an outside backend runs to prove it behaves the same.
//!
//! | where | what |
//! |---|---|
//! | the root | the layer and its policies, the service and future, the ledger traits and backends, recovery |
//! | [`ledger`] | what a backend implements and returns: actions, accounts, stats, [`ledger::LedgerError`], the builders |
//! | [`views`] | the JSON views the API serves |
//! | [`problems`] | the problem+json answers only this layer gives |
//!
//! ```
//! use dreamnet_billable::{BillableLayer, LedgerAdmin, MemoryLedger};
//! use dreamnet_common::AccountId;
//! use http::{Request, Response};
//! use dreamnet_idempotency::RequestBody;
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ledger = Arc::new(MemoryLedger::new());
//! let acct: AccountId = "acct-1".parse().unwrap();
//! ledger.add_credit(&acct, 1_000, "USD").await.unwrap();
//! let mint = ServiceBuilder::new()
//!     .layer(BillableLayer::with_shared_ledger(ledger.clone(), "mint-dream", 250))
//!     .service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("minted"))))
//!     });
//! let request = || {
//!     Request::post("/api/mint-dream")
//!         .header("x-account-id", "acct-1")
//!         .header("idempotency-key", "order-42")
//!         .body(Full::new(Bytes::from("{}")))
//!         .unwrap()
//! };
//! assert_eq!(mint.clone().oneshot(request()).await.unwrap().status(), 200);
//! let replay = mint.oneshot(request()).await.unwrap();
//! assert_eq!(replay.headers()["idempotent-replayed"], "true");
//! let account = ledger.account(&acct).await.unwrap().unwrap();
//! assert_eq!((account.charged, account.available()), (250, Some(750)));
//! # });
//! ```

#[cfg(feature = "axum")]
pub mod api;
#[cfg(feature = "conformance")]
pub mod conformance;
mod heartbeat;
mod layer;
pub mod ledger;
mod logs;
pub mod problems;
mod recovery;
mod service;
pub mod views;

pub use layer::{
    AccountExtractor, AccountHeader, ActualCost, BillableLayer, FixedPrice, Pricing,
    ReservedAction, DEFAULT_BODY_LIMIT, DEFAULT_RESERVATION_TIMEOUT, DEFAULT_RESPONSE_LIMIT,
};
pub use ledger::memory::MemoryLedger;
#[cfg(feature = "postgres")]
pub use ledger::postgres::PostgresLedger;
pub use ledger::{Ledger, LedgerAdmin};
pub use recovery::{
    prune_resolved, recover, RecoveryReport, Sweeper, DEFAULT_SWEEP_INTERVAL, PRUNE_BATCH,
    PRUNE_BATCHES_PER_PASS, RECOVERY_BATCH,
};
pub use service::{Billable, ResponseFuture};
