//! The in-process store (the default): sharded, bounded, expiring.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dreamnet_common::{clock, SharedClock};
use parking_lot::Mutex;

use crate::{
    store::{
        Claim, ClaimRequest, Completion, FencingToken, IdempotencyStore, StoreError, StoreFuture,
    },
    Fingerprint, StoredResponse,
};

/// Bookkeeping bytes counted per record on top of its strings and response.
const ENTRY_OVERHEAD: usize = 128;
/// Each shard drops its expired records every this many writes, so memory held by
/// expired keys is bounded even when the store never reaches its limits.
const SWEEP_EVERY: u32 = 1024;

/// An in-process [`IdempotencyStore`]: the default, for a single replica.
///
/// - No global lock: records live in shards (each a `parking_lot::Mutex<HashMap>`), picked
///   by a hash of (scope, key), so requests with different keys rarely contend.
/// - Bounded: at most `max_entries` records and `max_bytes` (keys, fingerprints and stored
///   responses) in total, split evenly across shards. Expired records are dropped
///   periodically and whenever a shard is full; if it is still full, the completed record
///   closest to expiry is evicted. In-flight claims are never evicted: when a shard holds
///   nothing else, a claim fails with [`StoreError::Full`] (503) rather than lose a lock.
/// - Time comes from an injected [`SharedClock`], so tests drive leases and TTLs.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: SharedClock,
    tokens: AtomicU64,
    max_entries_per_shard: usize,
    max_bytes_per_shard: usize,
}

#[derive(Default)]
struct Shard {
    records: HashMap<String, Record>,
    bytes: usize,
    writes_since_sweep: u32,
}

struct Record {
    fingerprint: Fingerprint,
    trace_id: Option<String>,
    /// Unix ms: the lease end while in flight, the TTL end once completed.
    expires_at: u64,
    size: usize,
    state: State,
}

enum State {
    InFlight(FencingToken),
    Completed(StoredResponse),
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug)]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    max_bytes: usize,
    shards: usize,
    clock: SharedClock,
}

impl MemoryStoreBuilder {
    /// The maximum number of records (default 100 000).
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The maximum bytes of keys and stored responses (default 256 MiB). Each shard gets an
    /// equal part; a response larger than one part is not stored (the key is released).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The number of shards (default 16; rounded up to at least 1).
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// The clock for leases and TTLs (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let shards = self.shards.max(1);
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
                clock: self.clock,
                tokens: AtomicU64::new(0),
                max_entries_per_shard: self.max_entries.div_ceil(shards).max(1),
                max_bytes_per_shard: self.max_bytes.div_ceil(shards).max(1),
            }),
        }
    }
}

