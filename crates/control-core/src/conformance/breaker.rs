//! The [`BreakerStore`] suite (run by [`breaker_store_tests!`](crate::breaker_store_tests)):
//! one cluster's fleet-wide breaker, driven the way the plane drives it.
//!
//! A fleet-wide breaker is shared by every replica, so each check also holds with the calls
//! spread over several handles of one store (the Redis tests run it with two handles on one
//! prefix). The store uses its own clock, so the only waits are the short `wait_in_open_ms`
//! of [`config`].

use std::{sync::Arc, time::Duration};

use crate::{
    breaker::BreakerState,
    config::BreakerConfig,
    store::{BreakerOp, BreakerStore, FleetReply, FleetTicket, OutcomeBatch},
};

/// How long the suite's breakers stay open.
const WAIT_MS: u64 = 500;

/// Four calls in the window, opened at 50 % failures, 2 half-open probes.
pub fn config() -> Arc<BreakerConfig> {
    Arc::new(BreakerConfig {
        window_size: 4,
        minimum_calls: 4,
        failure_rate_threshold: 50.0,
        wait_in_open_ms: WAIT_MS,
        half_open_calls: 2,
        ..BreakerConfig::default()
    })
}

async fn run(store: &dyn BreakerStore, cluster: &str, op: BreakerOp) -> FleetReply {
    store
        .breaker(&Arc::from(cluster), &config(), op)
        .await
        .unwrap_or_else(|e| panic!("{op:?} on {cluster}: {e}"))
}

async fn ticket(store: &dyn BreakerStore, cluster: &str) -> FleetTicket {
    let reply = run(store, cluster, BreakerOp::Acquire).await;
    assert_eq!(reply.state, BreakerState::Closed, "{reply:?}");
    reply.ticket.expect("a closed breaker admits")
}

async fn call(store: &dyn BreakerStore, cluster: &str, failed: bool) -> FleetReply {
    let ticket = ticket(store, cluster).await;
    let record = BreakerOp::Record {
        ticket,
        failed,
        duration_ms: 1,
    };
    run(store, cluster, record).await
}

/// Opens `cluster`'s breaker with four failed calls; the reply to the fourth.
async fn trip(store: &dyn BreakerStore, cluster: &str) -> FleetReply {
    for _ in 0..3 {
        call(store, cluster, true).await;
    }
    call(store, cluster, true).await
}

/// The window counts every outcome; the call that reaches the threshold opens the breaker,
/// is the only one told `transitioned`, and an open breaker refuses with the time left.
pub async fn opens_at_the_threshold_once(store: Arc<dyn BreakerStore>) {
    let mut transitions = 0;
    for (i, failed) in [false, true, false, true].into_iter().enumerate() {
        let reply = call(&*store, "c1", failed).await;
        assert_eq!(reply.calls, i as u64 + 1, "{reply:?}");
        transitions += usize::from(reply.transitioned);
        let expected = if i < 3 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(reply.state, expected, "after call {i}: {reply:?}");
    }
    assert_eq!(transitions, 1, "one caller is told of the opening");
    let refused = run(&*store, "c1", BreakerOp::Acquire).await;
    assert_eq!(refused.state, BreakerState::Open);
    assert!(refused.ticket.is_none(), "an open breaker admitted");
    assert!(
        refused.retry_after_ms.is_some_and(|ms| ms <= WAIT_MS),
        "{refused:?}"
    );
    assert!(!refused.transitioned);
}

/// Below the minimum number of calls, or below the rate, the breaker stays closed.
pub async fn stays_closed_below_the_minimum_and_the_rate(store: Arc<dyn BreakerStore>) {
    for _ in 0..3 {
        let reply = call(&*store, "c1", true).await;
        assert_eq!(reply.state, BreakerState::Closed, "{reply:?}");
    }
    // A full window at 25 % failures in another cluster.
    for failed in [true, false, false, false, false] {
        let reply = call(&*store, "c2", failed).await;
        assert_eq!(reply.state, BreakerState::Closed, "{reply:?}");
    }
}

