//! One writer for both kinds (`PostgresLedgerBuilder::combined_batches`): reserves and
//! settles queued together are one transaction. Each request is answered as its own batch
//! function would answer it, a failing batch fails every caller of both kinds and applies
//! nothing, and under concurrency (two combined batches in flight, credit lines changing,
//! voids and recovery beside them) no account is overdrawn and every success is charged
//! once.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

use std::{sync::Arc, time::Duration};

use common::*;
use dreamnet_billable::{
    ledger::{
        postgres::{BatchCounts, PostgresLedgerBuilder},
        ActionId, ActionState, LedgerError, Reservation,
    },
    recover, Ledger, LedgerAdmin,
};
use dreamnet_common::AccountId;
use futures_util::future::join_all;

mod common;

/// A combined-batch ledger (its builder then configured by `configure`) in a schema of its
/// own.
async fn combined(
    configure: fn(PostgresLedgerBuilder) -> PostgresLedgerBuilder,
) -> Option<OwnSchema> {
    OwnSchema::new(|builder| configure(builder.combined_batches(true))).await
}

/// Batches cut when 8 calls are queued, or after 2 s: 8 concurrent calls are one batch.
async fn combined_by_8() -> Option<OwnSchema> {
    combined(|b| b.max_batch(8).max_wait(Duration::from_secs(2))).await
}

/// The ids of the reservations `answers` made; panics on any other answer.
fn reserved_ids(answers: Vec<Result<Reservation, LedgerError>>) -> Vec<ActionId> {
    answers
        .into_iter()
        .map(|r| match r {
            Ok(Reservation::Reserved(action)) => action.id,
            other => panic!("expected a reservation, got {other:?}"),
        })
        .collect()
}

/// What one call of a mixed batch answered.
#[derive(Debug)]
enum Answer {
    Reserve(Result<Reservation, LedgerError>),
    Settle(Result<dreamnet_billable::ledger::Action, LedgerError>),
}

fn delta(after: BatchCounts, before: BatchCounts) -> (u64, u64) {
    (after.batches - before.batches, after.calls - before.calls)
}

/// One batch of eight: three settles on an unlimited account (one for less), one on a
/// credit-limited account (the single-request path), one of an unknown id, and three holds
/// on the limited account of which the remaining credit covers two, checked in order. Each
/// gets what it would in a batch of its own kind; the sums are exact; it was one
/// transaction carrying both kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_batch_mixes_covered_and_uncovered_holds_with_settles() {
    let Some(f) = combined_by_8().await else {
        return;
    };
    let ledger = &*f.ledger;
    let (limited, free) = (account("limited"), account("free"));
    ledger.add_credit(&limited, 400, "USD").await.unwrap();
    // Four holds in one (reserve-only) batch: 200 of the 400 held on the limited account.
    let held = join_all(
        [
            (&limited, "s1"),
            (&limited, "s2"),
            (&free, "s3"),
            (&free, "s4"),
        ]
        .map(|(acct, key)| ledger.reserve(reserve_request(acct, key, PRICE))),
    )
    .await;
    let held = reserved_ids(held);
    let missing = ActionId::random();
    let (reserves0, settles0, all0) = (
        ledger.reserve_batches(),
        ledger.settle_batches(),
        ledger.batches(),
    );
    let settle = |id: &ActionId, actual: Option<i64>| {
        let id = id.clone();
        async move { Answer::Settle(ledger.settle(&id, encoded_response("{}"), actual).await) }
    };
    let reserve = |acct: &AccountId, key: &str| {
        let request = reserve_request(acct, key, PRICE);
        async move { Answer::Reserve(ledger.reserve(request).await) }
    };
    let calls: Vec<futures_util::future::BoxFuture<'_, Answer>> = vec![
        Box::pin(settle(&held[0], None)),
        Box::pin(reserve(&limited, "n1")),
        Box::pin(settle(&held[2], None)),
        Box::pin(reserve(&limited, "n2")),
        Box::pin(settle(&held[3], Some(40))),
        Box::pin(reserve(&limited, "n3")),
        Box::pin(reserve(&free, "n4")),
        Box::pin(settle(&missing, None)),
    ];
    let answers = join_all(calls).await;
    let charged = |i: usize| match &answers[i] {
        Answer::Settle(Ok(action)) if action.state == ActionState::Charged => action.amount,
        other => panic!("call {i}: expected a charge, got {other:?}"),
    };
    assert_eq!((charged(0), charged(2), charged(4)), (PRICE, PRICE, 40));
    for i in [1, 3, 6] {
        assert!(
            matches!(&answers[i], Answer::Reserve(Ok(Reservation::Reserved(_)))),
            "call {i}: {answers:?}"
        );
    }
    // 400 credit, 200 held before, n1 and n2 take the rest: nothing left for n3. The settle
    // of s1 in the same batch moves its 100 from pending to charged, which frees nothing.
    assert!(
        matches!(
            &answers[5],
            Answer::Reserve(Ok(Reservation::InsufficientFunds {
                available: 0,
                required: PRICE,
                ..
            }))
        ),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[7], Answer::Settle(Err(LedgerError::NotFound(id))) if *id == missing),
        "{answers:?}"
    );
    assert_eq!(
        balance(ledger, &limited).await,
        (Some(400), 3 * PRICE, PRICE)
    );
    assert_eq!(balance(ledger, &free).await, (None, PRICE, PRICE + 40));
    assert_eq!(state_of(ledger, &held[1]).await, ActionState::Pending);
    assert!(ledger
        .find(&scope_of(&limited), "n3")
        .await
        .unwrap()
        .is_none());
    assert_eq!(delta(ledger.batches(), all0), (1, 8), "one transaction");
    assert_eq!(delta(ledger.reserve_batches(), reserves0), (1, 4));
    assert_eq!(delta(ledger.settle_batches(), settles0), (1, 4));
    f.finish().await;
}

