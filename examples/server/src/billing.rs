//! The billable admin API (`/api/billable...`) over the ledger, and the mint layers.
//!
//! `dreamnet-billable` has no HTTP API service yet, so the server serves the contract's
//! routes itself from the [`Ledger`] trait.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, Request, State},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use dreamnet_billable::{
    Account, Action, ActionId, ActionState, Amount, BillableLayer, Ledger, LedgerError,
    ReservedAction, Stats, ACCOUNT_ID_HEADER,
};
use http::{request::Parts, Extensions, StatusCode};
use serde_json::{json, Map, Value};

use crate::{config::BillingConfig, handlers, problem};

/// The ledger every replica shares (memory or PostgreSQL).
pub(crate) type SharedLedger = Arc<dyn Ledger>;

#[derive(Clone)]
pub(crate) struct BillingState {
    pub(crate) ledger: SharedLedger,
    pub(crate) config: Arc<BillingConfig>,
}

/// Whether an account id is acceptable (the billable layer's `X-Account-Id` rule).
pub(crate) fn valid_account(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:-".contains(&b))
}

/// The account a mint charges: `X-Account-Id` when present (a malformed one is refused
/// with 400 by the layer), else the configured default account.
fn account_of(default: &str, parts: &Parts) -> Option<String> {
    match parts.headers.get(ACCOUNT_ID_HEADER) {
        None => Some(default.to_owned()),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| valid_account(v))
            .map(str::to_owned),
    }
}

/// The billable layer of one mint action.
pub(crate) fn mint_layer(
    state: &BillingState,
    action: &str,
) -> Result<BillableLayer<SharedLedger>, String> {
    let price = Amount::try_from(state.config.price(action))
        .map_err(|_| format!("the price of {action} is too large"))?;
    let default = state.config.default_account.clone();
    Ok(
        BillableLayer::with_shared_ledger(Arc::new(state.ledger.clone()), action, price)
            .currency(state.config.currency.as_str())
            .account(move |parts: &Parts, _body: &[u8]| account_of(&default, parts))
            .reservation_timeout(Duration::from_secs(
                state.config.reservation_timeout_seconds,
            ))
            .body_limit(handlers::MAX_BODY_BYTES),
    )
}

/// The action id the billable layer reserved for this request.
pub(crate) fn action_id(extensions: &Extensions) -> Option<String> {
    extensions
        .get::<ReservedAction>()
        .map(|action| action.id.as_str().to_owned())
}

/// Opens the configured credit lines of accounts the ledger does not know yet.
///
/// Only new accounts are touched: a replica restarting must not reset a credit line that the
/// API has changed since.
pub(crate) async fn apply_credit_lines(state: &BillingState) -> Result<(), String> {
    for (account, line) in &state.config.accounts {
        if !valid_account(account) {
            return Err(format!("account id {account:?} is not valid"));
        }
        let credit = Amount::try_from(line.credit)
            .map_err(|_| format!("credit of {account} is too large"))?;
        let existing = state
            .ledger
            .account(account)
            .await
            .map_err(|e| e.to_string())?;
        if existing.is_none() {
            state
                .ledger
                .set_credit(account, Some(credit), &state.config.currency)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(account, credit, currency = %state.config.currency, "credit line opened");
        }
    }
    Ok(())
}

/// `/api/billable...` routes (mounted behind admin auth).
pub(crate) fn routes(state: BillingState) -> Router {
    Router::new()
        .route("/api/billable/stats", get(stats))
        .route("/api/billable/accounts/{id}", get(account))
        .route("/api/billable/accounts/{id}/credit", post(add_credit))
        .route("/api/billable/{action_id}", get(action))
        .with_state(state)
}

fn ledger_problem(err: &LedgerError, extensions: &Extensions) -> Response {
    match err {
        LedgerError::Backend(_) => {
            tracing::error!(error = %err, "ledger unavailable");
            let mut response = problem::respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "the billing ledger is unavailable; retry later",
                extensions,
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            response
        }
        LedgerError::NotFound(_) => {
            problem::respond(StatusCode::NOT_FOUND, err.to_string(), extensions)
        }
        LedgerError::InvalidAmount(_) => {
            problem::respond(StatusCode::BAD_REQUEST, err.to_string(), extensions)
        }
        _ => problem::respond(StatusCode::CONFLICT, err.to_string(), extensions),
    }
}

fn stats_json(stats: &Stats) -> Value {
    let amounts: Map<String, Value> = stats
        .amounts
        .iter()
        .map(|(currency, a)| {
            (
                currency.clone(),
                json!({
                    "pending": a.pending,
                    "confirmed": a.confirmed,
                    "charged": a.charged,
                    "failed": a.failed,
                }),
            )
        })
        .collect();
    json!({
        "pending": stats.pending,
        "confirmed": stats.confirmed,
        "charged": stats.charged,
        "failed": stats.failed,
        "amounts": amounts,
    })
}

