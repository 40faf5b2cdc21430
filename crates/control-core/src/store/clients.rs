//! The memory store's per-client counters: one small entry per client of a cluster, in
//! shards that are swept for expired entries as they grow, under a cap.
//!
//! Why this shape (millions of clients must stay bounded and cheap):
//! - a client is its key's 64-bit hash (seeded per store, so a client cannot aim at another
//!   one's counters; two of a million clients share counters with a probability of about
//!   3e-8) and its counters are `u32` window starts in seconds and `u32` counts: 40 bytes an
//!   entry, no allocation per client;
//! - an entry is dead once every one of its windows has rolled over (it would count 0
//!   everywhere), so dropping it changes no decision; a shard drops its dead entries when it
//!   has taken as many new clients as it kept at its last sweep (amortised O(1) per insert,
//!   and one sweep touches one shard of 64: governor's `retain_recent`, but incremental);
//! - a shard full of live entries (the cap) evicts the entry of a small sample that expires
//!   first: that client's counts restart, the price of a bound (Redis' `allkeys-lru`
//!   makes the same trade).

use std::{hash::BuildHasher, sync::Arc};

use foldhash::fast::RandomState;
use rustc_hash::FxHashMap;

use super::layout::WindowLayout;
use crate::{
    config::{WindowConfig, MAX_CLIENT_WINDOWS},
    window::{window_millis, window_start, Slot},
};

/// Shards per cluster (a sweep walks one).
const SHARDS: usize = 64;
/// A shard is not swept before it holds this many entries.
const MIN_SWEEP: usize = 1024;
/// Entries looked at to pick one to evict from a full shard.
const EVICTION_SAMPLE: usize = 8;
/// Clients a memory store keeps per cluster by default (about 160 MiB at most).
pub const DEFAULT_CLIENT_CAPACITY: usize = 4 << 20;

/// One client's counters: window starts in whole seconds and counts, by window position.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    starts: [u32; MAX_CLIENT_WINDOWS],
    counts: [u32; MAX_CLIENT_WINDOWS],
}

impl Entry {
    fn slot(&self, i: usize) -> Slot {
        Slot {
            start: u64::from(self.starts[i]) * 1000,
            count: u64::from(self.counts[i]),
        }
    }

    fn set(&mut self, i: usize, slot: Slot) {
        // Window starts are whole seconds (windows last whole seconds, aligned to the
        // epoch) and fit u32 until 2106; counts stay under MAX_CLIENT_LIMIT (validated).
        self.starts[i] = u32::try_from(slot.start / 1000).unwrap_or(u32::MAX);
        self.counts[i] = u32::try_from(slot.count).unwrap_or(u32::MAX);
    }

