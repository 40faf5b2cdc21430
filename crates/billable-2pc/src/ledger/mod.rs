//! The ledger traits: [`Ledger`], the two-phase steps the layer needs, and [`LedgerAdmin`],
//! the optional accounts, stats and recovery listing the API, recovery and metrics need.
//!
//! A ledger is a small state machine per action, modelled on TigerBeetle's pending
//! transfers and Stripe's manual capture:
//!
//! ```text
//!             settle (response stored and charge posted, one transaction)
//!   pending ─────────────────────────────────────────────────────────▶ charged
//!      │  \                                                              ▲
//!      │   └── confirm (response stored) ──▶ confirmed ─── charge ──────┘
//!      │
//!      └── void (handler failed, timeout, crash) ──▶ failed
//! ```
//!
//! The layer uses `settle`, so a mint costs two durable steps (reserve, settle). `confirm`
//! and `charge` stay for a backend or caller that needs a separate capture, and for
//! recovery, which charges an action left `confirmed` exactly once.
//!
//! Every transition is exclusive: a second `charge` is [`LedgerError::AlreadyCharged`], a
//! `void` of a confirmed action is [`LedgerError::AlreadyConfirmed`], so a sweeper and a
//! live request racing on the same action can never charge twice or void a kept response.
//!
//! The ledger does the bookkeeping only; the algorithm (when to reserve, confirm, charge or
//! void) lives in [`crate::Billable`] and [`crate::recover`].
//!
//! # Writing a backend
//!
//! Implement [`Ledger`] (five required methods; [`Ledger::settle`] has a default that
//! confirms then charges, which a backend overrides to do it in one transaction) to put a [`BillableLayer`](crate::BillableLayer) on
//! it; implement [`LedgerAdmin`] as well to serve the admin API, run [`crate::recover`] and
//! the [`Sweeper`](crate::Sweeper), and export stats. Both traits return boxed futures so
//! `Arc<dyn LedgerAdmin>` can pick a backend at run time. With the `conformance` feature,
//! `dreamnet_billable::conformance` holds the behaviour suites every backend must pass
//! (the memory and PostgreSQL ledgers run them).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use dreamnet_common::AccountId;
use futures_util::future::BoxFuture;

mod account;
mod action;
mod error;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use account::{Account, StateAmounts, Stats};
pub use action::{Action, ActionId, ActionState, Amount, Reservation, ReserveRequest};
pub use error::{BoxError, LedgerError, LedgerResult};

/// The two-phase steps of billable actions: what [`BillableLayer`](crate::BillableLayer)
/// needs from a store.
///
/// Implementations keep a unique live action per (scope, key): a `failed` action frees its
/// key, so a retry creates a new attempt with a new id. Each method is one atomic state
/// change (or one read); the layer decides which to call when.
pub trait Ledger: Send + Sync + 'static {
    /// Phase 1: atomically holds `amount` on the account (created on first use with the
    /// ledger's default credit line, `None` = unlimited) and records a pending action for
    /// (scope, key), unless the key already has a live action ([`Reservation::Existing`]) or
    /// the account would overspend ([`Reservation::InsufficientFunds`]). A live action that
    /// is pending past its timeout is voided first, so a retry after a crash can run.
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>>;

    /// Stores the response and moves `pending -> confirmed`. `actual` (at most the reserved
    /// amount) posts a smaller amount and releases the rest of the hold. Past its timeout
    /// the reservation is voided instead ([`LedgerError::Expired`]).
    fn confirm<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>>;

    /// Stores the response and posts the charge in one atomic step, `pending -> charged`:
    /// the second (and last) durable step of a billable request. `actual` and the errors
    /// are [`confirm`](Self::confirm)'s (past its timeout the reservation is voided,
    /// [`LedgerError::Expired`]; a resolved action is its `Already*` error).
    ///
    /// The default confirms, then charges: correct (a crash between the two leaves a
    /// `confirmed` action that recovery charges) but two steps; the shipped ledgers do it
    /// in one transaction.
    fn settle<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        Box::pin(async move {
            let confirmed = self.confirm(id, response, actual).await?;
            match self.charge(id).await {
                // A replay posted it meanwhile: charged, once.
                Err(LedgerError::AlreadyCharged(_)) => Ok(Action {
                    state: ActionState::Charged,
                    ..confirmed
                }),
                other => other,
            }
        })
    }

    /// Phase 2: posts the charge, `confirmed -> charged`. Exclusive: a second charge is
    /// [`LedgerError::AlreadyCharged`].
    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;

    /// Voids a pending reservation, `pending -> failed`, releasing the hold. A confirmed
    /// action cannot be voided ([`LedgerError::AlreadyConfirmed`]).
    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;

    /// The live (not failed) action of a key, if any.
    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>>;

    /// The heartbeat of a running handler: moves a pending reservation's timeout to `by`
    /// from now (never earlier than it was), so recovery and retries leave it alone while
    /// its handler is alive. Only a pending action that has not expired is extended; an
    /// expired one is [`LedgerError::Expired`] and a resolved one its `Already*` error,
    /// with nothing changed (recovery or a retry voids an expired one, as before).
    ///
    /// The default is a backend error (the layer's heartbeat then stops, logging once, and
    /// the reservation keeps its timeout); the shipped ledgers implement it in one atomic
    /// step.
    fn extend<'a>(&'a self, id: &'a ActionId, by: Duration) -> BoxFuture<'a, LedgerResult<Action>> {
        let _ = (id, by);
        Box::pin(async {
            Err(LedgerError::backend(
                "this ledger cannot extend a reservation",
            ))
        })
    }
}

