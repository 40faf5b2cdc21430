//! [`BreakerStore`]: a circuit breaker whose window, state and half-open permits live in a
//! store shared by every replica (a fleet-wide breaker), and the plain data it answers.
//!
//! The plane keeps a replica-local copy of what the store last answered, so a call through a
//! closed fleet breaker costs no round trip before it runs: only its outcome is sent (off the
//! response path), batched with the replica's other outcomes of the same generation
//! ([`OutcomeBatch`]). Only an open breaker whose wait is over and a half-open one ask the
//! store before admitting, which keeps the half-open permits exact across replicas.

use std::{fmt, sync::Arc};

use super::{StoreError, StoreFuture};
use crate::{breaker::BreakerState, config::BreakerConfig};

/// A permission to make one call through a fleet-wide breaker, tied to the breaker
/// generation that issued it (an outcome from an older generation is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetTicket {
    /// The fleet-wide generation when the permit was issued.
    pub generation: u64,
    /// Whether this is one of the half-open probes.
    pub probe: bool,
}

/// The outcomes of up to [`OutcomeBatch::CAPACITY`] calls admitted by a closed breaker of
/// one generation, in the order they finished: recorded as if one by one, so the outcome
/// that trips the breaker opens it and the rest are ignored (as any outcome of an older
/// generation is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutcomeBatch {
    /// The generation that admitted the calls.
    pub generation: u64,
    /// How many outcomes (at most [`OutcomeBatch::CAPACITY`]).
    pub calls: u8,
    /// Bit `i` set: call `i` failed.
    pub failed: u32,
    /// Bit `i` set: call `i` was slow.
    pub slow: u32,
}

impl OutcomeBatch {
    /// The most outcomes one batch carries.
    pub const CAPACITY: u8 = 32;

    /// An empty batch for `generation`.
    #[must_use]
    pub fn new(generation: u64) -> Self {
        Self {
            generation,
            ..Self::default()
        }
    }

    /// Adds one outcome; `false` (and nothing added) when the batch is full.
    pub fn push(&mut self, failed: bool, slow: bool) -> bool {
        if self.calls >= Self::CAPACITY {
            return false;
        }
        let bit = 1u32 << self.calls;
        if failed {
            self.failed |= bit;
        }
        if slow {
            self.slow |= bit;
        }
        self.calls += 1;
        true
    }

    /// Whether the batch holds [`OutcomeBatch::CAPACITY`] outcomes.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.calls >= Self::CAPACITY
    }
}

/// What one fleet breaker operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetReply {
    /// The permit, when the call may proceed (acquire only).
    pub ticket: Option<FleetTicket>,
    /// While the breaker is open (or half-open without a free permit): how long until it may
    /// admit again (milliseconds), if known.
    pub retry_after_ms: Option<u64>,
    /// The fleet-wide state after the operation.
    pub state: BreakerState,
    /// The fleet-wide generation after the operation.
    pub generation: u64,
    /// Whether this operation opened, closed or forced the breaker: exactly one caller
    /// fleet-wide sees `true` per transition, so audit entries and metrics fire once.
    pub transitioned: bool,
    /// Calls in the fleet-wide window.
    pub calls: u64,
    /// Failed calls in the fleet-wide window.
    pub failures: u64,
    /// Slow calls in the fleet-wide window.
    pub slow_calls: u64,
}

/// One operation on a fleet-wide breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerOp {
    /// Asks for a permit (a half-open breaker hands out exactly `half_open_calls` permits
    /// across every replica).
    Acquire,
    /// Records the outcome of a call made with `ticket`. Store faults must not be recorded
    /// (release the ticket instead): they say nothing about the upstream.
    Record {
        /// The permit the call was made with.
        ticket: FleetTicket,
        /// Whether the call counts as a failure.
        failed: bool,
        /// How long the call took (slow at `slow_call_duration_ms` or more).
        duration_ms: u64,
    },
    /// Records the outcomes of several calls of a closed breaker (not probes) at once.
    RecordMany(OutcomeBatch),
    /// Gives back a permit whose call never completed or whose outcome is ignored.
    Release(FleetTicket),
    /// Trips the breaker by hand until [`BreakerOp::Reset`].
    ForceOpen,
    /// Closes the breaker with an empty window.
    Reset,
    /// Reads the state and window without changing anything.
    Peek,
}

/// A store that keeps each cluster's circuit breaker for the whole fleet.
///
/// Every operation is atomic in the store and runs the same state machine as the plane's
/// in-process breaker (count-based windows; a time-based window is refused with
/// [`StoreError::Corrupt`]). `RedisStore` implements it with one Lua script per operation.
/// The future is `'static` (the arguments are cheap `Arc`s) so an outcome can be recorded
/// from a spawned task after the response has gone.
pub trait BreakerStore: Send + Sync + fmt::Debug + 'static {
    /// Runs `op` on `cluster`'s fleet-wide breaker, configured by `config`.
    fn breaker(
        &self,
        cluster: &Arc<str>,
        config: &Arc<BreakerConfig>,
        op: BreakerOp,
    ) -> StoreFuture<'static, Result<FleetReply, StoreError>>;
}
