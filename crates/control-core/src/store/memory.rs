//! The in-process store: per-cluster mutexes for counters, one mutex for the state document.

use std::{collections::HashMap, collections::VecDeque, sync::Arc};

use parking_lot::{Mutex, RwLock};

use super::{BoxFuture, ControlStore, StoreError};
use crate::{
    config::WindowConfig,
    state::{AuditEntry, ControlState, Versioned},
    window::{decide, window_start, Slot, Taken},
};

/// How many audit entries the memory store keeps (the oldest are dropped).
pub const AUDIT_CAPACITY: usize = 1000;

/// Counters of one cluster: `keys[i]` (window name, seconds) owns `slots[i]`.
#[derive(Debug, Default)]
struct Counters {
    keys: Vec<(String, u64)>,
    slots: Vec<Slot>,
}

impl Counters {
    /// Lines the slots up with `windows`, keeping the counters of windows that remain.
    fn align(&mut self, windows: &[WindowConfig]) {
        let same = self.keys.len() == windows.len()
            && self
                .keys
                .iter()
                .zip(windows)
                .all(|((n, s), w)| *n == w.name && *s == w.seconds);
        if same {
            return;
        }
        let mut slots = Vec::with_capacity(windows.len());
        for w in windows {
            let kept = self
                .keys
                .iter()
                .position(|(n, s)| *n == w.name && *s == w.seconds)
                .map(|i| self.slots[i]);
            slots.push(kept.unwrap_or_default());
        }
        self.keys = windows
            .iter()
            .map(|w| (w.name.clone(), w.seconds))
            .collect();
        self.slots = slots;
    }
}

#[derive(Debug, Default)]
struct Document {
    version: u64,
    state: Option<ControlState>,
    audit: VecDeque<AuditEntry>,
}

/// The default store: everything in this process, nothing shared.
///
/// Rate-limit counters sit behind one mutex per cluster (the cluster map itself behind a
/// read-mostly lock), so clusters never contend with each other.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    counters: Arc<RwLock<HashMap<String, Arc<Mutex<Counters>>>>>,
    document: Arc<Mutex<Document>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`decide`] under the cluster's mutex.
    fn decide(&self, cluster: &str, windows: &[WindowConfig], now_millis: u64) -> Taken {
        let counters = self.cluster(cluster);
        let mut counters = counters.lock();
        counters.align(windows);
        decide(&mut counters.slots, windows, now_millis)
    }

    /// The counts of `windows` at `now`, without taking (or realigning) anything.
    fn peek_counts(&self, cluster: &str, windows: &[WindowConfig], now_millis: u64) -> Taken {
        let counters = self.counters.read().get(cluster).map(Arc::clone);
        let counters = counters.as_ref().map(|c| c.lock());
        let counts = windows
            .iter()
            .map(|w| {
                let Some(counters) = &counters else { return 0 };
                counters
                    .keys
                    .iter()
                    .position(|(n, s)| *n == w.name && *s == w.seconds)
                    .map(|i| counters.slots[i])
                    .filter(|slot| slot.start == window_start(w, now_millis))
                    .map_or(0, |slot| slot.count)
            })
            .collect();
        Taken {
            admitted: false,
            now_millis,
            counts,
            epoch: None,
        }
    }

    fn cluster(&self, cluster: &str) -> Arc<Mutex<Counters>> {
        if let Some(c) = self.counters.read().get(cluster) {
            return Arc::clone(c);
        }
        Arc::clone(self.counters.write().entry(cluster.to_owned()).or_default())
    }
}

impl ControlStore for MemoryStore {
    fn take<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        now_millis: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.decide(cluster, windows, now_millis)
        )))
    }

    fn take_now(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        now_millis: u64,
    ) -> Option<Result<Taken, StoreError>> {
        Some(Ok(self.decide(cluster, windows, now_millis)))
    }

    fn peek<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        now_millis: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.peek_counts(cluster, windows, now_millis)
        )))
    }

    fn peek_now(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        now_millis: u64,
    ) -> Option<Result<Taken, StoreError>> {
        Some(Ok(self.peek_counts(cluster, windows, now_millis)))
    }

    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        taken: &'a Taken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if taken.admitted {
            if let Some(counters) = self.counters.read().get(cluster) {
                let mut counters = counters.lock();
                for w in windows {
                    let start = window_start(w, taken.now_millis);
                    let Some(i) = counters
                        .keys
                        .iter()
                        .position(|(n, s)| *n == w.name && *s == w.seconds)
                    else {
                        continue;
                    };
                    let slot = &mut counters.slots[i];
                    if slot.start == start && slot.count > 0 {
                        slot.count -= 1;
                    }
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Versioned>, StoreError>> {
        let doc = self.document.lock();
        let loaded = doc.state.clone().map(|state| Versioned {
            version: doc.version,
            state,
        });
        Box::pin(std::future::ready(Ok(loaded)))
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.document.lock().version)))
    }

    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
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
        Box::pin(std::future::ready(Ok(result)))
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let doc = self.document.lock();
        let entries = doc.audit.iter().take(limit).cloned().collect();
        Box::pin(std::future::ready(Ok(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::conformance::conformance_tests!(async {
        Some(Arc::new(MemoryStore::new()) as Arc<dyn ControlStore>)
    });

    #[test]
    fn windows_roll_over_with_the_callers_clock() {
        let store = MemoryStore::new();
        let windows = [WindowConfig::new("second", 2, 1)];
        let t0 = 1_800_000_000_000;
        let admit = |now| {
            store
                .take_now("c", &windows, now)
                .unwrap()
                .unwrap()
                .admitted
        };
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
    fn changing_windows_keeps_remaining_counters() {
        let store = MemoryStore::new();
        let now = 1_800_000_000_000;
        let a = [
            WindowConfig::new("minute", 5, 60),
            WindowConfig::new("hour", 9, 3600),
        ];
        for _ in 0..3 {
            store.take_now("c", &a, now).unwrap().unwrap();
        }
        let b = [WindowConfig::new("hour", 9, 3600)];
        let taken = store.take_now("c", &b, now).unwrap().unwrap();
        assert_eq!(taken.counts, vec![4]);
    }
}
