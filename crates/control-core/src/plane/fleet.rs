//! A cluster's fleet-wide breaker as the plane uses it: the [`BreakerStore`] that holds it,
//! and this replica's copy of what the store last answered.
//!
//! The copy is what keeps a closed breaker free on the request path: a call through a closed
//! fleet breaker is admitted from the copy (a ticket of the generation last seen), and only
//! its outcome goes to the store, from a spawned task after the response. The store is asked
//! before admitting only when the answer can't come from the copy: an open breaker whose wait
//! is over, a half-open one (so its permits stay exact across replicas), or a copy marked
//! stale (at start, after a manual trip or reset, after a store failure).
//!
//! Successes of a closed breaker's calls are batched: up to [`OutcomeBatch::CAPACITY`] of
//! one generation go to the store in one operation, when the batch is full, when a failure
//! or a slow call joins it (it goes at once, with the successes before it, in order), or at
//! the refresher's next tick (every 250 ms by default); a half-open probe's outcome goes at
//! once. So a failure reaches the store as fast as unbatched, a success at most one refresh
//! interval late (which only delays an opening when a success is the call that brings the
//! window to `minimum_calls`), and a healthy cluster's call costs a thirty-second of a
//! round trip instead of one.
//!
//! Lag: a replica learns of a transition made elsewhere from the reply to its next recorded
//! batch, or from the refresher's peek (when the copy is older than [`PEEK_AFTER_MS`]). An
//! outcome of a call admitted under the old generation is ignored by the store, so what slips
//! through in that gap never counts twice.
//!
//! Store failures: the copy is set aside for [`LOCAL_FOR_MS`] and the replica's own breaker
//! decides meanwhile (its own window, its own half-open permits), as the README documents; the
//! first admission after that asks the store again.

use std::sync::Arc;

use parking_lot::Mutex;

use super::runtime::{ClusterRuntime, Inner};
use crate::{
    breaker::{BreakerState, Totals},
    config::BreakerConfig,
    store::{
        BreakerOp, BreakerStore, FleetReply, FleetTicket, OutcomeBatch, StoreError, StoreFuture,
    },
};

/// How long the replica's own breaker decides after the store failed, before asking again.
pub(crate) const LOCAL_FOR_MS: u64 = 1_000;

/// The refresher peeks at a breaker whose copy is older than this.
pub(crate) const PEEK_AFTER_MS: u64 = 1_000;

/// One cluster's fleet-wide breaker.
#[derive(Debug)]
pub(crate) struct FleetBreaker {
    store: Arc<dyn BreakerStore>,
    config: Arc<BreakerConfig>,
    seen: Mutex<Seen>,
    /// Outcomes of closed-breaker calls not sent yet.
    pending: Mutex<OutcomeBatch>,
}

/// What the store last answered, on this replica's clock.
#[derive(Debug, Clone, Copy)]
struct Seen {
    state: BreakerState,
    generation: u64,
    /// While open: when the wait ends.
    open_until: u64,
    totals: Totals,
    /// When the store last answered.
    at: u64,
    /// The store failed: the replica's own breaker decides until then.
    local_until: u64,
    /// Ask the store before the next admission.
    stale: bool,
}

/// What the copy says about one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Closed: admit with this ticket, no round trip.
    Admit(FleetTicket),
    /// Open (with the time left, when known) or forced open: refuse, no round trip.
    Refuse(Option<u64>),
    /// Only the store can answer (half-open, an open breaker's wait over, a stale copy).
    Ask,
    /// The store is failing: the replica's own breaker decides.
    Local,
}

