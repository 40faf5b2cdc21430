//! The calls behind the trait methods: one server-side function call per state change,
//! one query per read.

use deadpool_postgres::{GenericClient, Transaction};
use dreamnet_common::AccountId;
use tokio_postgres::{error::SqlState, types::ToSql};

use super::{
    rows::{account_from, action_from, backend, unmillis, KEY_WENT_LIVE},
    Account, Action, ActionId, ActionState, Amount, LedgerError, LedgerResult, PostgresLedger,
    Reservation, ReserveRequest, Stats,
};

impl PostgresLedger {
    pub(super) async fn reserve_call(&self, request: ReserveRequest) -> LedgerResult<Reservation> {
        if request.amount < 0 {
            return Err(LedgerError::InvalidAmount(request.amount));
        }
        let sql = &self.inner.sql;
        let now = self.now();
        let id = ActionId::random();
        let expires_at =
            now.saturating_add(i64::try_from(request.timeout.as_millis()).unwrap_or(i64::MAX));
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client.prepare_cached(&sql.reserve).await.map_err(backend)?;
        let result = client
            .query_one(
                &st,
                &[
                    &id.as_str(),
                    &request.scope,
                    &request.idempotency_key,
                    &request.fingerprint,
                    &request.action,
                    &request.account.as_str(),
                    &request.amount,
                    &request.currency,
                    &request.trace_id,
                    &now,
                    &expires_at,
                    &self.inner.default_credit,
                ],
            )
            .await;
        let row = match result {
            Ok(row) => row,
            Err(err) if err.code().map(SqlState::code) == Some(KEY_WENT_LIVE) => {
                // Everything rolled back; the key's live action (another account's) answers.
                let st = client
                    .prepare_cached(&sql.live_action)
                    .await
                    .map_err(backend)?;
                let row = client
                    .query_opt(&st, &[&request.scope, &request.idempotency_key])
                    .await
                    .map_err(backend)?
                    .ok_or_else(|| backend("the key's live action vanished; retry"))?;
                return Ok(Reservation::Existing(action_from(&row)?));
            }
            Err(err) => return Err(backend(err)),
        };
        let outcome: String = row.try_get("outcome").map_err(backend)?;
        match outcome.as_str() {
            "reserved" => Ok(Reservation::Reserved(action_from(&row)?)),
            "existing" => Ok(Reservation::Existing(action_from(&row)?)),
            "insufficient_funds" => Ok(Reservation::InsufficientFunds {
                account: request.account,
                available: row.try_get("available").map_err(backend)?,
                required: request.amount,
                currency: request.currency,
            }),
            "currency_mismatch" => Err(LedgerError::CurrencyMismatch {
                account: request.account,
                account_currency: row.try_get("account_currency").map_err(backend)?,
                requested: request.currency,
            }),
            other => Err(backend(format!("unknown reserve outcome {other:?}"))),
        }
    }

