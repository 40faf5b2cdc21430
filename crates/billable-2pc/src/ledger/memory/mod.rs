//! The in-process ledger: sharded, bounded, and atomic per state change.
//!
//! For development, tests and single-replica deployments that accept losing the ledger on
//! restart.
//!
//! **No global lock.** Actions live in 64 shards by (scope, idempotency key), balances in
//! 64 shards by account, each behind its own mutex; a reserve takes its
//! key's shard, then its account's shard, so requests on different keys and accounts run
//! in parallel, and holds on one credit-limited account are still checked under one lock
//! (never overdrawn). Stats are kept per shard and summed on read, O(shards x currencies).
//!
//! **Bounded.** A resolved (charged or failed) action is forgotten [`DEFAULT_RETENTION`]
//! (24 h, Stripe's minimum key lifetime) after it was resolved, so its key no longer
//! replays and a new request with it is a new action; every reserve forgets a few such
//! actions of its shard (amortized, so no pause), [`MemoryLedger::prune_all`] forgets them
//! all, and [`LedgerAdmin::prune`] (the sweeper) a bounded batch. An unlimited account (no credit line) is dropped with its last forgotten action. Stats
//! keep counting what was forgotten. Pending and confirmed actions are never forgotten. At
//! most [`DEFAULT_MAX_ENTRIES`] entries (actions plus accounts, [`MemoryLedgerBuilder::max_entries`])
//! are held: past that a reservation (or a new account) is [`LedgerError::Full`], a 503
//! `ledger-full`, and nothing changes.