impl MemoryStore {
    /// A store with the default limits and the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with the defaults: 100 000 records, 256 MiB, 16 shards, the system clock.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_entries: 100_000,
            max_bytes: 256 << 20,
            shards: 16,
            clock: clock::system(),
        }
    }

    /// The number of records held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().records.len())
            .sum()
    }

    /// Whether no records are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes accounted to records held.
    pub fn bytes(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Drops every expired record now (it also happens on its own as records are written).
    pub fn purge_expired(&self) {
        let now = self.inner.clock.now_millis();
        for shard in &*self.inner.shards {
            shard.lock().sweep(now);
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        let hash = self.inner.hasher.hash_one(id);
        // The modulo of a 64-bit hash by a small shard count: truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let index = (hash % self.inner.shards.len() as u64) as usize;
        &self.inner.shards[index]
    }

    fn claim_now(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let id = record_id(request.scope, request.key);
        let now = self.inner.clock.now_millis();
        let mut shard = self.shard(&id).lock();
        if let Some(record) = shard.records.get(&id).filter(|r| r.expires_at > now) {
            let original_trace_id = record.trace_id.clone();
            if record.fingerprint != *request.fingerprint {
                return Ok(Claim::Mismatch { original_trace_id });
            }
            return Ok(match &record.state {
                State::InFlight(_) => Claim::InFlight {
                    retry_after: Duration::from_millis(record.expires_at - now),
                    original_trace_id,
                },
                State::Completed(response) => Claim::Completed {
                    response: response.clone(),
                    original_trace_id,
                },
            });
        }
        shard.remove(&id);
        let token = FencingToken(self.inner.tokens.fetch_add(1, Ordering::Relaxed) + 1);
        let trace_id = request.trace_id.map(str::to_owned);
        let size = ENTRY_OVERHEAD + id.len() + 64 + trace_id.as_ref().map_or(0, String::len);
        shard.make_room(now, size, &self.inner)?;
        shard.insert(
            id,
            Record {
                fingerprint: request.fingerprint.clone(),
                trace_id,
                expires_at: now.saturating_add(millis(request.lease)),
                size,
                state: State::InFlight(token),
            },
        );
        Ok(Claim::Proceed(token))
    }

    fn complete_now(
        &self,
        scope: &str,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<Completion, StoreError> {
        let id = record_id(scope, key);
        let now = self.inner.clock.now_millis();
        let mut shard = self.shard(&id).lock();
        let owns = matches!(
            shard.records.get(&id),
            Some(Record { state: State::InFlight(held), .. }) if *held == token
        );
        if !owns {
            return Ok(Completion::Superseded);
        }
        let Some(mut record) = shard.remove(&id) else {
            return Ok(Completion::Superseded);
        };
        let response_size = response.body.len()
            + response
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        record.size += response_size;
        if record.size > self.inner.max_bytes_per_shard {
            return Ok(Completion::Dropped);
        }
        if shard.make_room(now, record.size, &self.inner).is_err() {
            return Ok(Completion::Dropped);
        }
        record.expires_at = now.saturating_add(millis(ttl));
        record.state = State::Completed(response.clone());
        shard.insert(id, record);
        Ok(Completion::Stored)
    }

    fn release_now(&self, scope: &str, key: &str, token: FencingToken) -> bool {
        let id = record_id(scope, key);
        let mut shard = self.shard(&id).lock();
        let owns = matches!(
            shard.records.get(&id),
            Some(Record { state: State::InFlight(held), .. }) if *held == token
        );
        if owns {
            shard.remove(&id);
        }
        owns
    }
}

impl Shard {
    fn insert(&mut self, id: String, record: Record) {
        self.bytes += record.size;
        if let Some(old) = self.records.insert(id, record) {
            self.bytes -= old.size;
        }
        self.writes_since_sweep += 1;
    }

    fn remove(&mut self, id: &str) -> Option<Record> {
        let record = self.records.remove(id)?;
        self.bytes -= record.size;
        Some(record)
    }

    fn sweep(&mut self, now: u64) {
        let mut freed = 0;
        self.records.retain(|_, r| {
            let keep = r.expires_at > now;
            if !keep {
                freed += r.size;
            }
            keep
        });
        self.bytes -= freed;
        self.writes_since_sweep = 0;
    }

    /// Makes room for one more record of `size` bytes.
    fn make_room(&mut self, now: u64, size: usize, limits: &Inner) -> Result<(), StoreError> {
        let fits = |s: &Self| {
            s.records.len() < limits.max_entries_per_shard
                && s.bytes + size <= limits.max_bytes_per_shard
        };
        if self.writes_since_sweep >= SWEEP_EVERY || !fits(self) {
            self.sweep(now);
        }
        while !fits(self) {
            // Evict the completed records closest to expiry, an eighth of them at once so a
            // full shard pays for one scan per many inserts, not one per insert. In-flight
            // claims are locks and are never evicted.
            let mut expiries: Vec<u64> = self
                .records
                .values()
                .filter(|r| matches!(r.state, State::Completed(_)))
                .map(|r| r.expires_at)
                .collect();
            if expiries.is_empty() {
                return Err(StoreError::Full);
            }
            let batch = (expiries.len() / 8).max(1);
            let (_, threshold, _) = expiries.select_nth_unstable(batch - 1);
            let threshold = *threshold;
            // Ties at the threshold go too: a slightly larger batch, never a second scan.
            let mut freed = 0;
            self.records.retain(|_, r| {
                let evict = matches!(r.state, State::Completed(_)) && r.expires_at <= threshold;
                if evict {
                    freed += r.size;
                }
                !evict
            });
            self.bytes -= freed;
        }
        Ok(())
    }
}

/// (scope, key) as one unambiguous string: the key, a NUL, then the scope. Layer keys are
/// printable ASCII (never NUL, never empty), so the split is unambiguous; a key from a
/// direct caller that is empty or contains NUL takes a length-prefixed form starting with
/// NUL, which no fast-path id does. Built by hand: `format!` showed up in claim profiles.
fn record_id(scope: &str, key: &str) -> String {
    if key.is_empty() || key.contains('\0') {
        return format!("\0{}:{key}{scope}", key.len());
    }
    let mut id = String::with_capacity(key.len() + 1 + scope.len());
    id.push_str(key);
    id.push('\0');
    id.push_str(scope);
    id
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        let result = self.claim_now(&request);
        Box::pin(std::future::ready(result))
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion> {
        let result = self.complete_now(scope, key, token, response, ttl);
        Box::pin(std::future::ready(result))
    }

    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool> {
        let released = self.release_now(scope, key, token);
        Box::pin(std::future::ready(Ok(released)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dreamnet_common::ManualClock;

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::from_hex(s)
    }

    fn claim(store: &MemoryStore, key: &str, fingerprint: &Fingerprint) -> Claim {
        store
            .claim_now(&ClaimRequest {
                scope: "s",
                key,
                fingerprint,
                trace_id: Some("t0"),
                lease: Duration::from_secs(30),
            })
            .unwrap()
    }

    fn response(body: &'static [u8]) -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![],
            body: Bytes::from_static(body),
        }
    }

    fn token(claim: Claim) -> FencingToken {
        match claim {
            Claim::Proceed(token) => token,
            other => panic!("expected proceed, got {other:?}"),
        }
    }

    #[test]
    fn claim_complete_replay_mismatch() {
        let clock = ManualClock::new(1_000);
        let store = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        let a = fp("a");
        let t = token(claim(&store, "k", &a));
        assert!(matches!(
            claim(&store, "k", &a),
            Claim::InFlight { retry_after, .. } if retry_after == Duration::from_secs(30)
        ));
        assert!(matches!(
            claim(&store, "k", &fp("b")),
            Claim::Mismatch { .. }
        ));
        let done = store.complete_now("s", "k", t, &response(b"x"), Duration::from_secs(600));
        assert_eq!(done.unwrap(), Completion::Stored);
        match claim(&store, "k", &a) {
            Claim::Completed {
                response,
                original_trace_id,
            } => {
                assert_eq!(response.body, "x");
                assert_eq!(original_trace_id.as_deref(), Some("t0"));
            }
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_secs(600));
        token(claim(&store, "k", &fp("b")));
    }

    #[test]
    fn lease_end_supersedes_and_release_needs_the_token() {
        let clock = ManualClock::new(0);
        let store = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        let a = fp("a");
        let first = token(claim(&store, "k", &a));
        clock.advance(Duration::from_secs(30));
        let second = token(claim(&store, "k", &a));
        assert!(second > first);
        assert!(!store.release_now("s", "k", first));
        let late = store.complete_now("s", "k", first, &response(b"late"), Duration::from_secs(1));
        assert_eq!(late.unwrap(), Completion::Superseded);
        assert!(store.release_now("s", "k", second));
        token(claim(&store, "k", &a));
    }

    #[test]
    fn bounded_by_entries_evicting_completed_never_in_flight() {
        let store = MemoryStore::builder().max_entries(2).shards(1).build();
        let a = fp("a");
        let t1 = token(claim(&store, "k1", &a));
        token(claim(&store, "k2", &a));
        // Full of in-flight claims: refuse rather than drop a lock.
        assert!(matches!(
            store.claim_now(&ClaimRequest {
                scope: "s",
                key: "k3",
                fingerprint: &a,
                trace_id: None,
                lease: Duration::from_secs(1),
            }),
            Err(StoreError::Full)
        ));
        store
            .complete_now("s", "k1", t1, &response(b"1"), Duration::from_secs(60))
            .unwrap();
        token(claim(&store, "k3", &a));
        assert_eq!(store.len(), 2);
        // k1 (completed) was evicted to make room; k2 is still locked.
        assert!(matches!(claim(&store, "k2", &a), Claim::InFlight { .. }));
    }

    #[test]
    fn full_shard_evicts_a_batch_closest_to_expiry() {
        let store = MemoryStore::builder().max_entries(16).shards(1).build();
        let a = fp("a");
        for i in 0..16u64 {
            let key = format!("k{i}");
            let t = token(claim(&store, &key, &a));
            // k0 expires first, k15 last.
            let ttl = Duration::from_secs(100 + i);
            store
                .complete_now("s", &key, t, &response(b"r"), ttl)
                .unwrap();
        }
        token(claim(&store, "new", &a));
        assert_eq!(store.len(), 15, "16 / 8 = 2 evicted, 1 inserted");
        for kept in ["k2", "k15"] {
            assert!(
                matches!(claim(&store, kept, &a), Claim::Completed { .. }),
                "{kept} kept"
            );
        }
        assert!(
            matches!(claim(&store, "k1", &a), Claim::Proceed(_)),
            "k1 evicted"
        );
        assert_eq!(store.len(), 16);
    }

    #[test]
    fn bounded_by_bytes() {
        let store = MemoryStore::builder().max_bytes(4096).shards(1).build();
        let a = fp("a");
        let t = token(claim(&store, "big", &a));
        let big = StoredResponse {
            status: 200,
            headers: vec![],
            body: Bytes::from(vec![0u8; 8192]),
        };
        let done = store.complete_now("s", "big", t, &big, Duration::from_secs(60));
        assert_eq!(done.unwrap(), Completion::Dropped);
        // The claim is gone: the key is free again.
        token(claim(&store, "big", &a));
        assert!(store.bytes() <= 4096);
    }

    #[test]
    fn expired_records_are_swept() {
        let clock = ManualClock::new(0);
        let store = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        for i in 0..10 {
            claim(&store, &format!("k{i}"), &fp("a"));
        }
        assert_eq!(store.len(), 10);
        clock.advance(Duration::from_secs(31));
        store.purge_expired();
        assert_eq!(store.len(), 0);
        assert_eq!(store.bytes(), 0);
    }

    mod model {
        use super::*;
        use dreamnet_common::Clock;
        use proptest::prelude::*;
        use std::collections::HashMap;

        const LEASE: u64 = 1_000;
        const TTL: u64 = 5_000;

        #[derive(Clone, Debug)]
        enum Op {
            Claim {
                key: u8,
                fp: u8,
            },
            /// Complete with the key's newest token (`stale: false`) or an older one.
            Complete {
                key: u8,
                stale: bool,
            },
            Release {
                key: u8,
                stale: bool,
            },
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..3u8, 0..2u8).prop_map(|(key, fp)| Op::Claim { key, fp }),
                (0..3u8, any::<bool>()).prop_map(|(key, stale)| Op::Complete { key, stale }),
                (0..3u8, any::<bool>()).prop_map(|(key, stale)| Op::Release { key, stale }),
                (0..3_000u64).prop_map(Op::Advance),
            ]
        }

        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Held {
            InFlight(FencingToken),
            Completed,
        }

        proptest! {
            /// The store behaves like a plain map of (fingerprint, state, expiry) per key:
            /// at most one live holder per key, stale tokens never complete or release.
            #[test]
            fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
                let clock = ManualClock::new(0);
                let store = MemoryStore::builder().clock(Arc::new(clock.clone())).build();
                let mut model: HashMap<u8, (u8, Held, u64)> = HashMap::new();
                let mut tokens: HashMap<u8, Vec<FencingToken>> = HashMap::new();
                for op in ops {
                    let now = clock.now_millis();
                    match op {
                        Op::Claim { key, fp } => {
                            let fingerprint = Fingerprint::from_hex(format!("fp{fp}"));
                            let got = store.claim_now(&ClaimRequest {
                                scope: "s",
                                key: &key.to_string(),
                                fingerprint: &fingerprint,
                                trace_id: None,
                                lease: Duration::from_millis(LEASE),
                            }).unwrap();
                            match model.get(&key).filter(|(_, _, until)| *until > now) {
                                Some((held_fp, _, _)) if *held_fp != fp => {
                                    prop_assert!(matches!(got, Claim::Mismatch { .. }), "{got:?}");
                                }
                                Some((_, Held::InFlight(_), until)) => {
                                    prop_assert_eq!(got, Claim::InFlight {
                                        retry_after: Duration::from_millis(until - now),
                                        original_trace_id: None,
                                    });
                                }
                                Some((_, Held::Completed, _)) => {
                                    prop_assert!(matches!(got, Claim::Completed { .. }), "{got:?}");
                                }
                                None => {
                                    let Claim::Proceed(token) = got else {
                                        return Err(TestCaseError::fail(format!("expected proceed, got {got:?}")));
                                    };
                                    let issued = tokens.entry(key).or_default();
                                    prop_assert!(issued.last().is_none_or(|last| token > *last));
                                    issued.push(token);
                                    model.insert(key, (fp, Held::InFlight(token), now + LEASE));
                                }
                            }
                        }
                        Op::Complete { key, stale } | Op::Release { key, stale } => {
                            let issued = tokens.get(&key).cloned().unwrap_or_default();
                            let token = if stale {
                                issued.first().copied().unwrap_or(FencingToken(0))
                            } else {
                                issued.last().copied().unwrap_or(FencingToken(0))
                            };
                            let owns = matches!(model.get(&key), Some((_, Held::InFlight(t), _)) if *t == token);
                            if matches!(op, Op::Complete { .. }) {
                                let got = store.complete_now(
                                    "s", &key.to_string(), token, &response(b"r"), Duration::from_millis(TTL),
                                ).unwrap();
                                prop_assert_eq!(got, if owns { Completion::Stored } else { Completion::Superseded });
                                if owns {
                                    let fp = model[&key].0;
                                    model.insert(key, (fp, Held::Completed, now + TTL));
                                }
                            } else {
                                prop_assert_eq!(store.release_now("s", &key.to_string(), token), owns);
                                if owns {
                                    model.remove(&key);
                                }
                            }
                        }
                        Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                    }
                }
            }
        }
    }

    #[test]
    fn record_ids_are_unambiguous() {
        assert_ne!(record_id("a", "bc"), record_id("ab", "c"));
        assert_ne!(record_id("c", "a\0b"), record_id("b\0c", "a"));
        assert_ne!(record_id("\0x", ""), record_id("x", "\0"));
    }
}
