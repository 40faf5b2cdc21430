//! The behavioural suite every ledger backend runs (memory always, PostgreSQL when
//! reachable): the six scenarios plus the ledger's own transition rules.

#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use dreamnet_billable::{
    recover, ActionId, ActionState, ActualCost, BillableLayer, Ledger, LedgerError, Reservation,
    ReserveRequest, ReservedAction, Sweeper,
};
use dreamnet_common::{ManualClock, ResponseBody};
use dreamnet_idempotency::StoredResponse;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

pub const PRICE: i64 = 100;
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// A ledger under test, its fake clock, and how to clean up after it.
pub struct Fixture {
    pub ledger: Arc<dyn Ledger>,
    pub clock: ManualClock,
    pub cleanup: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
}

impl Fixture {
    pub async fn finish(mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup().await;
        }
    }
}

impl Drop for Fixture {
    /// A test that panicked never reached `finish`: clean up on a thread of its own, so a
    /// failing run leaves no schemas behind either.
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(cleanup());
            })
            .join();
        }
    }
}

/// Generates one `#[tokio::test]` per scenario for a backend. `$make` is an async fn
/// returning `Option<Fixture>` (`None`: backend unreachable, skipped loudly).
#[macro_export]
macro_rules! ledger_suite {
    ($make:path, proptest_cases = $cases:expr) => {
        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases($cases))]
            #[test]
            fn random_interleavings_keep_the_books(
                ops in proptest::collection::vec(suite::op_strategy(), 1..40)
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let Some(fixture) = $make().await else { return };
                    suite::run_interleaving(&fixture, ops).await;
                    fixture.finish().await;
                });
            }
        }
        $crate::ledger_suite!(@tests $make;
            transitions_are_exclusive,
            credit_lines_and_unlimited_accounts,
            concurrent_requests_never_overspend,
            retry_charges_once_and_replays_identical_bytes,
            key_rules_missing_conflict_mismatch,
            failures_void_and_restore_the_balance,
            crash_after_reserve_is_voided_after_the_timeout,
            crash_after_confirm_is_charged_exactly_once,
            partial_post_and_refused_overcharge,
            confirm_after_timeout_is_refused,
            sweeper_task_resolves_in_the_background,
            rejections_carry_trace_ids_and_refuse_before_reserving,
            recovery_pages_through_more_than_a_batch,
            dropped_request_voids_at_once_when_asked,
            one_key_racing_on_two_accounts_reserves_once,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(fixture) = $make().await else { return };
            suite::$name(&fixture).await;
            fixture.finish().await;
        }
    )*};
}

type Svc =
    tower::util::BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, String>;

/// How the test handler behaves, from the `x-behave` request header.
async fn handler(
    runs: Arc<AtomicUsize>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, String> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let action = request
        .extensions()
        .get::<ReservedAction>()
        .expect("the layer names the action")
        .clone();
    let behave = request
        .headers()
        .get("x-behave")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = format!("{{\"run\":{run},\"actionId\":\"{}\"}}", action.id);
    let mut response = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .header("set-cookie", "session=secret")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    match behave.as_str() {
        "500" => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        "error" => return Err("handler failed".to_owned()),
        "panic" => panic!("handler panicked on purpose"),
        "hang" => std::future::pending::<()>().await,
        cost if cost.starts_with("cost=") => {
            let cost = cost["cost=".len()..].parse().unwrap();
            response.extensions_mut().insert(ActualCost(cost));
        }
        _ => {}
    }
    Ok(response)
}

pub fn service(fixture: &Fixture, runs: &Arc<AtomicUsize>) -> Svc {
    service_with(fixture, runs, |layer| layer)
}

pub fn service_with(
    fixture: &Fixture,
    runs: &Arc<AtomicUsize>,
    configure: impl FnOnce(BillableLayer<dyn Ledger>) -> BillableLayer<dyn Ledger>,
) -> Svc {
    let runs = runs.clone();
    let layer = configure(
        BillableLayer::with_shared_ledger(fixture.ledger.clone(), "mint-dream", PRICE)
            .reservation_timeout(TIMEOUT),
    );
    tower::util::BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req| handler(runs.clone(), req)),
    )
}

