//! Two-phase commit for billable actions: reserve, run, store the response, charge.

mod layer;
pub mod ledger;
pub mod problems;
mod recovery;
mod service;

pub use layer::{
    AccountExtractor, AccountHeader, ActualCost, BillableLayer, FixedPrice, Pricing,
    ReservedAction, ACCOUNT_ID_HEADER, DEFAULT_BODY_LIMIT, DEFAULT_RESERVATION_TIMEOUT,
    DEFAULT_RESPONSE_LIMIT,
};
#[cfg(feature = "postgres")]
pub use ledger::postgres::{PostgresLedger, PostgresLedgerBuilder};
pub use ledger::{
    memory::{MemoryLedger, MemoryLedgerBuilder},
    Account, Action, ActionId, ActionState, Amount, Ledger, LedgerError, LedgerResult, Reservation,
    ReserveRequest, StateAmounts, Stats,
};
pub use recovery::{recover, RecoveryReport, Sweeper, DEFAULT_SWEEP_INTERVAL, RECOVERY_BATCH};
pub use service::{Billable, ResponseFuture};
