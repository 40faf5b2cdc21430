//! [`BreakerStore`]: a circuit breaker whose window, state and half-open permits live in a
//! store shared by every replica (a fleet-wide breaker), and the plain data it answers.
//!
//! The plane keeps a replica-local copy of what the store last answered, so a call through a
//! closed fleet breaker costs no round trip before it runs: only its outcome is sent (off the
//! response path). Only an open breaker whose wait is over and a half-open one ask the store
//! before admitting, which keeps the half-open permits exact across replicas.

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
