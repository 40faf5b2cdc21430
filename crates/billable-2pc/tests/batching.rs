//! What the batching PostgreSQL ledger adds: batches mixing covered and uncovered holds, a
//! batch whose commit fails, callers gone between a batch's commit and their wake-up, and
//! the deadline on a hung server.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

use std::{
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

use common::*;
use dreamnet_billable::{
    ledger::{postgres::pool_with_deadline, LedgerError, Reservation},
    recover, Ledger, LedgerAdmin, PostgresLedger,
};
use dreamnet_common::ManualClock;
use futures_util::future::join_all;
use http::StatusCode;

mod common;

/// Five holds of 100 on a credit of 250, one batch: checked in order, the first two are
/// covered, the other three get 402 (the available 50 named), and a replay of a live key in
/// the same batch is still its existing action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixes_covered_and_uncovered_holds() {
    let Some(f) = batched_by_6().await else {
        return;
    };
    let ledger = &*f.ledger;
    let acct = account("mixed");
    ledger.add_credit(&acct, 250 + PRICE, "USD").await.unwrap();
    let live = reserved(ledger, &acct, "live", PRICE).await;
    let mut requests: Vec<_> = (0..5)
        .map(|i| reserve_request(&acct, &format!("k{i}"), 100))
        .collect();
    requests.insert(2, reserve_request(&acct, "live", PRICE));
    let outcomes = join_all(requests.into_iter().map(|r| ledger.reserve(r))).await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(&outcomes[0], Reservation::Reserved(_)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], Reservation::Reserved(_)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], Reservation::Existing(a) if a.id == live),
        "{outcomes:?}"
    );
    for refused in &outcomes[3..] {
        assert!(
            matches!(
                refused,
                Reservation::InsufficientFunds {
                    available: 50,
                    required: 100,
                    ..
                }
            ),
            "{outcomes:?}"
        );
    }
    assert_eq!(balance(ledger, &acct).await, (Some(350), 300, 0));
    assert!(ledger.find(&scope_of(&acct), "k2").await.unwrap().is_none());
    f.finish().await;
}

/// A batch whose commit fails (a deferred trigger refuses one of its rows): every caller in
/// it gets 503 with `Retry-After`, no handler runs, nothing of the batch is applied; the
/// writer goes on with the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_commit_fails_every_caller_and_applies_nothing() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let Some((f, schema)) =
        postgres_in_schema(|b| b.max_batch(4).max_wait(Duration::from_secs(2))).await
    else {
        return;
    };
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION \"{schema}\".poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.idem_key = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
             RETURN NEW; END $$;
             CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON \"{schema}\".dreamnet_billable_actions
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{schema}\".poison();"
        ))
        .await
        .unwrap();
    let acct = account("poisoned");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(&f, &runs);
    let answers = join_all(
        ["a", "b", "poison", "c"].map(|key| send(svc.clone(), request(&acct, Some(key), "{}", ""))),
    )
    .await;
    for (status, headers, _) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
    }
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no handler ran"
    );
    let ledger = &*f.ledger;
    for key in ["a", "b", "poison", "c"] {
        assert!(ledger.find(&scope_of(&acct), key).await.unwrap().is_none());
    }
    assert!(
        ledger.account(&acct).await.unwrap().is_none(),
        "not even the account"
    );
    assert_eq!(ledger.stats().await.unwrap(), Default::default());
    // The next batch (without the poison) goes through.
    let answers = join_all(
        ["a", "b", "c", "d"].map(|key| send(svc.clone(), request(&acct, Some(key), "{}", ""))),
    )
    .await;
    assert!(answers
        .iter()
        .all(|(status, _, _)| *status == StatusCode::CREATED));
    assert_eq!(balance(ledger, &acct).await, (None, 0, 4 * PRICE));
    f.finish().await;
}

/// Callers gone (crashed, timed out) after their batch was queued: the batch still commits,
/// nobody is woken, and recovery finds the reservations and voids them after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_of_callers_gone_before_the_commit_are_recovered() {
    let Some(f) = postgres_with(|b| b.max_batch(8).max_wait(Duration::from_millis(400))).await
    else {
        return;
    };
    let ledger = &*f.ledger;
    let acct = account("gone");
    let gone = join_all((0..3).map(|i| {
        tokio::time::timeout(
            Duration::from_millis(50),
            ledger.reserve(reserve_request(&acct, &format!("k{i}"), 10)),
        )
    }))
    .await;
    assert!(
        gone.iter().all(Result::is_err),
        "the callers left before the commit"
    );
    let scope = scope_of(&acct);
    for i in 0..3 {
        dreamnet_test_support::eventually("the batch commits", Duration::from_secs(10), || {
            let scope = scope.clone();
            async move { ledger.find(&scope, &format!("k{i}")).await.unwrap() }
        })
        .await;
    }
    assert_eq!(balance(ledger, &acct).await, (None, 30, 0));
    f.clock.advance(TIMEOUT);
    let report = recover(ledger).await.unwrap();
    assert_eq!((report.voided, report.charged), (3, 0));
    assert_eq!(balance(ledger, &acct).await, (None, 0, 0));
    f.finish().await;
}

