//! The DeployKeeper log lines of billable routes, as `dreamnet-idempotency` writes them.
//!
//! On billable routes the ledger is the idempotency store, so the two lines come from here:
//! `[DeployKeeper] Idempotency-Key: K, Trace-ID: T, Digest: D, Status: NEW` when a
//! reservation is made, and `[Idempotency] Duplicate detected - Key: K, Trace: T, Digest: D,
//! Original: T0` when the key already has a live action (replay, 409 or 422). Same target
//! ([`LOG_TARGET`]), level (INFO) and fields (`idempotency_key`, `trace_id`, `digest`,
//! `status` / `outcome`, `original_trace_id`) as the idempotency layer, so one filter sees
//! both. `Digest` is the fingerprint stored with the action (on a 422 the retry's, with the
//! stored one in `original_digest`); `Original` is the trace id stored with the action.

use dreamnet_idempotency::LOG_TARGET;

use crate::ledger::{ActionState, LedgerResult, Reservation, ReserveRequest};

/// What a reservation's log line needs from its request (which the ledger consumes).
pub(crate) struct Logged {
    idempotency_key: String,
    fingerprint: String,
    trace_id: Option<String>,
}

impl Logged {
    /// Keeps the request's key, fingerprint and trace id.
    pub(crate) fn of(request: &ReserveRequest) -> Self {
        Self {
            idempotency_key: request.idempotency_key.clone(),
            fingerprint: request.fingerprint.clone(),
            trace_id: request.trace_id.clone(),
        }
    }

    /// Writes the DeployKeeper line for the outcome of the reservation, if it has one.
    pub(crate) fn emit(&self, outcome: &LedgerResult<Reservation>) {
        reservation(self, outcome);
    }
}

fn reservation(request: &Logged, outcome: &LedgerResult<Reservation>) {
    match outcome {
        Ok(Reservation::Reserved(action)) => {
            let trace = action.trace_id.as_deref().unwrap_or("-");
            tracing::info!(
                target: LOG_TARGET,
                idempotency_key = action.idempotency_key.as_str(),
                trace_id = trace,
                digest = action.fingerprint.as_str(),
                status = "NEW",
                action_id = %action.id,
                "[DeployKeeper] Idempotency-Key: {}, Trace-ID: {}, Digest: {}, Status: NEW",
                action.idempotency_key,
                trace,
                action.fingerprint,
            );
        }
        Ok(Reservation::Existing(existing)) => {
            let outcome = if existing.fingerprint != request.fingerprint {
                "fingerprint_mismatch"
            } else if existing.state == ActionState::Pending {
                "in_flight"
            } else {
                "replayed"
            };
            let trace = request.trace_id.as_deref().unwrap_or("-");
            let original = existing.trace_id.as_deref().unwrap_or("-");
            tracing::info!(
                target: LOG_TARGET,
                idempotency_key = request.idempotency_key.as_str(),
                trace_id = trace,
                digest = request.fingerprint.as_str(),
                original_digest = existing.fingerprint.as_str(),
                original_trace_id = original,
                outcome,
                action_id = %existing.id,
                "[Idempotency] Duplicate detected - Key: {}, Trace: {}, Digest: {}, Original: {}",
                request.idempotency_key,
                trace,
                request.fingerprint,
                original,
            );
        }
        Ok(Reservation::InsufficientFunds { .. }) | Err(_) => {}
    }
}
