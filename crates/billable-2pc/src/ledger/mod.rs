//! The [`Ledger`] trait: atomic state changes of billable actions and account balances.
//!
//! A ledger is a small state machine per action, modelled on TigerBeetle's pending
//! transfers and Stripe's manual capture:
//!
//! ```text
//!             confirm (response stored)          charge
//!   pending ───────────────────────────▶ confirmed ───────▶ charged
//!      │
//!      └── void (handler failed, timeout, crash) ──▶ failed
//! ```
//!
//! Every transition is exclusive: a second `charge` is [`LedgerError::AlreadyCharged`], a
//! `void` of a confirmed action is [`LedgerError::AlreadyConfirmed`], so a sweeper and a
//! live request racing on the same action can never charge twice or void a kept response.
//!
//! The ledger does the bookkeeping only; the algorithm (when to reserve, confirm, charge or
//! void) lives in [`crate::Billable`] and [`crate::recover`].

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

/// An amount of money in minor units (cents) of some currency. Never a float.
pub type Amount = i64;

/// The identifier of one billable action (one attempt of one idempotency key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ActionId(String);

impl ActionId {
    /// A fresh random id: `act_` followed by 32 lowercase hex digits.
    pub fn random() -> Self {
        Self(format!("act_{:032x}", rand::random::<u128>()))
    }

    /// Wraps an existing id (e.g. from a URL path). Any string is accepted; an id that
    /// does not exist is simply not found.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of a billable action. Every action is in exactly one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    /// The amount is held on the account; the handler is running (or crashed).
    Pending,
    /// The handler succeeded and its response is stored; the charge is not posted yet.
    Confirmed,
    /// The charge is posted. Terminal.
    Charged,
    /// The reservation was voided and nothing was charged. Terminal; the key may be retried.
    Failed,
}

impl ActionState {
    /// All states, in lifecycle order.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Confirmed, Self::Charged, Self::Failed];

    /// The lowercase name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Charged => "charged",
            Self::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One billable action: one attempt to run a paid request under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// The action id.
    pub id: ActionId,
    /// The idempotency scope (who the key belongs to).
    pub scope: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The request fingerprint (hex SHA-256), to refuse a changed payload under the same key.
    pub fingerprint: String,
    /// The action name (e.g. `mint-dream`).
    pub action: String,
    /// The account charged.
    pub account: String,
    /// The amount held at reservation.
    pub reserved: Amount,
    /// The amount of the action: the hold while pending (and when failed), the final amount
    /// (at most `reserved`) once confirmed or charged.
    pub amount: Amount,
    /// The currency (e.g. `USD`).
    pub currency: String,
    /// The state.
    pub state: ActionState,
    /// The trace id of the request that reserved it.
    pub trace_id: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Last state change, Unix milliseconds.
    pub updated_at_ms: u64,
    /// When a pending reservation times out (is voided by recovery), Unix milliseconds.
    pub expires_at_ms: u64,
    /// The stored response (opaque bytes, written by [`Ledger::confirm`]).
    pub response: Option<Bytes>,
}

impl Action {
    /// Whether a pending reservation is past its timeout at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.state == ActionState::Pending && now_ms >= self.expires_at_ms
    }
}

/// What [`Ledger::reserve`] needs to hold an amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The idempotency scope.
    pub scope: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The request fingerprint.
    pub fingerprint: String,
    /// The action name.
    pub action: String,
    /// The account to hold the amount on.
    pub account: String,
    /// The amount to hold, in minor units (>= 0).
    pub amount: Amount,
    /// The currency.
    pub currency: String,
    /// The request's trace id.
    pub trace_id: Option<String>,
    /// How long the reservation stays pending before recovery voids it.
    pub timeout: Duration,
}

/// The outcome of [`Ledger::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// A new pending action holds the amount: run the handler.
    Reserved(Action),
    /// The key already has a live (pending, confirmed or charged) action; nothing was held.
    /// The caller compares fingerprints and replays, answers 409 or 422.
    Existing(Action),
    /// The account's available credit is below the amount; nothing was held.
    InsufficientFunds {
        /// The account.
        account: String,
        /// What the account has available (credit - pending - charged).
        available: Amount,
        /// What the action needs.
        required: Amount,
        /// The currency.
        currency: String,
    },
}

