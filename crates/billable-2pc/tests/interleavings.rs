//! Random interleavings of requests, handler failures, crashes, time and sweeps keep the
//! books on every ledger: never negative, every hold accounted, charged = price x kept keys,
//! every kept key replays its first body.
#![allow(missing_docs)]

use std::sync::{atomic::AtomicUsize, Arc};

use bytes::Bytes;
use common::*;
use dreamnet_billable::{
    ledger::{ActionState, Reservation},
    recover, LedgerAdmin,
};
use dreamnet_common::AccountId;
use dreamnet_idempotency::store::StoredResponse;
use http::StatusCode;
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;

/// One step of a random history over a few keys of one account.
#[derive(Debug, Clone)]
pub enum Op {
    /// A request (or a retry) that runs to completion; `behave` as in [`handler`].
    Request { key: u8, behave: &'static str },
    /// Two requests sent at once.
    Concurrent { a: u8, b: u8 },
    /// The process dies after reserving (a reservation left pending).
    CrashAfterReserve { key: u8 },
    /// The process dies after storing the response, before the charge.
    CrashAfterConfirm { key: u8 },
    /// Time passes (in reservation timeouts / 2).
    Advance { halves: u8 },
    /// A recovery pass.
    Sweep,
}

pub fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let key = 0u8..6;
    prop_oneof![
        4 => (key.clone(), prop::sample::select(vec!["", "", "500", "error"]))
            .prop_map(|(key, behave)| Op::Request { key, behave }),
        1 => (key.clone(), key.clone()).prop_map(|(a, b)| Op::Concurrent { a, b }),
        1 => key.clone().prop_map(|key| Op::CrashAfterReserve { key }),
        1 => key.prop_map(|key| Op::CrashAfterConfirm { key }),
        1 => (1u8..3).prop_map(|halves| Op::Advance { halves }),
        1 => Just(Op::Sweep),
    ]
}

const CREDIT_PRICES: i64 = 4;

struct Model {
    acct: AccountId,
    /// Keys whose response is kept (a client saw a 2xx, or a crash after confirm), with the
    /// body every replay must repeat byte for byte.
    kept: std::collections::HashMap<u8, Bytes>,
}

fn key_name(key: u8) -> String {
    format!("key-{key}")
}

async fn check_invariants(f: &Fixture, model: &Model) {
    let ledger = &*f.ledger;
    let account = ledger.account(&model.acct).await.unwrap().unwrap();
    assert!(account.pending >= 0 && account.charged >= 0, "{account:?}");
    assert!(
        account.available().unwrap() >= 0,
        "account negative: {account:?}"
    );
    let stats = ledger.stats().await.unwrap();
    let amounts = stats.amounts.get("USD").copied().unwrap_or_default();
    assert_eq!(
        account.pending,
        amounts.pending + amounts.confirmed,
        "{stats:?}"
    );
    assert_eq!(account.charged, amounts.charged, "{stats:?}");
    assert_eq!(
        amounts.charged,
        PRICE * i64::try_from(stats.charged).unwrap()
    );
    // Every key has at most one live action, and a kept key's is confirmed or charged.
    for key in 0..6u8 {
        let live = ledger
            .find(&scope_of(&model.acct), &key_name(key))
            .await
            .unwrap();
        if model.kept.contains_key(&key) {
            let state = live.expect("a kept key has a live action").state;
            assert!(
                matches!(state, ActionState::Confirmed | ActionState::Charged),
                "{state}"
            );
        }
    }
}

