//! The billable admin API (feature `axum`): stats, action status and accounts as an axum
//! [`Router`], built once and mounted wherever the server wants it.
//!
//! Routes, relative to the mount point:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /stats` | [`StatsView`]: `{pending, confirmed, charged, failed, currency, amounts: {pending, confirmed, charged, failed}, amountsByCurrency: {CUR: {...}}}` |
//! | `GET /{actionId}` | [`ActionView`]: `{actionId, idempotencyKey, action, account, amount, reserved, currency, state, traceId, createdAt, updatedAt, expiresAt}` |
//! | `GET /accounts/{id}` | [`AccountView`]: `{account, credit, pending, charged, available, currency}` |
//! | `POST /accounts/{id}/credit` | body `{amount}` (a positive integer, minor units; optional `currency` for a new account): adds credit, answers the account |
//!
//! Counts are numbers of actions; amounts are integers in minor units. `amounts` is for the
//! API's currency (default `USD`, see [`BillableApi::currency`]) and never sums different
//! currencies; `amountsByCurrency` lists every currency the ledger has seen. An account's
//! `credit` and `available` are `null` when it has no credit line (unlimited). Timestamps are
//! RFC 3339 UTC with milliseconds. An `{id}` that is not an
//! [`AccountId`] is 400 (so a credit never opens an account no request could charge),
//! unknown ids are 404, malformed bodies 400, other methods 405 with `Allow`, all
//! `application/problem+json` with the request's trace id; a refused change leaves the
//! ledger unchanged.
//!
//! The router does no authentication: mount it behind the server's admin auth, e.g.
//! `dreamnet_admin::AdminAuthLayer`.
//!
//! ```
//! use dreamnet_billable::{api::BillableApi, MemoryLedger};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let api = BillableApi::new(MemoryLedger::new()).into_router();
//! let app = axum::Router::new().nest("/api/billable", api);
//! let request = http::Request::post("/api/billable/accounts/acct-1/credit")
//!     .body(axum::body::Body::from(r#"{"amount":500}"#))
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"account":"acct-1","credit":500,"pending":0,"charged":0,"available":500,"currency":"USD"}"#
//! );
//! # });
//! ```

use std::{fmt, sync::Arc};

use axum::{
    extract::{Request, State},
    response::Response,
    routing::{any, get, post},
    Router,
};
use dreamnet_admin::api::{json, with_problem_fallbacks, ApiError, ApiPath, JsonObject};
use dreamnet_common::{AccountId, InvalidAccountId, Problem};
use http::StatusCode;
use serde::Deserialize;

use crate::{
    ledger::{ActionId, LedgerAdmin, LedgerError},
    views::{AccountView, ActionView, StatsView},
};
#[cfg(feature = "openapi")]
use dreamnet_admin::api::openapi::{BadRequest, NotFound, TooLarge, Unavailable};

/// The billable admin API's OpenAPI document (feature `openapi`), derived from the handlers
/// and the view types; paths are relative to where [`BillableApi::into_router`] is mounted.
///
/// ```
/// use utoipa::OpenApi;
///
/// let doc = dreamnet_billable::api::ApiDoc::openapi();
/// assert!(doc.paths.paths.contains_key("/accounts/{id}/credit"));
/// ```
#[cfg(feature = "openapi")]
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "DreamNet billable API", description = "Ledger figures, actions and accounts."),
    paths(stats, action, account, credit),
    components(schemas(Problem)),
    tags((name = "billable", description = "The billing ledger: stats, actions, accounts and credit"))
)]
pub struct ApiDoc;

/// Builds the billable admin [`Router`] over a ledger.
pub struct BillableApi<L: ?Sized> {
    ledger: Arc<L>,
    currency: Arc<str>,
}

impl<L: ?Sized> Clone for BillableApi<L> {
    fn clone(&self) -> Self {
        Self {
            ledger: self.ledger.clone(),
            currency: self.currency.clone(),
        }
    }
}

impl<L: ?Sized> fmt::Debug for BillableApi<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillableApi")
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

impl<L: LedgerAdmin + ?Sized> BillableApi<L> {
    /// The API over `ledger`, currency `USD`.
    pub fn new(ledger: L) -> Self
    where
        L: Sized,
    {
        Self::with_shared_ledger(Arc::new(ledger))
    }

