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
        let columns = ReserveColumns::of(&batch, now);
        let params = columns.params(&now, &self.default_credit);
        let rows = self.query(&self.sql.reserve_batch, &params).await?;
        let mut outcomes = in_order(batch.len(), rows)?;
        Ok(reservations(batch, &mut outcomes))
    }

    /// One transaction for the whole batch of settles (`dreamnet_billable_resolve_batch`).
    pub(super) async fn resolve_batch(
        &self,
        batch: Vec<Settle>,
    ) -> LedgerResult<Vec<LedgerResult<Action>>> {
        let now = self.now();
        let columns = SettleColumns::of(&batch);
        let tos: Vec<&str> = vec![ActionState::Charged.as_str(); batch.len()];
        let params: [&(dyn ToSql + Sync); 5] = [
            &columns.ids,
            &tos,
            &columns.actuals,
            &columns.responses,
            &now,
        ];
        let rows = self.query(&self.sql.resolve_batch, &params).await?;
        let mut outcomes = in_order(batch.len(), rows)?;
        Ok(settlements(&batch, &mut outcomes))
    }

    /// Reserves and settles in one transaction
    /// (`dreamnet_billable_reserve_and_settle_batch`): the outcome of each, in order.
    pub(super) async fn reserve_and_settle_batch(
        &self,
        reserves: Vec<(ActionId, ReserveRequest)>,
        settles: Vec<Settle>,
    ) -> LedgerResult<(Vec<LedgerResult<Reservation>>, Vec<LedgerResult<Action>>)> {
        let now = self.now();
        let (reserve, settle) = (
            ReserveColumns::of(&reserves, now),
            SettleColumns::of(&settles),
        );
        let mut params = reserve.params(&now, &self.default_credit).to_vec();
        params.extend_from_slice(&[
            &settle.ids as &(dyn ToSql + Sync),
            &settle.actuals,
            &settle.responses,
        ]);
        let rows = self
            .query(&self.sql.reserve_and_settle_batch, &params)
            .await?;
        let mut outcomes = in_order(reserves.len() + settles.len(), rows)?;
        let reserved = reservations(reserves, &mut outcomes);
        Ok((reserved, settlements(&settles, &mut outcomes)))
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

/// A batch of reserves as the batch functions take it: one array per column.
struct ReserveColumns<'a> {
    ids: Vec<&'a str>,
    scopes: Vec<&'a str>,
    keys: Vec<&'a str>,
    fingerprints: Vec<&'a str>,
    actions: Vec<&'a str>,
    accounts: Vec<&'a str>,
    amounts: Vec<i64>,
    currencies: Vec<&'a str>,
    traces: Vec<Option<&'a str>>,
    expires: Vec<i64>,
}

impl<'a> ReserveColumns<'a> {
    fn of(batch: &'a [(ActionId, ReserveRequest)], now: i64) -> Self {
        let column = |f: fn(&ReserveRequest) -> &str| -> Vec<&'a str> {
            batch.iter().map(|(_, r)| f(r)).collect()
        };
        Self {
            ids: batch.iter().map(|(id, _)| id.as_str()).collect(),
            scopes: column(|r| &r.scope),
            keys: column(|r| &r.idempotency_key),
            fingerprints: column(|r| &r.fingerprint),
            actions: column(|r| &r.action),
            accounts: column(|r| r.account.as_str()),
            amounts: batch.iter().map(|(_, r)| r.amount).collect(),
            currencies: column(|r| &r.currency),
            traces: batch.iter().map(|(_, r)| r.trace_id.as_deref()).collect(),
            expires: batch
                .iter()
                .map(|(_, r)| {
                    now.saturating_add(i64::try_from(r.timeout.as_millis()).unwrap_or(i64::MAX))
                })
                .collect(),
        }
    }

    /// The batch functions' first 12 parameters.
    fn params<'b>(
        &'b self,
        now: &'b i64,
        default_credit: &'b Option<Amount>,
    ) -> [&'b (dyn ToSql + Sync); 12] {
        [
            &self.ids,
            &self.scopes,
            &self.keys,
            &self.fingerprints,
            &self.actions,
            &self.accounts,
            &self.amounts,
            &self.currencies,
            &self.traces,
            now,
            &self.expires,
            default_credit,
        ]
    }
}

/// A batch of settles as the batch functions take it.
struct SettleColumns<'a> {
    ids: Vec<&'a str>,
    actuals: Vec<Option<i64>>,
    responses: Vec<&'a [u8]>,
}

impl<'a> SettleColumns<'a> {
    fn of(batch: &'a [Settle]) -> Self {
        Self {
            ids: batch.iter().map(|s| s.id.as_str()).collect(),
            actuals: batch.iter().map(|s| s.actual).collect(),
            responses: batch.iter().map(|s| &s.response[..]).collect(),
        }
    }
}

/// Each reserve's outcome, from the next rows of `outcomes`.
fn reservations(
    batch: Vec<(ActionId, ReserveRequest)>,
    outcomes: &mut impl Iterator<Item = Option<Row>>,
) -> Vec<LedgerResult<Reservation>> {
    batch
        .into_iter()
        .map(|(_, request)| reservation_from(outcomes.next().flatten(), request))
        .collect()
}

/// Each settle's outcome, from the next rows of `outcomes`.
fn settlements(
    batch: &[Settle],
    outcomes: &mut impl Iterator<Item = Option<Row>>,
) -> Vec<LedgerResult<Action>> {
    batch
        .iter()
        .map(|s| match outcomes.next().flatten() {
            Some(row) => resolved_from(&row, &s.id, ActionState::Charged, s.actual),
            None => Err(backend("a settle of the batch had no outcome")),
        })
        .collect()
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
