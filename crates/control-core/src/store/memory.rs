//! The in-process store: per-cluster mutexes for counters, one mutex for the state document.

use std::{collections::VecDeque, sync::Arc};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::{
    clients::{ClientTable, DEFAULT_CLIENT_CAPACITY},
    layout::WindowLayout,
    AuditEntry, ClientQuota, ControlState, Count, CounterStore, StateStore, StoreError,
    StoreFuture, Versioned,
};
use crate::{
    config::{WindowConfig, MAX_CLIENT_WINDOWS},
    window::{decide, roll_over, take_one, window_start, Slot, Taken},
};

/// How many audit entries the memory store keeps (the oldest are dropped).
pub const AUDIT_CAPACITY: usize = 1000;

/// Counters of one cluster: `slots[i]` counts the window at position `i` of `layout`.
#[derive(Debug, Default)]
struct Counters {
    layout: WindowLayout,
    slots: Vec<Slot>,
    /// Per-client counters, created by the cluster's first per-client decision.
    clients: Option<Box<ClientTable>>,
}

impl Counters {
    /// Lines the slots up with `windows`, keeping the counters of windows that remain.
    #[inline]
    fn align(&mut self, windows: &Arc<[WindowConfig]>) {
        if let Some(from) = self.layout.realign(windows) {
            let old = &self.slots;
            self.slots = from
                .iter()
                .map(|i| i.map_or_else(Slot::default, |i| old[i]))
                .collect();
        }
    }

    /// The slot counting `window`, if the cluster has one.
    fn slot_of(&mut self, window: &WindowConfig) -> Option<&mut Slot> {
        let i = self.layout.position(window)?;
        Some(&mut self.slots[i])
    }