    /// Like [`new`](Self::new), sharing a ledger with the layer and the sweeper
    /// (`Arc<dyn LedgerAdmin>` works too).
    pub fn with_shared_ledger(ledger: Arc<L>) -> Self {
        Self {
            ledger,
            currency: Arc::from("USD"),
        }
    }

    /// The currency of `amounts` in stats and of accounts created by a credit (default `USD`).
    #[must_use]
    pub fn currency(mut self, currency: impl Into<Arc<str>>) -> Self {
        self.currency = currency.into();
        self
    }

    /// The routes, relative to where they are mounted (`Router::nest`).
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let routes = Router::new()
            .route("/stats", get(stats::<L>))
            // Not an action id: the collection has no listing.
            .route("/accounts", any(no_listing))
            .route("/accounts/{id}", get(account::<L>))
            .route("/accounts/{id}/credit", post(credit::<L>))
            .route("/{action_id}", get(action::<L>))
            .with_state(self);
        // `/accounts//credit` matches no route (an empty parameter never does): still a bad
        // account id, not an unknown endpoint.
        with_problem_fallbacks(routes).fallback(unknown_path)
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/stats", tag = "billable",
    summary = "Counts and amounts of the ledger's actions per state",
    responses((status = 200, description = "The ledger's figures", body = StatsView), Unavailable)
))]
async fn stats<L: LedgerAdmin + ?Sized>(
    State(api): State<BillableApi<L>>,
) -> Result<Response, ApiError> {
    let stats = api.ledger.stats().await.map_err(ledger_problem)?;
    Ok(json(&StatsView::new(&stats, &api.currency)))
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/{action_id}", tag = "billable",
    summary = "One billable action",
    params(("action_id" = String, Path, description = "The action id (`actionId` of a mint)")),
    responses((status = 200, description = "The action", body = ActionView), NotFound, Unavailable)
))]
async fn action<L: LedgerAdmin + ?Sized>(
    State(api): State<BillableApi<L>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    match api
        .ledger
        .action(&ActionId::new(id.as_str()))
        .await
        .map_err(ledger_problem)?
    {
        Some(action) => Ok(json(&ActionView::from(&action))),
        None => Err(ApiError::not_found(format!("no billable action {id}"))),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/accounts/{id}", tag = "billable",
    summary = "An account's balance",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._@:-]{1,128}$", description = "The account id")),
    responses((status = 200, description = "The account", body = AccountView), BadRequest, NotFound, Unavailable)
))]
async fn account<L: LedgerAdmin + ?Sized>(
    State(api): State<BillableApi<L>>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Response, ApiError> {
    match api.ledger.account(&id).await.map_err(ledger_problem)? {
        Some(account) => Ok(json(&AccountView::from(&account))),
        None => Err(ApiError::not_found(format!("no account {id}"))),
    }
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
struct CreditBody {
    /// The credit to add, in minor units (a positive integer).
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    amount: Option<i64>,
    /// The currency of a new account (default: the API's); must match an existing one.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z][A-Z0-9]{2,11}$"))]
    currency: Option<String>,
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/accounts/{id}/credit", tag = "billable",
    summary = "Add credit to an account (opens it when new)",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._@:-]{1,128}$", description = "The account id")),
    request_body = CreditBody,
    responses(
        (status = 200, description = "The account after the credit", body = AccountView),
        BadRequest,
        (status = 409, description = "The account keeps another currency; nothing was changed", body = Problem, content_type = "application/problem+json"),
        TooLarge,
        Unavailable,
    )
))]
async fn credit<L: LedgerAdmin + ?Sized>(
    State(api): State<BillableApi<L>>,
    ApiPath(id): ApiPath<AccountId>,
    JsonObject(body): JsonObject<CreditBody>,
) -> Result<Response, ApiError> {
    let amount = match body.amount {
        Some(amount) if amount > 0 => amount,
        _ => {
            return Err(ApiError::bad_request(
                "\"amount\" must be a positive integer (minor units)",
            ))
        }
    };
    let currency = body.currency.as_deref().unwrap_or(&api.currency);
    if !valid_currency(currency) {
        return Err(ApiError::bad_request(
            "\"currency\" must be a code of 3 to 12 uppercase letters or digits (e.g. USD)",
        ));
    }
    let account = api
        .ledger
        .add_credit(&id, amount, currency)
        .await
        .map_err(ledger_problem)?;
    Ok(json(&AccountView::from(&account)))
}

