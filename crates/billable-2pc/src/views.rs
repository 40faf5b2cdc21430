//! The JSON views of the ledger the admin API serves (and metrics or dashboards may reuse):
//! camelCase fields, amounts in minor units, RFC 3339 timestamps.

use std::collections::BTreeMap;

use dreamnet_common::time::rfc3339;
use serde::Serialize;

use crate::ledger::{Account, Action, ActionState, Amount, StateAmounts, Stats};

/// Counts and amounts per state, as served by `GET /stats`.
///
/// ```
/// use dreamnet_billable::{ledger::{ActionState, Stats}, views::StatsView};
///
/// let mut stats = Stats::default();
/// stats.add(ActionState::Charged, "EUR", 1, 90);
/// let view = StatsView::new(&stats, "USD");
/// assert_eq!((view.charged, view.amounts.charged), (1, 0), "amounts never mix currencies");
/// assert_eq!(view.amounts_by_currency["EUR"].charged, 90);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// One action, as served by `GET /{actionId}` (the stored response is not shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    /// The action id.
    pub action_id: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The action name.
    pub action: String,
    /// The account charged.
    pub account: String,
    /// The amount (final once confirmed).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub amount: Amount,
    /// The amount held at reservation.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub reserved: Amount,
    /// The currency.
    pub currency: String,
    /// The state.
    pub state: ActionState,
    /// The trace id of the request that reserved it.
    pub trace_id: Option<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last state change, RFC 3339.
    pub updated_at: String,
    /// When a pending reservation times out, RFC 3339.
    pub expires_at: String,
}

impl From<&Action> for ActionView {
    fn from(a: &Action) -> Self {
        Self {
            action_id: a.id.as_str().to_owned(),
            idempotency_key: a.idempotency_key.clone(),
            action: a.action.clone(),
            account: a.account.as_str().to_owned(),
            amount: a.amount,
            reserved: a.reserved,
            currency: a.currency.clone(),
            state: a.state,
            trace_id: a.trace_id.clone(),
            created_at: rfc3339(a.created_at_ms),
            updated_at: rfc3339(a.updated_at_ms),
            expires_at: rfc3339(a.expires_at_ms),
        }
    }
}

/// An account's balance, as served by `GET /accounts/{id}`; `credit` and `available` are
/// `null` for an unlimited account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountView {
    /// The account id.
    pub account: String,
    /// The credit line; `None` is unlimited.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub credit: Option<Amount>,
    /// Held by pending and confirmed actions.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub pending: Amount,
    /// Posted charges.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub charged: Amount,
    /// `credit - pending - charged`; `None` when unlimited.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub available: Option<Amount>,
    /// The account's currency.
    pub currency: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        Self {
            account: a.account.as_str().to_owned(),
            credit: a.credit,
            pending: a.pending,
            charged: a.charged,
            available: a.available(),
            currency: a.currency.clone(),
        }
    }
}
