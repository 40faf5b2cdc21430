//! The in-process ledger: one mutex, so every state change is atomic.
//!
//! For development, tests and single-replica deployments that accept losing the ledger on
//! restart. Stats are maintained incrementally, so reading them is O(currencies).
//!
//! Memory is bounded by time: a resolved (charged or failed) action is forgotten
//! [`DEFAULT_RETENTION`] (24 h, Stripe's minimum key lifetime) after it was resolved, so its key
//! no longer replays and a new request with it is a new action. Stats and account balances
//! keep counting it. Pending and confirmed actions are never forgotten.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use dreamnet_common::{clock, AccountId, SharedClock};
use futures_util::future::{self, BoxFuture, FutureExt};
use parking_lot::Mutex;

use crate::logs;

use super::{
    Account, Action, ActionId, ActionState, Amount, Ledger, LedgerAdmin, LedgerError, LedgerResult,
    Reservation, ReserveRequest, Stats,
};

/// How long a resolved action is kept by default (24 h).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The in-process [`Ledger`] and [`LedgerAdmin`]. Cheap to clone (an `Arc` inside); clones
/// share the state.
///
/// ```
/// use dreamnet_billable::{LedgerAdmin, MemoryLedger};
/// use dreamnet_common::AccountId;
/// # tokio_test_block(async {
/// let ledger = MemoryLedger::new();
/// let acct: AccountId = "acct-1".parse().unwrap();
/// let account = ledger.add_credit(&acct, 500, "USD").await.unwrap();
/// assert_eq!(account.available(), Some(500));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryLedger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    default_credit: Option<Amount>,
    retention: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    actions: HashMap<ActionId, Action>,
    /// (scope, key) -> the live (not failed) action of that key.
    live: HashMap<(String, String), ActionId>,
    accounts: HashMap<AccountId, Account>,
    /// Pending and confirmed actions, oldest first: what recovery scans.
    open: BTreeSet<(u64, ActionId)>,
    /// Charged and failed actions in the order they were resolved: what retention prunes.
    resolved: VecDeque<(u64, ActionId)>,
    stats: Stats,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLedger {
    /// A ledger on the system clock where new accounts are unlimited.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the clock and the default credit line of new accounts.
    pub fn builder() -> MemoryLedgerBuilder {
        MemoryLedgerBuilder {
            clock: clock::system(),
            default_credit: None,
            retention: Some(DEFAULT_RETENTION),
        }
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_millis()
    }
}

/// Builds a [`MemoryLedger`].
#[derive(Debug)]
#[must_use]
pub struct MemoryLedgerBuilder {
    clock: SharedClock,
    default_credit: Option<Amount>,
    retention: Option<Duration>,
}

impl MemoryLedgerBuilder {
    /// The clock used for timestamps and reservation timeouts (default: system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The credit line of accounts created by a reservation (`None`, the default, is
    /// unlimited; `Some(0)` means "no spending until credit is added").
    pub fn default_credit(mut self, credit: Option<Amount>) -> Self {
        self.default_credit = credit;
        self
    }

