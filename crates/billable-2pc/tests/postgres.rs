//! The shared suite against PostgreSQL, one fresh schema per test.
#![cfg(feature = "postgres")]

use std::sync::Arc;

use dreamnet_billable::{ledger::postgres::pool_for, PostgresLedger};
use dreamnet_common::{backends, ManualClock};
use futures_util::FutureExt;

mod suite;

async fn postgres() -> Option<suite::Fixture> {
    let url = backends::database_url();
    let pool = match pool_for(&url) {
        Ok(pool) => pool,
        Err(err) => {
            backends::unavailable("PostgreSQL", &err);
            return None;
        }
    };
    if let Err(err) = pool.get().await {
        backends::unavailable("PostgreSQL", &err);
        return None;
    }
    let schema = format!("t_bill_{:016x}", rand::random::<u64>());
    let clock = ManualClock::new(1_800_000_000_000);
    let ledger = PostgresLedger::builder(pool.clone())
        .schema(schema.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("tables created");
    Some(suite::Fixture {
        ledger: Arc::new(ledger),
        clock,
        cleanup: Some(Box::new(move || {
            async move {
                let client = pool.get().await.expect("pool");
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .expect("drop schema");
            }
            .boxed()
        })),
    })
}

ledger_suite!(postgres, proptest_cases = 8);

/// Building a ledger on a schema that already has the tables and functions (a restart, a
/// second replica) replaces the functions in place, and both ledgers work on the same books.
#[tokio::test]
async fn building_twice_on_one_schema_keeps_working() {
    use dreamnet_billable::{Ledger, Reservation, ReserveRequest};

    let pool = match pool_for(&backends::database_url()) {
        Ok(pool) => pool,
        Err(err) => return backends::unavailable("PostgreSQL", &err),
    };
    if let Err(err) = pool.get().await {
        return backends::unavailable("PostgreSQL", &err);
    }
    let schema = format!("t_bill_{:016x}", rand::random::<u64>());
    let build = || {
        PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .build()
    };
    let (first, second) = tokio::join!(build(), build());
    let (first, second) = (first.expect("first build"), second.expect("second build"));
    let again = build().await.expect("third build");
    let request = ReserveRequest {
        scope: "account:acct-1".to_owned(),
        idempotency_key: "k".to_owned(),
        fingerprint: "f".repeat(64),
        action: "mint-dream".to_owned(),
        account: "acct-1".to_owned(),
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
        assert_eq!(first.account("acct-1").await.unwrap().unwrap().pending, 0);
    };
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    pool.get()
        .await
        .expect("pool")
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
