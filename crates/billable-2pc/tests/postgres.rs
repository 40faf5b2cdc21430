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