/// A server that does not answer (a table lock nobody releases): every call ends with
/// [`LedgerError::Timeout`] within the deadline, and a billable request is a 503 with
/// `Retry-After`; once the server answers again, so does the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_answers_within_the_deadline() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let deadline = Duration::from_millis(400);
    let schema = dreamnet_test_support::unique_schema("bill");
    let clock = ManualClock::new(1_800_000_000_000);
    let ledger = PostgresLedger::builder(
        pool_with_deadline(&dreamnet_test_support::database_url(), deadline).unwrap(),
    )
    .schema(schema.clone())
    .clock(Arc::new(clock.clone()))
    .deadline(deadline)
    .build()
    .await
    .unwrap();
    let f = Fixture::new(Arc::new(ledger), clock);
    let acct = account("hung");
    reserved(&*f.ledger, &acct, "before", 1).await;

    let mut locker = pool.get().await.unwrap();
    let hold = locker.transaction().await.unwrap();
    hold.batch_execute(&format!(
        "LOCK TABLE \"{schema}\".dreamnet_billable_accounts, \"{schema}\".dreamnet_billable_actions
         IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    let started = Instant::now();
    let outcome = f.ledger.reserve(reserve_request(&acct, "k", 1)).await;
    // The client's deadline or the server's statement_timeout (the same length), whichever
    // fires first: unavailable either way.
    let unavailable = |e: &LedgerError| {
        matches!(e, LedgerError::Timeout(d) if *d == deadline)
            || format!("{e:?}").contains("statement timeout")
    };
    assert!(matches!(&outcome, Err(e) if unavailable(e)), "{outcome:?}");
    let stats = f.ledger.stats().await;
    assert!(matches!(&stats, Err(e) if unavailable(e)), "{stats:?}");
    let account = f.ledger.account(&acct).await;
    assert!(matches!(&account, Err(e) if unavailable(e)), "{account:?}");
    let runs = Arc::new(AtomicUsize::new(0));
    let response =
        tower::ServiceExt::oneshot(service(&f, &runs), request(&acct, Some("http"), "{}", ""))
            .await
            .expect("no inner error");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // Our own ledger failed, not the handler: marked, so a breaker around us ignores it.
    assert_eq!(
        dreamnet_common::StoreFault::of(&response).map(dreamnet_common::StoreFault::store),
        Some("billing")
    );
    assert!(
        started.elapsed() < deadline * 4 + Duration::from_secs(1),
        "four calls, each bounded by the deadline: {:?}",
        started.elapsed()
    );
    // A call whose client deadline fired a moment before its server-side statement_timeout
    // is still waiting on the lock: releasing the lock then would let it commit. Release
    // it only once the server has given up on every statement waiting for it.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE '%{schema}%' AND pid <> pg_backend_pid()"
    );
    assert!(
        dreamnet_test_support::holds_within(Duration::from_secs(5), || async {
            // Another connection, autocommit: a transaction sees one snapshot of the view.
            let watcher = pool.get().await.unwrap();
            let n: i64 = watcher.query_one(&waiting, &[]).await.unwrap().get(0);
            n == 0
        })
        .await,
        "statements still waiting on the lock 5 s after their deadline"
    );
    hold.rollback().await.unwrap();
    drop(locker);
    assert_eq!(f.ledger.stats().await.unwrap().pending, 1);
    drop(f);
    drop_schema(&pool, &schema).await;
}

/// A crash between a batch's commit and its callers being woken: the ledger (its writer
/// task, its callers, its connections) lives in a runtime of its own, torn down as soon as
/// the batch's rows are visible, so no caller's handler ever ran. A second ledger built on
/// the same schema, as the restarted server would build it, finds the reservations durable
/// and recovery voids them after the timeout: nothing charged, nothing held, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_batch_commit_and_the_wake_up_is_recovered_after_restart() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let schema = dreamnet_test_support::unique_schema("bill");
    let clock = ManualClock::new(1_800_000_000_000);
    let build = |pool: deadpool_postgres::Pool| {
        PostgresLedger::builder(pool)
            .schema(schema.clone())
            .clock(Arc::new(clock.clone()))
            .max_batch(8)
            .max_wait(Duration::from_millis(300))
            .build()
    };
    let acct = account("crashed");
    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let first = crashed
        .spawn(build(dreamnet_test_support::pg_pool().await.unwrap()))
        .await
        .unwrap()
        .unwrap();
    let first = Arc::new(first);
    for i in 0..3 {
        let (first, request) = (first.clone(), reserve_request(&acct, &format!("k{i}"), 10));
        crashed.spawn(async move { first.reserve(request).await });
    }
    let restarted = build(pool.clone()).await.unwrap();
    let scope = scope_of(&acct);
    for i in 0..3 {
        dreamnet_test_support::eventually("the batch commits", Duration::from_secs(10), || {
            let (restarted, scope) = (&restarted, scope.clone());
            async move { restarted.find(&scope, &format!("k{i}")).await.unwrap() }
        })
        .await;
    }
    // The crash: every task of the first process stops where it is.
    crashed.shutdown_background();
    drop(first);
    assert_eq!(balance(&restarted, &acct).await, (None, 30, 0));
    let stats = restarted.stats().await.unwrap();
    assert_eq!((stats.pending, stats.charged), (3, 0), "{stats:?}");
    clock.advance(TIMEOUT);
    let report = recover(&restarted).await.unwrap();
    assert_eq!((report.voided, report.charged), (3, 0));
    assert_eq!(balance(&restarted, &acct).await, (None, 0, 0));
    assert!(
        recover(&restarted).await.unwrap() == Default::default(),
        "nothing left"
    );
    drop(restarted);
    drop_schema(&pool, &schema).await;
}
