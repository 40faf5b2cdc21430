//! The per-cluster circuit breaker (resilience4j's state machine).
//!
//! `closed` records every call's outcome in a count- or time-based sliding window; once the
//! window holds `minimum_calls`, a failure rate or slow-call rate at or above its threshold
//! opens the breaker. `open` rejects until `wait_in_open_ms` has passed, then the next
//! request finds it `half_open`: exactly `half_open_calls` probes are let through (a mutex
//! makes that exact under any concurrency); all of them succeeding closes the breaker with an
//! empty window, any failing (or slow) probe reopens it. A probe that never completes (the
//! request was cancelled, or rejected by the rate limit after taking its permit) gives its
//! permit back. `forced_open` (a manual trip) rejects until a reset.
//!
//! Each transition starts a new generation; an outcome from an older generation (a call
//! admitted while closed that finishes after the breaker opened) is ignored.

use http::StatusCode;
use serde::Serialize;

use crate::config::{BreakerConfig, SlidingWindow};

/// A breaker's state as reported by the API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass; outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait ends.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
    /// Manually tripped: calls are rejected until a reset.
    ForcedOpen,
}

impl BreakerState {
    /// The snake_case name (`closed`, `open`, `half_open`, `forced_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
        }
    }
}

/// How a guarded call ended, as the failure classifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The inner service answered with this status.
    Status(StatusCode),
    /// One of our own inner layers refused the call because its store is unavailable (the
    /// response carried a [`dreamnet_common::StoreFault`]): the protected work never ran.
    StoreFault(StatusCode),
    /// The inner service returned an error.
    Error,
}

/// How the breaker counts one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// Counted as a successful call (a half-open probe that succeeds may close the breaker).
    Success,
    /// Counted as a failed call.
    Failure,
    /// Left out of the statistics altogether: neither failure nor success. A half-open
    /// probe permit is given back, not spent.
    Ignored,
}

/// Decides how each outcome counts for the breaker.
///
/// The default, [`ServerErrors`], counts 5xx responses and inner errors as failures and
/// ignores our own layers' store faults and 409 / 422 / 429. Closures work too, and can
/// fall back on the default:
///
/// ```
/// use dreamnet_control_core::{Classification, ClassifyFailure, Outcome, ServerErrors};
/// // Also count 429s from upstream as failures.
/// let classify = |o: Outcome| match o {
///     Outcome::Status(s) if s.as_u16() == 429 => Classification::Failure,
///     other => ServerErrors.classify(other),
/// };
/// let too_many = Outcome::Status(http::StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(classify.classify(too_many), Classification::Failure);
/// ```
pub trait ClassifyFailure: Send + Sync + 'static {
    /// How this outcome counts.
    fn classify(&self, outcome: Outcome) -> Classification;
}

/// The default classifier (resilience4j's record / ignore split):
/// - failures: 5xx responses and inner errors;
/// - ignored: a response marked [`dreamnet_common::StoreFault`] (our own store failed, the
///   upstream was never called), and 409, 422 and 429 (an idempotency conflict, a key
///   reused with another body, a rate limit: the call was refused before doing the
///   protected work, so it says nothing about the upstream's health either way);
/// - successes: everything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl ClassifyFailure for ServerErrors {
    #[inline]
    fn classify(&self, outcome: Outcome) -> Classification {
        match outcome {
            Outcome::Error => Classification::Failure,
            Outcome::StoreFault(_) => Classification::Ignored,
            Outcome::Status(status) if status.is_server_error() => Classification::Failure,
            Outcome::Status(
                StatusCode::CONFLICT
                | StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::TOO_MANY_REQUESTS,
            ) => Classification::Ignored,
            Outcome::Status(_) => Classification::Success,
        }
    }
}

impl<F: Fn(Outcome) -> Classification + Send + Sync + 'static> ClassifyFailure for F {
    #[inline]
    fn classify(&self, outcome: Outcome) -> Classification {
        self(outcome)
    }
}

/// A permission to make one call, tied to the breaker generation that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) generation: u64,
    pub(crate) probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: u64 },
    HalfOpen { issued: u32, succeeded: u32 },
    ForcedOpen,
}

/// Outcome flags of one call in the window.
const FAILED: u8 = 1;
const SLOW: u8 = 2;

#[derive(Debug)]
enum Window {
    Count {
        ring: Vec<u8>,
        next: usize,
        len: usize,
    },
    Time {
        /// Per second: (second, calls, failures, slow).
        buckets: Vec<(u64, u32, u32, u32)>,
        last_sec: u64,
    },
}