    /// How long a charged or failed action is kept after it was resolved (default 24 h;
    /// `None` keeps everything, unbounded).
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Builds the ledger.
    pub fn build(self) -> MemoryLedger {
        MemoryLedger {
            inner: Arc::new(Inner {
                clock: self.clock,
                default_credit: self.default_credit,
                retention: self
                    .retention
                    .map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl State {
    /// Moves an action to `to` with `amount`, keeping stats, the open set, the key index and
    /// the account balance in step. The caller has checked the transition is allowed.
    fn transition(&mut self, id: &ActionId, to: ActionState, amount: Amount, now: u64) -> Action {
        let action = self
            .actions
            .get_mut(id)
            .expect("caller checked the action exists");
        let (from, old_amount) = (action.state, action.amount);
        self.stats.remove(from, &action.currency, old_amount);
        self.stats.add(to, &action.currency, 1, amount);
        let account = self
            .accounts
            .get_mut(&action.account)
            .expect("an action's account exists");
        // Holds of pending and confirmed actions count as pending on the account.
        if from.holds() {
            account.pending -= old_amount;
        }
        if to.holds() {
            account.pending += amount;
        }
        if to == ActionState::Charged {
            account.charged += amount;
        }
        if !to.holds() {
            self.open.remove(&(action.created_at_ms, id.clone()));
            self.resolved.push_back((now, id.clone()));
        }
        if to == ActionState::Failed {
            self.live
                .remove(&(action.scope.clone(), action.idempotency_key.clone()));
        }
        action.state = to;
        action.amount = amount;
        action.updated_at_ms = now;
        action.clone()
    }

    /// Forgets resolved actions older than the retention. Amortized O(1) per resolution.
    fn prune(&mut self, now: u64, retention: Option<u64>) {
        let Some(retention) = retention else { return };
        while let Some((resolved_at, _)) = self.resolved.front() {
            if resolved_at.saturating_add(retention) > now {
                break;
            }
            let (_, id) = self.resolved.pop_front().expect("front exists");
            if let Some(action) = self.actions.remove(&id) {
                let key = (action.scope, action.idempotency_key);
                if self.live.get(&key) == Some(&id) {
                    self.live.remove(&key);
                }
            }
        }
    }

    fn void_expired(&mut self, id: &ActionId, now: u64) -> Action {
        let amount = self.actions[id].amount;
        self.transition(id, ActionState::Failed, amount, now)
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    future::ready(value).boxed()
}

impl MemoryLedger {
    fn reserve_now(&self, request: ReserveRequest) -> LedgerResult<Reservation> {
        if request.amount < 0 {
            return Err(LedgerError::InvalidAmount(request.amount));
        }
        let now = self.now();
        let mut state = self.inner.state.lock();
        let state = &mut *state;
        state.prune(now, self.inner.retention);
        let key = (request.scope.clone(), request.idempotency_key.clone());
        if let Some(id) = state.live.get(&key).cloned() {
            let existing = &state.actions[&id];
            if !existing.is_expired(now) {
                return Ok(Reservation::Existing(existing.clone()));
            }
            // A crashed attempt past its timeout: void it so this retry can run.
            state.void_expired(&id, now);
        }
        let account = state
            .accounts
            .entry(request.account.clone())
            .or_insert_with(|| Account {
                account: request.account.clone(),
                currency: request.currency.clone(),
                credit: self.inner.default_credit,
                pending: 0,
                charged: 0,
            });
        if account.currency != request.currency {
            return Err(LedgerError::CurrencyMismatch {
                account: request.account,
                account_currency: account.currency.clone(),
                requested: request.currency,
            });
        }
        if let Some(available) = account.available() {
            if available < request.amount {
                return Ok(Reservation::InsufficientFunds {
                    account: request.account,
                    available,
                    required: request.amount,
                    currency: request.currency,
                });
            }
        }
        account.pending += request.amount;
        let timeout = u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX);
        let action = Action {
            id: ActionId::random(),
            scope: request.scope,
            idempotency_key: request.idempotency_key,
            fingerprint: request.fingerprint,
            action: request.action,
            account: request.account,
            reserved: request.amount,
            amount: request.amount,
            currency: request.currency,
            state: ActionState::Pending,
            trace_id: request.trace_id,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now.saturating_add(timeout),
            response: None,
        };
        state
            .stats
            .add(ActionState::Pending, &action.currency, 1, action.amount);
        state.live.insert(key, action.id.clone());
        state.open.insert((now, action.id.clone()));
        state.actions.insert(action.id.clone(), action.clone());
        Ok(Reservation::Reserved(action))
    }

    /// Stores the response and moves a pending action `to` confirmed (confirm) or charged
    /// (settle), under one lock.
    fn store_now(
        &self,
        id: &ActionId,
        response: Bytes,
        actual: Option<Amount>,
        to: ActionState,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let mut state = self.inner.state.lock();
        let action = state
            .actions
            .get(id)
            .ok_or_else(|| LedgerError::NotFound(id.clone()))?;
        match action.state {
            ActionState::Pending => {}
            ActionState::Confirmed => return Err(LedgerError::AlreadyConfirmed(id.clone())),
            ActionState::Charged => return Err(LedgerError::AlreadyCharged(id.clone())),
            ActionState::Failed => return Err(LedgerError::AlreadyVoided(id.clone())),
        }
        let reserved = action.reserved;
        let amount = actual.unwrap_or(reserved);
        if amount < 0 {
            return Err(LedgerError::InvalidAmount(amount));
        }
        if amount > reserved {
            return Err(LedgerError::ExceedsReservation {
                reserved,
                actual: amount,
            });
        }
        if action.is_expired(now) {
            state.void_expired(id, now);
            return Err(LedgerError::Expired(id.clone()));
        }
        state.actions.get_mut(id).expect("checked above").response = Some(response);
        Ok(state.transition(id, to, amount, now))
    }

    fn charge_now(&self, id: &ActionId) -> LedgerResult<Action> {
        self.resolve(id, ActionState::Confirmed, ActionState::Charged)
    }

    fn void_now(&self, id: &ActionId) -> LedgerResult<Action> {
        self.resolve(id, ActionState::Pending, ActionState::Failed)
    }

    /// Moves an action from `from` to `to` (charge: confirmed -> charged, void: pending ->
    /// failed); any other state is the typed error of TigerBeetle's second-resolve rule.
    fn resolve(&self, id: &ActionId, from: ActionState, to: ActionState) -> LedgerResult<Action> {
        let now = self.now();
        let mut state = self.inner.state.lock();
        let action = state
            .actions
            .get(id)
            .ok_or_else(|| LedgerError::NotFound(id.clone()))?;
        if action.state == from {
            let amount = action.amount;
            return Ok(state.transition(id, to, amount, now));
        }
        Err(match action.state {
            // Only a charge starts from `confirmed`, only a void from `pending`.
            ActionState::Pending => LedgerError::NotConfirmed(id.clone()),
            ActionState::Confirmed => LedgerError::AlreadyConfirmed(id.clone()),
            ActionState::Charged => LedgerError::AlreadyCharged(id.clone()),
            ActionState::Failed => LedgerError::AlreadyVoided(id.clone()),
        })
    }

    fn credit_now(
        &self,
        account: &AccountId,
        currency: &str,
        update: impl FnOnce(Option<Amount>) -> LedgerResult<Option<Amount>>,
    ) -> LedgerResult<Account> {
        let mut state = self.inner.state.lock();
        let existing = state.accounts.get(account);
        if let Some(existing) = existing {
            if existing.currency != currency {
                return Err(LedgerError::CurrencyMismatch {
                    account: account.clone(),
                    account_currency: existing.currency.clone(),
                    requested: currency.to_owned(),
                });
            }
        }
        let mut next = existing.cloned().unwrap_or_else(|| Account {
            account: account.clone(),
            currency: currency.to_owned(),
            credit: None,
            pending: 0,
            charged: 0,
        });
        next.credit = update(next.credit)?;
        if let Some(credit) = next.credit {
            if credit < next.pending + next.charged {
                return Err(LedgerError::InvalidAmount(credit));
            }
        }
        state.accounts.insert(account.clone(), next.clone());
        Ok(next)
    }
}

impl Ledger for MemoryLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        let logged = logs::Logged::of(&request);
        let outcome = self.reserve_now(request);
        logged.emit(&outcome);
        ready(outcome)
    }

    fn confirm<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.store_now(id, response, actual, ActionState::Confirmed))
    }

    fn settle<'a>(
        &'a self,
        id: &'a ActionId,
        response: Bytes,
        actual: Option<Amount>,
    ) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.store_now(id, response, actual, ActionState::Charged))
    }

    fn charge<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.charge_now(id))
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.void_now(id))
    }

    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        let state = self.inner.state.lock();
        let found = state
            .live
            .get(&(scope.to_owned(), idempotency_key.to_owned()))
            .and_then(|id| state.actions.get(id))
            .cloned();
        ready(Ok(found))
    }
}

