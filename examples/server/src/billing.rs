//! The mint routes' billable layers, the account rule and the configured credit lines.

use std::{sync::Arc, time::Duration};

use dreamnet_billable::{ledger::Amount, BillableLayer, LedgerAdmin, ReservedAction};
use dreamnet_common::{AccountId, ACCOUNT_ID_HEADER};
use http::{request::Parts, Extensions};

use crate::{config::BillingConfig, handlers};

/// The ledger every replica shares (memory or PostgreSQL), with its admin abilities (the
/// API, recovery and metrics use them).
pub(crate) type SharedLedger = Arc<dyn LedgerAdmin>;

#[derive(Clone)]
pub(crate) struct BillingState {
    pub(crate) ledger: SharedLedger,
    pub(crate) config: Arc<BillingConfig>,
}

/// The account a mint charges: `X-Account-Id` when present (a malformed one is refused
/// with 400 by the layer), else the configured default account.
fn account_of(default: &AccountId, parts: &Parts) -> Option<AccountId> {
    match parts.headers.get(ACCOUNT_ID_HEADER) {
        None => Some(default.clone()),
        Some(value) => AccountId::parse(value.to_str().ok()?).ok(),
    }
}

/// The billable layer of one mint action.
pub(crate) fn mint_layer(
    state: &BillingState,
    action: &str,
) -> Result<BillableLayer<dyn LedgerAdmin>, String> {
    let price = Amount::try_from(state.config.price(action))
        .map_err(|_| format!("the price of {action} is too large"))?;
    let default = AccountId::parse(&state.config.default_account).map_err(|_| {
        format!(
            "the default account {:?} is not a valid account id",
            state.config.default_account
        )
    })?;
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
        let Ok(account) = AccountId::parse(account) else {
            return Err(format!("account id {account:?} is not valid"));
        };
        let credit = Amount::try_from(line.credit)
            .map_err(|_| format!("credit of {account} is too large"))?;
        let existing = state
            .ledger
            .account(&account)
            .await
            .map_err(|e| e.to_string())?;
        if existing.is_none() {
            state
                .ledger
                .set_credit(&account, Some(credit), &state.config.currency)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(account = account.as_str(), credit, currency = %state.config.currency, "credit line opened");
        }
    }
    Ok(())
}
