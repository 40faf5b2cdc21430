//! One writer for both kinds ([`PostgresLedgerBuilder::combined_batches`](super::PostgresLedgerBuilder::combined_batches)):
//! reserves and settles queue together, and a batch holding both is one call of
//! `dreamnet_billable_reserve_and_settle_batch` (see
//! [`combined_function`](super::combined_function)), so one commit serves both kinds; a
//! batch of one kind calls that kind's batch function, as the separate writers do.

use super::{
    batch::{BatchConfig, Batcher, Counts},
    calls::Settle,
    rows::backend,
    Action, ActionId, BatchCounts, Core, LedgerResult, Reservation, ReserveRequest,
};
use std::sync::Arc;

/// A call queued for the combined writer.
pub(super) enum Call {
    Reserve(ActionId, ReserveRequest),
    Settle(Settle),
}

/// Its answer.
pub(super) enum Answer {
    Reserved(Reservation),
    Settled(Action),
}

/// The combined writer, and how many of its batches carried each kind.
pub(super) struct Combined {
    batcher: Batcher<Call, Answer>,
    kinds: Arc<[Counts; 2]>,
}

impl Combined {
    pub(super) fn spawn(config: BatchConfig, core: Arc<Core>) -> Self {
        let kinds = Arc::new([Counts::default(), Counts::default()]);
        let counted = kinds.clone();
        let batcher = Batcher::spawn(config, move |batch| {
            let (core, counted) = (core.clone(), counted.clone());
            async move { core.timed(core.mixed_batch(batch, &counted)).await }
        });
        Self { batcher, kinds }
    }

    pub(super) async fn reserve(
        &self,
        id: ActionId,
        request: ReserveRequest,
    ) -> LedgerResult<Reservation> {
        match self.batcher.call(Call::Reserve(id, request)).await? {
            Answer::Reserved(reservation) => Ok(reservation),
            Answer::Settled(_) => Err(backend("a reserve answered as a settle")),
        }
    }

    pub(super) async fn settle(&self, settle: Settle) -> LedgerResult<Action> {
        match self.batcher.call(Call::Settle(settle)).await? {
            Answer::Settled(action) => Ok(action),
            Answer::Reserved(_) => Err(backend("a settle answered as a reserve")),
        }
    }

    /// The batches that carried reserves (index 0) or settles (1), and how many.
    pub(super) fn kind(&self, kind: usize) -> BatchCounts {
        self.kinds[kind].get()
    }

    /// Every batch, whatever it carried.
    pub(super) fn all(&self) -> BatchCounts {
        self.batcher.counts()
    }
}

impl Core {
    /// One transaction for whatever queued: each call's outcome, in order.
    async fn mixed_batch(
        &self,
        batch: Vec<Call>,
        counted: &[Counts; 2],
    ) -> LedgerResult<Vec<LedgerResult<Answer>>> {
        let mut is_reserve = Vec::with_capacity(batch.len());
        let (mut reserves, mut settles) = (Vec::new(), Vec::new());
        for call in batch {
            is_reserve.push(matches!(call, Call::Reserve(..)));
            match call {
                Call::Reserve(id, request) => reserves.push((id, request)),
                Call::Settle(settle) => settles.push(settle),
            }
        }
        for (counts, n) in counted.iter().zip([reserves.len(), settles.len()]) {
            if n > 0 {
                counts.add(n);
            }
        }
        let (reserved, settled) = match (reserves.is_empty(), settles.is_empty()) {
            (_, true) => (self.reserve_batch(reserves).await?, Vec::new()),
            (true, false) => (Vec::new(), self.resolve_batch(settles).await?),
            (false, false) => self.reserve_and_settle_batch(reserves, settles).await?,
        };
        let (mut reserved, mut settled) = (reserved.into_iter(), settled.into_iter());
        Ok(is_reserve
            .into_iter()
            .map(|reserve| {
                let answer = if reserve {
                    reserved.next().map(|r| r.map(Answer::Reserved))
                } else {
                    settled.next().map(|s| s.map(Answer::Settled))
                };
                answer.unwrap_or_else(|| Err(backend("a call of the batch had no outcome")))
            })
            .collect())
    }
}
