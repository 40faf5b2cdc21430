//! An account's balance, and the ledger's counts and amounts per state.

use std::collections::BTreeMap;

use dreamnet_common::AccountId;
use serde::Serialize;

use super::{ActionState, Amount};

/// An account's balance. `credit: None` is an unlimited account (no credit line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account id.
    pub account: AccountId,
    /// The account's currency (fixed when the account is created).
    pub currency: String,
    /// The credit line; `None` is unlimited.
    pub credit: Option<Amount>,
    /// Held by pending and confirmed actions.
    pub pending: Amount,
    /// Posted charges.
    pub charged: Amount,
}

impl Account {
    /// `credit - pending - charged`, or `None` for an unlimited account.
    pub fn available(&self) -> Option<Amount> {
        self.credit.map(|c| c - self.pending - self.charged)
    }
}

/// Counts and amounts of one currency per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateAmounts {
    /// Pending amount (holds of running requests).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub pending: Amount,
    /// Confirmed amount (responses stored, charges not yet posted).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub confirmed: Amount,
    /// Charged amount.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub charged: Amount,
    /// Voided amount (what failed actions had reserved).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub failed: Amount,
}

impl StateAmounts {
    /// Adds `amount` (negative to take it away) to one state.
    pub fn add(&mut self, state: ActionState, amount: Amount) {
        *self.get_mut(state) += amount;
    }

    /// The amount in one state.
    pub fn get(&self, state: ActionState) -> Amount {
        match state {
            ActionState::Pending => self.pending,
            ActionState::Confirmed => self.confirmed,
            ActionState::Charged => self.charged,
            ActionState::Failed => self.failed,
        }
    }

    fn get_mut(&mut self, state: ActionState) -> &mut Amount {
        match state {
            ActionState::Pending => &mut self.pending,
            ActionState::Confirmed => &mut self.confirmed,
            ActionState::Charged => &mut self.charged,
            ActionState::Failed => &mut self.failed,
        }
    }
}

/// Counts per state, and amounts per currency and state.
///
/// A backend builds it with [`Stats::add`], one call per (state, currency) group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of pending actions.
    pub pending: u64,
    /// Number of confirmed actions.
    pub confirmed: u64,
    /// Number of charged actions.
    pub charged: u64,
    /// Number of failed actions.
    pub failed: u64,
    /// Amounts per currency.
    pub amounts: BTreeMap<String, StateAmounts>,
}

impl Stats {
    /// The count of actions in one state.
    pub fn count(&self, state: ActionState) -> u64 {
        match state {
            ActionState::Pending => self.pending,
            ActionState::Confirmed => self.confirmed,
            ActionState::Charged => self.charged,
            ActionState::Failed => self.failed,
        }
    }

    /// Counts `count` more actions in `state`, of `amount` in total in `currency`.
    ///
    /// ```
    /// use dreamnet_billable::ledger::{ActionState, Stats};
    ///
    /// let mut stats = Stats::default();
    /// stats.add(ActionState::Charged, "USD", 2, 500);
    /// assert_eq!(stats.count(ActionState::Charged), 2);
    /// assert_eq!(stats.amounts["USD"].get(ActionState::Charged), 500);
    /// ```
    pub fn add(&mut self, state: ActionState, currency: &str, count: u64, amount: Amount) {
        *self.count_mut(state) += count;
        self.amounts
            .entry(currency.to_owned())
            .or_default()
            .add(state, amount);
    }

    /// Takes one action of `amount` in `currency` out of `state` (it moved on).
    pub(crate) fn remove(&mut self, state: ActionState, currency: &str, amount: Amount) {
        *self.count_mut(state) -= 1;
        if let Some(amounts) = self.amounts.get_mut(currency) {
            amounts.add(state, -amount);
        }
    }

    fn count_mut(&mut self, state: ActionState) -> &mut u64 {
        match state {
            ActionState::Pending => &mut self.pending,
            ActionState::Confirmed => &mut self.confirmed,
            ActionState::Charged => &mut self.charged,
            ActionState::Failed => &mut self.failed,
        }
    }
}