    /// One unit back to each window still counting the window `at` fell in.
    fn give_back(&mut self, windows: &[WindowConfig], at: u64) {
        for w in windows {
            let Some(slot) = self.slot_of(w) else {
                continue;
            };
            if slot.start == window_start(w, at) && slot.count > 0 {
                slot.count -= 1;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Document {
    version: u64,
    state: Option<ControlState>,
    audit: VecDeque<AuditEntry>,
}

/// The clusters' counters. FxHash: the keys are the plane's own cluster ids (validated
/// config, not attacker input), so a keyed DoS-resistant hash buys nothing here. The
/// values are shared so that a copied map (see [`MemoryStore`]) counts in the same slots.
type ClusterCounters = FxHashMap<String, Arc<Mutex<Counters>>>;

/// The default store: everything in this process, nothing shared.
///
/// Rate-limit counters sit behind one mutex per cluster, the only lock a decision takes:
/// the cluster map is read without a lock (`ArcSwap`) and copied on write, which happens
/// once per cluster (its first decision). Clusters never contend with each other, and
/// requests of one cluster contend on its mutex only.
///
/// Per-client counters live beside their cluster's, under the same mutex (one decision
/// covers both), at 40 bytes a client in sharded maps that drop a client once its windows
/// have rolled over, capped at [`with_client_capacity`](Self::with_client_capacity) clients
/// per cluster (see `store/clients.rs` for the trade-offs).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    counters: Arc<ArcSwap<ClusterCounters>>,
    document: Arc<Mutex<Document>>,
    client_capacity: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            counters: Arc::default(),
            document: Arc::default(),
            client_capacity: DEFAULT_CLIENT_CAPACITY,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at most `clients` clients' counters per cluster (default 4 Mi, about 160 MiB
    /// at most): past it, a new client evicts the entry that expires first of a small
    /// sample, whose counts then restart.
    #[must_use]
    pub fn with_client_capacity(mut self, clients: usize) -> Self {
        self.client_capacity = clients.max(1);
        self
    }

    /// Clients with counters in `cluster` (including expired ones not yet swept).
    pub fn clients(&self, cluster: &str) -> usize {
        self.counters
            .load()
            .get(cluster)
            .and_then(|c| c.lock().clients.as_ref().map(|t| t.len()))
            .unwrap_or(0)
    }

    /// Runs `f` on the cluster's counters under its mutex (borrowed from the loaded map: no
    /// `Arc` clone per request), creating them on the cluster's first decision.
    #[inline]
    fn with_counters<T>(&self, cluster: &str, f: impl FnOnce(&mut Counters) -> T) -> T {
        let mut f = Some(f);
        loop {
            if let Some(counters) = self.counters.load().get(cluster) {
                let f = f.take().expect("runs once");
                return f(&mut counters.lock());
            }
            self.add_cluster(cluster);
        }
    }

    /// [`decide`] under the cluster's mutex: the loop of [`with_counters`](Self::with_counters)
    /// written out, because this is every request's path and the closure form cost about
    /// 60 instructions a request more under callgrind (`benches/examples/per_request.rs`).
    fn decide(&self, cluster: &str, windows: &Arc<[WindowConfig]>, now_millis: u64) -> Taken {
        loop {
            if let Some(counters) = self.counters.load().get(cluster) {
                let mut counters = counters.lock();
                counters.align(windows);
                return decide(&mut counters.slots, windows, now_millis);
            }
            self.add_cluster(cluster);
        }
    }

    /// [`decide`] over the cluster's windows and the client's together, under the cluster's
    /// mutex: both roll over, and one unit is taken from each only if both have room.
    fn decide_for_client(
        &self,
        cluster: &str,
        windows: &Arc<[WindowConfig]>,
        client: &ClientQuota,
        now: u64,
    ) -> Taken {
        let capacity = self.client_capacity;
        self.with_counters(cluster, |counters| {
            counters.align(windows);
            let table = counters
                .clients
                .get_or_insert_with(|| Box::new(ClientTable::new(capacity)));
            table.align(&client.windows);
            let key = table.key_of(&client.client);
            let mut own = [Slot::default(); MAX_CLIENT_WINDOWS];
            let own = &mut own[..client.windows.len()];
            table.slots(key, own);
            let cluster_has_room = roll_over(&mut counters.slots, windows, now);
            let client_has_room = roll_over(own, &client.windows, now);
            let admitted = cluster_has_room && client_has_room;
            if admitted {
                take_one(&mut counters.slots);
                take_one(own);
                table.store(key, own, &client.windows, now);
            }
            Taken {
                admitted,
                now_millis: now,
                counts: counters
                    .slots
                    .iter()
                    .chain(own.iter())
                    .map(|s| s.count)
                    .collect(),
                epoch: None,
            }
        })
    }

    /// Adds `cluster`'s (empty) counters, unless a concurrent first decision just did:
    /// `rcu` retries on the newest map, and `or_default` keeps an entry already there.
    fn add_cluster(&self, cluster: &str) {
        self.counters.rcu(|map| {
            let mut map = ClusterCounters::clone(map);
            map.entry(cluster.to_owned()).or_default();
            map
        });
    }

    /// The counts of `windows` (and the client's) at `now`, without taking (or realigning,
    /// or creating) anything.
    fn peek_counts(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        client: Option<&ClientQuota>,
        now_millis: u64,
    ) -> Taken {
        let current = |slot: Option<Slot>, w: &WindowConfig| {
            slot.filter(|slot| slot.start == window_start(w, now_millis))
                .map_or(0, |slot| slot.count)
        };
        let map = self.counters.load();
        let mut counters = map.get(cluster).map(|c| c.lock());
        let mut counts: Vec<u64> = windows
            .iter()
            .map(|w| current(counters.as_mut().and_then(|c| c.slot_of(w).copied()), w))
            .collect();
        if let Some(client) = client {
            let mut own = [Slot::default(); MAX_CLIENT_WINDOWS];
            let own = &mut own[..client.windows.len()];
            let table = counters.as_ref().and_then(|c| c.clients.as_deref());
            // Entries are laid out for the windows last taken with: only read them in
            // that layout (otherwise the client has counted nothing in these windows yet).
            if let Some(table) = table.filter(|t| t.laid_out_for(&client.windows)) {
                table.slots(table.key_of(&client.client), own);
            }
            counts.extend(
                own.iter()
                    .zip(client.windows.iter())
                    .map(|(s, w)| current(Some(*s), w)),
            );
        }
        Taken {
            admitted: false,
            now_millis,
            counts,
            epoch: None,
        }
    }
}

impl CounterStore for MemoryStore {
    #[inline]
    fn count(
        &self,
        cluster: &Arc<str>,
        windows: &Arc<[WindowConfig]>,
        client: Option<&ClientQuota>,
        now_millis: u64,
        mode: Count,
    ) -> StoreFuture<'static, Result<Taken, StoreError>> {
        if client.is_some_and(|c| c.windows.len() > MAX_CLIENT_WINDOWS) {
            // The plane never asks this (per-client windows are validated); a direct caller
            // gets an error, not a panic, and nothing is counted.
            return StoreFuture::ready(Err(StoreError::corrupt(format!(
                "the memory store counts at most {MAX_CLIENT_WINDOWS} per-client windows"
            ))));
        }
        StoreFuture::ready(Ok(match (mode, client) {
            (Count::Take, None) => self.decide(cluster, windows, now_millis),
            (Count::Take, Some(client)) => {
                self.decide_for_client(cluster, windows, client, now_millis)
            }
            (Count::Peek, client) => self.peek_counts(cluster, windows, client, now_millis),
        }))
    }

    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
        taken: &'a Taken,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        if taken.admitted {
            if let Some(counters) = self.counters.load().get(cluster) {
                let mut counters = counters.lock();
                counters.give_back(windows, taken.now_millis);
                if let (Some(client), Some(table)) = (client, counters.clients.as_deref_mut()) {
                    if table.laid_out_for(&client.windows) {
                        let key = table.key_of(&client.client);
                        table.give_back(key, &client.windows, taken.now_millis);
                    }
                }
            }
        }
        StoreFuture::ready(Ok(()))
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Result<Option<Versioned>, StoreError>> {
        let doc = self.document.lock();
        let loaded = doc.state.clone().map(|state| Versioned {
            version: doc.version,
            state,
        });
        StoreFuture::ready(Ok(loaded))
    }

    fn version(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        StoreFuture::ready(Ok(self.document.lock().version))
    }

    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> StoreFuture<'a, Result<Option<u64>, StoreError>> {
        let mut doc = self.document.lock();
        let result = if doc.version == expected {
            doc.version += 1;
            doc.state = Some(state.clone());
            let mut entry = audit.clone();
            entry.version = doc.version;
            doc.audit.push_front(entry);
            doc.audit.truncate(AUDIT_CAPACITY);
            Some(doc.version)
        } else {
            None
        };
        StoreFuture::ready(Ok(result))
    }

