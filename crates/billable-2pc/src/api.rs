//! [`BillableApi`]: the stats, action status and account endpoints as a tower service.
//!
//! Routes, relative to the mount point (or after [`BillableApi::strip_prefix`]):
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /stats` | `{pending, confirmed, charged, failed, currency, amounts: {pending, confirmed, charged, failed}, amountsByCurrency: {CUR: {...}}}` |
//! | `GET /{actionId}` | `{actionId, idempotencyKey, action, account, amount, reserved, currency, state, traceId, createdAt, updatedAt, expiresAt}` |
//! | `GET /accounts/{id}` | `{account, credit, pending, charged, available, currency}` |
//! | `POST /accounts/{id}/credit` | body `{amount}` (a positive integer, minor units; optional `currency` for a new account): adds credit, answers the account |
//!
//! Counts are numbers of actions; amounts are integers in minor units. `amounts` is for the
//! API's currency (default `USD`, see [`BillableApi::currency`]) and never sums different
//! currencies; `amountsByCurrency` lists every currency the ledger has seen. An account's
//! `credit` and `available` are `null` when it has no credit line (unlimited). Timestamps are
//! RFC 3339 UTC with milliseconds. Unknown ids are 404, malformed bodies 400, all
//! `application/problem+json`; a refused change leaves the ledger unchanged.

// Rejections are `Problem`s, built only off the happy path; boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{
    json_api::{allow_methods, bad_request, json_ok as ok, read_json_object, route_segments},
    Problem,
};
use dreamnet_idempotency::trace_id_of;
use http::{request::Parts, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower_service::Service;

use crate::{
    ledger::{Account, Action, ActionId, ActionState, Amount, LedgerError, StateAmounts, Stats},
    time::rfc3339_millis,
    Ledger,
};

/// Largest accepted request body.
const BODY_LIMIT: usize = 16 * 1024;

pub use dreamnet_common::auth::{AllowAll, Authorize};

/// The billable HTTP API over a ledger. Cheap to clone.
///
/// ```
/// use dreamnet_billable::{BillableApi, MemoryLedger};
/// use http_body_util::{BodyExt, Full};
/// use tower::ServiceExt;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let api = BillableApi::new(MemoryLedger::new()).strip_prefix("/api/billable");
/// let request = http::Request::post("/api/billable/accounts/acct-1/credit")
///     .body(Full::new(bytes::Bytes::from_static(br#"{"amount":500}"#)))
///     .unwrap();
/// let response = api.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 200);
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(
///     body,
///     r#"{"account":"acct-1","credit":500,"pending":0,"charged":0,"available":500,"currency":"USD"}"#
/// );
/// # });
/// ```
pub struct BillableApi<L: ?Sized> {
    ledger: Arc<L>,
    prefix: Option<Arc<str>>,
    currency: Arc<str>,
    authorizer: Arc<dyn Authorize>,
}

impl<L: ?Sized> Clone for BillableApi<L> {
    fn clone(&self) -> Self {
        Self {
            ledger: self.ledger.clone(),
            prefix: self.prefix.clone(),
            currency: self.currency.clone(),
            authorizer: self.authorizer.clone(),
        }
    }
}

impl<L: ?Sized> fmt::Debug for BillableApi<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillableApi")
            .field("prefix", &self.prefix)
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

impl<L: Ledger + ?Sized> BillableApi<L> {
    /// The API over `ledger`, routing on the whole path, currency `USD`, no authorization.
    pub fn new(ledger: L) -> Self
    where
        L: Sized,
    {
        Self::with_shared_ledger(Arc::new(ledger))
    }

    /// Like [`new`](Self::new), sharing a ledger with the layer and the sweeper.
    pub fn with_shared_ledger(ledger: Arc<L>) -> Self {
        Self {
            ledger,
            prefix: None,
            currency: Arc::from("USD"),
            authorizer: Arc::new(AllowAll),
        }
    }
}

impl<L: ?Sized> BillableApi<L> {
    /// Routes on the path after `prefix` (e.g. `/api/billable`); other paths are 404.
    #[must_use]
    pub fn strip_prefix(mut self, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        self.prefix = (!prefix.is_empty()).then(|| Arc::from(prefix));
        self
    }

    /// The currency of `amounts` in stats and of accounts created by a credit (default `USD`).
    #[must_use]
    pub fn currency(mut self, currency: impl Into<Arc<str>>) -> Self {
        self.currency = currency.into();
        self
    }

    /// Checks every request with `authorizer` before anything else.
    #[must_use]
    pub fn authorize(mut self, authorizer: impl Authorize) -> Self {
        self.authorizer = Arc::new(authorizer);
        self
    }
}

impl<L: Ledger + ?Sized> BillableApi<L> {
    /// Answers one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let trace_id = trace_id_of(&parts.extensions).map(str::to_owned);
        let result = match self.authorizer.authorize(&parts) {
            Err(problem) => Err(problem),
            Ok(()) => self.route(&parts, body).await,
        };
        match result {
            Ok(response) => response,
            Err(problem) => problem.maybe_trace_id(trace_id).into_response(),
        }
    }

    async fn route<B>(&self, parts: &Parts, body: B) -> Result<Response<Full<Bytes>>, Problem>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let segments = route_segments(parts.uri.path(), self.prefix.as_deref())
            .ok_or_else(|| not_found("no such billable endpoint"))?;
        let ledger = &*self.ledger;
        match segments.as_slice() {
            ["stats"] => {
                allow(&parts.method, &Method::GET)?;
                let stats = ledger.stats().await.map_err(ledger_problem)?;
                ok(&StatsView::new(&stats, &self.currency))
            }
            ["accounts", id] => {
                allow(&parts.method, &Method::GET)?;
                match ledger.account(id).await.map_err(ledger_problem)? {
                    Some(account) => ok(&AccountView::from(&account)),
                    None => Err(not_found(&format!("no account {id}"))),
                }
            }
            ["accounts", id, "credit"] => {
                allow(&parts.method, &Method::POST)?;
                let credit: CreditBody = parse(parts, body).await?;
                let amount = match credit.amount {
                    Some(a) if a > 0 => a,
                    _ => {
                        return Err(bad_request(
                            "\"amount\" must be a positive integer (minor units)",
                        ))
                    }
                };
                let currency = credit.currency.as_deref().unwrap_or(&self.currency);
                if !valid_currency(currency) {
                    return Err(bad_request(
                        "\"currency\" must be a code of 3 to 12 uppercase letters or digits (e.g. USD)",
                    ));
                }
                let account = ledger
                    .add_credit(id, amount, currency)
                    .await
                    .map_err(ledger_problem)?;
                ok(&AccountView::from(&account))
            }
            [id] if *id != "accounts" => {
                allow(&parts.method, &Method::GET)?;
                match ledger
                    .action(&ActionId::new(*id))
                    .await
                    .map_err(ledger_problem)?
                {
                    Some(action) => ok(&ActionView::from(&action)),
                    None => Err(not_found(&format!("no billable action {id}"))),
                }
            }
            _ => Err(not_found("no such billable endpoint")),
        }
    }
}

