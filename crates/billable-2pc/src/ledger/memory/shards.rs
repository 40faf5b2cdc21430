//! The two kinds of shard the memory ledger splits its state into, and how a key, an
//! account or an action id picks its shard.
//!
//! Actions live in the shard of their (scope, idempotency key), so a key's uniqueness is
//! decided under one shard lock; balances live in the shard of their account, so holds on
//! one account are checked under one lock. Lock order is always action shard, then account
//! shard (never two of one kind at once), so there is no deadlock.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    hash::{BuildHasher, Hash},
};

use dreamnet_common::AccountId;
use foldhash::fast::RandomState;

use crate::ledger::{Account, Action, ActionId, Stats};

/// How many shards of each kind (a power of two; plenty for a few dozen cores).
pub(super) const SHARDS: usize = 64;

/// A map with the ledger's fast, per-process seeded hasher.
pub(super) type FastMap<K, V> = HashMap<K, V, RandomState>;

/// The actions of the keys that hash to one shard.
#[derive(Debug, Default)]
pub(super) struct ActionShard {
    pub(super) actions: FastMap<ActionId, Action>,
    /// (scope, key) -> the live (not failed) action of that key.
    pub(super) live: FastMap<(String, String), ActionId>,
    /// Pending and confirmed actions, oldest first: what recovery scans.
    pub(super) open: BTreeSet<(u64, ActionId)>,
    /// Charged and failed actions in the order they were resolved: what retention prunes.
    pub(super) resolved: VecDeque<(u64, ActionId)>,
    /// This shard's share of the ledger's stats (summed on read); pruning leaves it alone,
    /// so stats keep counting forgotten actions.
    pub(super) stats: Stats,
}

/// An account's balance and how many of its actions the ledger still holds.
#[derive(Debug)]
pub(super) struct AccountEntry {
    pub(super) account: Account,
    /// Actions of this account held in memory (any state). An unlimited account whose
    /// last action was forgotten has nothing left to say and is dropped.
    pub(super) actions: u64,
}

/// The accounts that hash to one shard.
pub(super) type AccountShard = FastMap<AccountId, AccountEntry>;

/// Picks shards. Seeded per process, so clients cannot aim many keys at one shard.
#[derive(Debug, Default)]
pub(super) struct Picker {
    hasher: RandomState,
}

impl Picker {
    /// The action shard of (scope, key).
    pub(super) fn key(&self, scope: &str, key: &str) -> usize {
        self.index(&(scope, key))
    }

    /// The account shard of an account.
    pub(super) fn account(&self, account: &AccountId) -> usize {
        self.index(account)
    }

    fn index(&self, value: &impl Hash) -> usize {
        // SHARDS is a power of two: the low bits of a good hash are uniform.
        usize::try_from(self.hasher.hash_one(value)).unwrap_or_default() & (SHARDS - 1)
    }
}

/// A fresh action id that names its shard: `act_` and 32 hex digits (the
/// [`ActionId::random`] form) whose last four are the shard, so a lookup by id goes
/// straight to one shard.
pub(super) fn new_id(shard: usize) -> ActionId {
    let bits = (rand::random::<u128>() & !0xffff) | shard as u128;
    ActionId::new(format!("act_{bits:032x}"))
}

/// The shard an id names, or `None` for an id this ledger never issued.
pub(super) fn shard_of(id: &ActionId) -> Option<usize> {
    let hex = id.as_str().strip_prefix("act_")?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shard = usize::from_str_radix(&hex[28..], 16).ok()?;
    (shard < SHARDS).then_some(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_shard_and_foreign_ids_name_none() {
        for shard in [0, 1, 17, SHARDS - 1] {
            let id = new_id(shard);
            assert_eq!(id.as_str().len(), 36);
            assert_eq!(shard_of(&id), Some(shard));
        }
        assert_eq!(shard_of(&ActionId::new("nope")), None);
        assert_eq!(
            shard_of(&ActionId::new(format!("act_{:032x}", 0xffffu128))),
            None
        );
        assert_eq!(shard_of(&ActionId::new("act_zz")), None);
    }
}
