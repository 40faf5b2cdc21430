//! The fleet-wide circuit breaker on Redis: one breaker per cluster shared by every replica
//! on the same Redis / Redis Cluster (same key prefix).
//!
//! The breaker's count window, its state and its half-open permits live in two keys under
//! the cluster's hash tag (one slot, so it works on a Redis Cluster):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}ctl:{<cluster>}:br` | hash | state, generation, open-until, half-open permits issued / succeeded, ring position, window totals |
//! | `{prefix}ctl:{<cluster>}:brw` | hash | ring slot -> outcome flags (1 failed, 2 slow) |
//!
//! Every operation (acquire, record, release, force-open, reset, peek) is one `EVALSHA` of
//! [`FLEET_BREAKER_SCRIPT`], which mirrors [`crate::breaker`]'s state machine on Redis
//! server time. Why a script per outcome and not batching: the script is atomic, so the
//! window holds the combined calls of every replica with no lag, a transition happens
//! exactly once fleet-wide (the one call that moves it sees `transitioned`, so audit and
//! metrics fire once), and half-open permits are exact across replicas (N fleet-wide).
//! The cost is one round trip per call and per outcome.
//!
//! Only count-based windows are shared; a time-based window is refused with a typed error.

use std::sync::{Arc, LazyLock};

use dreamnet_common::redis_connection::LuaScript;

use super::{RedisStore, Retry};
use crate::{
    breaker::BreakerState,
    config::{BreakerConfig, SlidingWindow},
    store::{BreakerOp, BreakerStore, FleetReply, FleetTicket, StoreError, StoreFuture},
};

/// The fleet breaker script. `KEYS[1]` the state hash, `KEYS[2]` the ring.
/// `ARGV`: op (`a` acquire, `r` record, `m` record many, `l` release, `f` force open, `z`
/// reset, `p` peek), ticket generation, probe (`m`: how many outcomes), failed (`m`: bit i
/// = outcome i failed), slow (`m`: the same for slow), window size, minimum calls, failure threshold,
/// slow threshold, wait in open (ms), half-open permits, enabled (plus, in tests only, a
/// time). Returns `{admitted, generation, probe, retry_ms (-1 = none), state, transitioned,
/// calls, failures, slow}`; state is 0 closed, 1 open, 2 half-open, 3 forced open.
pub(crate) const FLEET_BREAKER_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local b, w = KEYS[1], KEYS[2]
local op = ARGV[1]
local tgen, tprobe = tonumber(ARGV[2]), ARGV[3] == '1'
local failed, slow = ARGV[4] == '1', ARGV[5] == '1'
local size, minimum = tonumber(ARGV[6]), tonumber(ARGV[7])
local fth, sth = tonumber(ARGV[8]), tonumber(ARGV[9])
local wait, permits, enabled = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12] == '1'
local now
if ARGV[13] then
  now = tonumber(ARGV[13])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local h = redis.call('HMGET', b, 'st', 'gen', 'until', 'iss', 'suc', 'next', 'len', 'calls', 'fail', 'slow', 'size')
