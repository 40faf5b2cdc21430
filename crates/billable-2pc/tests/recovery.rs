//! Crashes and their recovery on every ledger: a reservation left pending is voided after its
//! timeout, a confirmed action is charged exactly once, the sweeper and paging.
#![allow(missing_docs)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use dreamnet_billable::{
    ledger::{ActionState, LedgerError, Reservation},
    recover, Sweeper,
};
use http::StatusCode;

mod common;

/// Issue test 4: crash after reserve.
pub async fn crash_after_reserve_is_voided_after_the_timeout(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("crash1");
    ledger.add_credit(&acct, PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);

    // The future dropped mid-handler (a client disconnect, a cancelled task).
    let hanging = tokio::spawn({
        let svc = svc.clone();
        let req = request(&acct, Some("k"), "{}", "hang");
        async move { send(svc.clone(), req).await }
    });
    let id = wait_for_state(ledger, &acct, "k", ActionState::Pending).await;
    hanging.abort();
    let _ = hanging.await;
    assert_eq!(
        balance(ledger, &acct).await,
        (Some(PRICE), PRICE, 0),
        "held until the timeout"
    );
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a retry before the timeout is in flight"
    );
    assert_eq!(
        recover(ledger).await.unwrap().voided,
        0,
        "not before the timeout"
    );

    f.clock.advance(TIMEOUT);
    let report = recover(ledger).await.unwrap();
    assert_eq!((report.voided, report.charged), (1, 0));
    assert_eq!(state_of(ledger, &id).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, 0));
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED, "the retry runs again");
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, PRICE));

    // The process gone: a ledger left with a pending reservation. A retry after the timeout
    // runs even before any sweep (the reservation voids the expired attempt itself).
    let acct2 = account("crash1b");
    let stale = reserved(ledger, &acct2, "k", PRICE).await;
    f.clock.advance(TIMEOUT + Duration::from_millis(1));
    let (status, _, _) = send(svc.clone(), request(&acct2, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(state_of(ledger, &stale).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct2).await, (None, 0, PRICE));
    assert_eq!(recover(ledger).await.unwrap(), Default::default());
}

/// Issue test 5: crash after the response is stored, before the charge.
pub async fn crash_after_confirm_is_charged_exactly_once(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("crash2");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    // What the layer leaves behind when the process dies between confirm and charge: the
    // real fingerprint and response of a first run, recorded by reserve + confirm.
    let (s1, _, body) = send(svc.clone(), request(&acct, Some("first"), "{}", "")).await;
    assert_eq!(s1, StatusCode::CREATED);
    let template = ledger
        .find(&scope_of(&acct), "first")
        .await
        .unwrap()
        .unwrap();
    let mut req = reserve_request(&acct, "k", PRICE);
    req.fingerprint = template.fingerprint.clone();
    let Reservation::Reserved(action) = ledger.reserve(req).await.unwrap() else {
        panic!("expected a reservation")
    };
    let stored = template.response.clone().unwrap();
    ledger.confirm(&action.id, stored, None).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, PRICE, PRICE));

    // Two recoveries racing (two replicas): exactly one charge.
    let (a, b) = tokio::join!(recover(ledger), recover(ledger));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.charged + b.charged, 1);
    assert_eq!(recover(ledger).await.unwrap().charged, 0);
    assert_eq!(state_of(ledger, &action.id).await, ActionState::Charged);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 2 * PRICE));

    // A retry replays the kept response and charges nothing.
    let (status, headers, replay) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 2 * PRICE));

    // A retry that arrives before any sweep posts the charge itself, once.
    let mut req = reserve_request(&acct, "k2", PRICE);
    req.fingerprint = template.fingerprint.clone();
    let Reservation::Reserved(action) = ledger.reserve(req).await.unwrap() else {
        panic!("expected a reservation")
    };
    ledger
        .confirm(&action.id, template.response.clone().unwrap(), None)
        .await
        .unwrap();
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k2"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(state_of(ledger, &action.id).await, ActionState::Charged);
    assert_eq!(recover(ledger).await.unwrap().charged, 0);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 3 * PRICE));
}

pub async fn confirm_after_timeout_is_refused(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("late");
    let id = reserved(ledger, &acct, "k", 10).await;
    f.clock.advance(TIMEOUT);
    assert!(matches!(
        ledger.confirm(&id, encoded_response("{}"), None).await,
        Err(LedgerError::Expired(_))
    ));
    assert_eq!(state_of(ledger, &id).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 0));
}

pub async fn sweeper_task_resolves_in_the_background(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("sweep");
    let pending = reserved(ledger, &acct, "p", 10).await;
    let confirmed = reserved(ledger, &acct, "c", 20).await;
    ledger
        .confirm(&confirmed, encoded_response("{}"), None)
        .await
        .unwrap();
    f.clock.advance(TIMEOUT);
    let handle = Sweeper::new(f.ledger.clone())
        .interval(Duration::from_millis(5))
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(ledger, &pending).await != ActionState::Failed
        || state_of(ledger, &confirmed).await != ActionState::Charged
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper did not resolve both"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.abort();
    assert_eq!(balance(ledger, &acct).await, (None, 0, 20));
}

// ---------------------------------------------------------------------------------------
// Issue test 6: random interleavings of requests, retries, crashes and sweeps.

pub async fn recovery_pages_through_more_than_a_batch(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("many");
    let n = dreamnet_billable::RECOVERY_BATCH + 20;
    for i in 0..n {
        let id = reserved(ledger, &acct, &format!("k{i}"), 1).await;
        if i % 2 == 0 {
            ledger
                .confirm(&id, encoded_response("{}"), None)
                .await
                .unwrap();
        }
    }
    // One pass sees more than a batch of due actions (half confirmed, half expired).
    f.clock.advance(TIMEOUT);
    let report = recover(ledger).await.unwrap();
    assert_eq!(
        (report.charged, report.voided),
        (n as u64 / 2, n as u64 / 2)
    );
    assert_eq!(recover(ledger).await.unwrap(), Default::default());
    let (_, pending, charged) = balance(ledger, &acct).await;
    assert_eq!((pending, charged), (0, i64::try_from(n / 2).unwrap()));
}

on_every_ledger!(
    crash_after_reserve_is_voided_after_the_timeout,
    crash_after_confirm_is_charged_exactly_once,
    confirm_after_timeout_is_refused,
    sweeper_task_resolves_in_the_background,
    recovery_pages_through_more_than_a_batch,
);