/// Counts of the calls in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// One cluster's breaker. Not synchronized: the plane keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: State,
    generation: u64,
    window: Window,
    totals: Totals,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        let window = new_window(&config);
        Self {
            config,
            state: State::Closed,
            generation: 0,
            window,
            totals: Totals::default(),
        }
    }

    /// The state at `now` (an expired `open` reads as `half_open`).
    pub(crate) fn state(&self, now: u64) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
            State::ForcedOpen => BreakerState::ForcedOpen,
        }
    }

    /// Whether a call may proceed. `Err(retry_after_millis)` when rejected.
    pub(crate) fn try_acquire(&mut self, now: u64) -> Result<Ticket, Option<u64>> {
        match self.state {
            State::Closed => Ok(Ticket {
                generation: self.generation,
                probe: false,
            }),
            State::ForcedOpen => Err(None),
            State::Open { until } if now < until => Err(Some(until - now)),
            State::Open { .. } => {
                self.transition(State::HalfOpen {
                    issued: 0,
                    succeeded: 0,
                });
                self.try_acquire(now)
            }
            State::HalfOpen { issued, succeeded } => {
                if issued < self.config.half_open_calls {
                    self.state = State::HalfOpen {
                        issued: issued + 1,
                        succeeded,
                    };
                    Ok(Ticket {
                        generation: self.generation,
                        probe: true,
                    })
                } else {
                    // The probes are in flight; they usually answer within a second.
                    Err(Some(1000))
                }
            }
        }
    }

    /// Gives back a ticket whose call never ran to completion, or whose outcome is
    /// ignored: a half-open probe permit becomes free again.
    pub(crate) fn release(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation {
            return;
        }
        if let State::HalfOpen { issued, succeeded } = self.state {
            self.state = State::HalfOpen {
                issued: issued.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Records a completed call.
    pub(crate) fn record(&mut self, ticket: Ticket, failed: bool, duration_ms: u64, now: u64) {
        if ticket.generation != self.generation {
            return;
        }
        let slow = duration_ms >= self.config.slow_call_duration_ms;
        match self.state {
            State::Closed => {
                self.push(now, failed, slow);
                if self.config.enabled && self.should_open() {
                    self.open(now);
                }
            }
            State::HalfOpen { issued, succeeded } if ticket.probe => {
                if failed || slow {
                    self.open(now);
                } else if succeeded + 1 >= self.config.half_open_calls {
                    self.transition(State::Closed);
                } else {
                    self.state = State::HalfOpen {
                        issued,
                        succeeded: succeeded + 1,
                    };
                }
            }
            _ => {}
        }
    }

    /// Manual trip: rejects until [`Breaker::reset`].
    pub(crate) fn force_open(&mut self) {
        if self.state != State::ForcedOpen {
            self.transition(State::ForcedOpen);
        }
    }

    /// Closes the breaker with an empty window.
    pub(crate) fn reset(&mut self) {
        self.transition(State::Closed);
    }

    pub(crate) fn is_forced_open(&self) -> bool {
        self.state == State::ForcedOpen
    }

    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    fn open(&mut self, now: u64) {
        self.transition(State::Open {
            until: now.saturating_add(self.config.wait_in_open_ms),
        });
    }

    fn transition(&mut self, to: State) {
        self.generation += 1;
        self.state = to;
        if to == State::Closed {
            self.window = new_window(&self.config);
            self.totals = Totals::default();
        }
    }

    fn should_open(&self) -> bool {
        let t = self.totals;
        let minimum = match self.window {
            Window::Count { .. } => self.config.minimum_calls.min(self.config.window_size),
            Window::Time { .. } => self.config.minimum_calls,
        };
        if t.calls == 0 || t.calls < u64::from(minimum) {
            return false;
        }
        // Integer-exact comparison of rate >= threshold (threshold in percent).
        #[allow(clippy::cast_precision_loss)]
        let rate = |n: u64| n as f64 * 100.0 / t.calls as f64;
        rate(t.failures) >= self.config.failure_rate_threshold
            || rate(t.slow) >= self.config.slow_call_rate_threshold
    }

    fn push(&mut self, now: u64, failed: bool, slow: bool) {
        let flags = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        match &mut self.window {
            Window::Count { ring, next, len } => {
                if *len == ring.len() {
                    let old = ring[*next];
                    self.totals.calls -= 1;
                    self.totals.failures -= u64::from(old & FAILED != 0);
                    self.totals.slow -= u64::from(old & SLOW != 0);
                } else {
                    *len += 1;
                }
                ring[*next] = flags;
                *next = (*next + 1) % ring.len();
            }
            Window::Time { buckets, last_sec } => {
                let sec = now / 1000;
                let size = buckets.len() as u64;
                if sec > *last_sec {
                    // Reset the buckets of the new seconds (at most one full turn): each
                    // index then holds a second within the window or zeros.
                    let from = (*last_sec + 1).max(sec.saturating_sub(size - 1));
                    for s in from..=sec {
                        let b = &mut buckets[usize::try_from(s % size).unwrap_or(0)];
                        if b.0 != s {
                            self.totals.calls -= u64::from(b.1);
                            self.totals.failures -= u64::from(b.2);
                            self.totals.slow -= u64::from(b.3);
                            *b = (s, 0, 0, 0);
                        }
                    }
                    *last_sec = sec;
                }
                // A clock that went backwards records into the current second.
                let idx = usize::try_from((*last_sec) % size).unwrap_or(0);
                let b = &mut buckets[idx];
                b.1 += 1;
                b.2 += u32::from(failed);
                b.3 += u32::from(slow);
            }
        }
        self.totals.calls += 1;
        self.totals.failures += u64::from(failed);
        self.totals.slow += u64::from(slow);
    }
}

fn new_window(config: &BreakerConfig) -> Window {
    let size = usize::try_from(config.window_size.max(1)).unwrap_or(1);
    match config.window {
        SlidingWindow::Count => Window::Count {
            ring: vec![0; size],
            next: 0,
            len: 0,
        },
        SlidingWindow::Time => Window::Time {
            buckets: vec![(0, 0, 0, 0); size],
            last_sec: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window_size: 10,
            minimum_calls: 4,
            half_open_calls: 2,
            wait_in_open_ms: 5_000,
            slow_call_duration_ms: 1_000,
            ..BreakerConfig::default()
        }
    }

    fn call(b: &mut Breaker, now: u64, failed: bool) -> bool {
        match b.try_acquire(now) {
            Ok(t) => {
                b.record(t, failed, 0, now);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn opens_at_failure_rate_after_minimum_calls() {
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            call(&mut b, 0, true);
        }
        assert_eq!(
            b.state(0),
            BreakerState::Closed,
            "minimum calls not reached"
        );
        call(&mut b, 0, true);
        assert_eq!(b.state(0), BreakerState::Open);
        assert_eq!(b.try_acquire(1_000), Err(Some(4_000)));
    }

    #[test]
    fn stays_closed_below_threshold() {
        let mut b = Breaker::new(config());
        for i in 0..100 {
            call(&mut b, 0, i % 3 == 2); // at most 40 % of any 10 calls
        }
        assert_eq!(b.state(0), BreakerState::Closed);
    }

    #[test]
    fn slow_calls_open_it() {
        let mut b = Breaker::new(BreakerConfig {
            slow_call_rate_threshold: 50.0,
            ..config()
        });
        for _ in 0..4 {
            let t = b.try_acquire(0).unwrap();
            b.record(t, false, 1_000, 0);
        }
        assert_eq!(b.state(0), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_exactly_n_then_closes_on_success() {
        let mut b = Breaker::new(config());
        for _ in 0..4 {
            call(&mut b, 0, true);
        }
        assert_eq!(b.state(5_000), BreakerState::HalfOpen);
        let p1 = b.try_acquire(5_000).unwrap();
        let p2 = b.try_acquire(5_000).unwrap();
        assert!(b.try_acquire(5_000).is_err());
        assert!(p1.probe && p2.probe);
        b.record(p1, false, 0, 5_001);
        assert_eq!(b.state(5_001), BreakerState::HalfOpen);
        b.record(p2, false, 0, 5_002);
        assert_eq!(b.state(5_002), BreakerState::Closed);
        assert_eq!(b.totals(), Totals::default());
    }

    #[test]
    fn half_open_failure_reopens_and_late_outcomes_are_ignored() {
        let mut b = Breaker::new(config());
        let old = b.try_acquire(0).unwrap();
        for _ in 0..4 {
            call(&mut b, 0, true);
        }
        b.record(old, false, 0, 1); // from the closed generation: ignored
        let p1 = b.try_acquire(5_000).unwrap();
        let p2 = b.try_acquire(5_000).unwrap();
        b.record(p1, true, 0, 5_100);
        assert_eq!(b.state(5_100), BreakerState::Open);
        b.record(p2, false, 0, 5_200); // stale probe
        assert_eq!(b.state(5_200), BreakerState::Open);
        assert_eq!(b.try_acquire(5_200), Err(Some(4_900)));
    }

    #[test]
    fn released_probe_permits_are_reissued() {
        let mut b = Breaker::new(config());
        for _ in 0..4 {
            call(&mut b, 0, true);
        }
        let p1 = b.try_acquire(5_000).unwrap();
        let _p2 = b.try_acquire(5_000).unwrap();
        b.release(p1);
        assert!(b.try_acquire(5_000).is_ok());
        assert!(b.try_acquire(5_000).is_err());
    }

    #[test]
    fn forced_open_until_reset() {
        let mut b = Breaker::new(config());
        let t = b.try_acquire(0).unwrap();
        b.force_open();
        assert_eq!(b.try_acquire(1_000_000), Err(None));
        b.record(t, true, 0, 0);
        assert_eq!(b.state(0), BreakerState::ForcedOpen);
        b.reset();
        assert!(call(&mut b, 0, false));
        assert_eq!(b.state(0), BreakerState::Closed);
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let mut b = Breaker::new(BreakerConfig {
            window: SlidingWindow::Time,
            window_size: 10,
            minimum_calls: 4,
            ..config()
        });
        for _ in 0..3 {
            call(&mut b, 1_000, true);
        }
        // 3 failures have slid out by second 12; 3 successes + 1 failure = 25 %.
        for _ in 0..3 {
            call(&mut b, 12_000, false);
        }
        call(&mut b, 12_500, true);
        assert_eq!(b.totals().calls, 4);
        assert_eq!(b.state(12_500), BreakerState::Closed);
        // Within the window they count: 2 more failures make 3 / 6 = 50 %.
        call(&mut b, 15_000, true);
        call(&mut b, 15_000, true);
        assert_eq!(b.state(15_000), BreakerState::Open);
    }

    #[test]
    fn disabled_breaker_never_trips_itself() {
        let mut b = Breaker::new(BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..50 {
            assert!(call(&mut b, 0, true));
        }
        b.force_open();
        assert!(!call(&mut b, 0, false));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Complete {
            idx: usize,
            failed: bool,
            slow: bool,
        },
        Release {
            idx: usize,
        },
        Advance(u64),
        Trip,
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            4 => (0usize..8, any::<bool>(), prop::bool::weighted(0.1))
                .prop_map(|(idx, failed, slow)| Op::Complete { idx, failed, slow }),
            1 => (0usize..8).prop_map(|idx| Op::Release { idx }),
            2 => (0u64..4_000).prop_map(Op::Advance),
            1 => Just(Op::Trip).prop_filter("rare", |_| true),
            1 => Just(Op::Reset),
        ]
    }

    proptest! {
        /// Invariants under any interleaving: forced-open never admits; an open breaker never
        /// admits before its wait ends; no half-open generation issues more than N probes;
        /// the window's totals match a recount; the breaker only opens from closed once the
        /// minimum number of calls was recorded.
        #[test]
        fn breaker_invariants(
            window_time in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let cfg = BreakerConfig {
                window: if window_time { SlidingWindow::Time } else { SlidingWindow::Count },
                window_size: 6,
                minimum_calls: 3,
                half_open_calls: 2,
                wait_in_open_ms: 3_000,
                slow_call_duration_ms: 1_000,
                ..BreakerConfig::default()
            };
            let mut b = Breaker::new(cfg);
            let mut now = 10_000u64;
            let mut in_flight: Vec<Ticket> = Vec::new();
            let mut probes_per_generation = std::collections::HashMap::<u64, u32>::new();
            for op in ops {
                let before = b.state(now);
                match op {
                    Op::Acquire => match b.try_acquire(now) {
                        Ok(t) => {
                            prop_assert!(before != BreakerState::ForcedOpen);
                            prop_assert!(before != BreakerState::Open);
                            if t.probe {
                                let n = probes_per_generation.entry(t.generation).or_default();
                                *n += 1;
                                let in_flight_probes = in_flight.iter().filter(|x| x.probe && x.generation == t.generation).count();
                                prop_assert!(in_flight_probes < 2);
                            }
                            in_flight.push(t);
                        }
                        Err(_) => prop_assert!(before != BreakerState::Closed),
                    },
                    Op::Complete { idx, failed, slow } if !in_flight.is_empty() => {
                        let t = in_flight.remove(idx % in_flight.len());
                        let calls_before = b.totals().calls;
                        b.record(t, failed, if slow { 2_000 } else { 10 }, now);
                        if before == BreakerState::Closed && b.state(now) == BreakerState::Open {
                            prop_assert!(calls_before + 1 >= 3);
                        }
                    }
                    Op::Release { idx } if !in_flight.is_empty() => {
                        let t = in_flight.remove(idx % in_flight.len());
                        b.release(t);
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Trip => b.force_open(),
                    Op::Reset => b.reset(),
                    _ => {}
                }
                if b.state(now) == BreakerState::Open {
                    // Open rejects with a wait that never exceeds the configured one.
                    let r = b.try_acquire(now);
                    prop_assert!(matches!(r, Err(Some(ms)) if ms > 0 && ms <= 3_000), "{:?}", r);
                }
                let t = b.totals();
                prop_assert!(t.failures <= t.calls && t.slow <= t.calls);
                prop_assert!(t.calls <= 6 || window_time);
            }
        }
    }
}
