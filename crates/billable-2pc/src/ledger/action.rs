//! The records of one billable action: its id, state, the request that reserves it and the
//! outcome of that reservation.

use std::{fmt, time::Duration};

use bytes::Bytes;
use dreamnet_common::AccountId;
use serde::Serialize;

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

    /// Whether an action in this state holds its amount on the account (pending and
    /// confirmed actions do; a charged one has posted it, a failed one released it).
    pub fn holds(self) -> bool {
        matches!(self, Self::Pending | Self::Confirmed)
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
    pub account: AccountId,
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
    /// The stored response (opaque bytes, written by [`Ledger::confirm`](super::Ledger::confirm)).
    pub response: Option<Bytes>,
}

impl Action {
    /// Whether a pending reservation is past its timeout at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.state == ActionState::Pending && now_ms >= self.expires_at_ms
    }
}

/// What [`Ledger::reserve`](super::Ledger::reserve) needs to hold an amount.
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
    pub account: AccountId,
    /// The amount to hold, in minor units (>= 0).
    pub amount: Amount,
    /// The currency.
    pub currency: String,
    /// The request's trace id.
    pub trace_id: Option<String>,
    /// How long the reservation stays pending before recovery voids it.
    pub timeout: Duration,
}

/// The outcome of [`Ledger::reserve`](super::Ledger::reserve).
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
        account: AccountId,
        /// What the account has available (credit - pending - charged).
        available: Amount,
        /// What the action needs.
        required: Amount,
        /// The currency.
        currency: String,
    },
}