    /// Confirm (`to` = confirmed), charge or void, in one call of `dreamnet_billable_resolve`.
    pub(super) async fn resolve_call(
        &self,
        id: &ActionId,
        to: ActionState,
        actual: Option<Amount>,
        response: Option<&[u8]>,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.resolve)
            .await
            .map_err(backend)?;
        let (id_str, to_str) = (id.as_str(), to.as_str());
        let params: [&(dyn ToSql + Sync); 5] = [&id_str, &to_str, &actual, &response, &now];
        let row = client.query_one(&st, &params).await.map_err(backend)?;
        let outcome: String = row.try_get("outcome").map_err(backend)?;
        if outcome == "not_found" {
            return Err(LedgerError::NotFound(id.clone()));
        }
        let action = action_from(&row)?;
        match outcome.as_str() {
            "done" => Ok(action),
            "expired" => Err(LedgerError::Expired(id.clone())),
            "invalid_amount" => Err(LedgerError::InvalidAmount(
                actual.unwrap_or(action.reserved),
            )),
            "exceeds" => Err(LedgerError::ExceedsReservation {
                reserved: action.reserved,
                actual: actual.unwrap_or(action.reserved),
            }),
            "refused" => Err(match (action.state, to) {
                (ActionState::Pending, _) => LedgerError::NotConfirmed(id.clone()),
                (ActionState::Confirmed, _) => LedgerError::AlreadyConfirmed(id.clone()),
                (ActionState::Charged, _) => LedgerError::AlreadyCharged(id.clone()),
                (ActionState::Failed, _) => LedgerError::AlreadyVoided(id.clone()),
            }),
            other => Err(backend(format!("unknown resolve outcome {other:?}"))),
        }
    }

    pub(super) async fn credit_tx(
        &self,
        account: &AccountId,
        currency: &str,
        update: impl FnOnce(Option<Amount>) -> LedgerResult<Option<Amount>>,
    ) -> LedgerResult<Account> {
        let sql = &self.inner.sql;
        let now = self.now();
        let mut client = self.inner.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let (upsert, lock) = prepare2(&tx, &sql.upsert_account, &sql.lock_account).await?;
        let no_credit: Option<Amount> = None;
        let account_id = account.as_str();
        let upsert_params: [&(dyn ToSql + Sync); 4] = [&account_id, &currency, &no_credit, &now];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&account_id];
        let (_, row) = tokio::try_join!(
            tx.execute(&upsert, &upsert_params),
            tx.query_one(&lock, &lock_params),
        )
        .map_err(backend)?;
        let current = account_from(&row)?;
        if current.currency != currency {
            return Err(LedgerError::CurrencyMismatch {
                account: account.clone(),
                account_currency: current.currency,
                requested: currency.to_owned(),
            });
        }
        let credit = update(current.credit)?;
        if let Some(credit) = credit {
            if credit < current.pending + current.charged {
                return Err(LedgerError::InvalidAmount(credit));
            }
        }
        let st = tx.prepare_cached(&sql.set_credit).await.map_err(backend)?;
        let row = tx
            .query_one(&st, &[&account_id, &credit, &now])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        account_from(&row)
    }

    pub(super) async fn query_action(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> LedgerResult<Option<Action>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client.prepare_cached(sql).await.map_err(backend)?;
        client
            .query_opt(&st, params)
            .await
            .map_err(backend)?
            .as_ref()
            .map(action_from)
            .transpose()
    }

    pub(super) async fn stats_query(&self) -> LedgerResult<Stats> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.stats)
            .await
            .map_err(backend)?;
        let mut stats = Stats::default();
        for row in client.query(&st, &[]).await.map_err(backend)? {
            let state: String = row.try_get(0).map_err(backend)?;
            let currency: String = row.try_get(1).map_err(backend)?;
            let count: i64 = row.try_get(2).map_err(backend)?;
            let amount: i64 = row.try_get(3).map_err(backend)?;
            let state = ActionState::parse(&state)
                .ok_or_else(|| backend(format!("unknown action state {state:?}")))?;
            stats.add(state, &currency, unmillis(count), amount);
        }
        Ok(stats)
    }

    pub(super) async fn account_query(&self, account: &AccountId) -> LedgerResult<Option<Account>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.get_account)
            .await
            .map_err(backend)?;
        client
            .query_opt(&st, &[&account.as_str()])
            .await
            .map_err(backend)?
            .as_ref()
            .map(account_from)
            .transpose()
    }

    pub(super) async fn due_query(&self, limit: usize) -> LedgerResult<Vec<Action>> {
        let client = self.inner.pool.get().await.map_err(backend)?;
        let st = client
            .prepare_cached(&self.inner.sql.due)
            .await
            .map_err(backend)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(&st, &[&self.now(), &limit])
            .await
            .map_err(backend)?
            .iter()
            .map(action_from)
            .collect()
    }
}

/// Prepares (or takes from the cache) two statements, so the queries that use them can be
/// sent back to back: pipelined statements keep their order only if none waits on a prepare.
async fn prepare2(
    tx: &Transaction<'_>,
    a: &str,
    b: &str,
) -> LedgerResult<(tokio_postgres::Statement, tokio_postgres::Statement)> {
    tokio::try_join!(tx.prepare_cached(a), tx.prepare_cached(b)).map_err(backend)
}
