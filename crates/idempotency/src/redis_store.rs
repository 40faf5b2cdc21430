//! The Redis store (feature `redis`): for several replicas sharing one key space.

use std::{sync::Arc, time::Duration};

use dreamnet_common::{
    redis_connection::{LuaScript, RedisConnection, RedisEndpoint, RedisTimeouts},
    AccountId,
};
use redis::{aio::ConnectionManager, Value};
use sha2::{Digest, Sha256};

use crate::{
    store::{
        Claim, ClaimRequest, Completion, FencingToken, IdempotencyStore, StoreError, StoreFuture,
    },
    stored::CorruptRecord,
    Fingerprint, StoredResponse,
};

/// Claims in one atomic step. Time is Redis server time (`TIME`), so replicas with skewed
/// clocks agree. The record is a hash `{v, state, fp, trace, token, until[, resp]}` with a
/// `PX` expiry: the lease while in flight, the TTL once completed. A fencing token is the
/// server time in microseconds, or the previous token + 1 if that is larger, so it grows
/// across take-overs and across records (a key that expired and is claimed again).
const CLAIM: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return {'corrupt', 'not a hash'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = tonumber(t[1]) * 1000000 + tonumber(t[2])
if kind == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'v', 'state', 'fp', 'trace', 'token', 'until')
  local old_token, until_ms = tonumber(r[5]), tonumber(r[6])
  if r[1] ~= '1' or (r[2] ~= 'p' and r[2] ~= 'c') or not r[3] or not old_token or not until_ms then
    return {'corrupt', 'unexpected fields'}
  end
  if r[2] == 'c' or until_ms > now_ms then
    -- Live: the caller compares fingerprints (after checking the stored response).
    local trace = r[4] or ''
    if r[2] == 'c' then
      return {'completed', trace, r[3], redis.call('HGET', KEYS[1], 'resp') or false}
    end
    return {'inflight', trace, r[3], until_ms - now_ms}
  end
  if old_token >= token then token = old_token + 1 end
end
local lease = tonumber(ARGV[3])
-- A fresh key (the common case) has nothing to clear; an expired lease's fields are replaced.
if kind == 'hash' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'v', '1', 'state', 'p', 'fp', ARGV[1], 'trace', ARGV[2],
  'token', string.format('%.0f', token), 'until', string.format('%.0f', now_ms + lease))
redis.call('PEXPIRE', KEYS[1], lease)
return {'proceed', string.format('%.0f', token)}
";

/// Stores the response if the token still holds the key.
const COMPLETE: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'p' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'c', 'resp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Deletes the record if the token still holds the key.
const RELEASE: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'p' or r[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// Pushes the lease of the token's in-flight record to `ARGV[2]` ms from now (Redis time),
/// never shortening it; 0 when the token no longer holds a live lease.
const EXTEND: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'until')
if r[1] ~= 'p' or r[2] ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(r[3])
if not until_ms or until_ms <= now_ms then return 0 end
local wanted = now_ms + tonumber(ARGV[2])
if wanted > until_ms then
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', wanted))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
";

/// A Redis [`IdempotencyStore`].
///
/// - One Lua script per operation (`EVALSHA`, loaded on first use): a claim, a completion
///   and a release are one round trip each; a replay is one round trip.
/// - Redis server time; `PX` expiry (lease while in flight, TTL once completed).
/// - Keys `<prefix>idem:{<tag>}:<scope>/<key>` ([`record_key`](Self::record_key)): the hash
///   tag is derived from (scope, key), so on a Redis Cluster the records spread over every
///   slot (one busy scope, e.g. every anonymous client, is not one hot slot). Every
///   operation touches one record, so nothing needs two records in one slot. A scope that
///   breaks the account-id rule (1..=128 characters of `[A-Za-z0-9._@:-]`, see
///   `dreamnet_common::AccountId`) is written as `sha256:<hex>`; neither form contains `/`,
///   so the scope ends at the first `/`.
/// - A single Redis or a Redis Cluster ([`RedisStore::builder_for`] with a cluster
///   [`RedisEndpoint`]): the same scripts, routed by the record's slot; the client follows
///   `MOVED` / `ASK` itself. A record whose master is unreachable fails that request alone
///   (503); records on the other masters keep working.
/// - Every operation times out (default 2 s), so an unreachable server fails fast (503).
///
/// Clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConnection,
    prefix: String,
    op_timeout: Duration,
    claim: LuaScript,
    complete: LuaScript,
    release: LuaScript,
    extend: LuaScript,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    endpoint: RedisEndpoint,
    prefix: String,
    connection_timeout: Duration,
    response_timeout: Duration,
    op_timeout: Duration,
}