impl<L, B> Service<Request<B>> for BillableApi<L>
where
    L: Ledger + ?Sized,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: fmt::Display,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(request).await) })
    }
}

/// Counts and amounts per state, as served by `GET /stats` (also handy for metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Number of pending actions.
    pub pending: u64,
    /// Number of confirmed actions.
    pub confirmed: u64,
    /// Number of charged actions.
    pub charged: u64,
    /// Number of failed actions.
    pub failed: u64,
    /// The currency of `amounts`.
    pub currency: String,
    /// Amounts per state in `currency` (zeros when the ledger has none in it).
    pub amounts: StateAmounts,
    /// Amounts per state for every currency.
    pub amounts_by_currency: BTreeMap<String, StateAmounts>,
}

impl StatsView {
    /// The view of `stats`, with `amounts` in `currency`.
    pub fn new(stats: &Stats, currency: &str) -> Self {
        Self {
            pending: stats.pending,
            confirmed: stats.confirmed,
            charged: stats.charged,
            failed: stats.failed,
            currency: currency.to_owned(),
            amounts: stats.amounts.get(currency).copied().unwrap_or_default(),
            amounts_by_currency: stats.amounts.clone(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionView<'a> {
    action_id: &'a str,
    idempotency_key: &'a str,
    action: &'a str,
    account: &'a str,
    amount: Amount,
    reserved: Amount,
    currency: &'a str,
    state: ActionState,
    trace_id: Option<&'a str>,
    created_at: String,
    updated_at: String,
    expires_at: String,
}

impl<'a> From<&'a Action> for ActionView<'a> {
    fn from(a: &'a Action) -> Self {
        Self {
            action_id: a.id.as_str(),
            idempotency_key: &a.idempotency_key,
            action: &a.action,
            account: &a.account,
            amount: a.amount,
            reserved: a.reserved,
            currency: &a.currency,
            state: a.state,
            trace_id: a.trace_id.as_deref(),
            created_at: rfc3339_millis(a.created_at_ms),
            updated_at: rfc3339_millis(a.updated_at_ms),
            expires_at: rfc3339_millis(a.expires_at_ms),
        }
    }
}

#[derive(Serialize)]
struct AccountView<'a> {
    account: &'a str,
    credit: Option<Amount>,
    pending: Amount,
    charged: Amount,
    available: Option<Amount>,
    currency: &'a str,
}

impl<'a> From<&'a Account> for AccountView<'a> {
    fn from(a: &'a Account) -> Self {
        Self {
            account: &a.account,
            credit: a.credit,
            pending: a.pending,
            charged: a.charged,
            available: a.available(),
            currency: &a.currency,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    amount: Option<i64>,
    currency: Option<String>,
}

async fn parse<T, B>(parts: &Parts, body: B) -> Result<T, Problem>
where
    T: for<'de> Deserialize<'de>,
    B: Body<Data = Bytes>,
{
    read_json_object(&parts.headers, body, BODY_LIMIT)
        .await?
        .ok_or_else(|| bad_request("a JSON body is required"))
}

/// A currency code: 3 to 12 uppercase ASCII letters or digits, starting with a letter
/// (`USD`, `EUR`, or a custom unit such as `CREDITS`).
fn valid_currency(code: &str) -> bool {
    (3..=12).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_uppercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn allow(method: &Method, allowed: &Method) -> Result<(), Problem> {
    allow_methods(method, std::slice::from_ref(allowed))
}

fn not_found(detail: &str) -> Problem {
    Problem::from_status(StatusCode::NOT_FOUND).detail(detail)
}

fn ledger_problem(err: LedgerError) -> Problem {
    match err {
        LedgerError::InvalidAmount(_) => bad_request(err.to_string()),
        LedgerError::CurrencyMismatch { .. } => {
            Problem::from_status(StatusCode::CONFLICT).detail(err.to_string())
        }
        LedgerError::NotFound(_) => not_found(&err.to_string()),
        err => {
            tracing::warn!(error = %err, "billable api: ledger unavailable");
            Problem::from_status(StatusCode::SERVICE_UNAVAILABLE)
                .detail("the billing ledger is unavailable")
                .retry_after_millis(1000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryLedger, Reservation, ReserveRequest};
    use http_body_util::BodyExt;
    use std::time::Duration;

    async fn call(
        api: &BillableApi<MemoryLedger>,
        method: Method,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = api.handle(request).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn api() -> (BillableApi<MemoryLedger>, Arc<MemoryLedger>) {
        let clock = dreamnet_common::ManualClock::new(1_764_251_965_123);
        let ledger = Arc::new(MemoryLedger::builder().clock(Arc::new(clock)).build());
        (
            BillableApi::with_shared_ledger(ledger.clone()).strip_prefix("/api/billable"),
            ledger,
        )
    }

    #[tokio::test]
    async fn stats_actions_and_accounts() {
        let (api, ledger) = api();
        let (status, stats) = call(&api, Method::GET, "/api/billable/stats", "").await;
        assert_eq!(status, 200);
        assert_eq!(
            stats,
            serde_json::json!({"pending":0,"confirmed":0,"charged":0,"failed":0,"currency":"USD",
                "amounts":{"pending":0,"confirmed":0,"charged":0,"failed":0},"amountsByCurrency":{}})
        );
        let Reservation::Reserved(action) = ledger
            .reserve(ReserveRequest {
                scope: "s".into(),
                idempotency_key: "k".into(),
                fingerprint: "f".into(),
                action: "mint-dream".into(),
                account: "acct".into(),
                amount: 250,
                currency: "USD".into(),
                trace_id: Some("t-1".into()),
                timeout: Duration::from_secs(300),
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        let (_, stats) = call(&api, Method::GET, "/api/billable/stats", "").await;
        assert_eq!(stats["pending"], 1);
        assert_eq!(stats["amounts"]["pending"], 250);
        assert_eq!(stats["amountsByCurrency"]["USD"]["pending"], 250);

        let path = format!("/api/billable/{}", action.id);
        let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let response = api.handle(request).await;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(view["actionId"], action.id.as_str());
        assert_eq!(view["idempotencyKey"], "k");
        assert_eq!(view["action"], "mint-dream");
        assert_eq!(view["account"], "acct");
        assert_eq!(view["amount"], 250);
        assert_eq!(view["currency"], "USD");
        assert_eq!(view["state"], "pending");
        assert_eq!(view["traceId"], "t-1");
        assert_eq!(view["createdAt"], "2025-11-27T13:59:25.123Z");
        assert_eq!(view["expiresAt"], "2025-11-27T14:04:25.123Z");

        let (status, account) = call(&api, Method::GET, "/api/billable/accounts/acct", "").await;
        assert_eq!(status, 200);
        assert_eq!(
            account,
            serde_json::json!({"account":"acct","credit":null,"pending":250,"charged":0,
                "available":null,"currency":"USD"})
        );
    }

    #[tokio::test]
    async fn credit_validates_and_leaves_state_unchanged_on_error() {
        let (api, ledger) = api();
        let path = "/api/billable/accounts/a1/credit";
        for bad in [
            "",
            "{",
            "{\"amount\":0}",
            "{\"amount\":-5}",
            "{\"amount\":1.5}",
            "{\"amount\":\"10\"}",
            "{\"amount\":10,\"extra\":1}",
            "{}",
            "[300]",
            "[300, null]",
            "{\"amount\":10,\"currency\":\"\"}",
            "{\"amount\":10,\"currency\":\"usd\"}",
            "{\"amount\":10,\"currency\":\"not a currency\"}",
        ] {
            let (status, problem) = call(&api, Method::POST, path, bad).await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(problem["status"], 400);
        }
        assert!(ledger.account("a1").await.unwrap().is_none());
        let (status, account) = call(&api, Method::POST, path, "{\"amount\":300}").await;
        assert_eq!(status, 200);
        assert_eq!(account["credit"], 300);
        assert_eq!(account["available"], 300);
        let (status, _) = call(
            &api,
            Method::POST,
            path,
            "{\"amount\":5,\"currency\":\"EUR\"}",
        )
        .await;
        assert_eq!(status, 409);
        let (_, account) = call(&api, Method::GET, "/api/billable/accounts/a1", "").await;
        assert_eq!(account["credit"], 300);
    }

    #[tokio::test]
    async fn unknown_ids_paths_and_methods() {
        let (api, _) = api();
        let (status, problem) = call(&api, Method::GET, "/api/billable/act_nope", "").await;
        assert_eq!(status, 404);
        assert_eq!(problem["status"], 404);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts/nobody", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::GET, "/api/other/stats", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::DELETE, "/api/billable/stats", "").await;
        assert_eq!(status, 405);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts/a/credit", "").await;
        assert_eq!(status, 405);
    }

    #[tokio::test]
    async fn authorizer_runs_first() {
        let (api, _) = api();
        let api = api.authorize(|parts: &Parts| {
            if parts.headers.contains_key(http::header::AUTHORIZATION) {
                Ok(())
            } else {
                Err(Problem::from_status(StatusCode::UNAUTHORIZED))
            }
        });
        let (status, _) = call(&api, Method::GET, "/api/billable/stats", "").await;
        assert_eq!(status, 401);
    }
}
