//! The calls behind the trait methods: one server-side function call per state change (or
//! per batch of them), one query per read, each bounded by the ledger's deadline.

use std::future::Future;

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use dreamnet_common::AccountId;
use tokio_postgres::{types::ToSql, Row};

use super::{
    rows::{account_from, action_from, backend, millis, unmillis},
    Account, Action, ActionId, ActionState, Amount, Core, LedgerError, LedgerResult, Reservation,
    ReserveRequest, Stats,
};

/// One settle of a batch: store the response and post the charge.
pub(super) struct Settle {
    pub(super) id: ActionId,
    pub(super) response: Bytes,
    pub(super) actual: Option<Amount>,
}

impl Core {
    fn now(&self) -> i64 {
        millis(self.clock.now_millis())
    }

    /// `call`, or [`LedgerError::Timeout`] past the deadline. A dropped call's connection
    /// goes back to the pool (tokio-postgres discards the late answer; an open transaction
    /// is rolled back), so a hung server holds no caller past the deadline.
    pub(super) async fn timed<T>(
        &self,
        call: impl Future<Output = LedgerResult<T>>,
    ) -> LedgerResult<T> {
        tokio::time::timeout(self.deadline, call)
            .await
            .unwrap_or(Err(LedgerError::Timeout(self.deadline)))
    }