/// An account's balance. `credit: None` is an unlimited account (no credit line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account id.
    pub account: String,
    /// The account's currency (fixed when the account is created).
    pub currency: String,
    /// The credit line; `None` is unlimited.
    pub credit: Option<Amount>,
    /// Held by pending and confirmed actions.
    pub pending: Amount,
    /// Posted charges.
    pub charged: Amount,
}

impl Account {
    /// `credit - pending - charged`, or `None` for an unlimited account.
    pub fn available(&self) -> Option<Amount> {
        self.credit.map(|c| c - self.pending - self.charged)
    }
}

/// Counts and amounts of one currency per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateAmounts {
    /// Pending amount (holds of running requests).
    pub pending: Amount,
    /// Confirmed amount (responses stored, charges not yet posted).
    pub confirmed: Amount,
    /// Charged amount.
    pub charged: Amount,
    /// Voided amount (what failed actions had reserved).
    pub failed: Amount,
}

impl StateAmounts {
    pub(crate) fn add(&mut self, state: ActionState, amount: Amount) {
        match state {
            ActionState::Pending => self.pending += amount,
            ActionState::Confirmed => self.confirmed += amount,
            ActionState::Charged => self.charged += amount,
            ActionState::Failed => self.failed += amount,
        }
    }

    /// The amount in one state.
    pub fn get(&self, state: ActionState) -> Amount {
        match state {
            ActionState::Pending => self.pending,
            ActionState::Confirmed => self.confirmed,
            ActionState::Charged => self.charged,
            ActionState::Failed => self.failed,
        }
    }
}

/// Counts per state, and amounts per currency and state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of pending actions.
    pub pending: u64,
    /// Number of confirmed actions.
    pub confirmed: u64,
    /// Number of charged actions.
    pub charged: u64,
    /// Number of failed actions.
    pub failed: u64,
    /// Amounts per currency.
    pub amounts: BTreeMap<String, StateAmounts>,
}

impl Stats {
    /// The count of actions in one state.
    pub fn count(&self, state: ActionState) -> u64 {
        match state {
            ActionState::Pending => self.pending,
            ActionState::Confirmed => self.confirmed,
            ActionState::Charged => self.charged,
            ActionState::Failed => self.failed,
        }
    }

    pub(crate) fn add(&mut self, state: ActionState, currency: &str, count: u64, amount: Amount) {
        match state {
            ActionState::Pending => self.pending += count,
            ActionState::Confirmed => self.confirmed += count,
            ActionState::Charged => self.charged += count,
            ActionState::Failed => self.failed += count,
        }
        self.amounts
            .entry(currency.to_owned())
            .or_default()
            .add(state, amount);
    }
}

/// Why a ledger operation failed.
///
/// The `Already*` / `NotConfirmed` / `Expired` variants are the typed "second resolve"
/// outcomes (TigerBeetle's `pending_transfer_already_posted` and friends): the state did
/// not change.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No such action.
    #[error("action {0} not found")]
    NotFound(ActionId),
    /// The action is already charged; nothing changed.
    #[error("action {0} is already charged")]
    AlreadyCharged(ActionId),
    /// The action is already voided (failed); nothing changed.
    #[error("action {0} is already voided")]
    AlreadyVoided(ActionId),
    /// The action is already confirmed: its response is kept, so it can only be charged.
    #[error("action {0} is already confirmed")]
    AlreadyConfirmed(ActionId),
    /// `charge` of an action that has not been confirmed (still pending).
    #[error("action {0} is pending, not confirmed")]
    NotConfirmed(ActionId),
    /// The pending reservation passed its timeout; it has been voided now.
    #[error("the reservation of action {0} expired and was voided")]
    Expired(ActionId),
    /// The actual cost is larger than the reservation (only a smaller one may be posted).
    #[error("actual cost {actual} exceeds the reserved {reserved}")]
    ExceedsReservation {
        /// The amount reserved.
        reserved: Amount,
        /// The actual cost reported.
        actual: Amount,
    },
    /// An amount that is negative (or otherwise invalid for the operation).
    #[error("invalid amount {0}")]
    InvalidAmount(Amount),
    /// The account exists in another currency.
    #[error("account {account} is in {account_currency}, not {requested}")]
    CurrencyMismatch {
        /// The account.
        account: String,
        /// The account's currency.
        account_currency: String,
        /// The currency asked for.
        requested: String,
    },
    /// The backend failed (connection, query, corrupt row).
    #[error("ledger backend error: {0}")]
    Backend(String),
}

