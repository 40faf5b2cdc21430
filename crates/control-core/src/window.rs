//! The rate-limit algorithm: fixed windows aligned to the Unix epoch, checked all at once
//! (why fixed windows: see [`crate::store`]).
//!
//! The memory store runs [`decide`] under a per-cluster mutex; the Redis store runs the same
//! logic in one Lua script with Redis server time. The store conformance suite checks both.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::config::WindowConfig;

/// A window's counter: the start of the window it counts and the units taken in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    /// Start of the counted window (Unix milliseconds).
    pub start: u64,
    /// Units taken in that window.
    pub count: u64,
}

/// What a store answers for one admission attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Whether every window had room (and one unit was taken from each).
    pub admitted: bool,
    /// The time the decision was made at (the store's clock: Redis server time).
    pub now_millis: u64,
    /// Each window's count after the decision, in the order of the request's windows.
    pub counts: Vec<u64>,
    /// The shared store's change counter for the cluster, when it has one.
    pub epoch: Option<u64>,
}

/// Window length in milliseconds.
#[inline]
pub(crate) fn window_millis(window: &WindowConfig) -> u64 {
    window.seconds.saturating_mul(1000).max(1)
}

/// Start of the window containing `now`.
#[inline]
pub(crate) fn window_start(window: &WindowConfig, now: u64) -> u64 {
    let len = window_millis(window);
    now - now % len
}

/// The algorithm: checks every window at `now` and, if all admit, takes one unit from each.
///
/// `slots[i]` belongs to `windows[i]` and is either `Slot::default()` or as a previous
/// `decide` over the same window left it (its `start` aligned to the window); a slot
/// counting an older window counts as empty.
pub fn decide(slots: &mut [Slot], windows: &[WindowConfig], now: u64) -> Taken {
    let admitted = roll_over(slots, windows, now);
    if admitted {
        take_one(slots);
    }
    Taken {
        admitted,
        now_millis: now,
        counts: slots.iter().map(|s| s.count).collect(),
        epoch: None,
    }
}

/// The first half of [`decide`]: moves every slot to the window containing `now` (a slot
/// counting an older window starts empty) and says whether every window has room. A
/// decision over two sets of slots (a cluster's and a client's) rolls both, then takes from
/// both only if both have room.
pub(crate) fn roll_over(slots: &mut [Slot], windows: &[WindowConfig], now: u64) -> bool {
    debug_assert_eq!(slots.len(), windows.len());
    let mut admitted = true;
    for (slot, window) in slots.iter_mut().zip(windows) {
        // A slot's start is window-aligned, so `now` in [start, start + len) means the
        // same window: no division (a 64-bit `%` costs tens of cycles) until it rolls over.
        let current = now
            .checked_sub(slot.start)
            .is_some_and(|into| into < window_millis(window));
        debug_assert!(
            !current || slot.start % window_millis(window) == 0,
            "a slot starts where its window does (as decide leaves it)"
        );
        if !current {
            *slot = Slot {
                start: window_start(window, now),
                count: 0,
            };
        }
        if slot.count >= window.limit {
            admitted = false;
        }
    }
    admitted
}

/// The second half of [`decide`]: one unit from every slot.
pub(crate) fn take_one(slots: &mut [Slot]) {
    for slot in slots {
        slot.count += 1;
    }
}

/// The plane's reading of a [`Taken`]: the window to report and, on rejection, how long to
/// wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether the request was admitted.
    pub(crate) admitted: bool,
    /// On rejection: milliseconds until every exhausted window has reset.
    pub(crate) retry_after_millis: u64,
    /// Index of the window reported in `RateLimit` (least remaining; on a tie the longer).
    pub(crate) reported: usize,
    /// Remaining units in the reported window.
    pub(crate) remaining: u64,
    /// Seconds until the reported window resets (rounded up).
    pub(crate) reset_secs: u64,
}

impl Verdict {
    /// Reads a store's answer. `None` when there are no windows.
    pub(crate) fn read(taken: &Taken, windows: &[WindowConfig]) -> Option<Self> {
        let now = taken.now_millis;
        let mut best: Option<(usize, u64, u64)> = None; // (index, remaining, window millis)
        let mut retry_after = 0u64;
        for (i, (window, &count)) in windows.iter().zip(&taken.counts).enumerate() {
            let remaining = window.limit.saturating_sub(count);
            let len = window_millis(window);
            if !taken.admitted && count >= window.limit {
                let until_reset = window_start(window, now) + len - now;
                retry_after = retry_after.max(until_reset);
            }
            let better = match best {
                None => true,
                Some((_, r, l)) => remaining < r || (remaining == r && len > l),
            };
            if better {
                best = Some((i, remaining, len));
            }
        }
        let (reported, remaining, len) = best?;
        let window = &windows[reported];
        let reset_millis = window_start(window, now) + len - now;
        Some(Self {
            admitted: taken.admitted,
            retry_after_millis: retry_after,
            reported,
            remaining,
            reset_secs: reset_millis.div_ceil(1000),
        })
    }
}

