//! The DeployKeeper log lines of a billable route: `Status: NEW` when the reservation is made,
//! `Duplicate detected` with the original trace id when the key is used again.
#![allow(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use dreamnet_billable::{
    ledger::{ActionId, ReserveRequest},
    BillableLayer, Ledger, LedgerAdmin, MemoryLedger,
};
use dreamnet_common::AccountId;
use dreamnet_idempotency::RequestBody;
use dreamnet_test_support::logs::Capture;
use dreamnet_trace_id::TraceContext;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};

#[cfg(feature = "postgres")]
mod common;

fn request(trace: &str, body: &'static str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/api/mint-dream")
        .header("idempotency-key", "order-42")
        .header("x-account-id", "acct-1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    request.extensions_mut().insert(TraceContext::new(trace));
    request
}

fn deploy_keeper_events(capture: &Capture) -> Vec<Value> {
    capture
        .events()
        .into_iter()
        .filter(|e| e["target"] == dreamnet_idempotency::LOG_TARGET)
        .collect()
}

fn acct_1() -> AccountId {
    "acct-1".parse().unwrap()
}

#[tokio::test]
async fn new_replay_and_mismatch_lines_carry_key_trace_digest_and_original() {
    lines_of_a_billable_route(Arc::new(MemoryLedger::new())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_ledger_writes_the_same_lines() {
    use dreamnet_billable::PostgresLedger;

    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let schema = dreamnet_test_support::unique_schema("bill_logs");
    let ledger = PostgresLedger::builder(pool.clone())
        .schema(schema.clone())
        .build()
        .await
        .expect("tables created");
    let outcome = std::panic::AssertUnwindSafe(lines_of_a_billable_route(Arc::new(ledger)));
    let outcome = futures_util::FutureExt::catch_unwind(outcome).await;
    common::drop_schema(&pool, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn a_key_still_running_is_logged_as_in_flight() {
    let (capture, _guard) = Capture::json(tracing::Level::INFO);
    let ledger = MemoryLedger::new();
    let request = |trace: &str| ReserveRequest {
        scope: "account:acct-1".to_owned(),
        idempotency_key: "order-7".to_owned(),
        fingerprint: "ab".repeat(32),
        action: "mint-dream".to_owned(),
        account: acct_1(),
        amount: 1,
        currency: "USD".to_owned(),
        trace_id: Some(trace.to_owned()),
        timeout: std::time::Duration::from_secs(60),
    };
    ledger.reserve(request("trace-running")).await.unwrap();
    ledger.reserve(request("trace-impatient")).await.unwrap();
    let events = deploy_keeper_events(&capture);
    assert_eq!(events.len(), 2, "{events:?}");
    let in_flight = &events[1]["fields"];
    assert_eq!(in_flight["outcome"], "in_flight");
    assert_eq!(
        in_flight["message"],
        format!(
            "[Idempotency] Duplicate detected - Key: order-7, Trace: trace-impatient, Digest: {}, Original: trace-running",
            "ab".repeat(32)
        )
    );
}

async fn lines_of_a_billable_route(ledger: Arc<dyn LedgerAdmin>) {
    let (capture, _guard) = Capture::json(tracing::Level::INFO);

    ledger.add_credit(&acct_1(), 1_000, "USD").await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(BillableLayer::with_shared_ledger(
            ledger.clone(),
            "mint-dream",
            250,
        ))
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"ok",
                ))))
            },
        ));

    let first = svc
        .clone()
        .oneshot(request("trace-first", "{\"a\":1}"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let events = deploy_keeper_events(&capture);
    assert_eq!(
        events.len(),
        1,
        "exactly one line for a new request: {events:?}"
    );
    let new = &events[0];
    assert_eq!(new["level"], "INFO");
    let fields = &new["fields"];
    assert_eq!(fields["status"], "NEW");
    assert_eq!(fields["idempotency_key"], "order-42");
    assert_eq!(fields["trace_id"], "trace-first");
    let digest = fields["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        fields["message"],
        format!("[DeployKeeper] Idempotency-Key: order-42, Trace-ID: trace-first, Digest: {digest}, Status: NEW")
    );
    // The digest is exactly the fingerprint stored with the action.
    let id = ActionId::new(fields["action_id"].as_str().unwrap());
    let stored = ledger
        .action(&id)
        .await
        .unwrap()
        .expect("the reserved action");
    assert_eq!(stored.fingerprint, digest);
    assert_eq!(stored.trace_id.as_deref(), Some("trace-first"));

    let replay = svc
        .clone()
        .oneshot(request("trace-retry", "{\"a\":1}"))
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let events = deploy_keeper_events(&capture);
    assert_eq!(events.len(), 2, "one more line for the replay: {events:?}");
    let duplicate = &events[1]["fields"];
    assert_eq!(
        duplicate["message"],
        format!("[Idempotency] Duplicate detected - Key: order-42, Trace: trace-retry, Digest: {digest}, Original: trace-first")
    );
    assert_eq!(duplicate["outcome"], "replayed");
    assert_eq!(duplicate["idempotency_key"], "order-42");
    assert_eq!(duplicate["trace_id"], "trace-retry");
    assert_eq!(duplicate["digest"], digest.as_str());
    assert_eq!(duplicate["original_trace_id"], "trace-first");

    // Another payload under the same key: 422, logged as a duplicate with the retry's digest.
    let changed = svc
        .clone()
        .oneshot(request("trace-changed", "{\"a\":2}"))
        .await
        .unwrap();
    assert_eq!(changed.status(), 422);
    let events = deploy_keeper_events(&capture);
    assert_eq!(events.len(), 3, "{events:?}");
    let mismatch = &events[2]["fields"];
    assert_eq!(mismatch["outcome"], "fingerprint_mismatch");
    assert_eq!(mismatch["original_trace_id"], "trace-first");
    assert_eq!(mismatch["original_digest"], digest.as_str());
    assert_ne!(mismatch["digest"], digest.as_str());

    // Only one reservation was ever made, and it was charged once.
    let account = ledger.account(&acct_1()).await.unwrap().unwrap();
    assert_eq!(account.charged, 250);
}
