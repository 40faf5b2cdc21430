//! Reading rows into ledger types, and the backend error of a failed call.

use bytes::Bytes;
use dreamnet_common::AccountId;
use tokio_postgres::Row;

use super::super::{Account, Action, ActionId, ActionState, BoxError, LedgerError, LedgerResult};

/// A backend failure caused by `err` (a client error, or a message for a corrupt answer).
pub(super) fn backend(err: impl Into<BoxError>) -> LedgerError {
    LedgerError::backend(err)
}

pub(super) fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(super) fn unmillis(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

pub(super) fn action_from(row: &Row) -> LedgerResult<Action> {
    let state: String = row.try_get("state").map_err(backend)?;
    let response: Option<Vec<u8>> = row.try_get("response").map_err(backend)?;
    Ok(Action {
        id: ActionId::new(row.try_get::<_, String>("id").map_err(backend)?),
        scope: row.try_get("scope").map_err(backend)?,
        idempotency_key: row.try_get("idem_key").map_err(backend)?,
        fingerprint: row.try_get("fingerprint").map_err(backend)?,
        action: row.try_get("action").map_err(backend)?,
        account: account_id(row)?,
        reserved: row.try_get("reserved").map_err(backend)?,
        amount: row.try_get("amount").map_err(backend)?,
        currency: row.try_get("currency").map_err(backend)?,
        state: ActionState::parse(&state)
            .ok_or_else(|| backend(format!("unknown action state {state:?}")))?,
        trace_id: row.try_get("trace_id").map_err(backend)?,
        created_at_ms: unmillis(row.try_get("created_at").map_err(backend)?),
        updated_at_ms: unmillis(row.try_get("updated_at").map_err(backend)?),
        expires_at_ms: unmillis(row.try_get("expires_at").map_err(backend)?),
        response: response.map(Bytes::from),
    })
}

pub(super) fn account_from(row: &Row) -> LedgerResult<Account> {
    Ok(Account {
        account: account_id(row)?,
        currency: row.try_get("currency").map_err(backend)?,
        credit: row.try_get("credit").map_err(backend)?,
        pending: row.try_get("pending").map_err(backend)?,
        charged: row.try_get("charged").map_err(backend)?,
    })
}

/// The row's `account` column; an id breaking the rule is a corrupt row.
fn account_id(row: &Row) -> LedgerResult<AccountId> {
    let id: String = row.try_get("account").map_err(backend)?;
    AccountId::try_from(id).map_err(backend)
}