/// The `RateLimit-Policy` field value, e.g. `"minute";q=60;w=60, "hour";q=1000;w=3600`
/// (an RFC 8941 list, rendered once per settings change; the layer makes the header of it).
pub(crate) fn policy_text(windows: &[WindowConfig]) -> Option<Bytes> {
    if windows.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(24 * windows.len());
    for (i, w) in windows.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "\"{}\";q={};w={}", w.name, w.limit, w.seconds);
    }
    Some(Bytes::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seed() -> Vec<WindowConfig> {
        vec![
            WindowConfig::new("minute", 3, 60),
            WindowConfig::new("hour", 5, 3600),
            WindowConfig::new("day", 100, 86_400),
        ]
    }

    #[test]
    fn burst_admits_exactly_the_limit_and_rejections_take_nothing() {
        let windows = seed();
        let mut slots = vec![Slot::default(); 3];
        let now = 1_800_000_000_000; // a whole minute
        let admitted: Vec<bool> = (0..10)
            .map(|_| decide(&mut slots, &windows, now).admitted)
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert!(admitted[..3].iter().all(|a| *a));
        assert_eq!(slots.iter().map(|s| s.count).collect::<Vec<_>>(), [3, 3, 3]);
        // The next minute has room again, until the hour window runs out at 5.
        let next = now + 60_000;
        let admitted = (0..10)
            .filter(|_| decide(&mut slots, &windows, next).admitted)
            .count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn verdict_reports_least_remaining_and_longer_on_tie() {
        let windows = seed();
        let now = 1_800_000_000_000 + 19_000; // 41 s left in the minute
        let taken = Taken {
            admitted: true,
            now_millis: now,
            counts: vec![1, 2, 1],
            epoch: None,
        };
        let v = Verdict::read(&taken, &windows).unwrap();
        assert_eq!((v.reported, v.remaining, v.reset_secs), (0, 2, 41));
        // Tie on 2 remaining between minute and hour: the hour is reported.
        let taken = Taken {
            counts: vec![1, 3, 1],
            ..taken
        };
        let windows2 = vec![
            WindowConfig::new("minute", 3, 60),
            WindowConfig::new("hour", 5, 3600),
        ];
        let v = Verdict::read(&taken, &windows2).unwrap();
        assert_eq!((v.reported, v.remaining), (1, 2));
    }

    #[test]
    fn retry_after_waits_for_every_exhausted_window() {
        let windows = seed();
        let now = 1_800_000_000_000 + 59_500; // 0.5 s left in the minute
        let taken = Taken {
            admitted: false,
            now_millis: now,
            counts: vec![3, 2, 5],
            epoch: None,
        };
        let v = Verdict::read(&taken, &windows).unwrap();
        assert_eq!(v.retry_after_millis, 500);
        assert_eq!((v.remaining, v.reset_secs), (0, 1));
        let taken = Taken {
            counts: vec![3, 5, 5],
            ..taken
        };
        let v = Verdict::read(&taken, &windows).unwrap();
        let hour_left = 3_600_000 - (now % 3_600_000);
        assert_eq!(v.retry_after_millis, hour_left);
        assert_eq!(v.reported, 1);
    }

    #[test]
    fn policy_lists_every_window() {
        assert_eq!(
            policy_text(&seed()).unwrap(),
            "\"minute\";q=3;w=60, \"hour\";q=5;w=3600, \"day\";q=100;w=86400"
        );
        assert!(policy_text(&[]).is_none());
    }

    proptest! {
        /// Whatever the arrival times, no window ever admits more than its limit, a rejected
        /// request changes no counter, and an admitted one adds exactly one to each.
        #[test]
        fn windows_never_exceed_limits(
            limits in proptest::collection::vec(0u64..6, 1..4),
            steps in proptest::collection::vec(0u64..40_000, 1..200),
        ) {
            let windows: Vec<WindowConfig> = limits
                .iter()
                .enumerate()
                .map(|(i, &l)| WindowConfig::new(format!("w{i}"), l, [1, 60, 3600][i % 3]))
                .collect();
            let mut slots = vec![Slot::default(); windows.len()];
            let mut now = 1_700_000_000_000u64;
            // Admissions per (window, window start), recomputed independently.
            let mut admitted_at: Vec<u64> = Vec::new();
            for step in steps {
                now += step;
                let before = slots.clone();
                let taken = decide(&mut slots, &windows, now);
                let expected_admit = windows.iter().all(|w| {
                    let start = window_start(w, now);
                    let used = admitted_at.iter().filter(|&&t| window_start(w, t) == start).count() as u64;
                    used < w.limit
                });
                prop_assert_eq!(taken.admitted, expected_admit);
                if taken.admitted {
                    admitted_at.push(now);
                } else {
                    for (b, (a, w)) in before.iter().zip(slots.iter().zip(&windows)) {
                        if b.start == window_start(w, now) {
                            prop_assert_eq!(b.count, a.count);
                        } else {
                            prop_assert_eq!(a.count, 0);
                        }
                    }
                    let v = Verdict::read(&taken, &windows).unwrap();
                    prop_assert!(v.retry_after_millis > 0);
                    prop_assert_eq!(v.remaining, 0);
                }
                for (s, w) in slots.iter().zip(&windows) {
                    prop_assert!(s.count <= w.limit);
                }
            }
        }
    }
}
