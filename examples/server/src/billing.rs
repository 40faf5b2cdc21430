//! The mint routes' billable layers, the account rule and the configured credit lines.

use std::{sync::Arc, time::Duration};

use axum::{extract::Request, middleware::Next, response::Response};
use dreamnet_billable::{Amount, BillableLayer, Ledger, ReservedAction, ACCOUNT_ID_HEADER};
use http::{request::Parts, Extensions, StatusCode};

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

/// Middleware in front of the billable API: an account id in the path
/// (`/api/billable/accounts/{id}...`) must follow the same rule as `X-Account-Id`, else 400
/// and the ledger is not touched. Without it a credit could open an account (`a%20b`, 300
/// characters, ...) that no mint can ever charge.
pub(crate) async fn check_account_path(request: Request, next: Next) -> Response {
    let id = request
        .uri()
        .path()
        .strip_prefix("/api/billable/accounts/")
        .and_then(|rest| rest.split('/').next());
    match id {
        Some(id) if !valid_account(id) => problem::respond(
            StatusCode::BAD_REQUEST,
            "an account id is 1..=128 characters of A-Z a-z 0-9 . _ @ : -",
            request.extensions(),
        ),
        _ => next.run(request).await,
    }
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
) -> Result<BillableLayer<dyn Ledger>, String> {
    let price = Amount::try_from(state.config.price(action))
        .map_err(|_| format!("the price of {action} is too large"))?;
    let default = state.config.default_account.clone();
    Ok(
        BillableLayer::with_shared_ledger(state.ledger.clone(), action, price)
            .currency(state.config.currency.as_str())
            .account(move |parts: &Parts, _body: &[u8]| account_of(&default, parts))
            .reservation_timeout(Duration::from_secs(
                state.config.reservation_timeout_seconds,
            ))
            .body_limit(handlers::MAX_BODY_BYTES)
            // The mint handler has no outside effect before it answers, so a request cut off
            // mid-handler (client gone, shutdown) can release its hold at once; when even that
            // cannot run (process exit), recovery voids the reservation after its timeout.
            .void_on_drop(true),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert!(valid_account("acme"));
        assert!(valid_account("user@example.com"));
        assert!(!valid_account(""));
        assert!(!valid_account("a b"));
        assert!(!valid_account(&"a".repeat(129)));
    }
}
