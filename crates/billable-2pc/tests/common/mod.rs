//! What the layer-level suites share: the ledgers under test (memory always, PostgreSQL
//! when reachable, one fresh schema each), a test handler whose behaviour the request
//! picks, and request helpers.

#![allow(dead_code, unused_imports, unreachable_pub, clippy::missing_panics_doc)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

#[cfg(feature = "postgres")]
pub mod reply_cutter;

use bytes::Bytes;
pub use dreamnet_billable::conformance::{account, reserve_request, reserved, scope_of, TIMEOUT};
use dreamnet_billable::{
    ledger::{ActionId, ActionState},
    ActualCost, BillableLayer, LedgerAdmin, MemoryLedger, ReservedAction,
};
use dreamnet_common::{AccountId, ManualClock, ResponseBody};
use dreamnet_idempotency::store::StoredResponse;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

pub const PRICE: i64 = 100;

/// A ledger under test (behind both traits, as a server holds it) and its fake clock.
pub type Fixture = dreamnet_billable::conformance::Fixture<dyn LedgerAdmin>;

/// A fresh memory ledger on a fake clock.
pub async fn memory() -> Option<Fixture> {
    let clock = ManualClock::new(1_800_000_000_000);
    let ledger = MemoryLedger::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    Some(Fixture::new(Arc::new(ledger), clock))
}

/// A PostgreSQL ledger in a schema of its own (dropped at the end), or `None` after a loud
/// skip.
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<Fixture> {
    postgres_with(|builder| builder).await
}

#[cfg(feature = "postgres")]
type Configure = fn(
    dreamnet_billable::ledger::postgres::PostgresLedgerBuilder,
) -> dreamnet_billable::ledger::postgres::PostgresLedgerBuilder;

/// [`postgres`] with the builder configured by `configure` (batching, deadline).
#[cfg(feature = "postgres")]
pub async fn postgres_with(configure: Configure) -> Option<Fixture> {
    Some(postgres_in_schema(configure).await?.0)
}

/// A PostgreSQL ledger whose batches are cut only when 6 calls are queued, or after 2 s:
/// six concurrent calls are one batch.
#[cfg(feature = "postgres")]
pub async fn batched_by_6() -> Option<Fixture> {
    postgres_with(|b| b.max_batch(6).max_wait(Duration::from_secs(2))).await
}

/// [`postgres_with`], and the schema of the ledger.
#[cfg(feature = "postgres")]
pub async fn postgres_in_schema(configure: Configure) -> Option<(Fixture, String)> {
    use futures_util::FutureExt;

    let OwnSchema {
        ledger,
        clock,
        schema,
        pool,
    } = OwnSchema::new(configure).await?;
    let named = schema.clone();
    let fixture = Fixture::new(ledger, clock)
        .on_cleanup(move || async move { drop_schema(&pool, &schema).await }.boxed());
    Some((fixture, named))
}

/// A PostgreSQL ledger in a schema of its own, kept as its own type (for what only it
/// offers, such as its batch counters), with its fake clock, its schema and the pool that
/// drops it.
#[cfg(feature = "postgres")]
pub struct OwnSchema {
    pub ledger: Arc<dreamnet_billable::PostgresLedger>,
    pub clock: ManualClock,
    pub schema: String,
    pub pool: deadpool_postgres::Pool,
}

#[cfg(feature = "postgres")]
impl OwnSchema {
    /// The ledger with its builder configured by `configure`, or `None` after a loud skip.
    pub async fn new(
        configure: impl FnOnce(
            dreamnet_billable::ledger::postgres::PostgresLedgerBuilder,
        ) -> dreamnet_billable::ledger::postgres::PostgresLedgerBuilder,
    ) -> Option<Self> {
        let pool = dreamnet_test_support::pg_pool().await?;
        let schema = dreamnet_test_support::unique_schema("bill");
        let clock = ManualClock::new(1_800_000_000_000);
        let ledger = configure(
            dreamnet_billable::PostgresLedger::builder(pool.clone())
                .schema(schema.clone())
                .clock(Arc::new(clock.clone())),
        )
        .build()
        .await
        .expect("tables created");
        Some(Self {
            ledger: Arc::new(ledger),
            clock,
            schema,
            pool,
        })
    }

    /// Drops the ledger, then its schema.
    pub async fn finish(self) {
        drop(self.ledger);
        drop_schema(&self.pool, &self.schema).await;
    }
}

#[cfg(feature = "postgres")]
pub async fn drop_schema(pool: &deadpool_postgres::Pool, schema: &str) {
    pool.get()
        .await
        .expect("pool")
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

/// One `#[tokio::test]` per scenario (an async fn taking `&Fixture`) per ledger backend.
#[macro_export]
macro_rules! on_every_ledger {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = $crate::common::memory().await else { return };
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = $crate::common::postgres().await else { return };
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
    };
}

pub type Svc =
    tower::util::BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, String>;

/// How the test handler behaves, from the `x-behave` request header.
pub async fn handler<B>(
    runs: Arc<AtomicUsize>,
    request: Request<B>,
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
        ms if ms.starts_with("sleep=") => {
            let ms = ms["sleep=".len()..].parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
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
    configure: impl FnOnce(BillableLayer<dyn LedgerAdmin>) -> BillableLayer<dyn LedgerAdmin>,
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

pub fn request(
    account: &AccountId,
    key: Option<&str>,
    body: &str,
    behave: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/api/mint-dream")
        .header("x-account-id", account.as_str())
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

pub async fn state_of(ledger: &dyn LedgerAdmin, id: &ActionId) -> ActionState {
    ledger
        .action(id)
        .await
        .unwrap()
        .expect("action exists")
        .state
}

pub async fn balance(ledger: &dyn LedgerAdmin, account: &AccountId) -> (Option<i64>, i64, i64) {
    let a = ledger
        .account(account)
        .await
        .unwrap()
        .expect("account exists");
    (a.credit, a.pending, a.charged)
}

pub fn encoded_response(body: &'static str) -> Bytes {
    let response = StoredResponse {
        status: 201,
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        body: Bytes::from_static(body.as_bytes()),
    };
    Bytes::from(response.encode())
}

// ---------------------------------------------------------------------------------------

pub async fn wait_for_state(
    ledger: &dyn LedgerAdmin,
    acct: &AccountId,
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