/// After the wait, exactly `half_open_calls` permits are handed out however many callers
/// ask at once; a released permit is handed out again; the probes' successes close the
/// breaker, once.
pub async fn half_open_permits_are_exact(store: Arc<dyn BreakerStore>) {
    trip(&*store, "c1").await;
    tokio::time::sleep(Duration::from_millis(WAIT_MS + 50)).await;

    let asks = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { run(&*store, "c1", BreakerOp::Acquire).await })
    });
    let mut probes = Vec::new();
    for ask in asks {
        let reply = ask.await.expect("acquire task");
        assert_eq!(reply.state, BreakerState::HalfOpen, "{reply:?}");
        probes.extend(reply.ticket);
    }
    assert_eq!(probes.len(), 2, "exactly the configured permits");
    assert!(probes.iter().all(|t| t.probe));

    let given_back = probes.pop().expect("two probes");
    run(&*store, "c1", BreakerOp::Release(given_back)).await;
    let again = run(&*store, "c1", BreakerOp::Acquire).await;
    probes.push(
        again
            .ticket
            .expect("the released permit is handed out again"),
    );
    let none_left = run(&*store, "c1", BreakerOp::Acquire).await;
    assert!(none_left.ticket.is_none(), "{none_left:?}");

    let mut closings = 0;
    for ticket in probes {
        let record = BreakerOp::Record {
            ticket,
            failed: false,
            duration_ms: 1,
        };
        closings += usize::from(run(&*store, "c1", record).await.transitioned);
    }
    assert_eq!(closings, 1, "one caller is told of the closing");
    let closed = ticket(&*store, "c1").await;
    assert!(!closed.probe);
}

/// A failed probe opens the breaker again for another wait.
pub async fn a_failed_probe_reopens(store: Arc<dyn BreakerStore>) {
    trip(&*store, "c1").await;
    tokio::time::sleep(Duration::from_millis(WAIT_MS + 50)).await;
    let probe = run(&*store, "c1", BreakerOp::Acquire).await;
    let ticket = probe.ticket.expect("a half-open permit");
    let record = BreakerOp::Record {
        ticket,
        failed: true,
        duration_ms: 1,
    };
    let reply = run(&*store, "c1", record).await;
    assert_eq!(reply.state, BreakerState::Open, "{reply:?}");
    assert!(reply.transitioned);
    let refused = run(&*store, "c1", BreakerOp::Acquire).await;
    assert!(refused.ticket.is_none(), "{refused:?}");
}

/// A forced-open breaker refuses with no known end until reset; a reset closes it with an
/// empty window; the outcome of a call admitted before either is ignored.
pub async fn forced_open_reset_and_stale_outcomes(store: Arc<dyn BreakerStore>) {
    let before = ticket(&*store, "c1").await;
    let forced = run(&*store, "c1", BreakerOp::ForceOpen).await;
    assert_eq!(forced.state, BreakerState::ForcedOpen);
    assert!(forced.generation > before.generation, "{forced:?}");
    let refused = run(&*store, "c1", BreakerOp::Acquire).await;
    assert_eq!(refused.state, BreakerState::ForcedOpen);
    assert!(refused.ticket.is_none());
    assert_eq!(
        refused.retry_after_ms, None,
        "a manual trip has no known end"
    );
    tokio::time::sleep(Duration::from_millis(WAIT_MS + 50)).await;
    let still = run(&*store, "c1", BreakerOp::Acquire).await;
    assert_eq!(
        still.state,
        BreakerState::ForcedOpen,
        "the wait never ends it"
    );

    let reset = run(&*store, "c1", BreakerOp::Reset).await;
    assert_eq!(reset.state, BreakerState::Closed);
    assert_eq!(reset.calls, 0);
    let stale = BreakerOp::Record {
        ticket: before,
        failed: true,
        duration_ms: 1,
    };
    let ignored = run(&*store, "c1", stale).await;
    assert_eq!(ignored.calls, 0, "a stale outcome was counted: {ignored:?}");
    assert_eq!(ignored.state, BreakerState::Closed);
}