    fn audit(&self, limit: usize) -> StoreFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let doc = self.document.lock();
        StoreFuture::ready(Ok(doc.audit.iter().take(limit).cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counter_store_tests!(async { Some(MemoryStore::new()) });
    crate::state_store_tests!(async { Some(MemoryStore::new()) });

    fn take(store: &MemoryStore, windows: &Arc<[WindowConfig]>, now: u64) -> Taken {
        store
            .count(&Arc::from("c"), windows, None, now, Count::Take)
            .into_ready()
            .expect("the memory store never waits")
            .unwrap()
    }

    #[test]
    fn windows_roll_over_with_the_callers_clock() {
        let store = MemoryStore::new();
        let windows: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("second", 2, 1)]);
        let t0 = 1_800_000_000_000;
        let admit = |now| take(&store, &windows, now).admitted;
        assert!(admit(t0) && admit(t0 + 500));
        assert!(!admit(t0 + 999));
        assert!(admit(t0 + 1000));
    }

    #[tokio::test]
    async fn audit_keeps_the_newest_entries_up_to_capacity() {
        let store = MemoryStore::new();
        let state = ControlState::default();
        for v in 0..(AUDIT_CAPACITY as u64 + 5) {
            let entry = AuditEntry {
                version: 0,
                action: format!("a{v}"),
                cluster: None,
                reason: None,
                actor: None,
                at: String::new(),
                before: serde_json::Value::Null,
                after: serde_json::Value::Null,
            };
            assert_eq!(
                store.compare_and_swap(v, &state, &entry).await.unwrap(),
                Some(v + 1)
            );
        }
        let all = store.audit(usize::MAX).await.unwrap();
        assert_eq!(all.len(), AUDIT_CAPACITY);
        assert_eq!(all[0].version, AUDIT_CAPACITY as u64 + 5);
        assert_eq!(all[AUDIT_CAPACITY - 1].version, 6);
    }

    #[test]
    fn concurrent_first_decisions_of_new_clusters_lose_no_unit() {
        let store = MemoryStore::new();
        let windows: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("minute", 10_000, 60)]);
        let now = 1_800_000_000_000;
        // 8 threads race to create the same 4 clusters' counters (copy-on-write map):
        // every take must land in the one shared slot of its cluster.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..200 {
                        let cluster: Arc<str> = Arc::from(format!("c{}", i % 4));
                        let taken = store
                            .count(&cluster, &windows, None, now, Count::Take)
                            .into_ready()
                            .expect("the memory store never waits")
                            .unwrap();
                        assert!(taken.admitted);
                    }
                });
            }
        });
        for c in 0..4 {
            let peek = store
                .count(
                    &Arc::from(format!("c{c}")),
                    &windows,
                    None,
                    now,
                    Count::Peek,
                )
                .into_ready()
                .expect("the memory store never waits")
                .unwrap();
            assert_eq!(peek.counts, vec![400], "cluster c{c}");
        }
    }

    #[test]
    fn more_per_client_windows_than_the_table_holds_are_refused() {
        let store = MemoryStore::new();
        let windows: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("day", 9, 86_400)]);
        let five: Vec<WindowConfig> = (1..=5)
            .map(|s| WindowConfig::new(format!("w{s}"), 9, s))
            .collect();
        let quota = ClientQuota {
            client: Arc::from("c"),
            windows: Arc::from(five),
        };
        let taken = store
            .count(
                &Arc::from("c"),
                &windows,
                Some(&quota),
                1_800_000_000_000,
                Count::Take,
            )
            .into_ready()
            .expect("the memory store never waits");
        assert!(matches!(taken, Err(StoreError::Corrupt { .. })));
        assert_eq!(
            take(&store, &windows, 1_800_000_000_000).counts,
            vec![1],
            "nothing was counted"
        );
    }

    #[test]
    fn changing_windows_keeps_remaining_counters() {
        let store = MemoryStore::new();
        let now = 1_800_000_000_000;
        let a: Arc<[WindowConfig]> = Arc::from([
            WindowConfig::new("minute", 5, 60),
            WindowConfig::new("hour", 9, 3600),
        ]);
        for _ in 0..3 {
            take(&store, &a, now);
        }
        let b: Arc<[WindowConfig]> = Arc::from([WindowConfig::new("hour", 9, 3600)]);
        let taken = take(&store, &b, now);
        assert_eq!(taken.counts, vec![4]);
    }
}