/// A combined batch whose commit fails (a deferred trigger refuses the charge of one hold):
/// every caller, reserves and settles alike, gets the error; nothing of the batch is
/// applied (the other settles stay pending, no fresh key is reserved, the sums do not
/// move); the writer goes on, and the same calls without the poison go through together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_combined_batch_fails_every_caller_and_applies_nothing() {
    let Some(f) = combined(|b| b.max_batch(4).max_wait(Duration::from_secs(2))).await else {
        return;
    };
    let s = format!("\"{}\"", f.schema);
    f.pool
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION {s}.poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.idem_key = 'poison' AND NEW.state = 'charged' THEN
                 RAISE EXCEPTION 'poisoned'; END IF;
             RETURN NEW; END $$;
             CREATE CONSTRAINT TRIGGER poison AFTER UPDATE ON {s}.dreamnet_billable_actions
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.poison();"
        ))
        .await
        .unwrap();
    let ledger = &*f.ledger;
    let acct = account("poisoned");
    let held = join_all(
        ["poison", "h1", "h2", "h3"].map(|key| ledger.reserve(reserve_request(&acct, key, PRICE))),
    )
    .await;
    let held = reserved_ids(held);
    let before = ledger.batches();
    let (settled, reserved) = tokio::join!(
        join_all(
            held[..2]
                .iter()
                .map(|id| ledger.settle(id, encoded_response("{}"), None))
        ),
        join_all(["a", "b"].map(|key| ledger.reserve(reserve_request(&acct, key, PRICE)))),
    );
    assert_eq!(delta(ledger.batches(), before), (1, 4), "one batch of four");
    for outcome in &settled {
        assert!(
            matches!(outcome, Err(LedgerError::Backend { .. })),
            "{outcome:?}"
        );
    }
    for outcome in &reserved {
        assert!(
            matches!(outcome, Err(LedgerError::Backend { .. })),
            "{outcome:?}"
        );
    }
    for id in &held {
        assert_eq!(state_of(ledger, id).await, ActionState::Pending);
    }
    for key in ["a", "b"] {
        assert!(ledger.find(&scope_of(&acct), key).await.unwrap().is_none());
    }
    assert_eq!(balance(ledger, &acct).await, (None, 4 * PRICE, 0));
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.pending, stats.charged), (4, 0), "{stats:?}");
    // Without the poison, the same mix goes through in one batch.
    let (settled, reserved) = tokio::join!(
        join_all(
            held[1..3]
                .iter()
                .map(|id| ledger.settle(id, encoded_response("{}"), None))
        ),
        join_all(["a", "b"].map(|key| ledger.reserve(reserve_request(&acct, key, PRICE)))),
    );
    assert!(settled.iter().all(Result::is_ok), "{settled:?}");
    assert!(
        reserved
            .iter()
            .all(|r| matches!(r, Ok(Reservation::Reserved(_)))),
        "{reserved:?}"
    );
    assert_eq!(balance(ledger, &acct).await, (None, 4 * PRICE, 2 * PRICE));
    f.finish().await;
}