pub fn request(account: &str, key: Option<&str>, body: &str, behave: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/api/mint-dream")
        .header("x-account-id", account)
        .header("x-behave", behave);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub async fn send(svc: Svc, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = svc.oneshot(req).await.expect("no inner error");
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// A unique account name per test, so backends shared by parallel tests never collide.
pub fn account(name: &str) -> String {
    format!("{name}-{:x}", rand::random::<u64>())
}

/// The scope `DefaultScope` derives from `X-Account-Id`.
pub fn scope_of(account: &str) -> String {
    format!("account:{account}")
}

fn reserve_request(account: &str, key: &str, amount: i64) -> ReserveRequest {
    ReserveRequest {
        scope: scope_of(account),
        idempotency_key: key.to_owned(),
        fingerprint: "f".repeat(64),
        action: "mint-dream".to_owned(),
        account: account.to_owned(),
        amount,
        currency: "USD".to_owned(),
        trace_id: Some("trace-1".to_owned()),
        timeout: TIMEOUT,
    }
}

async fn reserved(ledger: &dyn Ledger, account: &str, key: &str, amount: i64) -> ActionId {
    match ledger
        .reserve(reserve_request(account, key, amount))
        .await
        .unwrap()
    {
        Reservation::Reserved(action) => action.id,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn state_of(ledger: &dyn Ledger, id: &ActionId) -> ActionState {
    ledger
        .action(id)
        .await
        .unwrap()
        .expect("action exists")
        .state
}

async fn balance(ledger: &dyn Ledger, account: &str) -> (Option<i64>, i64, i64) {
    let a = ledger
        .account(account)
        .await
        .unwrap()
        .expect("account exists");
    (a.credit, a.pending, a.charged)
}

fn encoded_response(body: &'static str) -> Bytes {
    let response = StoredResponse {
        status: 201,
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        body: Bytes::from_static(body.as_bytes()),
    };
    Bytes::from(response.encode())
}

// ---------------------------------------------------------------------------------------

pub async fn transitions_are_exclusive(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("trans");
    let id = reserved(ledger, &acct, "k1", 70).await;
    assert_eq!(state_of(ledger, &id).await, ActionState::Pending);
    assert!(matches!(
        ledger.charge(&id).await,
        Err(LedgerError::NotConfirmed(_))
    ));
    let confirmed = ledger
        .confirm(&id, encoded_response("{}"), None)
        .await
        .unwrap();
    assert_eq!(
        (confirmed.state, confirmed.amount),
        (ActionState::Confirmed, 70)
    );
    assert_eq!(
        confirmed.response.as_deref(),
        Some(&encoded_response("{}")[..])
    );
    assert!(matches!(
        ledger.confirm(&id, encoded_response("{}"), None).await,
        Err(LedgerError::AlreadyConfirmed(_))
    ));
    assert!(matches!(
        ledger.void(&id).await,
        Err(LedgerError::AlreadyConfirmed(_))
    ));
    assert_eq!(balance(ledger, &acct).await, (None, 70, 0));
    let charged = ledger.charge(&id).await.unwrap();
    assert_eq!(charged.state, ActionState::Charged);
    assert!(matches!(
        ledger.charge(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));
    assert!(matches!(
        ledger.void(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));
    assert_eq!(balance(ledger, &acct).await, (None, 0, 70));

    let voided = reserved(ledger, &acct, "k2", 30).await;
    ledger.void(&voided).await.unwrap();
    assert!(matches!(
        ledger.void(&voided).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    assert!(matches!(
        ledger.charge(&voided).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    assert!(matches!(
        ledger.confirm(&voided, encoded_response("{}"), None).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    assert_eq!(balance(ledger, &acct).await, (None, 0, 70));

    // The same key again returns the live action; a voided key gets a new attempt.
    match ledger
        .reserve(reserve_request(&acct, "k1", 70))
        .await
        .unwrap()
    {
        Reservation::Existing(a) => assert_eq!(a.id, id),
        other => panic!("{other:?}"),
    }
    let retry = reserved(ledger, &acct, "k2", 30).await;
    assert_ne!(retry, voided);
    assert_eq!(
        ledger
            .find(&scope_of(&acct), "k2")
            .await
            .unwrap()
            .unwrap()
            .id,
        retry
    );
    assert_eq!(state_of(ledger, &voided).await, ActionState::Failed);

    let missing = ActionId::new("act_missing");
    assert!(matches!(
        ledger.charge(&missing).await,
        Err(LedgerError::NotFound(_))
    ));
    assert!(ledger.action(&missing).await.unwrap().is_none());
    assert!(matches!(
        ledger.reserve(reserve_request(&acct, "neg", -1)).await,
        Err(LedgerError::InvalidAmount(-1))
    ));
    let mut eur = reserve_request(&acct, "eur", 1);
    eur.currency = "EUR".to_owned();
    assert!(matches!(
        ledger.reserve(eur).await,
        Err(LedgerError::CurrencyMismatch { .. })
    ));
}

pub async fn credit_lines_and_unlimited_accounts(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("credit");
    assert!(ledger.account(&acct).await.unwrap().is_none());
    assert!(matches!(
        ledger.add_credit(&acct, 0, "USD").await,
        Err(LedgerError::InvalidAmount(0))
    ));
    assert!(
        ledger.account(&acct).await.unwrap().is_none(),
        "refused credit changes nothing"
    );
    let a = ledger.add_credit(&acct, 250, "USD").await.unwrap();
    assert_eq!((a.credit, a.available()), (Some(250), Some(250)));
    let a = ledger.add_credit(&acct, 50, "USD").await.unwrap();
    assert_eq!(a.available(), Some(300));
    assert!(matches!(
        ledger.add_credit(&acct, 5, "EUR").await,
        Err(LedgerError::CurrencyMismatch { .. })
    ));
    let id = reserved(ledger, &acct, "k", 200).await;
    match ledger
        .reserve(reserve_request(&acct, "k2", 101))
        .await
        .unwrap()
    {
        Reservation::InsufficientFunds {
            available,
            required,
            ..
        } => {
            assert_eq!((available, required), (100, 101));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ledger.set_credit(&acct, Some(199), "USD").await,
        Err(LedgerError::InvalidAmount(199))
    ));
    ledger.void(&id).await.unwrap();
    let a = ledger.set_credit(&acct, None, "USD").await.unwrap();
    assert_eq!(a.available(), None);
    reserved(ledger, &acct, "big", 1_000_000_000).await;

    // Unlimited by default: an account first seen by a reservation has no credit line.
    let free = account("unlimited");
    reserved(ledger, &free, "k", i64::MAX / 4).await;
    assert_eq!(balance(ledger, &free).await, (None, i64::MAX / 4, 0));
}

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

async fn wait_for_state(
    ledger: &dyn Ledger,
    acct: &str,
    key: &str,
    state: ActionState,
) -> ActionId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = ledger.find(&scope_of(acct), key).await.unwrap() {
            if a.state == state {
                return a.id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {state}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issue test 4: crash after reserve.
pub async fn crash_after_reserve_is_voided_after_the_timeout(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("crash1");
    ledger.add_credit(&acct, PRICE, "USD").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);

    // The future dropped mid-handler (a client disconnect, a cancelled task).
    let hanging = tokio::spawn({
        let svc = svc.clone();
        let req = request(&acct, Some("k"), "{}", "hang");
        async move { send(svc.clone(), req).await }
    });
    let id = wait_for_state(ledger, &acct, "k", ActionState::Pending).await;
    hanging.abort();
    let _ = hanging.await;
    assert_eq!(
        balance(ledger, &acct).await,
        (Some(PRICE), PRICE, 0),
        "held until the timeout"
    );
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a retry before the timeout is in flight"
    );
    assert_eq!(
        recover(ledger).await.unwrap().voided,
        0,
        "not before the timeout"
    );

    f.clock.advance(TIMEOUT);
    let report = recover(ledger).await.unwrap();
    assert_eq!((report.voided, report.charged), (1, 0));
    assert_eq!(state_of(ledger, &id).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, 0));
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED, "the retry runs again");
    assert_eq!(balance(ledger, &acct).await, (Some(PRICE), 0, PRICE));

    // The process gone: a ledger left with a pending reservation. A retry after the timeout
    // runs even before any sweep (the reservation voids the expired attempt itself).
    let acct2 = account("crash1b");
    let stale = reserved(ledger, &acct2, "k", PRICE).await;
    f.clock.advance(TIMEOUT + Duration::from_millis(1));
    let (status, _, _) = send(svc.clone(), request(&acct2, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(state_of(ledger, &stale).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct2).await, (None, 0, PRICE));
    assert_eq!(recover(ledger).await.unwrap(), Default::default());
}

/// Issue test 5: crash after the response is stored, before the charge.
pub async fn crash_after_confirm_is_charged_exactly_once(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("crash2");
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(f, &runs);
    // What the layer leaves behind when the process dies between confirm and charge: the
    // real fingerprint and response of a first run, recorded by reserve + confirm.
    let (s1, _, body) = send(svc.clone(), request(&acct, Some("first"), "{}", "")).await;
    assert_eq!(s1, StatusCode::CREATED);
    let template = ledger
        .find(&scope_of(&acct), "first")
        .await
        .unwrap()
        .unwrap();
    let mut req = reserve_request(&acct, "k", PRICE);
    req.fingerprint = template.fingerprint.clone();
    let Reservation::Reserved(action) = ledger.reserve(req).await.unwrap() else {
        panic!("expected a reservation")
    };
    let stored = template.response.clone().unwrap();
    ledger.confirm(&action.id, stored, None).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, PRICE, PRICE));

    // Two recoveries racing (two replicas): exactly one charge.
    let (a, b) = tokio::join!(recover(ledger), recover(ledger));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.charged + b.charged, 1);
    assert_eq!(recover(ledger).await.unwrap().charged, 0);
    assert_eq!(state_of(ledger, &action.id).await, ActionState::Charged);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 2 * PRICE));

    // A retry replays the kept response and charges nothing.
    let (status, headers, replay) = send(svc.clone(), request(&acct, Some("k"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 2 * PRICE));

    // A retry that arrives before any sweep posts the charge itself, once.
    let mut req = reserve_request(&acct, "k2", PRICE);
    req.fingerprint = template.fingerprint.clone();
    let Reservation::Reserved(action) = ledger.reserve(req).await.unwrap() else {
        panic!("expected a reservation")
    };
    ledger
        .confirm(&action.id, template.response.clone().unwrap(), None)
        .await
        .unwrap();
    let (status, _, _) = send(svc.clone(), request(&acct, Some("k2"), "{}", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(state_of(ledger, &action.id).await, ActionState::Charged);
    assert_eq!(recover(ledger).await.unwrap().charged, 0);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 3 * PRICE));
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

pub async fn confirm_after_timeout_is_refused(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("late");
    let id = reserved(ledger, &acct, "k", 10).await;
    f.clock.advance(TIMEOUT);
    assert!(matches!(
        ledger.confirm(&id, encoded_response("{}"), None).await,
        Err(LedgerError::Expired(_))
    ));
    assert_eq!(state_of(ledger, &id).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 0));
}

pub async fn sweeper_task_resolves_in_the_background(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("sweep");
    let pending = reserved(ledger, &acct, "p", 10).await;
    let confirmed = reserved(ledger, &acct, "c", 20).await;
    ledger
        .confirm(&confirmed, encoded_response("{}"), None)
        .await
        .unwrap();
    f.clock.advance(TIMEOUT);
    let handle = Sweeper::new(f.ledger.clone())
        .interval(Duration::from_millis(5))
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(ledger, &pending).await != ActionState::Failed
        || state_of(ledger, &confirmed).await != ActionState::Charged
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper did not resolve both"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.abort();
    assert_eq!(balance(ledger, &acct).await, (None, 0, 20));
}

// ---------------------------------------------------------------------------------------
// Issue test 6: random interleavings of requests, retries, crashes and sweeps.

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
    acct: String,
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
        dreamnet_idempotency::Fingerprint::compute(&parts, &[], b"{}")
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
    ledger: &dyn Ledger,
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

pub async fn recovery_pages_through_more_than_a_batch(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("many");
    let n = dreamnet_billable::RECOVERY_BATCH + 20;
    for i in 0..n {
        let id = reserved(ledger, &acct, &format!("k{i}"), 1).await;
        if i % 2 == 0 {
            ledger
                .confirm(&id, encoded_response("{}"), None)
                .await
                .unwrap();
        }
    }
    // One pass sees more than a batch of due actions (half confirmed, half expired).
    f.clock.advance(TIMEOUT);
    let report = recover(ledger).await.unwrap();
    assert_eq!(
        (report.charged, report.voided),
        (n as u64 / 2, n as u64 / 2)
    );
    assert_eq!(recover(ledger).await.unwrap(), Default::default());
    let (_, pending, charged) = balance(ledger, &acct).await;
    assert_eq!((pending, charged), (0, i64::try_from(n / 2).unwrap()));
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

/// The same key reserved at once for two accounts (locks on different account rows, so only
/// the unique (scope, key) index decides): exactly one reservation, the other call gets
/// that action, and only its account holds the amount.
pub async fn one_key_racing_on_two_accounts_reserves_once(f: &Fixture) {
    let ledger = &f.ledger;
    let (a, b) = (account("race-a"), account("race-b"));
    let scope = scope_of(&account("race-client"));
    let request = |acct: &str, key: &str| ReserveRequest {
        scope: scope.clone(),
        ..reserve_request(acct, key, PRICE)
    };
    for round in 0..20 {
        let key = format!("race-{round}");
        let (left, right) = tokio::join!(
            ledger.reserve(request(&a, &key)),
            ledger.reserve(request(&b, &key)),
        );
        let (won, lost) = match (left.unwrap(), right.unwrap()) {
            (Reservation::Reserved(won), Reservation::Existing(lost))
            | (Reservation::Existing(lost), Reservation::Reserved(won)) => (won, lost),
            other => panic!("round {round}: expected one reservation, got {other:?}"),
        };
        assert_eq!(
            won.id, lost.id,
            "round {round}: the loser sees the winner's action"
        );
        ledger.void(&won.id).await.unwrap();
    }
    for acct in [&a, &b] {
        if let Some(account) = ledger.account(acct).await.unwrap() {
            assert_eq!(account.pending, 0, "{acct}: every hold released");
        }
    }
}
