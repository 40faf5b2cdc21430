//! [`LedgerError`]: why a ledger operation failed.

use dreamnet_common::AccountId;

use super::{ActionId, Amount};

/// The cause of a backend failure, kept as the error's [`source`](std::error::Error::source).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a ledger operation failed.
///
/// The `Already*` / `NotConfirmed` / `Expired` variants are the typed "second resolve"
/// outcomes (TigerBeetle's `pending_transfer_already_posted` and friends): the state did
/// not change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        account: AccountId,
        /// The account's currency.
        account_currency: String,
        /// The currency asked for.
        requested: String,
    },
    /// The ledger holds its configured maximum of entries (actions and accounts kept in
    /// memory) and none is old enough to forget: nothing was changed. Answered as a 503
    /// `ledger-full`; a retry succeeds once retention frees room or a reservation resolves.
    #[error("the ledger holds its maximum of {limit} entries; nothing was changed")]
    Full {
        /// The configured cap on live entries.
        limit: usize,
    },
    /// The backend did not answer within the ledger's deadline (a hung or unreachable
    /// server, a pool with no free connection). The outcome of a write is unknown: a retry
    /// with the same idempotency key replays it or runs it, never both.
    #[error("the ledger backend did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The backend failed (connection, query, corrupt row); a retry may succeed.
    #[error("ledger backend error: {source}")]
    Backend {
        /// What went wrong (the client's error, or a description of a corrupt row).
        #[source]
        source: BoxError,
    },
}

impl LedgerError {
    /// A backend failure caused by `source` (a client error, or a message).
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self::Backend {
            source: source.into(),
        }
    }

    /// Whether the error is the backend's (a failure or a timeout: a retry may succeed),
    /// not a state conflict.
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend { .. } | Self::Timeout(_))
    }
}

/// Result of ledger operations.
pub type LedgerResult<T> = Result<T, LedgerError>;