async fn no_listing() -> ApiError {
    ApiError::not_found("no such billable endpoint")
}

async fn unknown_path(request: Request) -> ApiError {
    if request.uri().path().starts_with("/accounts/") {
        return ApiError::bad_request(InvalidAccountId.to_string());
    }
    ApiError::not_found("no such billable endpoint")
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

fn ledger_problem(err: LedgerError) -> ApiError {
    match err {
        LedgerError::InvalidAmount(_) => ApiError::bad_request(err.to_string()),
        LedgerError::CurrencyMismatch { .. } => Problem::from_status(StatusCode::CONFLICT)
            .detail(err.to_string())
            .into(),
        LedgerError::NotFound(_) => ApiError::not_found(err.to_string()),
        LedgerError::Full { limit } => crate::problems::ledger_full(limit, None).into(),
        err => {
            tracing::warn!(error = %err, "billable api: ledger unavailable");
            Problem::from_status(StatusCode::SERVICE_UNAVAILABLE)
                .detail("the billing ledger is unavailable")
                .retry_after_millis(1000)
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use http::Method;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        ledger::{Reservation, ReserveRequest},
        Ledger, MemoryLedger,
    };

    async fn call(
        api: &Router,
        method: Method,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body))
            .unwrap();
        let response = api.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn api() -> (Router, Arc<MemoryLedger>) {
        let clock = dreamnet_common::ManualClock::new(1_764_251_965_123);
        let ledger = Arc::new(MemoryLedger::builder().clock(Arc::new(clock)).build());
        let api = BillableApi::with_shared_ledger(ledger.clone()).into_router();
        (Router::new().nest("/api/billable", api), ledger)
    }

    fn acct(id: &str) -> AccountId {
        id.parse().unwrap()
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
                account: acct("acct"),
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
        let (status, view) = call(&api, Method::GET, &path, "").await;
        assert_eq!(status, 200);
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
        assert!(ledger.account(&acct("a1")).await.unwrap().is_none());
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
    async fn account_ids_in_paths_follow_the_rule() {
        let (api, ledger) = api();
        let long = format!("/api/billable/accounts/{}/credit", "a".repeat(129));
        for path in [
            "/api/billable/accounts/a%20b/credit",
            "/api/billable/accounts/a%2Fb/credit",
            "/api/billable/accounts/%C3%A9/credit",
            "/api/billable/accounts//credit",
            long.as_str(),
        ] {
            let (status, problem) = call(&api, Method::POST, path, "{\"amount\":10}").await;
            assert_eq!(status, 400, "{path}");
            assert_eq!(problem["status"], 400, "{path}");
        }
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts/a%20b", "").await;
        assert_eq!(status, 400);
        assert_eq!(
            ledger.stats().await.unwrap(),
            crate::ledger::Stats::default()
        );
    }

    #[tokio::test]
    async fn unknown_ids_paths_and_methods() {
        let (api, _) = api();
        let (status, problem) = call(&api, Method::GET, "/api/billable/act_nope", "").await;
        assert_eq!(status, 404);
        assert_eq!(problem["status"], 404);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts/nobody", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::GET, "/api/billable/a/b/c", "").await;
        assert_eq!(status, 404);
        let (status, _) = call(&api, Method::DELETE, "/api/billable/stats", "").await;
        assert_eq!(status, 405);
        let (status, _) = call(&api, Method::GET, "/api/billable/accounts/a/credit", "").await;
        assert_eq!(status, 405);
    }

    #[tokio::test]
    async fn problems_carry_the_trace_id() {
        let (api, _) = api();
        let request = Request::get("/api/billable/act_nope")
            .body(Body::empty())
            .unwrap();
        let response = dreamnet_trace_id::TraceContext::new("trace-api")
            .scope(api.oneshot(request))
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(problem["traceId"], "trace-api");
    }
}
