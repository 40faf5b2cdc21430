//! The two-phase path through `BillableLayer` on every ledger: overspending refused, a retry
//! charged once and replayed, key rules, failures voided, partial posts, early rejections.
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
use dreamnet_billable::{ledger::ActionState, LedgerAdmin};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::ServiceExt;

mod common;

/// Issue test 1: 50 concurrent requests, credit for 10.
pub async fn concurrent_requests_never_overspend(f: &Fixture) {
    let acct = account("burst");
    f.ledger.add_credit(&acct, 10 * PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let svc = svc.clone();
            let req = request(&acct, Some(&format!("key-{i}")), "{}", "");
            tokio::spawn(async move { send(svc.clone(), req).await.0 })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::PAYMENT_REQUIRED => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        let a = f.ledger.account(&acct).await.unwrap().unwrap();
        assert!(a.available().unwrap() >= 0, "account went negative: {a:?}");
    }
    assert_eq!((created, refused), (10, 40));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        10,
        "402s never run the handler"
    );
    assert_eq!(
        balance(&*f.ledger, &acct).await,
        (Some(10 * PRICE), 0, 10 * PRICE)
    );

    let (status, headers, body) =
        send(svc.clone(), request(&acct, Some("one-more"), "{}", "")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["type"],
        "https://dreamnet.dev/problems/insufficient-funds"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("has 0 USD") && detail.contains("requires 100"),
        "{detail}"
    );
}

