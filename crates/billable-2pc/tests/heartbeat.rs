//! The reservation heartbeat (issue 9 item 7, billing part): a handler three times slower
//! than the reservation timeout runs once and is charged once while a retry gets 409
//! throughout and recovery leaves it alone; a dropped request's heartbeat stops, so
//! recovery voids it after the timeout; and `Ledger::extend` itself, on every ledger.
#![allow(missing_docs)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use dreamnet_billable::{
    ledger::{ActionState, LedgerError},
    recover, MemoryLedger,
};
use dreamnet_common::ManualClock;
use http::StatusCode;

mod common;

/// Short enough for a test, long enough that a busy 2-core machine still beats in time
/// (a beat every 200 ms keeps 400 ms of slack).
const SHORT: Duration = Duration::from_millis(600);

/// A memory ledger on the system clock (the heartbeat and the timeout run in real time).
fn memory_on_system_clock() -> Fixture {
    Fixture::new(
        Arc::new(MemoryLedger::new()),
        ManualClock::new(0), // unused: the ledger reads the system clock
    )
}

#[cfg(feature = "postgres")]
async fn postgres_on_system_clock() -> Option<Fixture> {
    postgres_with(|b| b.clock(dreamnet_common::clock::system())).await
}

fn short_service(f: &Fixture, runs: &Arc<AtomicUsize>) -> Svc {
    service_with(f, runs, |layer| layer.reservation_timeout(SHORT))
}

async fn slow_handler_runs_once_and_is_charged_once(f: &Fixture) {
    let acct = account("slow");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = short_service(f, &runs);
    let slow = 3 * SHORT.as_millis();
    let first = tokio::spawn(send(
        svc.clone(),
        request(&acct, Some("k"), "{}", &format!("sleep={slow}")),
    ));
    wait_for_state(&*f.ledger, &acct, "k", ActionState::Pending).await;
    let started = std::time::Instant::now();
    let (mut retries, mut sweeps, mut last_conflict) = (0, 0, Duration::ZERO);
    while !first.is_finished() {
        let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
        if first.is_finished() {
            break; // this retry may have raced the settle: a replay, checked below
        }
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "a retry while the handler runs"
        );
        retries += 1;
        last_conflict = started.elapsed();
        let report = recover(&*f.ledger).await.unwrap();
        assert_eq!(
            report.voided, 0,
            "recovery leaves a beating reservation alone"
        );
        sweeps += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = first.await.unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Retries and sweeps kept coming well past the first timeout (and the second).
    assert!(
        retries >= 3 && sweeps >= 3 && last_conflict > 2 * SHORT,
        "{retries} retries, {sweeps} sweeps, the last 409 at {last_conflict:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
    assert_eq!(
        balance(&*f.ledger, &acct).await,
        (None, 0, PRICE),
        "charged once"
    );
    let (status, _, replay) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!((status, replay), (StatusCode::CREATED, body));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn a_dropped_requests_heartbeat_stops_and_recovery_voids_it(f: &Fixture) {
    let acct = account("dropped");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = short_service(f, &runs);
    let request_task = tokio::spawn(send(svc.clone(), request(&acct, Some("k"), "{}", "hang")));
    let id = wait_for_state(&*f.ledger, &acct, "k", ActionState::Pending).await;
    let reserved_until = f.ledger.action(&id).await.unwrap().unwrap().expires_at_ms;
    tokio::time::sleep(SHORT).await;
    let beaten_until = f.ledger.action(&id).await.unwrap().unwrap().expires_at_ms;
    assert!(
        beaten_until > reserved_until,
        "the heartbeat moved the timeout"
    );

    // The request goes away (as with a dead process): its heartbeat goes with it.
    request_task.abort();
    let _ = request_task.await;
    // A beat already sent to PostgreSQL when the future was dropped still lands (the
    // server runs what it received); give it time, then no new beat may start.
    tokio::time::sleep(SHORT / 6).await;
    let stopped_at = f.ledger.action(&id).await.unwrap().unwrap().expires_at_ms;
    tokio::time::sleep(SHORT + SHORT / 3).await;
    let action = f.ledger.action(&id).await.unwrap().unwrap();
    assert_eq!(action.expires_at_ms, stopped_at, "no beat after the drop");
    let report = recover(&*f.ledger).await.unwrap();
    assert_eq!(report.voided, 1, "recovery voids the abandoned reservation");
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, PRICE));
}

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_handler_runs_once_and_is_charged_once() {
        let f = super::memory_on_system_clock();
        super::slow_handler_runs_once_and_is_charged_once(&f).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_requests_heartbeat_stops_and_recovery_voids_it() {
        let f = super::memory_on_system_clock();
        super::a_dropped_requests_heartbeat_stops_and_recovery_voids_it(&f).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_handler_runs_once_and_is_charged_once() {
        let Some(f) = super::postgres_on_system_clock().await else {
            return;
        };
        super::slow_handler_runs_once_and_is_charged_once(&f).await;
        f.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_requests_heartbeat_stops_and_recovery_voids_it() {
        let Some(f) = super::postgres_on_system_clock().await else {
            return;
        };
        super::a_dropped_requests_heartbeat_stops_and_recovery_voids_it(&f).await;
        f.finish().await;
    }
}

mod extend {
    use super::*;

    /// `extend` on a fake clock: moves a pending timeout forward, never back; refuses an
    /// expired, a resolved and an unknown action with nothing changed.
    async fn extend_moves_only_a_live_pending_timeout_forward(f: &Fixture) {
        let ledger = &*f.ledger;
        let acct = account("extend");
        let id = reserved(ledger, &acct, "k", PRICE).await;
        let before = ledger.action(&id).await.unwrap().unwrap();
        f.clock.advance(Duration::from_secs(60));
        let extended = ledger.extend(&id, TIMEOUT).await.unwrap();
        assert_eq!(extended.expires_at_ms, before.expires_at_ms + 60_000);
        assert_eq!(extended.state, ActionState::Pending);
        // A shorter extension never shortens it.
        let same = ledger.extend(&id, Duration::from_millis(1)).await.unwrap();
        assert_eq!(same.expires_at_ms, extended.expires_at_ms);
        assert_eq!(
            ledger.action(&id).await.unwrap().unwrap().expires_at_ms,
            extended.expires_at_ms
        );

        // Past its timeout: Expired, and it stays as it was for recovery to void.
        f.clock.advance(TIMEOUT);
        assert!(matches!(
            ledger.extend(&id, TIMEOUT).await,
            Err(LedgerError::Expired(_))
        ));
        let expired = ledger.action(&id).await.unwrap().unwrap();
        assert_eq!(
            (expired.state, expired.expires_at_ms),
            (ActionState::Pending, extended.expires_at_ms)
        );

        let charged = reserved(ledger, &acct, "charged", PRICE).await;
        ledger.settle(&charged, Bytes::new(), None).await.unwrap();
        assert!(matches!(
            ledger.extend(&charged, TIMEOUT).await,
            Err(LedgerError::AlreadyCharged(_))
        ));
        let unknown = dreamnet_billable::ledger::ActionId::new("act_nope");
        assert!(matches!(
            ledger.extend(&unknown, TIMEOUT).await,
            Err(LedgerError::NotFound(_))
        ));
    }

    crate::on_every_ledger!(extend_moves_only_a_live_pending_timeout_forward);
}