impl FleetBreaker {
    pub(crate) fn new(store: Arc<dyn BreakerStore>, config: BreakerConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
            seen: Mutex::new(Seen {
                state: BreakerState::Closed,
                generation: 0,
                open_until: 0,
                totals: Totals::default(),
                at: 0,
                local_until: 0,
                stale: true,
            }),
            pending: Mutex::new(OutcomeBatch::default()),
        }
    }

    /// Adds the outcome of a call a closed breaker admitted with `ticket` to the batch of its
    /// generation; the batch to send now when it is full or the outcome is a failure or a
    /// slow call. Outcomes of an older generation than the batch's are dropped, and a batch
    /// of an older generation than the outcome's is replaced: the store ignores outcomes of
    /// every generation but its current one, and an outcome of generation g means the store
    /// has reached g.
    pub(crate) fn batch(
        &self,
        ticket: FleetTicket,
        failed: bool,
        duration_ms: u64,
    ) -> Option<OutcomeBatch> {
        let slow = duration_ms >= self.config.slow_call_duration_ms;
        let mut pending = self.pending.lock();
        if ticket.generation != pending.generation {
            if ticket.generation < pending.generation {
                return None;
            }
            *pending = OutcomeBatch::new(ticket.generation);
        }
        pending.push(failed, slow);
        // Bad news goes at once (with the successes before it, in order): a failure or a
        // slow call is what opens a breaker, so the fleet sees it without the batch's lag.
        (failed || slow || pending.is_full())
            .then(|| std::mem::replace(&mut *pending, OutcomeBatch::new(ticket.generation)))
    }

    /// The outcomes batched so far, if any (the refresher sends them).
    pub(crate) fn take_batch(&self) -> Option<OutcomeBatch> {
        let mut pending = self.pending.lock();
        let generation = pending.generation;
        (pending.calls > 0).then(|| std::mem::replace(&mut *pending, OutcomeBatch::new(generation)))
    }

    /// Runs `op` on the store.
    pub(crate) fn run(
        &self,
        cluster: &Arc<str>,
        op: BreakerOp,
    ) -> StoreFuture<'static, Result<FleetReply, StoreError>> {
        self.store.breaker(cluster, &self.config, op)
    }

    /// Decides one admission from the copy, if it can.
    pub(crate) fn check(&self, now: u64) -> Check {
        let seen = self.seen.lock();
        if now < seen.local_until {
            return Check::Local;
        }
        if seen.stale {
            return Check::Ask;
        }
        match seen.state {
            BreakerState::Closed => Check::Admit(FleetTicket {
                generation: seen.generation,
                probe: false,
            }),
            BreakerState::ForcedOpen => Check::Refuse(None),
            BreakerState::Open if now < seen.open_until => {
                Check::Refuse(Some(seen.open_until - now))
            }
            BreakerState::Open | BreakerState::HalfOpen => Check::Ask,
        }
    }

    /// Takes in a reply of the store (replies of concurrent tasks may arrive out of order:
    /// one of an older generation changes nothing).
    pub(crate) fn learn(&self, reply: &FleetReply, now: u64) {
        let mut seen = self.seen.lock();
        if reply.generation < seen.generation {
            return;
        }
        seen.generation = reply.generation;
        seen.state = reply.state;
        if reply.state == BreakerState::Open {
            let left = reply.retry_after_ms.unwrap_or(self.config.wait_in_open_ms);
            seen.open_until = now.saturating_add(left);
        }
        seen.totals = Totals {
            calls: reply.calls,
            failures: reply.failures,
            slow: reply.slow_calls,
        };
        seen.at = now;
        seen.local_until = 0;
        seen.stale = false;
    }

    /// The store failed: the replica's own breaker decides for a while.
    pub(crate) fn failed(&self, now: u64) {
        let mut seen = self.seen.lock();
        seen.local_until = now.saturating_add(LOCAL_FOR_MS);
        seen.stale = true;
    }

    /// Something changed the breaker elsewhere (a manual trip or reset): ask before the next
    /// admission.
    pub(crate) fn mark_stale(&self) {
        self.seen.lock().stale = true;
    }

    /// Whether the refresher should peek (the copy is old or stale, and the store is not
    /// known to be failing).
    pub(crate) fn needs_peek(&self, now: u64) -> bool {
        let seen = self.seen.lock();
        now >= seen.local_until && (seen.stale || now >= seen.at.saturating_add(PEEK_AFTER_MS))
    }

    /// The fleet-wide state and window as last seen (an open breaker whose wait is over
    /// reads as half-open), or `None` while the replica's own breaker decides.
    pub(crate) fn view(&self, now: u64) -> Option<(BreakerState, Totals)> {
        let seen = self.seen.lock();
        if now < seen.local_until {
            return None;
        }
        let state = match seen.state {
            BreakerState::Open if now >= seen.open_until => BreakerState::HalfOpen,
            state => state,
        };
        Some((state, seen.totals))
    }
}

