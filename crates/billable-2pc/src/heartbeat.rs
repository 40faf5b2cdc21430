//! The reservation heartbeat: while a handler runs (and while its response body is read),
//! its pending reservation's timeout is pushed forward every third of the timeout, so a
//! handler slower than the timeout is neither voided under it by recovery nor run a second
//! time by a retry.
//!
//! The heartbeat is polled inside the request's own future, not spawned: it stops when the
//! request ends, when its future is dropped (client gone), and when the process dies. A
//! reservation whose heartbeat stopped keeps its last timeout, so recovery voids it as
//! before once that passes.

use std::{future::Future, time::Duration};

use dreamnet_common::heartbeat::{period_for, while_running, Beat};

use crate::ledger::{Action, Ledger, LedgerError};

/// Runs `work`; with `enabled`, extends `action`'s reservation by `timeout` every third of
/// it until `work` finishes.
pub(crate) async fn beating<L, F>(
    ledger: &L,
    action: &Action,
    timeout: Duration,
    enabled: bool,
    work: F,
) -> F::Output
where
    L: Ledger + ?Sized,
    F: Future,
{
    if !enabled {
        return work.await;
    }
    let beat = || async {
        match ledger.extend(&action.id, timeout).await {
            Ok(_) => Beat::Kept,
            // A store hiccup: the reservation keeps its timeout, the next beat may land.
            Err(err) if err.is_backend() => {
                tracing::warn!(action_id = %action.id, error = %err,
                    "billable: heartbeat failed; retrying at the next beat");
                Beat::Failed
            }
            // Expired, voided or resolved under us: nothing left to keep alive.
            Err(err) => {
                log_stop(action, &err);
                Beat::Gone
            }
        }
    };
    while_running(period_for(timeout), beat, work).await
}

fn log_stop(action: &Action, err: &LedgerError) {
    tracing::warn!(action_id = %action.id, error = %err,
        "billable: heartbeat stopped; the reservation is no longer pending");
}