local st, gen, untl = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
local iss, suc = tonumber(h[4]) or 0, tonumber(h[5]) or 0
local nxt, len = tonumber(h[6]) or 0, tonumber(h[7]) or 0
local calls, fail, slw = tonumber(h[8]) or 0, tonumber(h[9]) or 0, tonumber(h[10]) or 0
local moved = 0
-- A peek changes nothing (an expired open reads as half-open, as in the plane's breaker).
if op == 'p' then
  if tonumber(h[11]) ~= size then calls, fail, slw = 0, 0, 0 end
  local shown, retry = st, -1
  if st == 1 and now >= untl then shown = 2 elseif st == 1 then retry = untl - now end
  return {0, gen, 0, retry, shown, 0, calls, fail, slw}
end
local function empty()
  nxt, len, calls, fail, slw = 0, 0, 0, 0, 0
  redis.call('DEL', w)
end
-- A resized window starts empty: the old ring positions mean nothing for the new size.
if tonumber(h[11]) ~= size then empty() end
local function go(to)
  gen, st, iss, suc = gen + 1, to, 0, 0
  if to == 0 then empty() end
  if to == 1 then untl = now + wait end
  if to ~= 2 then moved = 1 end
end
-- Adds one closed-breaker outcome to the ring; whether the window now trips the breaker.
local function add(failed, slow)
  if len == size then
    local old = tonumber(redis.call('HGET', w, nxt)) or 0
    calls = calls - 1
    if old % 2 == 1 then fail = fail - 1 end
    if old >= 2 then slw = slw - 1 end
  else
    len = len + 1
  end
  redis.call('HSET', w, nxt, (failed and 1 or 0) + (slow and 2 or 0))
  nxt = (nxt + 1) % size
  calls = calls + 1
  if failed then fail = fail + 1 end
  if slow then slw = slw + 1 end
  return enabled and calls > 0 and calls >= math.min(minimum, size)
    and (fail * 100 >= fth * calls or slw * 100 >= sth * calls)
end
local ok, probe, retry = 0, 0, -1
if op == 'a' then
  if st == 1 and now >= untl then go(2) end
  if st == 0 then
    ok = 1
  elseif st == 1 then
    retry = untl - now
  elseif st == 2 then
    if iss < permits then iss, ok, probe = iss + 1, 1, 1 else retry = 1000 end
  end
elseif op == 'm' and tgen == gen and st == 0 then
  -- Outcomes of a closed breaker's calls, in order, as if recorded one by one: the one
  -- that trips it opens it, and the rest (now of an older generation) are ignored.
  local n, fbits, sbits = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  for i = 0, n - 1 do
    local bit = 2 ^ i
    if add(math.floor(fbits / bit) % 2 == 1, math.floor(sbits / bit) % 2 == 1) then
      go(1)
      break
    end
  end
elseif op == 'r' and tgen == gen then
  if st == 0 then
    if add(failed, slow) then go(1) end
  elseif st == 2 and tprobe then
    if failed or slow then go(1) elseif suc + 1 >= permits then go(0) else suc = suc + 1 end
  end
elseif op == 'l' and tgen == gen and st == 2 then
  if iss > 0 then iss = iss - 1 end
elseif op == 'f' and st ~= 3 then
  go(3)
elseif op == 'z' then
  go(0)
end
redis.call('HSET', b, 'st', st, 'gen', gen, 'until', untl, 'iss', iss, 'suc', suc,
  'next', nxt, 'len', len, 'calls', calls, 'fail', fail, 'slow', slw, 'size', size)
if ok == 0 and st == 1 then retry = untl - now end
return {ok, gen, probe, retry, st, moved, calls, fail, slw}
";

static SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(FLEET_BREAKER_SCRIPT));

impl BreakerStore for RedisStore {
    fn breaker(
        &self,
        cluster: &Arc<str>,
        config: &Arc<BreakerConfig>,
        op: BreakerOp,
    ) -> StoreFuture<'static, Result<FleetReply, StoreError>> {
        let (store, cluster, config) = (self.clone(), Arc::clone(cluster), Arc::clone(config));
        StoreFuture::new(async move { store.run_breaker(&cluster, &config, op).await })
    }
}

impl RedisStore {
    /// Asks the fleet-wide breaker of `cluster` for a permit ([`BreakerOp::Acquire`]).
    ///
    /// # Errors
    /// The store is unreachable or late (the plane then falls back to the replica's own
    /// breaker), or `config` uses a time-based window (only count windows are shared).
    pub async fn breaker_acquire(
        &self,
        cluster: &str,
        config: &BreakerConfig,
    ) -> Result<FleetReply, StoreError> {
        self.run_breaker(cluster, config, BreakerOp::Acquire).await
    }

    /// Records the outcome of a call made with `ticket` ([`BreakerOp::Record`]).
    ///
    /// # Errors
    /// As [`RedisStore::breaker_acquire`].
    pub async fn breaker_record(
        &self,
        cluster: &str,
        config: &BreakerConfig,
        ticket: FleetTicket,
        failed: bool,
        duration_ms: u64,
    ) -> Result<FleetReply, StoreError> {
        let op = BreakerOp::Record {
            ticket,
            failed,
            duration_ms,
        };
        self.run_breaker(cluster, config, op).await
    }

    /// Gives back a permit ([`BreakerOp::Release`]).
    ///
    /// # Errors
    /// As [`RedisStore::breaker_acquire`].
    pub async fn breaker_release(
        &self,
        cluster: &str,
        config: &BreakerConfig,
        ticket: FleetTicket,
    ) -> Result<FleetReply, StoreError> {
        self.run_breaker(cluster, config, BreakerOp::Release(ticket))
            .await
    }

