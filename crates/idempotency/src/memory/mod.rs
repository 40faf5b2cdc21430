//! The in-process store (the default): sharded, bounded, expiring.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dreamnet_common::{clock, SharedClock};
use foldhash::fast::RandomState;
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
    /// foldhash, randomly seeded per store (as the shard maps are): SipHash over the record
    /// id was a visible share of a keyed request, and a per-process random seed keeps
    /// client-chosen keys from being aimed at one shard or bucket.
    hasher: RandomState,
    clock: SharedClock,
    tokens: AtomicU64,
    max_entries_per_shard: usize,
    max_bytes_per_shard: usize,
}

#[derive(Default)]
struct Shard {
    records: HashMap<String, Record, RandomState>,
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
                hasher: RandomState::default(),
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

    fn extend_now(&self, scope: &str, key: &str, token: FencingToken, lease: Duration) -> bool {
        let id = record_id(scope, key);
        let now = self.inner.clock.now_millis();
        let mut shard = self.shard(&id).lock();
        match shard.records.get_mut(&id) {
            Some(record)
                if matches!(record.state, State::InFlight(held) if held == token)
                    && record.expires_at > now =>
            {
                record.expires_at = record.expires_at.max(now.saturating_add(millis(lease)));
                true
            }
            _ => false,
        }
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

    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let extended = self.extend_now(scope, key, token, lease);
        Box::pin(std::future::ready(Ok(extended)))
    }
}

#[cfg(test)]
mod tests;
