//! The Redis store (feature `redis`): shared control state and rate-limit counters.
//!
//! Keys (prefix default `dreamnet:`; the hash tag keeps each script on one cluster slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}ctl:{state}:version` | string | state version, +1 per change |
//! | `{prefix}ctl:{state}:doc` | string | the [`ControlState`] as JSON |
//! | `{prefix}ctl:{state}:audit` | list | audit entries as JSON, newest first, capped |
//! | `{prefix}ctl:{<cluster>}:epoch` | string | bumped after every change, read by the rate-limit script |
//! | `{prefix}ctl:{<cluster>}:rl:<window>:<seconds>` | hash `s`, `c` | window start (ms) and count; expires after the window |
//! | `{prefix}ctl:{<cluster>}:rlc:<window>:<seconds>:<client>` | hash `s`, `c` | the same for one client's window (per-client quotas) |
//!
//! One admission decision is one `EVALSHA` of [`TAKE_SCRIPT`]: it reads Redis server time,
//! checks every window, takes one unit from each only if all admit, and returns the
//! cluster's epoch so the plane notices a change made elsewhere in the same round trip.
//! Concurrent decisions of one cluster share that run (`take_batch`): the script admits
//! `n` takes in a row at once, each answered as if it had run alone in that order (with
//! per-client windows, [`TAKE_CLIENTS_SCRIPT`] does the same over any clients' counters). A
//! per-client decision is the same script with the client's counters after the cluster's:
//! the script does not tell them apart, so aggregate and per-client windows admit all or
//! nothing together, and the client's keys carry the cluster's hash tag (one slot) and the
//! same TTL (a window after it ends, plus a minute), so idle clients cost nothing.
//!
//! On a Redis Cluster every script's keys share one hash tag (`{state}` for the state
//! document, version and audit; `{<cluster>}` for a cluster's epoch and counters), so each
//! script runs on one master. A cluster whose slot's master is unreachable fails that
//! decision alone (the plane's fail-open policy, its metric and warning apply); clusters on
//! the other masters keep their limits.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dreamnet_common::redis_connection::{
    LuaScript, RedisConnection, RedisEndpoint, RedisTimeouts, ScriptCall,
};
use redis::{aio::ConnectionManager, AsyncCommands};

mod breaker;
mod take_batch;

use super::{
    AuditEntry, ClientQuota, ControlState, Count, CounterStore, StateStore, StoreError,
    StoreFuture, Versioned, AUDIT_CAPACITY,
};
use crate::{
    config::WindowConfig,
    window::{window_millis, Taken},
};