    pub(super) async fn migrate(&self) -> LedgerResult<()> {
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        // Concurrent `CREATE ... IF NOT EXISTS` can still collide; the migration takes an
        // advisory lock first.
        tx.batch_execute(&self.sql.migrate).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// One transaction for the whole batch (`dreamnet_billable_reserve_batch`); the outcome
    /// of each request, in order.
    pub(super) async fn reserve_batch(
        &self,
        batch: Vec<(ActionId, ReserveRequest)>,
    ) -> LedgerResult<Vec<LedgerResult<Reservation>>> {
        let now = self.now();
        let column = |f: fn(&ReserveRequest) -> &str| -> Vec<&str> {
            batch.iter().map(|(_, r)| f(r)).collect()
        };
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let scopes = column(|r| &r.scope);
        let keys = column(|r| &r.idempotency_key);
        let fingerprints = column(|r| &r.fingerprint);
        let actions = column(|r| &r.action);
        let accounts = column(|r| r.account.as_str());
        let currencies = column(|r| &r.currency);
        let amounts: Vec<i64> = batch.iter().map(|(_, r)| r.amount).collect();
        let traces: Vec<Option<&str>> = batch.iter().map(|(_, r)| r.trace_id.as_deref()).collect();
        let expires: Vec<i64> = batch
            .iter()
            .map(|(_, r)| {
                now.saturating_add(i64::try_from(r.timeout.as_millis()).unwrap_or(i64::MAX))
            })
            .collect();
        let params: [&(dyn ToSql + Sync); 12] = [
            &ids,
            &scopes,
            &keys,
            &fingerprints,
            &actions,
            &accounts,
            &amounts,
            &currencies,
            &traces,
            &now,
            &expires,
            &self.default_credit,
        ];
        let rows = self.query(&self.sql.reserve_batch, &params).await?;
        let mut outcomes = in_order(batch.len(), rows)?;
        Ok(batch
            .into_iter()
            .map(|(_, request)| reservation_from(outcomes.next().flatten(), request))
            .collect())
    }

    /// One transaction for the whole batch of settles (`dreamnet_billable_resolve_batch`).
    pub(super) async fn resolve_batch(
        &self,
        batch: Vec<Settle>,
    ) -> LedgerResult<Vec<LedgerResult<Action>>> {
        let now = self.now();
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let tos: Vec<&str> = vec![ActionState::Charged.as_str(); batch.len()];
        let actuals: Vec<Option<i64>> = batch.iter().map(|s| s.actual).collect();
        let responses: Vec<&[u8]> = batch.iter().map(|s| &s.response[..]).collect();
        let params: [&(dyn ToSql + Sync); 5] = [&ids, &tos, &actuals, &responses, &now];
        let rows = self.query(&self.sql.resolve_batch, &params).await?;
        let mut outcomes = in_order(batch.len(), rows)?;
        Ok(batch
            .iter()
            .map(|s| match outcomes.next().flatten() {
                Some(row) => resolved_from(&row, &s.id, ActionState::Charged, s.actual),
                None => Err(backend("a settle of the batch had no outcome")),
            })
            .collect())
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
        let (id_str, to_str) = (id.as_str(), to.as_str());
        let params: [&(dyn ToSql + Sync); 5] = [&id_str, &to_str, &actual, &response, &now];
        let rows = self.query(&self.sql.resolve, &params).await?;
        let row = rows
            .first()
            .ok_or_else(|| backend("dreamnet_billable_resolve returned no row"))?;
        resolved_from(row, id, to, actual)
    }

    /// A heartbeat: one `UPDATE` of a pending, unexpired action's `expires_at` (locking the
    /// action row only, so no lock-order cycle with the functions); when it matches nothing,
    /// a read of the row says why.
    pub(super) async fn extend_call(
        &self,
        id: &ActionId,
        by: std::time::Duration,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let until = now.saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        let id_str = id.as_str();
        if let Some(action) = self
            .query_action(&self.sql.extend, &[&id_str, &now, &until])
            .await?
        {
            return Ok(action);
        }
        let Some(action) = self.query_action(&self.sql.get_action, &[&id_str]).await? else {
            return Err(LedgerError::NotFound(id.clone()));
        };
        Err(match action.state {
            ActionState::Pending => LedgerError::Expired(id.clone()),
            ActionState::Confirmed => LedgerError::AlreadyConfirmed(id.clone()),
            ActionState::Charged => LedgerError::AlreadyCharged(id.clone()),
            ActionState::Failed => LedgerError::AlreadyVoided(id.clone()),
        })
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> LedgerResult<Vec<Row>> {
        let client = self.pool.get().await.map_err(backend)?;
        let st = client.prepare_cached(sql).await.map_err(backend)?;
        client.query(&st, params).await.map_err(backend)
    }

    pub(super) async fn credit_tx(
        &self,
        account: &AccountId,
        currency: &str,
        update: impl FnOnce(Option<Amount>) -> LedgerResult<Option<Amount>>,
    ) -> LedgerResult<Account> {
        let sql = &self.sql;
        let now = self.now();
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let (upsert, lock) = prepare2(&tx, &sql.upsert_account, &sql.lock_account).await?;
        let no_credit: Option<Amount> = None;
        let account_id = account.as_str();
        let upsert_params: [&(dyn ToSql + Sync); 4] = [&account_id, &currency, &no_credit, &now];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&account_id];
        // The lock folds the account's slots into its row: the check below sees exact totals.
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
        self.query(sql, params)
            .await?
            .first()
            .map(action_from)
            .transpose()
    }

    pub(super) async fn stats_query(&self) -> LedgerResult<Stats> {
        let mut stats = Stats::default();
        for row in self.query(&self.sql.stats, &[]).await? {
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
        self.query(&self.sql.get_account, &[&account.as_str()])
            .await?
            .first()
            .map(account_from)
            .transpose()
    }

    /// Deletes at most `limit` resolved actions last changed before `now - retention`;
    /// returns how many.
    pub(super) async fn prune_batch(
        &self,
        retention: std::time::Duration,
        limit: usize,
    ) -> LedgerResult<u64> {
        let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = self.now().saturating_sub(retention);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(&self.sql.prune, &[&cutoff, &limit]).await?;
        let gone: i64 = rows
            .first()
            .ok_or_else(|| backend("the prune returned no row"))?
            .try_get(0)
            .map_err(backend)?;
        let gone = unmillis(gone);
        self.pruned
            .fetch_add(gone, std::sync::atomic::Ordering::Relaxed);
        Ok(gone)
    }

    pub(super) async fn due_query(&self, limit: usize) -> LedgerResult<Vec<Action>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(&self.sql.due, &[&self.now(), &limit])
            .await?
            .iter()
            .map(action_from)
            .collect()
    }
}

/// The rows of a batch function by request (`ord`, 1-based): one per request.
fn in_order(len: usize, rows: Vec<Row>) -> LedgerResult<impl Iterator<Item = Option<Row>>> {
    let mut slots: Vec<Option<Row>> = (0..len).map(|_| None).collect();
    for row in rows {
        let ord: i32 = row.try_get("ord").map_err(backend)?;
        let slot = usize::try_from(ord)
            .ok()
            .and_then(|ord| ord.checked_sub(1))
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| backend(format!("a batch answered for request {ord}")))?;
        *slot = Some(row);
    }
    Ok(slots.into_iter())
}

fn reservation_from(row: Option<Row>, request: ReserveRequest) -> LedgerResult<Reservation> {
    // No row: the key went live under another account's lock and that action was resolved
    // before it could be read; a retry sees it.
    let row = row.ok_or_else(|| backend("the key's live action changed meanwhile; retry"))?;
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

fn resolved_from(
    row: &Row,
    id: &ActionId,
    to: ActionState,
    actual: Option<Amount>,
) -> LedgerResult<Action> {
    let outcome: String = row.try_get("outcome").map_err(backend)?;
    if outcome == "not_found" {
        return Err(LedgerError::NotFound(id.clone()));
    }
    let action = action_from(row)?;
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

/// Prepares (or takes from the cache) two statements, so the queries that use them can be
/// sent back to back: pipelined statements keep their order only if none waits on a prepare.
async fn prepare2(
    tx: &Transaction<'_>,
    a: &str,
    b: &str,
) -> LedgerResult<(tokio_postgres::Statement, tokio_postgres::Statement)> {
    tokio::try_join!(tx.prepare_cached(a), tx.prepare_cached(b)).map_err(backend)
}