pub async fn run_interleaving(f: &Fixture, ops: Vec<Op>) {
    let ledger = &*f.ledger;
    let acct = account("prop");
    ledger
        .add_credit(&acct, CREDIT_PRICES * PRICE, "USD")
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    let mut model = Model {
        acct: acct.clone(),
        kept: std::collections::HashMap::new(),
    };
    let fingerprint = {
        let (parts, _) = request(&acct, Some("k"), "{}", "").into_parts();
        dreamnet_idempotency::store::Fingerprint::compute(&parts, &[], b"{}")
            .as_str()
            .to_owned()
    };
    let reserve_as_layer = |key: u8| {
        let mut req = reserve_request(&acct, &key_name(key), PRICE);
        req.fingerprint = fingerprint.clone();
        req
    };

    for op in ops {
        match op {
            Op::Request { key, behave } => {
                let outcome = svc
                    .clone()
                    .oneshot(request(&acct, Some(&key_name(key)), "{}", behave))
                    .await;
                let response = match outcome {
                    Ok(response) => response,
                    Err(_) => {
                        assert_eq!(behave, "error");
                        assert!(!model.kept.contains_key(&key), "a kept key replays");
                        continue;
                    }
                };
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                observe(
                    &mut model,
                    ledger,
                    key,
                    behave,
                    parts.status,
                    &parts.headers,
                    body,
                )
                .await;
            }
            Op::Concurrent { a, b } => {
                let (ra, rb) = tokio::join!(
                    send(svc.clone(), request(&acct, Some(&key_name(a)), "{}", "")),
                    send(svc.clone(), request(&acct, Some(&key_name(b)), "{}", "")),
                );
                let mut results = vec![(a, ra), (b, rb)];
                if a == b && !model.kept.contains_key(&a) {
                    // Concurrent duplicates of a new key: one may find the other in flight
                    // (409), and an original must be observed before its replay.
                    results.retain(|(_, (status, _, _))| *status != StatusCode::CONFLICT);
                    results.sort_by_key(|(_, (_, headers, _))| {
                        headers.contains_key("idempotent-replayed")
                    });
                }
                for (key, (status, headers, body)) in results {
                    observe(&mut model, ledger, key, "", status, &headers, body).await;
                }
            }
            Op::CrashAfterReserve { key } => {
                let _ = ledger.reserve(reserve_as_layer(key)).await.unwrap();
            }
            Op::CrashAfterConfirm { key } => {
                if let Reservation::Reserved(action) =
                    ledger.reserve(reserve_as_layer(key)).await.unwrap()
                {
                    let body = Bytes::from(format!("{{\"crashed\":\"{}\"}}", action.id));
                    let stored = StoredResponse {
                        status: 201,
                        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
                        body: body.clone(),
                    };
                    ledger
                        .confirm(&action.id, Bytes::from(stored.encode()), None)
                        .await
                        .unwrap();
                    assert!(model.kept.insert(key, body).is_none());
                }
            }
            Op::Advance { halves } => f.clock.advance(TIMEOUT / 2 * u32::from(halves)),
            Op::Sweep => {
                recover(ledger).await.unwrap();
            }
        }
        check_invariants(f, &model).await;
    }

    // Quiesce: every reservation times out, recovery resolves everything.
    f.clock.advance(TIMEOUT);
    recover(ledger).await.unwrap();
    check_invariants(f, &model).await;
    let account = ledger.account(&acct).await.unwrap().unwrap();
    assert_eq!(account.pending, 0);
    let kept = i64::try_from(model.kept.len()).unwrap();
    assert_eq!(
        account.charged,
        PRICE * kept,
        "charged = price x distinct successful keys"
    );
    for key in 0..6u8 {
        let live = ledger.find(&scope_of(&acct), &key_name(key)).await.unwrap();
        match (model.kept.contains_key(&key), live) {
            (true, Some(a)) => assert_eq!(a.state, ActionState::Charged),
            (false, None) => {}
            (kept, live) => panic!("key {key}: kept {kept}, live action {live:?}"),
        }
    }
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.pending, stats.confirmed), (0, 0));
    // A retry of every kept key replays its first body and charges nothing.
    for (key, body) in &model.kept {
        let (status, headers, replay) =
            send(svc.clone(), request(&acct, Some(&key_name(*key)), "{}", "")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(&replay, body);
    }
    assert_eq!(
        ledger.account(&acct).await.unwrap().unwrap().charged,
        PRICE * kept
    );
}

async fn observe(
    model: &mut Model,
    ledger: &dyn LedgerAdmin,
    key: u8,
    behave: &str,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: Bytes,
) {
    if let Some(first) = model.kept.get(&key) {
        assert_eq!(status, StatusCode::CREATED, "a kept key always replays");
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(&body, first, "replays are byte-identical");
        return;
    }
    match status {
        StatusCode::CREATED => {
            assert_eq!(behave, "");
            assert!(headers.get("idempotent-replayed").is_none());
            model.kept.insert(key, body);
        }
        StatusCode::CONFLICT => {
            let live = ledger
                .find(&scope_of(&model.acct), &key_name(key))
                .await
                .unwrap();
            assert_eq!(live.map(|a| a.state), Some(ActionState::Pending));
        }
        StatusCode::PAYMENT_REQUIRED => {}
        StatusCode::INTERNAL_SERVER_ERROR => assert_eq!(behave, "500"),
        other => panic!("unexpected status {other}"),
    }
}

fn random_interleavings(
    make: fn() -> futures_util::future::BoxFuture<'static, Option<Fixture>>,
    ops: Vec<Op>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(fixture) = make().await else { return };
        run_interleaving(&fixture, ops).await;
        fixture.finish().await;
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    #[test]
    fn memory_keeps_the_books(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        random_interleavings(|| Box::pin(memory()), ops);
    }
}

#[cfg(feature = "postgres")]
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]
    #[test]
    fn postgres_keeps_the_books(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        random_interleavings(|| Box::pin(postgres()), ops);
    }

    /// The same with batches held open 5 ms, so concurrent requests share a transaction.
    #[test]
    fn postgres_batched_keeps_the_books(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        random_interleavings(|| Box::pin(postgres_with(|b| b.max_wait(std::time::Duration::from_millis(5)))), ops);
    }

    /// Batched, with three batches of a kind in flight at once (`batch_writers`): concurrent
    /// transactions of the same batch function, each on its own connection.
    #[test]
    fn postgres_batched_by_three_writers_keeps_the_books(
        ops in proptest::collection::vec(op_strategy(), 1..40)
    ) {
        random_interleavings(|| Box::pin(postgres_with(|b| {
            b.max_wait(std::time::Duration::from_millis(5)).batch_writers(3)
        })), ops);
    }

    /// Batched with one writer for both kinds (`combined_batches`), two combined batches in
    /// flight: a reserve and a settle (or a void beside them) share a transaction.
    #[test]
    fn postgres_combined_batches_keep_the_books(
        ops in proptest::collection::vec(op_strategy(), 1..40)
    ) {
        random_interleavings(|| Box::pin(postgres_with(|b| {
            b.max_wait(std::time::Duration::from_millis(5)).combined_batches(true).batch_writers(2)
        })), ops);
    }
}