/// 24 tasks minting on four accounts (two with credit lines for 30 mints each, two
/// unlimited) through a combined ledger with two batches in flight, each mint settled,
/// voided (a failed handler) or left pending (a crash); beside them, credit added to the
/// limited accounts and recovery passes. No call fails (a deadlock would fail its batch), no
/// limited account is ever overdrawn, the charged sums are exactly the successes, and once
/// the timeouts pass recovery releases every hold left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_combined_batches_never_overdraw_and_charge_each_success_once() {
    let Some(f) = combined(|b| b.batch_writers(2)).await else {
        return;
    };
    let ledger = f.ledger.clone();
    let limited = [account("lim-a"), account("lim-b")];
    let unlimited = [account("free-a"), account("free-b")];
    for acct in &limited {
        ledger.add_credit(acct, 30 * PRICE, "USD").await.unwrap();
    }
    let accounts: Arc<Vec<AccountId>> =
        Arc::new(limited.iter().chain(&unlimited).cloned().collect());
    const TASKS: usize = 24;
    const MINTS: usize = 12;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (ledger, accounts) = (ledger.clone(), accounts.clone());
            tokio::spawn(async move {
                // Per account: successes charged, holds refused.
                let mut charged = [0i64; 4];
                let mut refused = [0u32; 4];
                for n in 0..MINTS {
                    let which = (t + n) % 4;
                    let request = reserve_request(&accounts[which], &format!("t{t}-{n}"), PRICE);
                    let action = match ledger.reserve(request).await.expect("reserve") {
                        Reservation::Reserved(action) => action,
                        Reservation::InsufficientFunds { .. } => {
                            refused[which] += 1;
                            continue;
                        }
                        other => panic!("fresh key: {other:?}"),
                    };
                    match n % 6 {
                        // A failed handler.
                        4 => {
                            ledger.void(&action.id).await.expect("void");
                        }
                        // A crash after the reservation: left to recovery.
                        5 => {}
                        _ => {
                            let settled = ledger
                                .settle(&action.id, encoded_response("{}"), None)
                                .await
                                .expect("settle");
                            assert_eq!(settled.state, ActionState::Charged);
                            charged[which] += settled.amount;
                        }
                    }
                }
                (charged, refused)
            })
        })
        .collect();
    // Beside the mints: credit lines grow and recovery sweeps (nothing is due yet: the
    // sweeps list and skip, taking their locks while the batches run).
    let side = {
        let (ledger, limited) = (ledger.clone(), limited.clone());
        tokio::spawn(async move {
            for round in 0..10 {
                ledger
                    .add_credit(&limited[round % 2], PRICE, "USD")
                    .await
                    .expect("credit");
                recover(&*ledger).await.expect("sweep");
                for acct in &limited {
                    let a = ledger.account(acct).await.unwrap().unwrap();
                    assert!(a.available().unwrap() >= 0, "overdrawn: {a:?}");
                }
            }
        })
    };
    let mut charged = [0i64; 4];
    for task in tasks {
        let (c, _refused) = task.await.expect("minting task");
        for i in 0..4 {
            charged[i] += c[i];
        }
    }
    side.await.expect("side task");
    for (i, acct) in accounts.iter().enumerate() {
        let a = ledger.account(acct).await.unwrap().unwrap();
        assert_eq!(a.charged, charged[i], "{acct}: charged = successes");
        if let Some(credit) = a.credit {
            assert!(a.pending + a.charged <= credit, "overdrawn: {a:?}");
        }
    }
    // The limited accounts had 35 mints of credit each and were asked for 72: refused some.
    let stats = ledger.stats().await.unwrap();
    let total: i64 = charged.iter().sum();
    assert_eq!(stats.charged * PRICE as u64, total as u64, "{stats:?}");
    f.clock.advance(TIMEOUT);
    let report = recover(&*ledger).await.unwrap();
    assert_eq!(report.charged, 0, "nothing was left confirmed");
    for acct in accounts.iter() {
        let a = ledger.account(acct).await.unwrap().unwrap();
        assert_eq!(a.pending, 0, "{acct}: every hold released");
    }
    let all = ledger.batches();
    let (reserves, settles) = (ledger.reserve_batches(), ledger.settle_batches());
    assert!(
        reserves.batches + settles.batches > all.batches,
        "some batches carried both kinds: {reserves:?} + {settles:?} in {all:?}"
    );
    drop(ledger);
    f.finish().await;
}