impl Inner {
    /// Takes in a reply of `rt`'s fleet breaker. The one replica whose call moved the breaker
    /// logs the transition (once fleet-wide).
    pub(crate) fn learned(&self, rt: &ClusterRuntime, fleet: &FleetBreaker, reply: &FleetReply) {
        fleet.learn(reply, self.clock.now_millis());
        if reply.transitioned {
            tracing::info!(
                cluster = %rt.id,
                state = reply.state.as_str(),
                calls = reply.calls,
                failures = reply.failures,
                slow_calls = reply.slow_calls,
                "fleet-wide circuit breaker changed state"
            );
        }
    }

    /// Records the outcome of a call `rt`'s fleet breaker admitted: a probe's at once, a
    /// closed breaker's in the replica's batch (sent when full, or by the refresher).
    pub(crate) fn record_in_fleet(
        self: &Arc<Self>,
        rt: &Arc<ClusterRuntime>,
        ticket: FleetTicket,
        failed: bool,
        duration_ms: u64,
    ) {
        let Some(fleet) = &rt.fleet else { return };
        if ticket.probe {
            let op = BreakerOp::Record {
                ticket,
                failed,
                duration_ms,
            };
            self.send_to_fleet(rt, op);
        } else if let Some(batch) = fleet.batch(ticket, failed, duration_ms) {
            self.send_to_fleet(rt, BreakerOp::RecordMany(batch));
        }
    }

    /// Sends an outcome or a released permit to `rt`'s fleet breaker from a spawned task,
    /// so the response never waits for it. Outside a tokio runtime there is nowhere to run
    /// it: the outcome is dropped (the store ignores nothing else, and a probe permit comes
    /// back with the next generation).
    pub(crate) fn send_to_fleet(self: &Arc<Self>, rt: &Arc<ClusterRuntime>, op: BreakerOp) {
        let Some(fleet) = &rt.fleet else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sent = fleet.run(&rt.id, op);
        let (plane, rt, fleet) = (Arc::clone(self), Arc::clone(rt), Arc::clone(fleet));
        runtime.spawn(async move {
            match sent.await {
                Ok(reply) => plane.learned(&rt, &fleet, &reply),
                Err(error) => {
                    plane.store_failed(&error);
                    fleet.failed(plane.clock.now_millis());
                }
            }
        });
    }