/// The rate-limit script: a mirror of [`crate::store::decide`] on Redis server time, for
/// `wanted` admissions in a row (one request, or a batch of a cluster's concurrent requests,
/// see `take_batch`).
///
/// `KEYS[1]` the cluster's epoch key, `KEYS[2..]` one counter per window; `ARGV[1]` is
/// `wanted`, then `limit, window_ms` per window (plus, in tests only, a time to use instead
/// of the server's). `wanted` takes in a row admit exactly the first `granted` of them,
/// `granted` being the room the fullest window has left (at most `wanted`): the script takes
/// those in one go. Returns `{granted, now_ms, epoch, count before...}`.
///
/// The counter's expiry is set when a window's first unit is taken, not on every take (it
/// is the same instant for the whole window): three calls fewer per admission, measured
/// 16.3-17.2 -> 11.7-12.1 us of Redis CPU per call (`redis-benchmark -P 16 -c 32`, three
/// windows, `INFO commandstats`).
pub(crate) const TAKE_SCRIPT: &str = r"
-- Redis < 5 needs effects replication to write after TIME; a no-op on newer servers.
if redis.replicate_commands then redis.replicate_commands() end
local n = #KEYS - 1
local wanted = tonumber(ARGV[1])
local now
if #ARGV > 2 * n + 1 then
  now = tonumber(ARGV[2 * n + 2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local starts, counts = {}, {}
local granted = wanted
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local len = tonumber(ARGV[2 * i + 1])
  local start = now - (now % len)
  local slot = redis.call('HMGET', KEYS[i + 1], 's', 'c')
  local count = 0
  if tonumber(slot[1]) == start then count = tonumber(slot[2]) or 0 end
  starts[i] = start
  counts[i] = count
  if limit - count < granted then granted = math.max(limit - count, 0) end
end
if granted > 0 then
  for i = 1, n do
    if counts[i] == 0 then
      redis.call('HSET', KEYS[i + 1], 's', starts[i], 'c', granted)
      redis.call('PEXPIREAT', KEYS[i + 1], starts[i] + tonumber(ARGV[2 * i + 1]) + 60000)
    else
      redis.call('HINCRBY', KEYS[i + 1], 'c', granted)
    end
  end
end
local epoch = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {granted, now, epoch}
for i = 1, n do out[#out + 1] = counts[i] end
return out
";

/// [`TAKE_SCRIPT`] for takes with per-client windows, for `m` requests in a row (one, or a
/// batch of a cluster's concurrent requests, see `take_batch`): each is admitted only if the
/// cluster's windows and its own client's all have room, then takes one unit from each,
/// exactly as `m` runs of [`TAKE_SCRIPT`] over the cluster's and that client's counters
/// would (a client may appear several times). Every key is under the cluster's hash tag.
///
/// `KEYS[1]` the epoch key, `KEYS[2..c+1]` the cluster's counters, then `p` counters per
/// request (its client's windows); `ARGV` is `c, p`, then `limit, window_ms` per cluster
/// window, the same per client window (plus, in tests only, a time). Returns `{now_ms,
/// epoch}`, then per request `admitted` followed by its `c + p` counts after it.
pub(crate) const TAKE_CLIENTS_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local c, p = tonumber(ARGV[1]), tonumber(ARGV[2])
local m = (#KEYS - 1 - c) / p
local now
if #ARGV > 2 + 2 * (c + p) then
  now = tonumber(ARGV[3 + 2 * (c + p)])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A counter as read: its key, limit, window start and length, count now and when read.
local function read(key, w)
  local limit, len = tonumber(ARGV[1 + 2 * w]), tonumber(ARGV[2 + 2 * w])
  local start = now - (now % len)
  local slot = redis.call('HMGET', key, 's', 'c')
  local count = 0
  if tonumber(slot[1]) == start then count = tonumber(slot[2]) or 0 end
  return {key = key, limit = limit, start = start, len = len, count = count, read = count}
end
local counters, cluster, clients = {}, {}, {}
for i = 1, c do
  cluster[i] = read(KEYS[1 + i], i)
  counters[#counters + 1] = cluster[i]
end
local out = {now, 0}
for j = 1, m do
  local own, admitted = {}, 1
  for i = 1, c do
    if cluster[i].count >= cluster[i].limit then admitted = 0 end
  end
  for k = 1, p do
    local key = KEYS[1 + c + (j - 1) * p + k]
    local counter = clients[key]
    if not counter then
      counter = read(key, c + k)
      clients[key] = counter
      counters[#counters + 1] = counter
    end
    own[k] = counter
    if counter.count >= counter.limit then admitted = 0 end
  end
  if admitted == 1 then
    for i = 1, c do cluster[i].count = cluster[i].count + 1 end
    for k = 1, p do own[k].count = own[k].count + 1 end
  end
  out[#out + 1] = admitted
  for i = 1, c do out[#out + 1] = cluster[i].count end
  for k = 1, p do out[#out + 1] = own[k].count end
end
for _, counter in ipairs(counters) do
  if counter.count > counter.read then
    if counter.read == 0 then
      redis.call('HSET', counter.key, 's', counter.start, 'c', counter.count)
      redis.call('PEXPIREAT', counter.key, counter.start + counter.len + 60000)
    else
      redis.call('HINCRBY', counter.key, 'c', counter.count - counter.read)
    end
  end
end
out[2] = tonumber(redis.call('GET', KEYS[1]) or '0')
return out
";

/// The read-only counterpart of [`TAKE_SCRIPT`] (writes nothing): `KEYS` one counter per
/// window, `ARGV` `window_ms` per window (plus, in tests only, a time to use instead of the
/// server's). Returns `{now_ms, count...}`.
pub(crate) const PEEK_SCRIPT: &str = r"
local n = #KEYS
local now
if #ARGV > n then
  now = tonumber(ARGV[n + 1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local out = {now}
for i = 1, n do
  local len = tonumber(ARGV[i])
  local slot = redis.call('HMGET', KEYS[i], 's', 'c')
  local count = 0
  if tonumber(slot[1]) == now - (now % len) then count = tonumber(slot[2]) or 0 end
  out[#out + 1] = count
end
return out
";

/// Gives back one unit per window: `KEYS` one counter per window, `ARGV` the window start
/// (ms) each unit was taken in. A counter that has rolled over or is at 0 is left alone.
const GIVE_BACK_SCRIPT: &str = r"
for i = 1, #KEYS do
  local slot = redis.call('HMGET', KEYS[i], 's', 'c')
  if tonumber(slot[1]) == tonumber(ARGV[i]) and (tonumber(slot[2]) or 0) > 0 then
    redis.call('HINCRBY', KEYS[i], 'c', -1)
  end
end
return 0
";

/// The state compare-and-swap: `KEYS` version, doc, audit; `ARGV` expected version, the
/// state JSON, the audit entry JSON, the audit capacity. Returns the new version or -1.
const CAS_SCRIPT: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
v = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return v
";

/// Control state and counters in Redis, shared by every replica using the same prefix.
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
    timeout: Duration,
    take: Arc<LuaScript>,
    take_clients: Arc<LuaScript>,
    peek: Arc<LuaScript>,
    give_back: Arc<LuaScript>,
    cas: Arc<LuaScript>,
    round_trips: Arc<AtomicU64>,
    /// Where concurrent takes of a cluster queue for one script run (`None`: every take
    /// runs on its own).
    takes: Option<Arc<take_batch::TakeLanes>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(unavailable)`
fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::unavailable(e)
}

impl RedisStore {
    /// Connects now (and fails if Redis cannot be reached). Must run inside tokio.
    ///
    /// # Errors
    /// A bad URL or an unreachable server.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_to(&RedisEndpoint::single(url)).await
    }

    /// Connects now to `endpoint` (one server, or a Redis Cluster's seed nodes; on a cluster
    /// every master must answer). Must run inside tokio.
    ///
    /// # Errors
    /// A bad URL or an unreachable server.
    pub async fn connect_to(endpoint: &RedisEndpoint) -> Result<Self, StoreError> {
        let store = Self::lazy_to(endpoint)?;
        let mut conn = store.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(store.timeout * 2, ping).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::unavailable("connect timed out")),
        }
    }

    /// A store that connects on first use and reconnects by itself, so a plane can start
    /// (from its configuration) while Redis is down. Must be called inside tokio.
    ///
    /// # Errors
    /// A bad URL.
    pub fn lazy(url: &str) -> Result<Self, StoreError> {
        Self::lazy_to(&RedisEndpoint::single(url))
    }

    /// [`lazy`](Self::lazy) for `endpoint` (one server, or a Redis Cluster's seed nodes).
    ///
    /// # Errors
    /// A bad URL.
    pub fn lazy_to(endpoint: &RedisEndpoint) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(500);
        let timeouts = RedisTimeouts {
            connection: timeout,
            response: timeout,
        };
        let conn = RedisConnection::lazy(endpoint, timeouts).map_err(unavailable)?;
        Ok(Self::from_connection(conn))
    }

    /// Uses an existing connection manager.
    pub fn from_manager(conn: ConnectionManager) -> Self {
        Self::from_connection(RedisConnection::Single(conn))
    }

    /// Uses an existing single-server or cluster connection.
    pub fn from_connection(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: Arc::from("dreamnet:"),
            timeout: Duration::from_millis(500),
            take: Arc::new(LuaScript::new(TAKE_SCRIPT)),
            take_clients: Arc::new(LuaScript::new(TAKE_CLIENTS_SCRIPT)),
            peek: Arc::new(LuaScript::new(PEEK_SCRIPT)),
            give_back: Arc::new(LuaScript::new(GIVE_BACK_SCRIPT)),
            cas: Arc::new(LuaScript::new(CAS_SCRIPT)),
            round_trips: Arc::new(AtomicU64::new(0)),
            takes: Some(Arc::default()),
        }
    }

    /// Whether concurrent takes of one cluster share one script run (default on): one
    /// round trip and one run of the script for every take that queued while the previous
    /// run was on the wire, each answered as if it had run alone in that order, so the
    /// counts stay exact (see `store/redis/take_batch.rs`). A lone take is sent at once.
    /// Takes with per-client windows batch too (any clients of the cluster in one run of
    /// `TAKE_CLIENTS_SCRIPT`). A clone under another [`prefix`](Self::prefix) or
    /// [`timeout`](Self::timeout) batches on its own.
    #[must_use]
    pub fn batch_takes(mut self, enabled: bool) -> Self {
        self.takes = enabled.then(Arc::default);
        self
    }

    /// A clone that runs every take on its own (the batches' writers use one).
    fn without_batching(&self) -> Self {
        Self {
            takes: None,
            ..self.clone()
        }
    }

    /// Sets the key prefix (default `dreamnet:`). Replicas sharing state use the same one.
    ///
    /// # Panics
    /// When the prefix contains `{` or `}` (it would change the keys' hash tags).
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        assert!(
            !prefix.contains(['{', '}']),
            "a Redis key prefix must not contain braces"
        );
        self.prefix = Arc::from(prefix);
        self.own_batches()
    }

    /// Requests sent to Redis by this store and its clones (a pipeline counts once).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Sets the time limit of one store operation (default 500 ms); past it the plane
    /// treats Redis as unreachable.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.own_batches()
    }

    /// Takes batches of its own: a clone with another prefix or time limit must not queue
    /// its takes for the writers of the store it was cloned from (they would run them
    /// under that store's keys).
    fn own_batches(mut self) -> Self {
        if self.takes.is_some() {
            self.takes = Some(Arc::default());
        }
        self
    }

    /// Deletes every key under this store's prefix (tests, or a full reset).
    ///
    /// # Errors
    /// An unreachable server.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}ctl:*", self.prefix);
        let keys = conn.keys_matching(&pattern).await.map_err(unavailable)?;
        let mut deleted = 0;
        for key in keys {
            deleted += conn.del::<_, u64>(key).await.map_err(unavailable)?;
        }
        Ok(deleted)
    }

    /// One take, on its own (`at` replaces server time: tests only).
    async fn run_take(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        client: Option<&ClientQuota>,
        at: Option<u64>,
    ) -> Result<Taken, StoreError> {
        Ok(self
            .run_take_many(cluster, windows, client, 1, at)
            .await?
            .taken(0))
    }

    /// Runs one of the counter scripts, with `at` as the last argument when given (the
    /// tests' clock in place of Redis time): its reply, a list of integers.
    async fn run_counts(
        &self,
        mut invocation: ScriptCall<'_>,
        at: Option<u64>,
        retry: Retry,
    ) -> Result<Vec<i64>, StoreError> {
        if let Some(at) = at {
            invocation.arg(at);
        }
        let invocation = &invocation;
        self.timed(retry, move |mut conn| async move {
            invocation.invoke(&mut conn).await
        })
        .await
    }

    /// One run of [`TAKE_SCRIPT`] for `wanted` takes in a row; `at` replaces server time
    /// (tests only).
    async fn run_take_many(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        client: Option<&ClientQuota>,
        wanted: u64,
        at: Option<u64>,
    ) -> Result<Granted, StoreError> {
        let mut invocation = self.take.call();
        invocation.key(self.epoch_key(cluster)).arg(wanted);
        let mut counted = 0;
        for (key, window) in self.counters(cluster, windows, client) {
            invocation
                .key(key)
                .arg(window.limit)
                .arg(window_millis(window));
            counted += 1;
        }
        let reply = self.run_counts(invocation, at, Retry::IfUnsent).await?;
        if reply.len() != 3 + counted {
            return Err(corrupt("rate-limit script answered the wrong shape"));
        }
        let granted = count(reply[0])?;
        if granted > wanted {
            return Err(corrupt("rate-limit script granted more than asked"));
        }
        Ok(Granted {
            granted,
            now_millis: count(reply[1])?,
            epoch: count(reply[2])?,
            before: reply[3..]
                .iter()
                .map(|&c| count(c))
                .collect::<Result<_, _>>()?,
        })
    }

    /// One run of [`TAKE_CLIENTS_SCRIPT`] for takes in a row by `clients` (each with the
    /// per-client `client_windows`); `at` replaces server time (tests only). One answer
    /// per client, in order.
    async fn run_take_clients(
        &self,
        cluster: &str,
        windows: &[WindowConfig],
        client_windows: &[WindowConfig],
        clients: &[Arc<str>],
        at: Option<u64>,
    ) -> Result<Vec<Taken>, StoreError> {
        let (c, p) = (windows.len(), client_windows.len());
        let mut invocation = self.take_clients.call();
        invocation.key(self.epoch_key(cluster)).arg(c).arg(p);
        for window in windows.iter().chain(client_windows) {
            invocation.arg(window.limit).arg(window_millis(window));
        }
        for window in windows {
            invocation.key(self.counter_key(cluster, window));
        }
        for client in clients {
            for window in client_windows {
                invocation.key(self.client_counter_key(cluster, window, client));
            }
        }
        let reply = self.run_counts(invocation, at, Retry::IfUnsent).await?;
        let each = 1 + c + p;
        if reply.len() != 2 + each * clients.len() {
            return Err(corrupt(
                "per-client rate-limit script answered the wrong shape",
            ));
        }
        let (now_millis, epoch) = (count(reply[0])?, count(reply[1])?);
        reply[2..]
            .chunks(each)
            .map(|answer| {
                Ok(Taken {
                    admitted: answer[0] == 1,
                    now_millis,
                    counts: answer[1..]
                        .iter()
                        .map(|&v| count(v))
                        .collect::<Result<_, _>>()?,
                    epoch: Some(epoch),
                })
            })
            .collect()
    }

    /// One run of [`PEEK_SCRIPT`]; `at` replaces server time (tests only).
    async fn run_peek(
        &self,
        windows: &[WindowConfig],
        cluster: &str,
        client: Option<&ClientQuota>,
        at: Option<u64>,
    ) -> Result<Taken, StoreError> {
        let mut invocation = self.peek.call();
        let mut counted = 0;
        for (key, window) in self.counters(cluster, windows, client) {
            invocation.key(key).arg(window_millis(window));
            counted += 1;
        }
        let reply = self
            .run_counts(invocation, at, Retry::IfConnectionLost)
            .await?;
        if reply.len() != 1 + counted {
            return Err(corrupt("rate-limit peek script answered the wrong shape"));
        }
        Ok(Taken {
            admitted: false,
            now_millis: count(reply[0])?,
            epoch: None,
            counts: reply[1..]
                .iter()
                .map(|&c| count(c))
                .collect::<Result<_, _>>()?,
        })
    }

    fn state_key(&self, what: &str) -> String {
        format!("{}ctl:{{state}}:{what}", self.prefix)
    }

    fn epoch_key(&self, cluster: &str) -> String {
        format!("{}ctl:{{{cluster}}}:epoch", self.prefix)
    }

    fn counter_key(&self, cluster: &str, window: &WindowConfig) -> String {
        format!(
            "{}ctl:{{{cluster}}}:rl:{}:{}",
            self.prefix, window.name, window.seconds
        )
    }

    /// The counters one decision counts, with their windows: the cluster's, then the
    /// client's (keys under the cluster's hash tag, so one script covers them all).
    fn counters<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
    ) -> impl Iterator<Item = (String, &'a WindowConfig)> + 'a {
        let own = windows
            .iter()
            .map(move |w| (self.counter_key(cluster, w), w));
        let client = client.into_iter().flat_map(move |c| {
            c.windows
                .iter()
                .map(move |w| (self.client_counter_key(cluster, w, &c.client), w))
        });
        own.chain(client)
    }

    /// The key of `client`'s counter of `window` (under the cluster's hash tag).
    fn client_counter_key(&self, cluster: &str, window: &WindowConfig, client: &str) -> String {
        format!(
            "{}ctl:{{{cluster}}}:rlc:{}:{}:{client}",
            self.prefix, window.name, window.seconds
        )
    }

    /// Runs `op` on a clone of the connection within the store's time limit, and once more
    /// (within the same limit) after an error `retry` allows. Why: after Redis was down,
    /// `ConnectionManager` still holds the failed connection attempt and answers the next
    /// command with that stale `Connection refused` while it reconnects in the background;
    /// the retry waits for that reconnection, so the first request after Redis is back
    /// succeeds.
    async fn timed<T, F, Fut>(&self, retry: Retry, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let attempts = async {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            match op(self.conn.clone()).await {
                Err(error) if retry.allows(&error) => {
                    tracing::debug!(%error, "redis: connection-level error; retrying once");
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    op(self.conn.clone()).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(self.no_answer()),
        }
    }

    /// The error of an operation past the store's time limit.
    fn no_answer(&self) -> StoreError {
        StoreError::unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
    }
}

/// After which errors an operation is sent once more.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Not idempotent (a take, a give-back, the state compare-and-swap): only when the
    /// command provably never reached Redis, i.e. the connection was refused.
    IfUnsent,
    /// Reads and idempotent writes (an epoch bump only causes one more reload): after
    /// any connection-level error.
    IfConnectionLost,
}

impl Retry {
    fn allows(self, error: &redis::RedisError) -> bool {
        match self {
            Self::IfUnsent => error.is_connection_refusal(),
            Self::IfConnectionLost => {
                error.is_connection_refusal()
                    || error.is_connection_dropped()
                    || error.is_io_error()
                    || error.is_timeout()
            }
        }
    }
}

/// What one run of [`TAKE_SCRIPT`] answered for `wanted` takes in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Granted {
    /// How many of the takes were admitted: the first `granted`.
    granted: u64,
    now_millis: u64,
    epoch: u64,
    /// Each window's count before the first take.
    before: Vec<u64>,
}

impl Granted {
    /// The answer of the `i`-th take (from 0), as if it had run alone right after the
    /// ones before it: admitted when `i < granted`, with the counts after it (or, when
    /// refused, after the admitted ones).
    fn taken(&self, i: u64) -> Taken {
        let admitted = i < self.granted;
        let spent = if admitted { i + 1 } else { self.granted };
        Taken {
            admitted,
            now_millis: self.now_millis,
            counts: self.before.iter().map(|c| c + spent).collect(),
            epoch: Some(self.epoch),
        }
    }
}

/// A count from a counter script's reply.
fn count(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt("negative counter"))
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::corrupt(what)
}

impl CounterStore for RedisStore {
    fn count(
        &self,
        cluster: &Arc<str>,
        windows: &Arc<[WindowConfig]>,
        client: Option<&ClientQuota>,
        _now_millis: u64,
        mode: Count,
    ) -> StoreFuture<'static, Result<Taken, StoreError>> {
        // The future owns a clone of the store (a handful of `Arc`s) and of the arguments,
        // so the plane can wait on it after the request's borrow ends.
        let store = self.clone();
        let (cluster, windows) = (Arc::clone(cluster), Arc::clone(windows));
        // A client without windows of its own counts in the cluster's only.
        let client = client.filter(|c| !c.windows.is_empty()).cloned();
        StoreFuture::new(async move {
            match (mode, &store.takes) {
                (Count::Take, Some(lanes)) => {
                    let answer = lanes.take(&store, &cluster, windows, client);
                    match tokio::time::timeout(store.timeout, answer).await {
                        Ok(Ok(taken)) => taken,
                        Ok(Err(_)) => Err(StoreError::unavailable("the take's batch was dropped")),
                        Err(_) => Err(store.no_answer()),
                    }
                }
                (Count::Take, None) => {
                    let client = client.as_ref();
                    store.run_take(&cluster, &windows, client, None).await
                }
                (Count::Peek, _) => {
                    let client = client.as_ref();
                    store.run_peek(&windows, &cluster, client, None).await
                }
            }
        })
    }

    fn give_back<'a>(
        &'a self,
        cluster: &'a str,
        windows: &'a [WindowConfig],
        client: Option<&'a ClientQuota>,
        taken: &'a Taken,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        StoreFuture::new(async move {
            let counters: Vec<_> = self.counters(cluster, windows, client).collect();
            if !taken.admitted || counters.is_empty() {
                return Ok(());
            }
            let mut invocation = self.give_back.call();
            for (key, window) in counters {
                invocation
                    .key(key)
                    .arg(crate::window::window_start(window, taken.now_millis));
            }
            let invocation = &invocation;
            self.timed(Retry::IfUnsent, move |mut conn| async move {
                invocation.invoke::<i64>(&mut conn).await
            })
            .await
            .map(drop)
        })
    }
}

impl StateStore for RedisStore {
    fn load(&self) -> StoreFuture<'_, Result<Option<Versioned>, StoreError>> {
        StoreFuture::new(async move {
            let keys = &[self.state_key("version"), self.state_key("doc")];
            let (version, doc): (Option<u64>, Option<String>) = self
                .timed(Retry::IfConnectionLost, move |mut conn| async move {
                    conn.mget(keys).await
                })
                .await?;
            match (version.unwrap_or(0), doc) {
                (0, _) => Ok(None),
                (_, None) => Err(StoreError::corrupt("state version without a document")),
                (version, Some(doc)) => {
                    let state: ControlState =
                        serde_json::from_str(&doc).map_err(StoreError::corrupt)?;
                    Ok(Some(Versioned { version, state }))
                }
            }
        })
    }

    fn version(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        StoreFuture::new(async move {
            let key = &self.state_key("version");
            let version: Option<u64> = self
                .timed(Retry::IfConnectionLost, move |mut conn| async move {
                    conn.get(key).await
                })
                .await?;
            Ok(version.unwrap_or(0))
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        expected: u64,
        state: &'a ControlState,
        audit: &'a AuditEntry,
    ) -> StoreFuture<'a, Result<Option<u64>, StoreError>> {
        StoreFuture::new(async move {
            let doc = serde_json::to_string(state).map_err(StoreError::corrupt)?;
            let mut entry = audit.clone();
            entry.version = expected + 1;
            let entry = serde_json::to_string(&entry).map_err(StoreError::corrupt)?;
            let mut invocation = self.cas.call();
            invocation
                .key(self.state_key("version"))
                .key(self.state_key("doc"))
                .key(self.state_key("audit"))
                .arg(expected)
                .arg(doc)
                .arg(entry)
                .arg(AUDIT_CAPACITY);
            let invocation = &invocation;
            let version: i64 = self
                .timed(Retry::IfUnsent, move |mut conn| async move {
                    invocation.invoke(&mut conn).await
                })
                .await?;
            Ok(u64::try_from(version).ok())
        })
    }

    fn audit(&self, limit: usize) -> StoreFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        StoreFuture::new(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
            let key = &self.state_key("audit");
            let raw: Vec<String> = self
                .timed(Retry::IfConnectionLost, move |mut conn| async move {
                    conn.lrange(key, 0, stop).await
                })
                .await?;
            raw.iter()
                .map(|s| serde_json::from_str(s).map_err(StoreError::corrupt))
                .collect()
        })
    }

    fn notify<'a>(&'a self, clusters: &'a [String]) -> StoreFuture<'a, Result<(), StoreError>> {
        if clusters.is_empty() {
            // Redis refuses an empty pipeline; there is nobody to tell.
            return StoreFuture::ready(Ok(()));
        }
        StoreFuture::new(async move {
            let keys: Vec<String> = clusters.iter().map(|c| self.epoch_key(c)).collect();
            let keys = &keys;
            self.timed(Retry::IfConnectionLost, move |mut conn| async move {
                if conn.is_cluster() {
                    // Each epoch has its own hash tag, so a cluster cannot take them in one
                    // pipeline (CROSSSLOT); one INCR per cluster, all in flight together.
                    let bumps = keys.iter().map(|key| {
                        let mut conn = conn.clone();
                        async move { conn.incr::<_, _, i64>(key, 1).await }
                    });
                    futures_util::future::try_join_all(bumps).await.map(drop)
                } else {
                    let mut pipe = redis::pipe();
                    for key in keys {
                        pipe.incr(key, 1).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await
                }
            })
            .await
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dreamnet_common::Clock as _;

    /// A store on the test Redis with a fresh prefix, or `None` (after a loud skip notice).
    pub(crate) async fn store() -> Option<RedisStore> {
        let url = dreamnet_test_support::redis_url();
        match RedisStore::connect(&url).await {
            Ok(store) => Some(store.prefix(&dreamnet_test_support::unique_prefix("control"))),
            Err(e) => {
                dreamnet_test_support::unavailable("redis", &e);
                None
            }
        }
    }

    async fn purge(store: Arc<RedisStore>) {
        store.purge().await.unwrap();
    }

    crate::counter_store_tests!(store(), purge);
    crate::state_store_tests!(store(), purge);
    crate::epoch_tests!(store(), purge);
    crate::breaker_store_tests!(store(), purge);

    /// The same suites on a 3-master Redis Cluster of this test binary's own: the state's
    /// scripts (`{state}`) and each cluster's counters (`{<cluster>}`) on their masters.
    mod on_a_redis_cluster {
        use super::*;
        use dreamnet_common::redis_connection::RedisEndpoint;
        use dreamnet_test_support::redis_cluster::OwnRedisCluster;

        async fn store() -> Option<RedisStore> {
            let cluster = OwnRedisCluster::shared()?;
            let store = RedisStore::connect_to(&RedisEndpoint::cluster(cluster.urls()))
                .await
                .expect("the test's own cluster answers");
            // 10 s, not the 500 ms default: this suite checks behaviour, not deadlines, and on
            // the shared 2-core test machine a fresh cluster connection's first calls (slot
            // map, `EVAL` of each script on each master) beside 90 parallel tests took longer
            // than 2 s once (200 concurrent takes in `concurrent_burst_admits_exactly_the_limit`).
            Some(
                store
                    .prefix(&dreamnet_test_support::unique_prefix("control"))
                    .timeout(Duration::from_secs(10)),
            )
        }

        crate::counter_store_tests!(store(), purge);
        crate::state_store_tests!(store(), purge);
        crate::epoch_tests!(store(), purge);
        crate::breaker_store_tests!(store(), purge);

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn notify_bumps_epochs_that_live_on_different_masters() {
            let Some(cluster) = OwnRedisCluster::shared() else {
                return;
            };
            let Some(store) = store().await else { return };
            // Cluster ids whose hash tags land on three different masters.
            let mut ids: Vec<String> = Vec::new();
            for i in 0.. {
                let id = format!("c{i}");
                let master = cluster.master_of(&store.epoch_key(&id));
                if !ids
                    .iter()
                    .any(|o| cluster.master_of(&store.epoch_key(o)) == master)
                {
                    ids.push(id);
                }
                if ids.len() == cluster.masters() {
                    break;
                }
            }
            let windows = windows(&[WindowConfig::new("year", 5, 365 * 86_400)]);
            let epoch = |id: &str| {
                let (store, windows) = (store.clone(), Arc::clone(&windows));
                let id: Arc<str> = Arc::from(id);
                async move {
                    store
                        .count(&id, &windows, None, 0, Count::Peek)
                        .await
                        .unwrap();
                    store
                        .count(&id, &windows, None, 0, Count::Take)
                        .await
                        .unwrap()
                        .epoch
                }
            };
            for id in &ids {
                assert_eq!(epoch(id).await, Some(0));
            }
            store.notify(&ids).await.unwrap();
            for id in &ids {
                assert_eq!(epoch(id).await, Some(1), "{id}'s epoch was bumped");
            }
            store.purge().await.unwrap();
        }
    }

    fn windows(list: &[WindowConfig]) -> Arc<[WindowConfig]> {
        Arc::from(list)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_roll_over_on_server_time() {
        let Some(store) = store().await else { return };
        let windows = windows(&[WindowConfig::new("second", 1, 1)]);
        let cluster: Arc<str> = Arc::from("c");
        let take = || store.count(&cluster, &windows, None, 0, Count::Take);
        assert!(take().await.unwrap().admitted);
        dreamnet_test_support::eventually(
            "the 1 s window rolls over",
            Duration::from_secs(3),
            || async { take().await.unwrap().admitted.then_some(()) },
        )
        .await;
        store.purge().await.unwrap();
    }

    /// The Lua script mirrors [`crate::store::decide`]: the same random arrivals give the
    /// same decisions and counts, and the peek script reads those counts (the scripts are given
    /// the same clock for the comparison).
    mod mirror {
        use super::*;
        use crate::window::{decide, Slot};
        use proptest::prelude::*;
        use std::sync::{
            atomic::{AtomicU64, Ordering},
            OnceLock,
        };

        fn redis() -> &'static (tokio::runtime::Runtime, Option<RedisStore>) {
            static REDIS: OnceLock<(tokio::runtime::Runtime, Option<RedisStore>)> = OnceLock::new();
            REDIS.get_or_init(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let store = rt.block_on(store());
                (rt, store)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            #[test]
            fn lua_script_matches_decide(
                limits in proptest::collection::vec(0u64..5, 1..4),
                steps in proptest::collection::vec((0u64..20_000, 1u64..4), 1..60),
            ) {
                let (rt, Some(store)) = redis() else { return Ok(()) };
                static CASE: AtomicU64 = AtomicU64::new(0);
                let cluster = format!("mirror-{}", CASE.fetch_add(1, Ordering::Relaxed));
                let windows: Vec<WindowConfig> = limits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| WindowConfig::new(format!("w{i}"), l, [1, 60, 3600][i % 3]))
                    .collect();
                let mut slots = vec![Slot::default(); windows.len()];
                // A day ahead of real time, so the script's PEXPIREAT never deletes a key early.
                let mut now = dreamnet_common::SystemClock.now_millis() + 86_400_000;
                for (step, wanted) in steps {
                    now += step;
                    // `wanted` takes in a row at one instant: one script run (a batch) must
                    // answer each as `decide` does, one after the other.
                    let expected: Vec<_> =
                        (0..wanted).map(|_| decide(&mut slots, &windows, now)).collect();
                    let granted = rt
                        .block_on(store.run_take_many(&cluster, &windows, None, wanted, Some(now)))
                        .unwrap();
                    for (i, expected) in (0..).zip(&expected) {
                        let got = granted.taken(i);
                        prop_assert_eq!(got.admitted, expected.admitted);
                        prop_assert_eq!(&got.counts, &expected.counts);
                        prop_assert_eq!(got.now_millis, now);
                    }
                    let expected = expected.last().expect("at least one take");
                    let peeked = rt.block_on(store.run_peek(&windows, &cluster, None, Some(now))).unwrap();
                    prop_assert_eq!(&peeked.counts, &expected.counts);
                }
                rt.block_on(store.purge()).unwrap();
            }

            /// The per-client script, over batches of takes by a few clients (one may take
            /// several times in a batch), answers as the memory store's per-client decisions
            /// taken one by one.
            #[test]
            fn per_client_lua_script_matches_the_memory_store(
                cluster_limits in proptest::collection::vec(0u64..8, 1..3),
                client_limits in proptest::collection::vec(0u64..4, 1..3),
                steps in proptest::collection::vec(
                    (0u64..20_000, proptest::collection::vec(0usize..3, 1..5)),
                    1..30,
                ),
            ) {
                let (rt, Some(store)) = redis() else { return Ok(()) };
                // Its own prefix: the other mirror test purges its keys while this one runs.
                let store = &store
                    .clone()
                    .prefix(&dreamnet_test_support::unique_prefix("mirror-clients"));
                static CASE: AtomicU64 = AtomicU64::new(0);
                let cluster: Arc<str> =
                    format!("mirror-clients-{}", CASE.fetch_add(1, Ordering::Relaxed)).into();
                let spans = [1, 60, 3600];
                let windows: Arc<[WindowConfig]> = cluster_limits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| WindowConfig::new(format!("w{i}"), l, spans[i % 3]))
                    .collect();
                let client_windows: Arc<[WindowConfig]> = client_limits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| WindowConfig::new(format!("c{i}"), l, spans[(i + 1) % 3]))
                    .collect();
                let names: [Arc<str>; 3] = ["ann".into(), "bob".into(), "cy".into()];
                let memory = crate::MemoryStore::new();
                let mut now = dreamnet_common::SystemClock.now_millis() + 86_400_000;
                for (step, who) in steps {
                    now += step;
                    let clients: Vec<Arc<str>> = who.iter().map(|&i| Arc::clone(&names[i])).collect();
                    let expected: Vec<Taken> = clients
                        .iter()
                        .map(|client| {
                            let quota = ClientQuota {
                                client: Arc::clone(client),
                                windows: Arc::clone(&client_windows),
                            };
                            memory
                                .count(&cluster, &windows, Some(&quota), now, Count::Take)
                                .into_ready()
                                .expect("the memory store answers at once")
                                .unwrap()
                        })
                        .collect();
                    let got = rt
                        .block_on(store.run_take_clients(
                            &cluster, &windows, &client_windows, &clients, Some(now),
                        ))
                        .unwrap();
                    prop_assert_eq!(got.len(), expected.len());
                    for (got, expected) in got.iter().zip(&expected) {
                        prop_assert_eq!(got.admitted, expected.admitted);
                        prop_assert_eq!(&got.counts, &expected.counts);
                        prop_assert_eq!(got.now_millis, now);
                    }
                }
                rt.block_on(store.purge()).unwrap();
            }
        }
    }

    /// A batch's answers are those of its takes run one by one: the first `granted`
    /// admitted, each with the counts after it; the rest refused at the counts the admitted
    /// ones left.
    #[test]
    fn a_batch_answers_each_take_as_if_it_ran_alone_in_order() {
        let granted = Granted {
            granted: 2,
            now_millis: 7,
            epoch: 3,
            before: vec![1, 10],
        };
        let answers: Vec<_> = (0..4).map(|i| granted.taken(i)).collect();
        let admitted: Vec<_> = answers.iter().map(|t| t.admitted).collect();
        assert_eq!(admitted, [true, true, false, false]);
        let counts: Vec<_> = answers.iter().map(|t| t.counts.clone()).collect();
        assert_eq!(counts, [vec![2, 11], vec![3, 12], vec![3, 12], vec![3, 12]]);
        assert!(answers
            .iter()
            .all(|t| t.now_millis == 7 && t.epoch == Some(3)));
    }

    /// A client quota without windows counts in the cluster's windows only, batched or not.
    #[tokio::test]
    async fn a_client_without_windows_counts_in_the_clusters_only() {
        let Some(store) = store().await else { return };
        let (cluster, windows) = (Arc::from("c"), windows(&[WindowConfig::new("w", 5, 60)]));
        let quota = ClientQuota {
            client: Arc::from("ann"),
            windows: Arc::from(Vec::new()),
        };
        for store in [store.clone(), store.clone().batch_takes(false)] {
            let taken = store
                .count(&cluster, &windows, Some(&quota), 0, Count::Take)
                .await
                .unwrap();
            assert!(taken.admitted);
            assert_eq!(taken.counts.len(), 1);
        }
        store.purge().await.unwrap();
    }

    /// Concurrent takes that share a failed run all fail, each with the cause.
    #[tokio::test]
    async fn every_take_of_a_failed_batch_gets_the_error() {
        let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
        let (cluster, windows) = (Arc::from("c"), windows(&[WindowConfig::new("w", 5, 60)]));
        let takes = (0..8).map(|_| store.count(&cluster, &windows, None, 0, Count::Take));
        for result in futures_util::future::join_all(takes).await {
            let err = result.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
            assert!(
                std::error::Error::source(&err).is_some(),
                "the cause is kept"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_redis_is_an_error_fast() {
        let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
        let started = std::time::Instant::now();
        let err = store
            .count(
                &Arc::from("c"),
                &windows(&[WindowConfig::new("w", 1, 60)]),
                None,
                0,
                Count::Take,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
        assert!(store.load().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
