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
