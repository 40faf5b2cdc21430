//! The problem+json responses only the billable layer produces. Key, fingerprint and store
//! problems are [`dreamnet_idempotency::protocol::problems`].

use dreamnet_common::{AccountId, GrpcCode, Problem};
use http::StatusCode;

use crate::ledger::Amount;

/// The problem type of a 402: the account's available credit is below the price.
pub const INSUFFICIENT_FUNDS: &str = "https://dreamnet.dev/problems/insufficient-funds";
/// The problem type of a 400: the request names no billable account.
pub const MISSING_ACCOUNT: &str = "https://dreamnet.dev/problems/missing-account";
/// The problem type of a 409: the account is kept in another currency.
pub const CURRENCY_MISMATCH: &str = "https://dreamnet.dev/problems/currency-mismatch";
/// The problem type of a 500: the handler reported a cost above the reservation.
pub const COST_EXCEEDS_RESERVATION: &str = "https://dreamnet.dev/problems/cost-exceeds-reservation";
/// The problem type of a 500: the reservation timed out before the handler finished.
pub const RESERVATION_EXPIRED: &str = "https://dreamnet.dev/problems/reservation-expired";
/// The problem type of a 500: the handler panicked or its response could not be read.
pub const HANDLER_FAILED: &str = "https://dreamnet.dev/problems/handler-failed";
/// The problem type of a 500: the pricing policy produced a negative price.
pub const INVALID_PRICE: &str = "https://dreamnet.dev/problems/invalid-price";

/// The problem type of a 503: the in-memory ledger holds its cap of entries.
pub const LEDGER_FULL: &str = "https://dreamnet.dev/problems/ledger-full";

/// The problem type of a 503: the ledger's reply to the step that stores the response and
/// posts the charge was lost (connection dropped, deadline passed), so whether it was
/// charged is unknown here; a retry with the same key settles it.
pub const OUTCOME_UNKNOWN: &str = "https://dreamnet.dev/problems/outcome-unknown";

/// How long a client is told to wait before retrying after an unknown outcome.
pub const OUTCOME_UNKNOWN_RETRY_AFTER_MS: u64 = 1000;

/// How long a client is told to wait before retrying a refused reservation on a full
/// ledger (terminal actions are forgotten continuously, so room frees up soon).
pub const LEDGER_FULL_RETRY_AFTER_MS: u64 = 1000;

/// 402: the account cannot cover the action; nothing was held and the handler did not run.
pub fn insufficient_funds(
    account: &AccountId,
    available: Amount,
    required: Amount,
    currency: &str,
    trace_id: Option<&str>,
) -> Problem {
    Problem::new(StatusCode::PAYMENT_REQUIRED, "Insufficient Funds")
        .type_uri(INSUFFICIENT_FUNDS)
        .detail(format!(
            "account {account} has {available} {currency} (minor units) available; \
             this action requires {required}"
        ))
        .maybe_trace_id(trace_id)
}

/// 400: no account could be extracted from the request.
pub fn missing_account(trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "Missing Account")
        .type_uri(MISSING_ACCOUNT)
        .detail("this endpoint is billable and the request names no account to charge")
        .maybe_trace_id(trace_id)
}

/// 409: the account exists in another currency than the route charges in. For gRPC it is
/// `FAILED_PRECONDITION`, not the 409 default `ABORTED`: retrying cannot help, the account's
/// state is what must change.
pub fn currency_mismatch(
    account: &AccountId,
    account_currency: &str,
    requested: &str,
    trace_id: Option<&str>,
) -> Problem {
    Problem::new(StatusCode::CONFLICT, "Currency Mismatch")
        .type_uri(CURRENCY_MISMATCH)
        .grpc_code(GrpcCode::FailedPrecondition)
        .detail(format!(
            "account {account} is kept in {account_currency}; this action charges {requested}"
        ))
        .maybe_trace_id(trace_id)
}

/// 500: the handler reported an actual cost above what was reserved; the reservation was
/// voided and nothing was charged.
pub fn cost_exceeds_reservation(
    reserved: Amount,
    actual: Amount,
    trace_id: Option<&str>,
) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Cost Exceeds Reservation",
    )
    .type_uri(COST_EXCEEDS_RESERVATION)
    .detail(format!(
        "the handler reported a cost of {actual}, above the {reserved} reserved; \
             the reservation was voided and nothing was charged"
    ))
    .maybe_trace_id(trace_id)
}

/// 500: the reservation timed out (and was voided) before the response could be kept.
pub fn reservation_expired(trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Reservation Expired")
        .type_uri(RESERVATION_EXPIRED)
        .detail(
            "the handler finished after the reservation timed out; nothing was charged and \
             the response was not kept, so a retry with the same key runs again",
        )
        .maybe_trace_id(trace_id)
}

/// 500: the handler panicked or its response body failed; the reservation was voided.
pub fn handler_failed(what: &str, trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        .type_uri(HANDLER_FAILED)
        .detail(format!(
            "{what}; the reservation was voided and nothing was charged"
        ))
        .maybe_trace_id(trace_id)
}

/// 500: the pricing policy returned a negative amount.
pub fn invalid_price(amount: Amount, trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Invalid Price")
        .type_uri(INVALID_PRICE)
        .detail(format!(
            "the route's pricing produced {amount}; prices are non-negative minor units"
        ))
        .maybe_trace_id(trace_id)
}

/// 503: the ledger is at its cap of live entries; nothing was held and the handler did not
/// run, so a retry with the same key runs normally once room frees up.
pub fn ledger_full(limit: usize, trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Ledger Full")
        .type_uri(LEDGER_FULL)
        .detail(format!(
            "the billing ledger holds its maximum of {limit} live entries; nothing was \
             reserved and the request was not run, retry later with the same Idempotency-Key"
        ))
        .maybe_trace_id(trace_id)
        .retry_after_millis(LEDGER_FULL_RETRY_AFTER_MS)
}

/// 503: the handler ran, but the ledger's reply to storing its response and posting the
/// charge was lost, and the hold could not be released either, so this server does not
/// know whether it was charged. A retry with the same Idempotency-Key answers it: it
/// replays the kept response if the charge was posted, or runs the request once if not;
/// never both, never a second charge.
pub fn outcome_unknown(trace_id: Option<&str>) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Outcome Unknown")
        .type_uri(OUTCOME_UNKNOWN)
        .detail(
            "the billing ledger's confirmation was lost, so whether this request was \
             charged is unknown; retry with the same Idempotency-Key: it replays the kept \
             response if it was charged, or runs the request once if not, and never charges \
             twice",
        )
        .maybe_trace_id(trace_id)
        .retry_after_millis(OUTCOME_UNKNOWN_RETRY_AFTER_MS)
        .store_fault("billing")
}