impl LedgerAdmin for MemoryLedger {
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        ready(Ok(self.inner.state.lock().actions.get(id).cloned()))
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        ready(Ok(self.inner.state.lock().stats.clone()))
    }

    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        ready(Ok(self.inner.state.lock().accounts.get(account).cloned()))
    }

    fn add_credit<'a>(
        &'a self,
        account: &'a AccountId,
        amount: Amount,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        if amount <= 0 {
            return ready(Err(LedgerError::InvalidAmount(amount)));
        }
        ready(self.credit_now(account, currency, |credit| {
            credit
                .unwrap_or(0)
                .checked_add(amount)
                .map(Some)
                .ok_or(LedgerError::InvalidAmount(amount))
        }))
    }

    fn set_credit<'a>(
        &'a self,
        account: &'a AccountId,
        credit: Option<Amount>,
        currency: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Account>> {
        if let Some(c) = credit.filter(|c| *c < 0) {
            return ready(Err(LedgerError::InvalidAmount(c)));
        }
        ready(self.credit_now(account, currency, |_| Ok(credit)))
    }

    fn due_for_recovery(&self, limit: usize) -> BoxFuture<'_, LedgerResult<Vec<Action>>> {
        let now = self.now();
        let state = self.inner.state.lock();
        let due = state
            .open
            .iter()
            .map(|(_, id)| &state.actions[id])
            .filter(|a| a.state == ActionState::Confirmed || a.is_expired(now))
            .take(limit)
            .cloned()
            .collect();
        ready(Ok(due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamnet_common::ManualClock;

    fn request(key: &str) -> ReserveRequest {
        ReserveRequest {
            scope: "s".into(),
            idempotency_key: key.into(),
            fingerprint: "f".into(),
            action: "a".into(),
            account: "acct".parse().unwrap(),
            amount: 10,
            currency: "USD".into(),
            trace_id: None,
            timeout: Duration::from_secs(60),
        }
    }

    async fn reserve(ledger: &MemoryLedger, key: &str) -> Reservation {
        ledger.reserve(request(key)).await.unwrap()
    }

    #[tokio::test]
    async fn resolved_actions_are_forgotten_after_the_retention() {
        let clock = ManualClock::new(1_000_000);
        let ledger = MemoryLedger::builder()
            .clock(Arc::new(clock.clone()))
            .retention(Some(Duration::from_secs(3600)))
            .build();
        let Reservation::Reserved(charged) = reserve(&ledger, "charged").await else {
            panic!()
        };
        ledger
            .confirm(&charged.id, Bytes::new(), None)
            .await
            .unwrap();
        ledger.charge(&charged.id).await.unwrap();
        let Reservation::Reserved(open) = reserve(&ledger, "open").await else {
            panic!()
        };
        ledger.confirm(&open.id, Bytes::new(), None).await.unwrap();

        clock.advance(Duration::from_secs(3599));
        assert!(matches!(
            reserve(&ledger, "charged").await,
            Reservation::Existing(_)
        ));
        clock.advance(Duration::from_secs(1));
        // The charged action is forgotten: its key is new again; the confirmed one is kept.
        assert!(matches!(
            reserve(&ledger, "charged").await,
            Reservation::Reserved(_)
        ));
        assert!(ledger.action(&charged.id).await.unwrap().is_none());
        assert!(matches!(
            reserve(&ledger, "open").await,
            Reservation::Existing(_)
        ));
        let stats = ledger.stats().await.unwrap();
        assert_eq!((stats.charged, stats.confirmed, stats.pending), (1, 1, 1));
        let acct = "acct".parse().unwrap();
        assert_eq!(ledger.account(&acct).await.unwrap().unwrap().charged, 10);
    }
}