use std::{
    ops::Deref,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
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

mod builder;
mod shards;

pub use builder::MemoryLedgerBuilder;

use shards::{AccountEntry, AccountShard, ActionShard, Picker, SHARDS};

/// How long a resolved action is kept by default (24 h).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most entries (actions plus accounts) held by default: one million.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// How many forgettable actions a reserve forgets in its shard on the way (more than the
/// one it adds, so pruning keeps up; few enough to keep every call short).
const PRUNE_PER_RESERVE: usize = 32;

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
    max_entries: usize,
    picker: Picker,
    actions: Box<[Mutex<ActionShard>]>,
    accounts: Box<[Mutex<AccountShard>]>,
    /// Actions plus accounts held: what `max_entries` caps.
    entries: AtomicUsize,
    pruned: AtomicU64,
    dropped_accounts: AtomicU64,
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

    /// A builder to set the clock, the default credit line, the retention and the cap.
    pub fn builder() -> MemoryLedgerBuilder {
        MemoryLedgerBuilder {
            clock: clock::system(),
            default_credit: None,
            retention: Some(DEFAULT_RETENTION),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// Entries (actions plus accounts) held now.
    pub fn entries(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed)
    }

    /// Resolved actions forgotten after their retention since the ledger started.
    pub fn pruned_total(&self) -> u64 {
        self.inner.pruned.load(Ordering::Relaxed)
    }

    /// Unlimited accounts dropped with their last forgotten action since the ledger started.
    pub fn dropped_accounts_total(&self) -> u64 {
        self.inner.dropped_accounts.load(Ordering::Relaxed)
    }

    /// Forgets every resolved action past its retention now, in every shard (one shard
    /// lock at a time); returns how many. Reserves also do this a little at a time.
    pub fn prune_all(&self) -> usize {
        let now = self.now();
        (0..SHARDS)
            .map(|shard| self.prune_shard(&mut self.inner.actions[shard].lock(), now, usize::MAX))
            .sum()
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_millis()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    future::ready(value).boxed()
}

/// `id`'s action (`&` or `&mut`) when it is in `state`; otherwise `NotFound`, or the typed
/// error of resolving an action that is not in the state a step starts from.
fn in_state<A: Deref<Target = Action>>(
    action: Option<A>,
    id: &ActionId,
    state: ActionState,
) -> LedgerResult<A> {
    let action = action.ok_or_else(|| LedgerError::NotFound(id.clone()))?;
    if action.state == state {
        return Ok(action);
    }
    let id = id.clone();
    Err(match action.state {
        // Only a charge starts from `confirmed`, only a void or a store from `pending`.
        ActionState::Pending => LedgerError::NotConfirmed(id),
        ActionState::Confirmed => LedgerError::AlreadyConfirmed(id),
        ActionState::Charged => LedgerError::AlreadyCharged(id),
        ActionState::Failed => LedgerError::AlreadyVoided(id),
    })
}

impl MemoryLedger {
    fn account_shard(&self, account: &AccountId) -> &Mutex<AccountShard> {
        &self.inner.accounts[self.inner.picker.account(account)]
    }

    /// The shard holding `id`, or `NotFound` for an id this ledger never issued.
    fn action_shard(&self, id: &ActionId) -> LedgerResult<&Mutex<ActionShard>> {
        shards::shard_of(id)
            .map(|shard| &self.inner.actions[shard])
            .ok_or_else(|| LedgerError::NotFound(id.clone()))
    }

    /// Counts `n` more entries, or refuses (counting nothing) past the cap.
    fn admit(&self, n: usize) -> LedgerResult<()> {
        let limit = self.inner.max_entries;
        let before = self.inner.entries.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > limit {
            self.inner.entries.fetch_sub(n, Ordering::Relaxed);
            return Err(LedgerError::Full { limit });
        }
        Ok(())
    }

    /// Moves an action of `shard` to `to` with `amount`, keeping stats, the open set, the
    /// key index and the account balance in step. The caller holds the shard and checked
    /// the transition is allowed.
    fn transition(
        &self,
        shard: &mut ActionShard,
        id: &ActionId,
        to: ActionState,
        amount: Amount,
        now: u64,
    ) -> Action {
        let action = shard
            .actions
            .get_mut(id)
            .expect("caller checked the action exists");
        let (from, old_amount) = (action.state, action.amount);
        shard.stats.remove(from, &action.currency, old_amount);
        shard.stats.add(to, &action.currency, 1, amount);
        {
            let mut accounts = self.account_shard(&action.account).lock();
            let entry = accounts
                .get_mut(&action.account)
                .expect("an action's account is held while the action is");
            // Holds of pending and confirmed actions count as pending on the account.
            if from.holds() {
                entry.account.pending -= old_amount;
            }
            if to.holds() {
                entry.account.pending += amount;
            }
            if to == ActionState::Charged {
                entry.account.charged += amount;
            }
        }
        if !to.holds() {
            shard.open.remove(&(action.created_at_ms, id.clone()));
            shard.resolved.push_back((now, id.clone()));
        }
        if to == ActionState::Failed {
            shard
                .live
                .remove(&(action.scope.clone(), action.idempotency_key.clone()));
        }
        action.state = to;
        action.amount = amount;
        action.updated_at_ms = now;
        action.clone()
    }

    /// Forgets at most `budget` resolved actions of `shard` older than the retention, and
    /// the unlimited accounts left without actions; returns how many actions.
    fn prune_shard(&self, shard: &mut ActionShard, now: u64, budget: usize) -> usize {
        let Some(retention) = self.inner.retention else {
            return 0;
        };
        let mut pruned = 0;
        while pruned < budget {
            match shard.resolved.front() {
                Some((resolved_at, _)) if resolved_at.saturating_add(retention) <= now => {}
                _ => break,
            }
            let (_, id) = shard.resolved.pop_front().expect("front exists");
            let Some(action) = shard.actions.remove(&id) else {
                continue;
            };
            pruned += 1;
            self.inner.entries.fetch_sub(1, Ordering::Relaxed);
            let key = (action.scope, action.idempotency_key);
            if shard.live.get(&key) == Some(&id) {
                shard.live.remove(&key);
            }
            self.forget_one_action_of(&action.account);
        }
        self.inner
            .pruned
            .fetch_add(pruned as u64, Ordering::Relaxed);
        pruned
    }

    /// One action of `account` was forgotten: an unlimited account with none left holds no
    /// money and no history worth its memory, so it goes too (a credit-limited one keeps
    /// what it has spent of its line, so it stays).
    fn forget_one_action_of(&self, account: &AccountId) {
        let mut accounts = self.account_shard(account).lock();
        let Some(entry) = accounts.get_mut(account) else {
            return;
        };
        entry.actions -= 1;
        if entry.actions == 0 && entry.account.credit.is_none() {
            debug_assert_eq!(entry.account.pending, 0);
            accounts.remove(account);
            self.inner.entries.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped_accounts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reserve_now(&self, request: &ReserveRequest) -> LedgerResult<Reservation> {
        match self.try_reserve(request) {
            // Full: forget everything forgettable in every shard, then try once more.
            Err(LedgerError::Full { .. }) if self.prune_all() > 0 => self.try_reserve(request),
            other => other,
        }
    }

    fn try_reserve(&self, request: &ReserveRequest) -> LedgerResult<Reservation> {
        if request.amount < 0 {
            return Err(LedgerError::InvalidAmount(request.amount));
        }
        let now = self.now();
        let shard_index = self
            .inner
            .picker
            .key(&request.scope, &request.idempotency_key);
        let mut shard = self.inner.actions[shard_index].lock();
        let shard = &mut *shard;
        self.prune_shard(shard, now, PRUNE_PER_RESERVE);
        let key = (request.scope.clone(), request.idempotency_key.clone());
        if let Some(id) = shard.live.get(&key).cloned() {
            let existing = &shard.actions[&id];
            if !existing.is_expired(now) {
                return Ok(Reservation::Existing(existing.clone()));
            }
            // A crashed attempt past its timeout: void it so this retry can run (what
            // recovery would do; its account shard is locked and released inside).
            let amount = existing.amount;
            self.transition(shard, &id, ActionState::Failed, amount, now);
        }
        let mut accounts = self.account_shard(&request.account).lock();
        let existing = accounts.get(&request.account).map(|e| &e.account);
        if let Some(account) = existing {
            if account.currency != request.currency {
                return Err(LedgerError::CurrencyMismatch {
                    account: request.account.clone(),
                    account_currency: account.currency.clone(),
                    requested: request.currency.clone(),
                });
            }
        }
        // A missing account is the default one; it is only stored once it holds something.
        let available = match existing {
            Some(account) => account.available(),
            None => self.inner.default_credit,
        };
        if let Some(available) = available.filter(|a| *a < request.amount) {
            return Ok(Reservation::InsufficientFunds {
                account: request.account.clone(),
                available,
                required: request.amount,
                currency: request.currency.clone(),
            });
        }
        self.admit(1 + usize::from(existing.is_none()))?;
        let entry = accounts
            .entry(request.account.clone())
            .or_insert_with(|| AccountEntry {
                account: Account {
                    account: request.account.clone(),
                    currency: request.currency.clone(),
                    credit: self.inner.default_credit,
                    pending: 0,
                    charged: 0,
                },
                actions: 0,
            });
        entry.account.pending += request.amount;
        entry.actions += 1;
        drop(accounts);
        let timeout = u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX);
        let action = Action {
            id: shards::new_id(shard_index),
            scope: request.scope.clone(),
            idempotency_key: request.idempotency_key.clone(),
            fingerprint: request.fingerprint.clone(),
            action: request.action.clone(),
            account: request.account.clone(),
            reserved: request.amount,
            amount: request.amount,
            currency: request.currency.clone(),
            state: ActionState::Pending,
            trace_id: request.trace_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now.saturating_add(timeout),
            response: None,
        };
        shard
            .stats
            .add(ActionState::Pending, &action.currency, 1, action.amount);
        shard.live.insert(key, action.id.clone());
        shard.open.insert((now, action.id.clone()));
        shard.actions.insert(action.id.clone(), action.clone());
        Ok(Reservation::Reserved(action))
    }

    /// Stores the response and moves a pending action `to` confirmed (confirm) or charged
    /// (settle), under its shard's lock.
    fn store_now(
        &self,
        id: &ActionId,
        response: Bytes,
        actual: Option<Amount>,
        to: ActionState,
    ) -> LedgerResult<Action> {
        let now = self.now();
        let mut shard = self.action_shard(id)?.lock();
        let action = in_state(shard.actions.get(id), id, ActionState::Pending)?;
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
            let amount = action.amount;
            self.transition(&mut shard, id, ActionState::Failed, amount, now);
            return Err(LedgerError::Expired(id.clone()));
        }
        shard.actions.get_mut(id).expect("checked above").response = Some(response);
        Ok(self.transition(&mut shard, id, to, amount, now))
    }

    /// Moves an action from `from` to `to` (charge: confirmed -> charged, void: pending ->
    /// failed); any other state is the typed error of TigerBeetle's second-resolve rule.
    fn resolve(&self, id: &ActionId, from: ActionState, to: ActionState) -> LedgerResult<Action> {
        let now = self.now();
        let mut shard = self.action_shard(id)?.lock();
        let action = in_state(shard.actions.get(id), id, from)?;
        let amount = action.amount;
        Ok(self.transition(&mut shard, id, to, amount, now))
    }

    fn extend_now(&self, id: &ActionId, by: Duration) -> LedgerResult<Action> {
        let now = self.now();
        let mut shard = self.action_shard(id)?.lock();
        let action = in_state(shard.actions.get_mut(id), id, ActionState::Pending)?;
        if action.is_expired(now) {
            return Err(LedgerError::Expired(id.clone()));
        }
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        action.expires_at_ms = action.expires_at_ms.max(now.saturating_add(by));
        Ok(action.clone())
    }

    fn credit_now(
        &self,
        account: &AccountId,
        currency: &str,
        update: impl FnOnce(Option<Amount>) -> LedgerResult<Option<Amount>>,
    ) -> LedgerResult<Account> {
        let mut accounts = self.account_shard(account).lock();
        let existing = accounts.get(account);
        if let Some(existing) = existing {
            if existing.account.currency != currency {
                return Err(LedgerError::CurrencyMismatch {
                    account: account.clone(),
                    account_currency: existing.account.currency.clone(),
                    requested: currency.to_owned(),
                });
            }
        }
        let mut next = existing
            .map(|e| e.account.clone())
            .unwrap_or_else(|| Account {
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
        match accounts.get_mut(account) {
            Some(entry) => entry.account = next.clone(),
            None => {
                self.admit(1)?;
                let entry = AccountEntry {
                    account: next.clone(),
                    actions: 0,
                };
                accounts.insert(account.clone(), entry);
            }
        }
        Ok(next)
    }
}

impl Ledger for MemoryLedger {
    fn reserve(&self, request: ReserveRequest) -> BoxFuture<'_, LedgerResult<Reservation>> {
        let logged = logs::Logged::of(&request);
        let outcome = self.reserve_now(&request);
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
        ready(self.resolve(id, ActionState::Confirmed, ActionState::Charged))
    }

    fn void<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.resolve(id, ActionState::Pending, ActionState::Failed))
    }

    fn find<'a>(
        &'a self,
        scope: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        let shard = self.inner.actions[self.inner.picker.key(scope, idempotency_key)].lock();
        let found = shard
            .live
            .get(&(scope.to_owned(), idempotency_key.to_owned()))
            .and_then(|id| shard.actions.get(id))
            .cloned();
        ready(Ok(found))
    }

    fn extend<'a>(&'a self, id: &'a ActionId, by: Duration) -> BoxFuture<'a, LedgerResult<Action>> {
        ready(self.extend_now(id, by))
    }
}

