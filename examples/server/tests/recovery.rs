//! Start-up recovery and the sweeper, on the PostgreSQL ledger: what a crash (or a shutdown
//! past its grace period) leaves behind is finished by the next server.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Backends, TestServer};
use dreamnet_billable::{
    ledger::{postgres::pool_for, ActionId, Reservation, ReserveRequest},
    Ledger, PostgresLedger,
};
use dreamnet_server::{BillingConfig, Config, FileConfig};
use dreamnet_test_support::holds_within;

fn reservation(key: &str, timeout: Duration) -> ReserveRequest {
    ReserveRequest {
        scope: "anonymous".to_owned(),
        idempotency_key: key.to_owned(),
        fingerprint: "0".repeat(64),
        action: "mint-dream".to_owned(),
        account: "crashed".parse().unwrap(),
        amount: 100,
        currency: "USD".to_owned(),
        trace_id: Some(format!("trace-{key}")),
        timeout,
    }
}

async fn ledger(backends: &Backends) -> PostgresLedger {
    PostgresLedger::builder(pool_for(&backends.database_url).unwrap())
        .schema(backends.schema.clone())
        .build()
        .await
        .expect("ledger")
}

async fn reserve(ledger: &PostgresLedger, key: &str, timeout: Duration) -> ActionId {
    match ledger.reserve(reservation(key, timeout)).await.unwrap() {
        Reservation::Reserved(action) => action.id,
        other => panic!("not reserved: {other:?}"),
    }
}

#[tokio::test]
async fn start_up_recovery_and_sweeper_finish_what_a_crash_left() {
    let Some(backends) = Backends::reserve().await else {
        return;
    };
    // A "crashed" replica left: a reservation past its timeout (handler never finished), and a
    // confirmed action (response stored, charge not posted).
    let crashed = ledger(&backends).await;
    let expired = reserve(&crashed, "expired", Duration::ZERO).await;
    let confirmed = reserve(&crashed, "confirmed", Duration::from_secs(300)).await;
    crashed
        .confirm(&confirmed, Bytes::from_static(b"stored response"), None)
        .await
        .unwrap();
    // A reservation still within its timeout belongs to a live request elsewhere: untouched.
    let live = reserve(&crashed, "live", Duration::from_secs(300)).await;

    let mut config = Config {
        file: FileConfig {
            billing: BillingConfig {
                sweep_interval_seconds: 1,
                ..BillingConfig::default()
            },
            ..FileConfig::default()
        },
        ..Config::default()
    };
    backends.configure(&mut config);
    let server = TestServer::start_with(config).await;
    let http = &server.http;

    let state = |id: &ActionId| {
        let path = format!("/api/billable/{id}");
        async move { http.admin_get(&path).await.json()["state"].clone() }
    };
    assert_eq!(
        state(&expired).await,
        "failed",
        "start-up recovery voids the expired hold"
    );
    assert_eq!(
        state(&confirmed).await,
        "charged",
        "and charges the confirmed action once"
    );
    assert_eq!(
        state(&live).await,
        "pending",
        "a live reservation is left alone"
    );
    let account = http
        .admin_get("/api/billable/accounts/crashed")
        .await
        .json();
    assert_eq!(account["charged"], 100, "{account}");
    assert_eq!(account["pending"], 100, "only the live hold: {account}");

    // While serving, the sweeper voids a reservation that expires later.
    let stuck = reserve(&crashed, "stuck", Duration::ZERO).await;
    let swept = holds_within(Duration::from_secs(5), || async {
        state(&stuck).await == "failed"
    })
    .await;
    assert!(
        swept,
        "the sweeper voids an expired reservation within a few intervals"
    );

    server.stop().await;
    backends.drop_all().await;
}