    /// The refresher's part: sends every fleet breaker's batched outcomes, and peeks at those
    /// whose copy is old (a replica with no traffic of its own still shows the fleet's state
    /// within about a second). A sent batch's reply is as fresh as a peek.
    pub(crate) async fn sync_fleet(&self) {
        for rt in self.clusters.values() {
            let Some(fleet) = &rt.fleet else { continue };
            let op = match fleet.take_batch() {
                Some(batch) => BreakerOp::RecordMany(batch),
                None if fleet.needs_peek(self.clock.now_millis()) => BreakerOp::Peek,
                None => continue,
            };
            match fleet.run(&rt.id, op).await {
                Ok(reply) => self.learned(rt, fleet, &reply),
                Err(error) => {
                    self.store_failed(&error);
                    fleet.failed(self.clock.now_millis());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Unused;

    impl BreakerStore for Unused {
        fn breaker(
            &self,
            _: &Arc<str>,
            _: &Arc<BreakerConfig>,
            _: BreakerOp,
        ) -> StoreFuture<'static, Result<FleetReply, StoreError>> {
            StoreFuture::ready(Err(StoreError::unavailable("not used")))
        }
    }

    fn reply(state: BreakerState, generation: u64, retry: Option<u64>) -> FleetReply {
        FleetReply {
            ticket: None,
            retry_after_ms: retry,
            state,
            generation,
            transitioned: false,
            calls: 3,
            failures: 1,
            slow_calls: 0,
        }
    }

    fn fleet() -> FleetBreaker {
        FleetBreaker::new(Arc::new(Unused), BreakerConfig::default())
    }

    #[test]
    fn a_fresh_copy_asks_then_a_closed_one_admits_without_the_store() {
        let f = fleet();
        assert_eq!(f.check(0), Check::Ask);
        f.learn(&reply(BreakerState::Closed, 4, None), 10);
        let ticket = FleetTicket {
            generation: 4,
            probe: false,
        };
        assert_eq!(f.check(11), Check::Admit(ticket));
        assert_eq!(f.view(11).map(|(_, t)| t.calls), Some(3));
    }

    #[test]
    fn open_refuses_until_its_wait_then_asks() {
        let f = fleet();
        f.learn(&reply(BreakerState::Open, 5, Some(100)), 1_000);
        assert_eq!(f.check(1_040), Check::Refuse(Some(60)));
        assert_eq!(f.check(1_100), Check::Ask);
        assert_eq!(f.view(1_100).unwrap().0, BreakerState::HalfOpen);
        f.learn(&reply(BreakerState::ForcedOpen, 6, None), 1_200);
        assert_eq!(f.check(9_000), Check::Refuse(None));
    }

    #[test]
    fn an_older_generation_changes_nothing() {
        let f = fleet();
        f.learn(&reply(BreakerState::Open, 7, Some(100)), 0);
        f.learn(&reply(BreakerState::Closed, 6, None), 1);
        assert_eq!(f.check(2), Check::Refuse(Some(98)));
    }

    #[test]
    fn a_failing_store_hands_over_to_the_local_breaker_for_a_while() {
        let f = fleet();
        f.learn(&reply(BreakerState::Closed, 1, None), 0);
        f.failed(100);
        assert_eq!(f.check(100 + LOCAL_FOR_MS - 1), Check::Local);
        assert!(f.view(101).is_none());
        assert!(!f.needs_peek(101));
        assert_eq!(f.check(100 + LOCAL_FOR_MS), Check::Ask);
        assert!(f.needs_peek(100 + LOCAL_FOR_MS));
        f.learn(&reply(BreakerState::Closed, 1, None), 1_200);
        assert!(!f.needs_peek(1_201));
        assert!(f.needs_peek(1_200 + PEEK_AFTER_MS));
        f.mark_stale();
        assert_eq!(f.check(1_202), Check::Ask);
    }

    fn ticket(generation: u64) -> FleetTicket {
        FleetTicket {
            generation,
            probe: false,
        }
    }

    #[test]
    fn outcomes_are_batched_by_generation_and_sent_when_full() {
        let f = fleet();
        assert_eq!(f.take_batch(), None, "nothing to send");
        let slow_ms = BreakerConfig::default().slow_call_duration_ms;
        assert_eq!(f.batch(ticket(3), false, 1), None, "a success waits");
        assert_eq!(f.batch(ticket(3), false, 1), None);
        let sent = f.take_batch().expect("two outcomes");
        assert_eq!((sent.generation, sent.calls, sent.failed), (3, 2, 0));
        assert_eq!(f.take_batch(), None, "taken once");

        // A failure or a slow call goes at once, with the successes before it.
        f.batch(ticket(3), false, 1);
        let failed = f.batch(ticket(3), true, 1).expect("a failure goes at once");
        assert_eq!((failed.calls, failed.failed, failed.slow), (2, 0b10, 0));
        let slow = f
            .batch(ticket(3), false, slow_ms)
            .expect("so does a slow call");
        assert_eq!((slow.calls, slow.failed, slow.slow), (1, 0, 0b1));
        assert_eq!(f.take_batch(), None);

        // Full at 32: the batch comes back from the call that filled it.
        for _ in 1..OutcomeBatch::CAPACITY {
            assert_eq!(f.batch(ticket(3), false, 1), None);
        }
        let full = f.batch(ticket(3), false, 1).expect("the 32nd fills it");
        assert_eq!((full.calls, full.failed), (OutcomeBatch::CAPACITY, 0));
        assert_eq!(f.take_batch(), None);
    }

    #[test]
    fn a_newer_generation_replaces_the_batch_and_an_older_outcome_is_dropped() {
        let f = fleet();
        f.batch(ticket(3), false, 1);
        f.batch(ticket(4), false, 1);
        // Generation 3's outcome would be ignored by a store at 4: it is not sent.
        assert_eq!(f.batch(ticket(3), true, 1), None);
        let sent = f.take_batch().expect("generation 4's outcome");
        assert_eq!((sent.generation, sent.calls, sent.failed), (4, 1, 0));
    }
}