/// Issue test 2: a retry charges once and replays byte-identical bodies.
pub async fn retry_charges_once_and_replays_identical_bytes(f: &Fixture) {
    let acct = account("retry");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let (s1, h1, b1) = send(
        svc.clone(),
        request(&acct, Some("k"), "{\"dreamId\":1}", ""),
    )
    .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(h1.get("idempotent-replayed").is_none());
    for _ in 0..3 {
        let (s2, h2, b2) = send(
            svc.clone(),
            request(&acct, Some("k"), "{\"dreamId\":1}", ""),
        )
        .await;
        assert_eq!(s2, StatusCode::CREATED);
        assert_eq!(b2, b1, "replayed body is byte-identical");
        assert_eq!(h2["idempotent-replayed"], "true");
        assert_eq!(h2["content-type"], "application/json");
        assert!(
            h2.get("set-cookie").is_none(),
            "set-cookie is never replayed"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(balance(&*f.ledger, &acct).await, (None, 0, PRICE));
    let action = f.ledger.find(&scope_of(&acct), "k").await.unwrap().unwrap();
    assert_eq!(action.state, ActionState::Charged);
    let body: serde_json::Value = serde_json::from_slice(&b1).unwrap();
    assert_eq!(body["actionId"], action.id.as_str());
    let stats = f.ledger.stats().await.unwrap();
    assert!(stats.charged >= 1);
}

pub async fn key_rules_missing_conflict_mismatch(f: &Fixture) {
    let acct = account("keys");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let (status, _, _) = send(svc.clone(), request(&acct, None, "{}", "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(
        svc.clone(),
        request(&acct, Some("\"unterminated"), "{}", ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let no_account = Request::post("/api/mint-dream")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(svc.clone(), no_account).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("missing-account"));
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    // In flight: the first request hangs, a duplicate gets 409 with Retry-After.
    let hanging = tokio::spawn({
        let svc = svc.clone();
        let req = request(&acct, Some("busy"), "{}", "hang");
        async move { send(svc.clone(), req).await }
    });
    wait_for_state(&*f.ledger, &acct, "busy", ActionState::Pending).await;
    let (status, headers, _) = send(svc.clone(), request(&acct, Some("busy"), "{}", "hang")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["retry-after"], "1");
    // A different payload under the same key: 422, whatever the state.
    let (status, _, _) = send(svc.clone(), request(&acct, Some("busy"), "{\"x\":2}", "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    hanging.abort();

    send(svc.clone(), request(&acct, Some("done"), "{}", "")).await;
    let (status, _, _) = send(svc.clone(), request(&acct, Some("done"), "{\"x\":2}", "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(balance(&*f.ledger, &acct).await.2, PRICE);
}

/// Issue test 3: 5xx, error and panic void the reservation and restore the balance.
pub async fn failures_void_and_restore_the_balance(f: &Fixture) {
    let acct = account("fail");
    f.ledger.add_credit(&acct, PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let mut charged = 0;
    for (key, behave) in [("k5", "500"), ("ke", "error"), ("kp", "panic")] {
        // Credit for exactly one request on top of what is already charged.
        f.ledger
            .set_credit(&acct, Some(charged + PRICE), "USD")
            .await
            .unwrap();
        let response = svc
            .clone()
            .oneshot(request(&acct, Some(key), "{}", behave))
            .await;
        match behave {
            "500" => assert_eq!(
                response.unwrap().status(),
                StatusCode::INTERNAL_SERVER_ERROR
            ),
            "error" => assert_eq!(response.unwrap_err(), "handler failed"),
            _ => {
                let response = response.unwrap();
                assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
            }
        }
        let restored = (Some(charged + PRICE), 0, charged);
        assert_eq!(balance(&*f.ledger, &acct).await, restored, "{behave}");
        assert!(f
            .ledger
            .find(&scope_of(&acct), key)
            .await
            .unwrap()
            .is_none());
        // The key is free again: a retry runs and is charged (the credit covers only one,
        // so the failed attempt really released its hold).
        let (status, _, _) = send(svc.clone(), request(&acct, Some(key), "{}", "")).await;
        assert_eq!(status, StatusCode::CREATED, "{behave}");
        charged += PRICE;
        assert_eq!(
            balance(&*f.ledger, &acct).await,
            (Some(charged), 0, charged)
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}

pub async fn partial_post_and_refused_overcharge(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("partial");
    ledger.add_credit(&acct, PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k1"), "{}", "cost=40")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        balance(ledger, &acct).await,
        (Some(PRICE), 0, 40),
        "the rest is released"
    );
    let action = ledger.find(&scope_of(&acct), "k1").await.unwrap().unwrap();
    assert_eq!((action.reserved, action.amount), (PRICE, 40));

    ledger.add_credit(&acct, 40, "USD").await.unwrap();
    let (status, _, body) = send(svc.clone(), request(&acct, Some("k2"), "{}", "cost=101")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("cost-exceeds-reservation"));
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE + 40), 0, 40));
    assert!(
        ledger.find(&scope_of(&acct), "k2").await.unwrap().is_none(),
        "voided"
    );
    let stats = ledger.stats().await.unwrap();
    assert!(stats.failed >= 1);
}

pub async fn rejections_carry_trace_ids_and_refuse_before_reserving(f: &Fixture) {
    let acct = account("reject");
    f.ledger.set_credit(&acct, Some(0), "EUR").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let traced = |mut req: Request<Full<Bytes>>| {
        req.extensions_mut()
            .insert(dreamnet_trace_id::TraceContext::new("trace-abc"));
        req
    };
    // The account is kept in EUR, the route charges USD: 409, nothing held.
    let (status, _, body) = send(svc.clone(), traced(request(&acct, Some("k"), "{}", ""))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["type"],
        "https://dreamnet.dev/problems/currency-mismatch"
    );
    assert_eq!(problem["traceId"], "trace-abc");
    // Too large a body: 413 before anything is reserved.
    let big = "x".repeat(dreamnet_billable::DEFAULT_BODY_LIMIT + 1);
    let (status, _, body) = send(svc.clone(), traced(request(&acct, Some("big"), &big, ""))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["traceId"], "trace-abc");
    assert!(f
        .ledger
        .find(&scope_of(&acct), "big")
        .await
        .unwrap()
        .is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    // A reserved action records the request's trace id.
    let other = account("traced");
    let (status, _, _) = send(svc.clone(), traced(request(&other, Some("k"), "{}", ""))).await;
    assert_eq!(status, StatusCode::CREATED);
    let action = f
        .ledger
        .find(&scope_of(&other), "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(action.trace_id.as_deref(), Some("trace-abc"));
}

pub async fn dropped_request_voids_at_once_when_asked(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("dropped");
    ledger.add_credit(&acct, PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service_with(f, &runs, |layer| layer.void_on_drop(true));
    let hanging = tokio::spawn({
        let svc = svc.clone();
        let req = request(&acct, Some("k"), "{}", "hang");
        async move { send(svc, req).await }
    });
    let id = wait_for_state(ledger, &acct, "k", ActionState::Pending).await;
    // The handler runs, so the layer holds the reservation (a batch commit is visible in
    // the table a moment before its callers are woken; a drop in that moment is left to
    // recovery, as a crash would be).
    let started = tokio::time::Instant::now();
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hanging.abort();
    let _ = hanging.await;
    // No clock movement, no sweep: the drop itself released the hold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(ledger, &id).await != ActionState::Failed {
        assert!(tokio::time::Instant::now() < deadline, "not voided on drop");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, 0));
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED, "the retry runs at once");
    // A request that completes is not voided by its guard.
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    tokio::task::yield_now().await;
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, PRICE));
}

on_every_ledger!(
    concurrent_requests_never_overspend,
    retry_charges_once_and_replays_identical_bytes,
    key_rules_missing_conflict_mismatch,
    failures_void_and_restore_the_balance,
    partial_post_and_refused_overcharge,
    rejections_carry_trace_ids_and_refuse_before_reserving,
    dropped_request_voids_at_once_when_asked,
);
