//! Recovery: void pending reservations past their timeout, charge confirmed actions.
//!
//! Run [`recover`] once at start-up (a crash may have left both kinds behind) and keep a
//! [`Sweeper`] running. Both only use the ledger's exclusive transitions, so any number of
//! sweepers on any number of replicas, racing live requests, never charge twice: the loser
//! of a race gets `AlreadyCharged` / `AlreadyConfirmed` and moves on.

use std::time::Duration;

use crate::ledger::{ActionState, LedgerAdmin, LedgerResult};

/// How many actions [`recover`] resolves per ledger query.
pub const RECOVERY_BATCH: usize = 100;

/// What one recovery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Pending reservations past their timeout that were voided.
    pub voided: u64,
    /// Confirmed actions whose charge was posted.
    pub charged: u64,
    /// Actions someone else resolved first (a live request or another sweeper).
    pub skipped: u64,
}

/// One recovery pass: voids every pending reservation past its timeout and posts the charge
/// of every confirmed action, exactly once each.
///
/// Needs [`LedgerAdmin::due_for_recovery`] to find them; the transitions are the
/// [`Ledger`](crate::Ledger)'s exclusive `void` and `charge`.
///
/// # Errors
/// The ledger's backend error; what was resolved before it stays resolved.
pub async fn recover<L: LedgerAdmin + ?Sized>(ledger: &L) -> LedgerResult<RecoveryReport> {
    let mut report = RecoveryReport::default();
    loop {
        let due = ledger.due_for_recovery(RECOVERY_BATCH).await?;
        let full_batch = due.len() == RECOVERY_BATCH;
        let before = report;
        for action in due {
            let outcome = match action.state {
                ActionState::Confirmed => ledger.charge(&action.id).await.map(|_| true),
                ActionState::Pending => ledger.void(&action.id).await.map(|_| false),
                ActionState::Charged | ActionState::Failed => continue,
            };
            match outcome {
                Ok(true) => {
                    report.charged += 1;
                    tracing::info!(action_id = %action.id, amount = action.amount,
                        "billable recovery: charged a confirmed action");
                }
                Ok(false) => {
                    report.voided += 1;
                    tracing::info!(action_id = %action.id, amount = action.amount,
                        "billable recovery: voided an expired reservation");
                }
                Err(err) if err.is_backend() => return Err(err),
                // Resolved by someone else first (AlreadyCharged, AlreadyConfirmed, ...).
                Err(_) => report.skipped += 1,
            }
        }
        // Stop when the ledger had no more, or when a full batch made no progress (every row
        // resolved by someone else meanwhile; the next pass picks up anything left).
        if !full_batch || report == before {
            return Ok(report);
        }
    }
}

/// How many resolved actions one [`LedgerAdmin::prune`] call deletes at most.
pub const PRUNE_BATCH: usize = 1_000;

/// The most prune batches one [`prune_resolved`] pass runs, so a pass stays bounded even
/// with a large backlog (the next pass goes on).
pub const PRUNE_BATCHES_PER_PASS: usize = 100;

/// Forgets resolved actions past the ledger's retention, [`PRUNE_BATCH`] at a time (each
/// its own short transaction on PostgreSQL, skipping locked rows), until a batch comes back
/// short or [`PRUNE_BATCHES_PER_PASS`] ran; returns how many were forgotten.
///
/// # Errors
/// The ledger's backend error; batches already done stay done.
pub async fn prune_resolved<L: LedgerAdmin + ?Sized>(ledger: &L) -> LedgerResult<u64> {
    let mut total = 0;
    for _ in 0..PRUNE_BATCHES_PER_PASS {
        let gone = ledger.prune(PRUNE_BATCH).await?;
        total += gone;
        if gone < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// A background task that runs [`recover`], then [`prune_resolved`], every `interval`.
///
/// ```no_run
/// use dreamnet_billable::{MemoryLedger, Sweeper};
/// use std::{sync::Arc, time::Duration};
///
/// # async fn run() {
/// let ledger = Arc::new(MemoryLedger::new());
/// dreamnet_billable::recover(&*ledger).await.expect("start-up recovery");
/// let handle = Sweeper::new(ledger.clone()).interval(Duration::from_secs(10)).spawn();
/// # handle.abort();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Sweeper<L> {
    ledger: L,
    interval: Duration,
}

/// The default sweep interval (30 s).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl<L: LedgerAdmin> Sweeper<L> {
    /// A sweeper over `ledger` (typically an `Arc` shared with the layer) every 30 s.
    pub fn new(ledger: L) -> Self {
        Self {
            ledger,
            interval: DEFAULT_SWEEP_INTERVAL,
        }
    }

    /// How often to sweep.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The recovery half of one pass (each tick the task also runs [`prune_resolved`]).
    ///
    /// # Errors
    /// The ledger's backend error.
    pub async fn sweep_once(&self) -> LedgerResult<RecoveryReport> {
        recover(&self.ledger).await
    }

    /// Sweeps forever; errors are logged and the next tick tries again.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match recover(&self.ledger).await {
                Ok(report) if report.voided + report.charged > 0 => {
                    tracing::info!(
                        voided = report.voided,
                        charged = report.charged,
                        skipped = report.skipped,
                        "billable sweeper: resolved actions"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "billable sweeper: pass failed"),
            }
            match prune_resolved(&self.ledger).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(
                    pruned,
                    "billable sweeper: forgot resolved actions past their retention"
                ),
                Err(err) => tracing::warn!(error = %err, "billable sweeper: prune failed"),
            }
        }
    }

    /// Spawns [`run`](Self::run) on the current tokio runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }
}