/// A peek reads the state and the window and changes neither.
pub async fn peek_changes_nothing(store: Arc<dyn BreakerStore>) {
    let empty = run(&*store, "c1", BreakerOp::Peek).await;
    assert_eq!(empty.state, BreakerState::Closed);
    assert_eq!((empty.calls, empty.failures), (0, 0));
    assert!(empty.ticket.is_none(), "a peek hands out no permit");
    call(&*store, "c1", true).await;
    call(&*store, "c1", false).await;
    for _ in 0..3 {
        let peeked = run(&*store, "c1", BreakerOp::Peek).await;
        assert_eq!((peeked.calls, peeked.failures), (2, 1), "{peeked:?}");
        assert!(!peeked.transitioned);
    }
    // Two more failures fill the window at 75 %: open.
    call(&*store, "c1", true).await;
    let open = call(&*store, "c1", true).await;
    assert_eq!(open.state, BreakerState::Open, "{open:?}");
    let peeked = run(&*store, "c1", BreakerOp::Peek).await;
    assert_eq!(peeked.state, BreakerState::Open);
    assert!(peeked.retry_after_ms.is_some_and(|ms| ms <= WAIT_MS));
}

/// One cluster's breaker never moves another's.
pub async fn clusters_are_isolated(store: Arc<dyn BreakerStore>) {
    trip(&*store, "c1").await;
    let other = call(&*store, "c2", false).await;
    assert_eq!(other.state, BreakerState::Closed);
    assert_eq!(other.calls, 1, "{other:?}");
    run(&*store, "c2", BreakerOp::ForceOpen).await;
    // Open, or half-open if the wait is already over on a slow machine: not forced open.
    let first = run(&*store, "c1", BreakerOp::Peek).await;
    assert!(
        matches!(first.state, BreakerState::Open | BreakerState::HalfOpen),
        "{first:?}"
    );
}

/// Concurrent outcomes from many callers are all counted, and the opening is told once.
pub async fn concurrent_outcomes_open_once(store: Arc<dyn BreakerStore>) {
    let tickets: Vec<FleetTicket> = {
        let mut tickets = Vec::new();
        for _ in 0..4 {
            tickets.push(ticket(&*store, "c1").await);
        }
        tickets
    };
    let records = tickets.into_iter().map(|ticket| {
        let store = store.clone();
        tokio::spawn(async move {
            let record = BreakerOp::Record {
                ticket,
                failed: true,
                duration_ms: 1,
            };
            run(&*store, "c1", record).await
        })
    });
    let mut transitions = 0;
    for record in records {
        transitions += usize::from(record.await.expect("record task").transitioned);
    }
    assert_eq!(transitions, 1, "one caller is told of the opening");
    let peeked = run(&*store, "c1", BreakerOp::Peek).await;
    assert_eq!(peeked.state, BreakerState::Open, "{peeked:?}");
}

/// A batch of outcomes counts as if recorded one by one, in order: the one that reaches the
/// threshold opens the breaker and the rest are ignored; a batch of an older generation
/// is ignored whole.
pub async fn batched_outcomes_count_in_order(store: Arc<dyn BreakerStore>) {
    let generation = ticket(&*store, "c1").await.generation;
    let mut batch = OutcomeBatch::new(generation);
    for failed in [false, true, false] {
        assert!(batch.push(failed, false));
    }
    let reply = run(&*store, "c1", BreakerOp::RecordMany(batch)).await;
    assert_eq!(reply.state, BreakerState::Closed, "{reply:?}");
    assert_eq!((reply.calls, reply.failures), (3, 1));

    // Window of 4 at 50 %: the 4th outcome (a failure) trips it; the two after it are not
    // counted.
    let mut batch = OutcomeBatch::new(generation);
    for failed in [true, true, true] {
        batch.push(failed, false);
    }
    let reply = run(&*store, "c1", BreakerOp::RecordMany(batch)).await;
    assert_eq!(reply.state, BreakerState::Open, "{reply:?}");
    assert!(reply.transitioned, "the batch that trips it is told so");
    assert_eq!((reply.calls, reply.failures), (4, 2), "{reply:?}");

    let stale = run(&*store, "c1", BreakerOp::RecordMany(batch)).await;
    assert!(!stale.transitioned);
    assert_eq!(
        (stale.calls, stale.failures),
        (4, 2),
        "a stale batch was counted"
    );

    // Slow calls count as such.
    let generation = run(&*store, "c2", BreakerOp::Peek).await.generation;
    let mut slow = OutcomeBatch::new(generation);
    slow.push(false, true);
    slow.push(false, false);
    let reply = run(&*store, "c2", BreakerOp::RecordMany(slow)).await;
    assert_eq!((reply.calls, reply.failures, reply.slow_calls), (2, 0, 1));
}