impl LedgerError {
    /// Whether the error is the backend's (a retry may succeed), not a state conflict.
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend(_))
    }
}

/// Result of ledger operations.
pub type LedgerResult<T> = Result<T, LedgerError>;

/// Atomic state changes of billable actions and account balances.
///
/// Implementations: [`memory::MemoryLedger`] and, with feature `postgres`,
/// [`postgres::PostgresLedger`]. Both keep a unique live action per (scope, key): a
/// `failed` action frees its key, so a retry creates a new attempt with a new id.
pub trait Ledger: Send + Sync + 'static {
    /// Phase 1: atomically holds `amount` on the account (created on first use with the
    /// ledger's default credit line, `None` = unlimited) and records a pending action for
    /// (scope, key), unless the key already has a live action ([`Reservation::Existing`]) or
    /// the account would overspend ([`Reservation::InsufficientFunds`]). A live action that
    /// is pending past its timeout is voided first, so a retry after a crash can run.
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>>;

    /// Stores the response and moves `pending -> confirmed`. `actual` (at most the reserved
    /// amount) posts a smaller amount and releases the rest of the hold.
    fn confirm<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>>;

    /// Phase 2: posts the charge, `confirmed -> charged`. Exclusive: a second charge is
    /// [`LedgerError::AlreadyCharged`].
    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;

    /// Voids a pending reservation, `pending -> failed`, releasing the hold. A confirmed
    /// action cannot be voided ([`LedgerError::AlreadyConfirmed`]).
    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>>;

    /// One action by id.
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>>;

    /// The live (not failed) action of a key, if any.
    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>>;

    /// Counts and amounts per state.
    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>>;

    /// An account's balance, if the account exists.
    fn account<'a>(&'a self, account: &'a str) -> BoxFuture<'a, LedgerResult<Option<Account>>>;

    /// Adds `amount` (> 0) to the account's credit line, creating the account (in
    /// `currency`) and the credit line (from 0) when missing. An unlimited account thus
    /// becomes limited to what was added: a credit line is opened.
    fn add_credit<'a>(
        &'a self,
        account: &'a str,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>>;

    /// Sets the credit line (`None` = unlimited), creating the account when missing. A line
    /// below what is already pending and charged is [`LedgerError::InvalidAmount`].
    fn set_credit<'a>(
        &'a self,
        account: &'a str,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>>;

    /// Actions recovery must resolve, oldest first, at most `limit`: pending ones past
    /// their timeout, and confirmed ones (charge not posted). Rows a live request holds
    /// locked right now may be skipped.
    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>>;
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
            fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).charge(id)
            }
            fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
                (**self).void(id)
            }
            fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
                (**self).action(id)
            }
            fn find<'a>(
                &'a self,
                scope: &'a str,
                idempotency_key: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
                (**self).find(scope, idempotency_key)
            }
            fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
                (**self).stats()
            }
            fn account<'a>(&'a self, account: &'a str) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
                (**self).account(account)
            }
            fn add_credit<'a>(
                &'a self,
                account: &'a str,
                amount: Amount,
                currency: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Account>> {
                (**self).add_credit(account, amount, currency)
            }
            fn set_credit<'a>(
                &'a self,
                account: &'a str,
                credit: Option<Amount>,
                currency: &'a str,
            ) -> BoxFuture<'a, LedgerResult<Account>> {
                (**self).set_credit(account, credit, currency)
            }
            fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
                (**self).due_for_recovery(limit)
            }
        }
    )*};
}

forward_ledger!(Arc<L>, Box<L>);