    /// Trips the fleet-wide breaker by hand until [`RedisStore::breaker_reset`].
    ///
    /// # Errors
    /// As [`RedisStore::breaker_acquire`].
    pub async fn breaker_force_open(
        &self,
        cluster: &str,
        config: &BreakerConfig,
    ) -> Result<FleetReply, StoreError> {
        self.run_breaker(cluster, config, BreakerOp::ForceOpen)
            .await
    }

    /// Closes the fleet-wide breaker with an empty window.
    ///
    /// # Errors
    /// As [`RedisStore::breaker_acquire`].
    pub async fn breaker_reset(
        &self,
        cluster: &str,
        config: &BreakerConfig,
    ) -> Result<FleetReply, StoreError> {
        self.run_breaker(cluster, config, BreakerOp::Reset).await
    }

    async fn run_breaker(
        &self,
        cluster: &str,
        config: &BreakerConfig,
        op: BreakerOp,
    ) -> Result<FleetReply, StoreError> {
        if config.window != SlidingWindow::Count {
            return Err(StoreError::corrupt(
                "the fleet-wide breaker shares count-based windows only",
            ));
        }
        // The op's code and the numbers the script reads as ticket generation, probe,
        // failed and slow (for `m`: how many outcomes and their bit sets).
        let (code, generation, probe, failed, slow): (_, u64, u32, u32, u32) = match op {
            BreakerOp::Acquire => ("a", 0, 0, 0, 0),
            BreakerOp::Record {
                ticket,
                failed,
                duration_ms,
            } => (
                "r",
                ticket.generation,
                u32::from(ticket.probe),
                u32::from(failed),
                u32::from(duration_ms >= config.slow_call_duration_ms),
            ),
            BreakerOp::RecordMany(batch) => (
                "m",
                batch.generation,
                u32::from(batch.calls),
                batch.failed,
                batch.slow,
            ),
            BreakerOp::Release(ticket) => ("l", ticket.generation, u32::from(ticket.probe), 0, 0),
            BreakerOp::ForceOpen => ("f", 0, 0, 0, 0),
            BreakerOp::Reset => ("z", 0, 0, 0, 0),
            BreakerOp::Peek => ("p", 0, 0, 0, 0),
        };
        let mut invocation = SCRIPT.call();
        invocation
            .key(format!("{}ctl:{{{cluster}}}:br", self.prefix))
            .key(format!("{}ctl:{{{cluster}}}:brw", self.prefix))
            .arg(code)
            .arg(generation)
            .arg(probe)
            .arg(failed)
            .arg(slow)
            .arg(config.window_size.max(1))
            .arg(config.minimum_calls)
            .arg(config.failure_rate_threshold)
            .arg(config.slow_call_rate_threshold)
            .arg(config.wait_in_open_ms)
            .arg(config.half_open_calls)
            .arg(u8::from(config.enabled));
        let invocation = &invocation;
        // Peeks and acquires of a closed breaker could be sent twice, but a record moves the
        // ring: no operation is sent again unless it never left.
        let reply: Vec<i64> = self
            .timed(Retry::IfUnsent, move |mut conn| async move {
                invocation.invoke(&mut conn).await
            })
            .await?;
        parse(&reply)
    }
}

fn parse(reply: &[i64]) -> Result<FleetReply, StoreError> {
    let &[ok, generation, probe, retry, state, moved, calls, failures, slow] = reply else {
        return Err(StoreError::corrupt(
            "breaker script answered the wrong shape",
        ));
    };
    let state = match state {
        0 => BreakerState::Closed,
        1 => BreakerState::Open,
        2 => BreakerState::HalfOpen,
        3 => BreakerState::ForcedOpen,
        _ => {
            return Err(StoreError::corrupt(
                "breaker script answered an unknown state",
            ))
        }
    };
    let count = |n: i64| u64::try_from(n).map_err(|_| StoreError::corrupt("negative count"));
    let generation = count(generation)?;
    Ok(FleetReply {
        ticket: (ok == 1).then_some(FleetTicket {
            generation,
            probe: probe == 1,
        }),
        retry_after_ms: u64::try_from(retry).ok(),
        state,
        generation,
        transitioned: moved == 1,
        calls: count(calls)?,
        failures: count(failures)?,
        slow_calls: count(slow)?,
    })
}