/// The optional abilities of a ledger: action lookup, accounts and credit lines, stats, and
/// the listing recovery resolves.
///
/// Used by the admin API, [`crate::recover`] / [`Sweeper`](crate::Sweeper) and metrics;
/// the layer needs only [`Ledger`].
pub trait LedgerAdmin: Ledger {
    /// One action by id.
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>>;

    /// Counts and amounts per state.
    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>>;

    /// An account's balance, if the account exists.
    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>>;

    /// Adds `amount` (> 0) to the account's credit line, creating the account (in
    /// `currency`) and the credit line (from 0) when missing. An unlimited account thus
    /// becomes limited to what was added: a credit line is opened.
    fn add_credit<'a>(
        &'a self,
        account: &'a AccountId,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>>;

    /// Sets the credit line (`None` = unlimited), creating the account when missing. A line
    /// below what is already pending and charged is [`LedgerError::InvalidAmount`].
    fn set_credit<'a>(
        &'a self,
        account: &'a AccountId,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>>;

    /// Actions recovery must resolve, oldest first, at most `limit`: pending ones past
    /// their timeout, and confirmed ones (charge not posted). Rows a live request holds
    /// locked right now may be skipped.
    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>>;

    /// Forgets at most `limit` resolved (charged or failed) actions past the ledger's
    /// retention, in one short step that skips anything locked; returns how many.
    /// PostgreSQL takes the oldest first; the memory ledger goes shard by shard, oldest
    /// first within each. Their keys no longer replay; stats and balances keep counting them. The
    /// [`Sweeper`](crate::Sweeper) calls it in batches ([`crate::prune_resolved`]).
    ///
    /// The default forgets nothing (a ledger that bounds itself otherwise, or keeps all).
    fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>> {
        let _ = limit;
        Box::pin(async { Ok(0) })
    }
}

macro_rules! forward_ledger {
    ($($ty:ty),*) => {$(
        impl<L: Ledger + ?Sized> Ledger for $ty {
            fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
                (**self).reserve(request)
            }
            fn confirm<'a>(
                &'a self,
                id: &'a ActionId,
                response: Bytes,
                actual: Option<Amount>,
            ) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).confirm(id, response, actual)
            }
            fn settle<'a>(
                &'a self,
                id: &'a ActionId,
                response: Bytes,
                actual: Option<Amount>,
            ) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).settle(id, response, actual)
            }
            fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).charge(id)
            }
            fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).void(id)
            }
            fn find<'a>(
                &'a self,
                scope: &'a str,
                idempotency_key: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
                (**self).find(scope, idempotency_key)
            }
            fn extend<'a>(
                &'a self,
                id: &'a ActionId,
                by: Duration,
            ) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).extend(id, by)
            }
        }

        impl<L: LedgerAdmin + ?Sized> LedgerAdmin for $ty {
            fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
                (**self).action(id)
            }
            fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
                (**self).stats()
            }
            fn account<'a>(
                &'a self,
                account: &'a AccountId,
            ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
                (**self).account(account)
            }
            fn add_credit<'a>(
                &'a self,
                account: &'a AccountId,
                amount: Amount,
                currency: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Account>> {
                (**self).add_credit(account, amount, currency)
            }
            fn set_credit<'a>(
                &'a self,
                account: &'a AccountId,
                credit: Option<Amount>,
                currency: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Account>> {
                (**self).set_credit(account, credit, currency)
            }
            fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
                (**self).due_for_recovery(limit)
            }
            fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>> {
                (**self).prune(limit)
            }
        }
    )*};
}

forward_ledger!(Arc<L>, Box<L>);