    /// When the last of its windows rolls over (Unix ms): from then on it counts nothing.
    fn expires(&self, windows: &[WindowConfig]) -> u64 {
        windows
            .iter()
            .enumerate()
            .map(|(i, w)| self.slot(i).start + window_millis(w))
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// FxHash over keys that are already seeded hashes.
    entries: FxHashMap<u64, Entry>,
    /// New clients until the next sweep: as many as were live at the last one, so a sweep
    /// costs O(1) per insert, amortised, even at the cap.
    until_sweep: usize,
}

/// A cluster's per-client counters (all under the cluster's mutex, so a decision over the
/// cluster's and a client's windows is atomic).
#[derive(Debug)]
pub(crate) struct ClientTable {
    shards: Box<[Shard]>,
    per_shard_capacity: usize,
    hasher: RandomState,
    /// The windows entries are laid out for.
    layout: WindowLayout,
}

impl ClientTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            per_shard_capacity: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::default(),
            layout: WindowLayout::default(),
        }
    }

    /// Lines entries up with `windows`: a window that stays keeps its counts (moved to its
    /// new position), a new one starts empty. O(clients), only when the settings change.
    pub(crate) fn align(&mut self, windows: &Arc<[WindowConfig]>) {
        let Some(from) = self.layout.realign(windows) else {
            return;
        };
        for shard in self.shards.iter_mut() {
            for entry in shard.entries.values_mut() {
                let old = *entry;
                *entry = Entry::default();
                for (i, source) in from.iter().enumerate() {
                    if let Some(j) = source {
                        entry.starts[i] = old.starts[*j];
                        entry.counts[i] = old.counts[*j];
                    }
                }
            }
        }
    }

    /// Whether entries are laid out for `windows` (by name and length, in order).
    pub(crate) fn laid_out_for(&self, windows: &[WindowConfig]) -> bool {
        self.layout.fits(windows)
    }

    /// The key a client is stored under.
    pub(crate) fn key_of(&self, client: &str) -> u64 {
        self.hasher.hash_one(client)
    }

    fn shard(&self, key: u64) -> usize {
        // The top bits: the map's FxHash uses the low ones.
        (key >> (64 - SHARDS.trailing_zeros())) as usize
    }

    /// The client's slots (empty ones for a client not seen in its live windows).
    pub(crate) fn slots(&self, key: u64, slots: &mut [Slot]) {
        let entry = self.shards[self.shard(key)].entries.get(&key);
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = entry.map_or_else(Slot::default, |e| e.slot(i));
        }
    }

    /// Stores the client's slots after an admitted decision at `now` over `windows`.
    pub(crate) fn store(&mut self, key: u64, slots: &[Slot], windows: &[WindowConfig], now: u64) {
        let mut entry = Entry::default();
        for (i, slot) in slots.iter().enumerate() {
            entry.set(i, *slot);
        }
        let capacity = self.per_shard_capacity;
        let index = self.shard(key);
        let shard = &mut self.shards[index];
        if !shard.entries.contains_key(&key) {
            if shard.until_sweep == 0 {
                shard
                    .entries
                    .retain(|_, entry| entry.expires(windows) > now);
                shard.until_sweep = shard.entries.len().max(MIN_SWEEP);
            } else {
                shard.until_sweep -= 1;
            }
            if shard.entries.len() >= capacity {
                let victim = shard
                    .entries
                    .iter()
                    .take(EVICTION_SAMPLE)
                    .min_by_key(|(_, entry)| entry.expires(windows))
                    .map(|(key, _)| *key);
                if let Some(victim) = victim {
                    shard.entries.remove(&victim);
                }
            }
        }
        shard.entries.insert(key, entry);
    }

    /// One unit back to each of the client's windows still counting the window `at` fell in.
    pub(crate) fn give_back(&mut self, key: u64, windows: &[WindowConfig], at: u64) {
        let index = self.shard(key);
        let Some(entry) = self.shards[index].entries.get_mut(&key) else {
            return;
        };
        for (i, w) in windows.iter().enumerate() {
            let slot = entry.slot(i);
            if slot.start == window_start(w, at) && slot.count > 0 {
                entry.counts[i] -= 1;
            }
        }
    }

    /// Clients with an entry (live or not yet swept).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000;

    fn minute() -> Arc<[WindowConfig]> {
        Arc::from([WindowConfig::new("minute", 5, 60)])
    }

    fn put(table: &mut ClientTable, client: &str, windows: &[WindowConfig], now: u64) {
        let key = table.key_of(client);
        let slot = Slot {
            start: window_start(&windows[0], now),
            count: 1,
        };
        table.store(key, &[slot], windows, now);
    }

    #[test]
    fn expired_clients_are_swept_as_a_shard_grows() {
        let windows = minute();
        let mut table = ClientTable::new(DEFAULT_CLIENT_CAPACITY);
        table.align(&windows);
        for i in 0..(SHARDS * MIN_SWEEP) {
            put(&mut table, &format!("old-{i}"), &windows, T0);
        }
        let before = table.len();
        assert_eq!(before, SHARDS * MIN_SWEEP);
        // A minute later every old entry is dead: new clients' inserts sweep them away.
        let later = T0 + 60_000;
        for i in 0..(2 * SHARDS * MIN_SWEEP) {
            put(&mut table, &format!("new-{i}"), &windows, later);
        }
        assert!(
            table.len() <= 2 * before + before / 4,
            "dead entries were kept: {} of {}",
            table.len(),
            3 * before
        );
    }

    #[test]
    fn a_full_table_stays_at_its_capacity() {
        let windows = minute();
        let capacity = SHARDS * 16;
        let mut table = ClientTable::new(capacity);
        table.align(&windows);
        for i in 0..(capacity * 4) {
            put(&mut table, &format!("live-{i}"), &windows, T0);
        }
        assert!(table.len() <= capacity, "{} > {capacity}", table.len());
    }

    #[test]
    fn changed_windows_keep_the_counts_of_windows_that_remain() {
        let mut table = ClientTable::new(1024);
        let a: Arc<[WindowConfig]> = Arc::from([
            WindowConfig::new("minute", 5, 60),
            WindowConfig::new("day", 9, 86_400),
        ]);
        table.align(&a);
        let key = table.key_of("c");
        let slots = [
            Slot {
                start: T0,
                count: 3,
            },
            Slot {
                start: T0,
                count: 4,
            },
        ];
        table.store(key, &slots, &a, T0);
        let b: Arc<[WindowConfig]> = Arc::from([
            WindowConfig::new("second", 1, 1),
            WindowConfig::new("day", 9, 86_400),
        ]);
        table.align(&b);
        let mut read = [Slot::default(); 2];
        table.slots(key, &mut read);
        assert_eq!(read[0].count, 0, "a new window starts empty");
        assert_eq!(
            read[1],
            Slot {
                start: T0,
                count: 4
            }
        );
    }
}