fn action_json(action: &Action) -> Value {
    json!({
        "actionId": action.id.as_str(),
        "idempotencyKey": action.idempotency_key,
        "action": action.action,
        "account": action.account,
        "amount": action.amount,
        "reserved": action.reserved,
        "currency": action.currency,
        "state": action.state.as_str(),
        "traceId": action.trace_id,
        "createdAt": crate::time::rfc3339(action.created_at_ms),
        "updatedAt": crate::time::rfc3339(action.updated_at_ms),
        "expiresAt": (action.state == ActionState::Pending)
            .then(|| crate::time::rfc3339(action.expires_at_ms)),
    })
}

fn account_json(account: &Account) -> Value {
    json!({
        "account": account.account,
        "credit": account.credit,
        "pending": account.pending,
        "charged": account.charged,
        "available": account.available(),
        "currency": account.currency,
    })
}

async fn stats(State(state): State<BillingState>, request: Request) -> Response {
    match state.ledger.stats().await {
        Ok(stats) => Json(stats_json(&stats)).into_response(),
        Err(err) => ledger_problem(&err, request.extensions()),
    }
}

async fn action(
    State(state): State<BillingState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match state.ledger.action(&ActionId::new(id.clone())).await {
        Ok(Some(action)) => Json(action_json(&action)).into_response(),
        Ok(None) => problem::respond(
            StatusCode::NOT_FOUND,
            format!("no billable action {id:?}"),
            request.extensions(),
        ),
        Err(err) => ledger_problem(&err, request.extensions()),
    }
}

async fn account(
    State(state): State<BillingState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let extensions = request.extensions();
    if !valid_account(&id) {
        return problem::respond(
            StatusCode::BAD_REQUEST,
            "account ids are 1..=128 characters of [A-Za-z0-9._@:-]",
            extensions,
        );
    }
    match state.ledger.account(&id).await {
        Ok(Some(account)) => Json(account_json(&account)).into_response(),
        // The default account exists before its first charge: unlimited, nothing held.
        Ok(None) if id == state.config.default_account => Json(account_json(&Account {
            account: id,
            currency: state.config.currency.clone(),
            credit: None,
            pending: 0,
            charged: 0,
        }))
        .into_response(),
        Ok(None) => problem::respond(
            StatusCode::NOT_FOUND,
            format!("no account {id:?}"),
            extensions,
        ),
        Err(err) => ledger_problem(&err, extensions),
    }
}

async fn add_credit(
    State(state): State<BillingState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (parts, bytes) = match handlers::read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let extensions = &parts.extensions;
    if !valid_account(&id) {
        return problem::respond(
            StatusCode::BAD_REQUEST,
            "account ids are 1..=128 characters of [A-Za-z0-9._@:-]",
            extensions,
        );
    }
    let amount = match parse_amount(&bytes) {
        Ok(amount) => amount,
        Err(detail) => return problem::respond(StatusCode::BAD_REQUEST, detail, extensions),
    };
    match state
        .ledger
        .add_credit(&id, amount, &state.config.currency)
        .await
    {
        Ok(account) => {
            tracing::info!(account = %id, amount, "credit added");
            Json(account_json(&account)).into_response()
        }
        Err(LedgerError::CurrencyMismatch { .. }) => problem::respond(
            StatusCode::CONFLICT,
            format!("account {id} is not in {}", state.config.currency),
            extensions,
        ),
        Err(err) => ledger_problem(&err, extensions),
    }
}

/// `{"amount": <positive integer, minor units>}`.
fn parse_amount(bytes: &[u8]) -> Result<Amount, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| format!("malformed JSON body: {err}"))?;
    let Some(object) = value.as_object() else {
        return Err("body must be {\"amount\": <positive integer>}".to_owned());
    };
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "amount") {
        return Err(format!(
            "unknown field {unknown:?}; expected only \"amount\""
        ));
    }
    let amount = object
        .get("amount")
        .ok_or_else(|| "missing field \"amount\"".to_owned())?;
    match amount.as_i64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "amount must be a positive integer in minor units, got {amount}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_integers_only() {
        assert_eq!(parse_amount(br#"{"amount": 500}"#), Ok(500));
        for bad in [
            &br#"{"amount": 0}"#[..],
            br#"{"amount": -5}"#,
            br#"{"amount": 1.5}"#,
            br#"{"amount": "5"}"#,
            br#"{"amount": 5, "extra": 1}"#,
            br#"{}"#,
            br#"[5]"#,
            br#"{"amount": 5"#,
            br#"{"amount": 99999999999999999999}"#,
        ] {
            assert!(
                parse_amount(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn account_ids() {
        assert!(valid_account("acme"));
        assert!(valid_account("user@example.com"));
        assert!(!valid_account(""));
        assert!(!valid_account("a b"));
        assert!(!valid_account(&"a".repeat(129)));
    }
}