impl LedgerAdmin for MemoryLedger {
    fn action<'a>(&'a self, id: &'a ActionId) -> BoxFuture<'a, LedgerResult<Option<Action>>> {
        let found = self
            .action_shard(id)
            .ok()
            .and_then(|shard| shard.lock().actions.get(id).cloned());
        ready(Ok(found))
    }

    fn stats(&self) -> BoxFuture<'_, LedgerResult<Stats>> {
        let mut total = Stats::default();
        for shard in &*self.inner.actions {
            let shard = shard.lock();
            for state in ActionState::ALL {
                let count = shard.stats.count(state);
                if count == 0 {
                    continue;
                }
                total.add(state, "", count, 0);
            }
            for (currency, amounts) in &shard.stats.amounts {
                for state in ActionState::ALL {
                    total.add(state, currency, 0, amounts.get(state));
                }
            }
        }
        // The counts were added under a placeholder currency with no amount.
        total.amounts.remove("");
        ready(Ok(total))
    }

    fn account<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, LedgerResult<Option<Account>>> {
        let shard = self.account_shard(account).lock();
        ready(Ok(shard.get(account).map(|e| e.account.clone())))
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
        let mut due: Vec<Action> = Vec::new();
        for shard in &*self.inner.actions {
            let shard = shard.lock();
            let shard_due = shard
                .open
                .iter()
                .map(|(_, id)| &shard.actions[id])
                .filter(|a| a.state == ActionState::Confirmed || a.is_expired(now))
                .take(limit)
                .cloned();
            due.extend(shard_due);
        }
        // Oldest first across shards, as one lock would have listed them.
        due.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        due.truncate(limit);
        ready(Ok(due))
    }

    fn prune(&self, limit: usize) -> BoxFuture<'_, LedgerResult<u64>> {
        let now = self.now();
        let mut left = limit;
        for shard in &*self.inner.actions {
            if left == 0 {
                break;
            }
            left -= self.prune_shard(&mut shard.lock(), now, left);
        }
        ready(Ok((limit - left) as u64))
    }
}

#[cfg(test)]
mod tests;