impl RedisStoreBuilder {
    /// The key prefix (default `dreamnet:`). Keep braces out of it: a `{...}` in the prefix
    /// would become every record's hash tag (one Redis Cluster slot for all).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a connection attempt may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long Redis may take to answer a command (default 1 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The deadline for a whole store operation, reconnecting included (default 2 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Connects now; fails if Redis cannot be reached (on a cluster: if any master does
    /// not answer `PING`).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL or an unreachable server.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let store = self.connect_lazy()?;
        let mut conn = store.inner.conn.clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        tokio::time::timeout(store.inner.op_timeout, ping)
            .await
            .map_err(|_| StoreError::unavailable("redis: connect timed out"))?
            .map_err(StoreError::unavailable)?;
        Ok(store)
    }

    /// Builds the store without connecting: the first operation connects (and an
    /// unreachable server then answers 503). Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL.
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        let timeouts = RedisTimeouts {
            connection: self.connection_timeout,
            response: self.response_timeout,
        };
        let conn =
            RedisConnection::lazy(&self.endpoint, timeouts).map_err(StoreError::unavailable)?;
        Ok(RedisStore::from_parts(conn, self.prefix, self.op_timeout))
    }
}

impl RedisStore {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "dreamnet:";

    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`) with the defaults.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL or an unreachable server.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for the single server at `url`.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        Self::builder_for(RedisEndpoint::single(url))
    }

    /// A builder for `endpoint`: one server, or the seed nodes of a Redis Cluster.
    pub fn builder_for(endpoint: RedisEndpoint) -> RedisStoreBuilder {
        RedisStoreBuilder {
            endpoint,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(2),
        }
    }

    /// A store on an existing connection manager (prefix `dreamnet:`, 2 s operation timeout).
    pub fn from_connection_manager(conn: ConnectionManager) -> Self {
        Self::from_connection(RedisConnection::Single(conn))
    }

    /// A store on an existing single-server or cluster connection (prefix `dreamnet:`, 2 s
    /// operation timeout).
    pub fn from_connection(conn: RedisConnection) -> Self {
        Self::from_parts(
            conn,
            Self::DEFAULT_PREFIX.to_owned(),
            Duration::from_secs(2),
        )
    }

    fn from_parts(conn: RedisConnection, prefix: String, op_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                prefix,
                op_timeout,
                claim: LuaScript::new(CLAIM),
                complete: LuaScript::new(COMPLETE),
                release: LuaScript::new(RELEASE),
                extend: LuaScript::new(EXTEND),
            }),
        }
    }

    /// The Redis key of (scope, key), for operators and tests:
    /// `<prefix>idem:{<tag>}:<scope>/<key>`, the tag being 16 hex digits of
    /// SHA-256(scope, key).
    pub fn record_key(&self, scope: &str, key: &str) -> String {
        // The account-id alphabet has no `{`, `}` or `/`, so a scope that follows its rule
        // is written as is; the `sha256:` check keeps a raw scope from posing as a hashed one.
        let safe = AccountId::is_valid(scope) && !scope.starts_with("sha256:");
        let scope = if safe {
            scope.to_owned()
        } else {
            format!("sha256:{}", hex::encode(Sha256::digest(scope.as_bytes())))
        };
        // Hashing `<scope>/<key>` is unambiguous because the scope holds no `/`. The tag
        // comes first, so a `{` inside the key can never become the hash tag.
        let digest = Sha256::digest(format!("{scope}/{key}").as_bytes());
        let tag = hex::encode(&digest[..8]);
        format!("{}idem:{{{tag}}}:{scope}/{key}", self.inner.prefix)
    }

    /// Runs `script` within the operation timeout, and once more (within the same limit)
    /// when the connection was refused. Why: after Redis was down, `ConnectionManager`
    /// still holds its failed connection attempt and answers the next command with that
    /// stale `Connection refused` while it reconnects; the retry waits for the reconnection,
    /// so the first request after Redis is back succeeds. Only a refusal is retried: it
    /// proves the script never reached Redis, and a claim run twice would find its own
    /// lease and answer 409.
    ///
    /// The same on a cluster: the refusal then comes from the master of the record's slot.
    async fn run(
        &self,
        script: &LuaScript,
        key: String,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let mut invocation = script.call();
        invocation.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let attempts = async {
            let mut conn = self.inner.conn.clone();
            match invocation.invoke(&mut conn).await {
                Err(error) if error.is_connection_refusal() => {
                    tracing::debug!(%error, "redis: connection refused; retrying once");
                    invocation.invoke(&mut conn).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.inner.op_timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::unavailable(err)),
            Err(_) => Err(StoreError::unavailable("redis: operation timed out")),
        }
    }
}

impl RedisStore {
    /// Runs one of the scripts that answer 1 or 0 (complete, release, extend) on the record
    /// of (scope, key): whether the token still held it.
    async fn run_flag(
        &self,
        script: &LuaScript,
        scope: &str,
        key: &str,
        args: &[&[u8]],
    ) -> Result<bool, StoreError> {
        let value = self.run(script, self.record_key(scope, key), args).await?;
        parse_flag(&value)
    }
}

fn millis_arg(d: Duration) -> String {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
        .to_string()
}

fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn trace(value: Option<&Value>) -> Option<String> {
    value
        .and_then(text)
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

fn unexpected() -> StoreError {
    StoreError::unavailable("redis: unexpected script reply")
}

fn same_fingerprint(stored: Option<&Value>, fingerprint: &Fingerprint) -> bool {
    stored.and_then(text) == Some(fingerprint.as_str().as_bytes())
}

fn parse_claim(value: &Value, fingerprint: &Fingerprint) -> Result<Claim, StoreError> {
    let Value::Array(items) = value else {
        return Err(unexpected());
    };
    let tag = items.first().and_then(text).ok_or_else(unexpected)?;
    match tag {
        b"proceed" => {
            let token = items
                .get(1)
                .and_then(text)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(unexpected)?;
            Ok(Claim::Proceed(FencingToken(token)))
        }
        b"inflight" => {
            let remaining = match items.get(3) {
                Some(Value::Int(ms)) => u64::try_from(*ms).unwrap_or(0),
                _ => return Err(unexpected()),
            };
            let original_trace_id = trace(items.get(1));
            if !same_fingerprint(items.get(2), fingerprint) {
                return Ok(Claim::Mismatch { original_trace_id });
            }
            Ok(Claim::InFlight {
                retry_after: Duration::from_millis(remaining),
                original_trace_id,
            })
        }
        b"completed" => {
            // A completed record must carry a readable response, whatever the request.
            let bytes = items
                .get(3)
                .and_then(text)
                .ok_or(CorruptRecord::new("completed record without a response"))?;
            let response = StoredResponse::decode(bytes)?;
            let original_trace_id = trace(items.get(1));
            if !same_fingerprint(items.get(2), fingerprint) {
                return Ok(Claim::Mismatch { original_trace_id });
            }
            Ok(Claim::Completed {
                response,
                original_trace_id,
            })
        }
        b"corrupt" => Err(CorruptRecord::new("foreign value under the key").into()),
        _ => Err(unexpected()),
    }
}

fn parse_flag(value: &Value) -> Result<bool, StoreError> {
    match value {
        Value::Int(n) => Ok(*n == 1),
        _ => Err(unexpected()),
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let key = self.record_key(request.scope, request.key);
            let lease = millis_arg(request.lease);
            let value = self
                .run(
                    &self.inner.claim,
                    key,
                    &[
                        request.fingerprint.as_str().as_bytes(),
                        request.trace_id.unwrap_or("").as_bytes(),
                        lease.as_bytes(),
                    ],
                )
                .await?;
            parse_claim(&value, request.fingerprint)
        })
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async move {
            let token = token.0.to_string();
            let ttl = millis_arg(ttl);
            let encoded = response.encode();
            let args: [&[u8]; 3] = [token.as_bytes(), &encoded, ttl.as_bytes()];
            let stored = self
                .run_flag(&self.inner.complete, scope, key, &args)
                .await?;
            Ok(if stored {
                Completion::Stored
            } else {
                Completion::Superseded
            })
        })
    }

    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let token = token.0.to_string();
            self.run_flag(&self.inner.release, scope, key, &[token.as_bytes()])
                .await
        })
    }

    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let token = token.0.to_string();
            let lease = millis_arg(lease);
            let args: [&[u8]; 2] = [token.as_bytes(), lease.as_bytes()];
            self.run_flag(&self.inner.extend, scope, key, &args).await
        })
    }
}
