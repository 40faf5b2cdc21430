//! What only the PostgreSQL ledger has: its migration, run again on a schema that already
//! has the tables and functions.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

use dreamnet_billable::{
    ledger::{Reservation, ReserveRequest},
    Ledger, LedgerAdmin, PostgresLedger,
};
use dreamnet_common::AccountId;

mod common;

/// Building a ledger on a schema that already has the tables and functions (a restart, a
/// second replica) replaces the functions in place, and both ledgers work on the same books.
#[tokio::test]
async fn building_twice_on_one_schema_keeps_working() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let schema = dreamnet_test_support::unique_schema("bill");
    let build = || {
        PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .build()
    };
    let (first, second) = tokio::join!(build(), build());
    let (first, second) = (first.expect("first build"), second.expect("second build"));
    let again = build().await.expect("third build");
    let acct: AccountId = "acct-1".parse().unwrap();
    let request = ReserveRequest {
        scope: "account:acct-1".to_owned(),
        idempotency_key: "k".to_owned(),
        fingerprint: "f".repeat(64),
        action: "mint-dream".to_owned(),
        account: acct.clone(),
        amount: 5,
        currency: "USD".to_owned(),
        trace_id: None,
        timeout: std::time::Duration::from_secs(60),
    };
    let outcome = async {
        let Reservation::Reserved(action) = first.reserve(request.clone()).await.unwrap() else {
            panic!("expected a reservation");
        };
        assert!(matches!(
            second.reserve(request).await.unwrap(),
            Reservation::Existing(existing) if existing.id == action.id
        ));
        again.void(&action.id).await.unwrap();
        assert_eq!(first.account(&acct).await.unwrap().unwrap().pending, 0);
    };
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    common::drop_schema(&pool, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A bad schema name is refused before any SQL runs, as a backend error with a cause.
#[tokio::test]
async fn invalid_schema_names_are_refused() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let err = PostgresLedger::builder(pool)
        .schema("1; DROP TABLE x")
        .build()
        .await
        .unwrap_err();
    assert!(err.is_backend());
    assert!(std::error::Error::source(&err).is_some(), "{err}");
}

#[path = "fixtures/sql_v0_2.rs"]
mod sql_v0_2;

/// A schema created and filled by 0.2 (account sums in the row, no slot table, the 0.2
/// functions) migrates in place when a ledger is built on it: balances are kept, a 0.2
/// pending action settles, a 0.2 confirmed one is charged by recovery, a credit line still
/// refuses what it cannot cover.
#[tokio::test]
async fn a_schema_made_by_the_previous_version_migrates_in_place() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let schema = dreamnet_test_support::unique_schema("bill");
    let old = sql_v0_2::Sql::new(&schema);
    let now = 1_800_000_000_000_i64;
    let client = pool.get().await.unwrap();
    client.batch_execute(&old.migrate).await.unwrap();
    let old_reserve = |id: &'static str, key: &'static str, account: &'static str, amount: i64| {
        let client = &client;
        let sql = old.reserve.clone();
        async move {
            let no_trace: Option<&str> = None;
            let no_credit: Option<i64> = None;
            let row = client
                .query_one(
                    &sql,
                    &[
                        &id,
                        &format!("account:{account}"),
                        &key,
                        &"f".repeat(64),
                        &"mint-dream",
                        &account,
                        &amount,
                        &"USD",
                        &no_trace,
                        &now,
                        &(now + 60_000),
                        &no_credit,
                    ],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>("outcome"), "reserved");
        }
    };
    let old_resolve = |id: &'static str, to: &'static str| {
        let client = &client;
        let sql = old.resolve.clone();
        async move {
            let response: Option<&[u8]> = (to == "confirmed").then_some(&b"kept"[..]);
            let actual: Option<i64> = None;
            let row = client
                .query_one(&sql, &[&id, &to, &actual, &response, &now])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>("outcome"), "done");
        }
    };
    old_reserve("act_old_pending", "p", "acct-free", 10).await;
    old_reserve("act_old_confirmed", "c", "acct-free", 20).await;
    old_resolve("act_old_confirmed", "confirmed").await;
    old_reserve("act_old_charged", "ch", "acct-free", 30).await;
    old_resolve("act_old_charged", "confirmed").await;
    old_resolve("act_old_charged", "charged").await;
    client
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".dreamnet_billable_accounts
                 (account, currency, credit, created_at, updated_at)
             VALUES ('acct-limited', 'USD', 100, 0, 0)"
        ))
        .await
        .unwrap();
    old_reserve("act_old_limited", "l", "acct-limited", 60).await;
    drop(client);

    let outcome = async {
        let ledger = PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .clock(std::sync::Arc::new(dreamnet_common::ManualClock::new(
                1_800_000_000_000,
            )))
            .build()
            .await
            .expect("migrated in place");
        let free: AccountId = "acct-free".parse().unwrap();
        let limited: AccountId = "acct-limited".parse().unwrap();
        let totals = |a: dreamnet_billable::ledger::Account| (a.credit, a.pending, a.charged);
        assert_eq!(
            totals(ledger.account(&free).await.unwrap().unwrap()),
            (None, 30, 30)
        );
        assert_eq!(
            totals(ledger.account(&limited).await.unwrap().unwrap()),
            (Some(100), 60, 0)
        );
        let pending = dreamnet_billable::ledger::ActionId::new("act_old_pending");
        ledger
            .settle(&pending, bytes::Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        let report = dreamnet_billable::recover(&ledger).await.unwrap();
        assert_eq!((report.charged, report.voided), (1, 0));
        assert_eq!(
            totals(ledger.account(&free).await.unwrap().unwrap()),
            (None, 0, 60)
        );
        let mut request = ReserveRequest {
            scope: "account:acct-limited".to_owned(),
            idempotency_key: "more".to_owned(),
            fingerprint: "f".repeat(64),
            action: "mint-dream".to_owned(),
            account: limited.clone(),
            amount: 41,
            currency: "USD".to_owned(),
            trace_id: None,
            timeout: std::time::Duration::from_secs(60),
        };
        assert!(matches!(
            ledger.reserve(request.clone()).await.unwrap(),
            Reservation::InsufficientFunds { available: 40, .. }
        ));
        request.amount = 40;
        assert!(matches!(
            ledger.reserve(request).await.unwrap(),
            Reservation::Reserved(_)
        ));
        let stats = ledger.stats().await.unwrap();
        assert_eq!((stats.pending, stats.confirmed, stats.charged), (2, 0, 3));
        // Building again on the migrated schema changes nothing.
        PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .build()
            .await
            .unwrap();
        assert_eq!(
            totals(ledger.account(&limited).await.unwrap().unwrap()),
            (Some(100), 100, 0)
        );
    };
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    common::drop_schema(&pool, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
