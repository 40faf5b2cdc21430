//! [`AuthThrottle`]: failed admin authentications limited per peer address (fail2ban's rule,
//! in the process).
//!
//! Each address gets a fixed window that opens at its first failure. Once it holds
//! `max_failures` failures, every admin request from that address is answered 429 with
//! `Retry-After` until the window ends, the right token included (a guesser must not learn
//! that its next guess was right); other addresses are unaffected. A success clears the
//! address's failures. IPv6 peers are grouped by their /64, since one host usually owns a
//! whole /64 and could otherwise rotate addresses.
//!
//! Memory is bounded: at most `max_tracked` addresses are held (only addresses with recent
//! failures are); when the table is full, expired windows are dropped, and if that frees
//! nothing the tenth of the table closest to expiry goes, so the cost per attempt stays
//! O(1) amortized even under a distributed attack.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::extract::ConnectInfo;
use dreamnet_common::{SharedClock, SystemClock};
use http::{Extensions, HeaderMap};
use parking_lot::Mutex;

/// Finds the throttling key (the peer address) of a request.
type KeyFn = dyn Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync;

/// The default key: the peer address axum's `ConnectInfo<SocketAddr>` put in the request's
/// extensions (`into_make_service_with_connect_info`, or a server that inserts it).
pub fn peer_address(_headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Per-address throttling of failed admin authentications. Cheap to clone: clones share
/// the table and the counters (the server reads them for `/metrics`).
///
/// ```
/// use dreamnet_admin::AuthThrottle;
/// use dreamnet_common::ManualClock;
/// use std::{sync::Arc, time::Duration};
///
/// let clock = ManualClock::new(0);
/// let throttle = AuthThrottle::builder()
///     .max_failures(3)
///     .window(Duration::from_secs(60))
///     .clock(Arc::new(clock.clone()))
///     .build();
/// let peer = "192.0.2.7".parse().unwrap();
/// for _ in 0..3 {
///     assert_eq!(throttle.check(peer), None);
///     throttle.record_failure(peer);
/// }
/// assert_eq!(throttle.check(peer), Some(Duration::from_secs(60)));
/// assert_eq!(throttle.check("192.0.2.8".parse().unwrap()), None, "others are unaffected");
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(throttle.check(peer), None, "the window passed");
/// ```
#[derive(Clone)]
pub struct AuthThrottle {
    shared: Arc<Shared>,
}

struct Shared {
    max_failures: u32,
    window_ms: u64,
    max_tracked: usize,
    clock: SharedClock,
    key: Box<KeyFn>,
    table: Mutex<HashMap<IpAddr, Entry>>,
    failures: AtomicU64,
    throttled: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When this address's window started (its first failure in it), Unix ms.
    start: u64,
    failures: u32,
    /// Whether the throttling of this window was logged already.
    logged: bool,
}

impl fmt::Debug for AuthThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthThrottle")
            .field("max_failures", &self.shared.max_failures)
            .field("window_ms", &self.shared.window_ms)
            .field("max_tracked", &self.shared.max_tracked)
            .field("tracked", &self.shared.table.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for AuthThrottle {
    /// 10 failures in 60 s, at most 10,000 addresses tracked, the system clock, the peer
    /// address from `ConnectInfo<SocketAddr>`.
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builds an [`AuthThrottle`] ([`AuthThrottle::builder`]).
pub struct AuthThrottleBuilder {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    clock: SharedClock,
    key: Box<KeyFn>,
}

impl fmt::Debug for AuthThrottleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthThrottleBuilder")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("max_tracked", &self.max_tracked)
            .finish_non_exhaustive()
    }
}

impl AuthThrottleBuilder {
    /// Failures per window before an address is throttled (default 10; at least 1).
    #[must_use]
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n.max(1);
        self
    }

    /// The window (default 60 s; at least 1 ms).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// The most addresses tracked at once (default 10,000; at least 1).
    #[must_use]
    pub fn max_tracked(mut self, n: usize) -> Self {
        self.max_tracked = n.max(1);
        self
    }

    /// The clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How to find a request's address (default [`peer_address`]). Behind a trusted proxy,
    /// read its forwarding header here. A request without a key is never throttled (one
    /// shared bucket would let one guesser lock every operator out).
    #[must_use]
    pub fn key(
        mut self,
        key: impl Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.key = Box::new(key);
        self
    }

    /// The throttle.
    pub fn build(self) -> AuthThrottle {
        AuthThrottle {
            shared: Arc::new(Shared {
                max_failures: self.max_failures,
                window_ms: u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
                max_tracked: self.max_tracked,
                clock: self.clock,
                key: self.key,
                table: Mutex::new(HashMap::new()),
                failures: AtomicU64::new(0),
                throttled: AtomicU64::new(0),
            }),
        }
    }
}

/// IPv6 peers count per /64 (IPv4-mapped addresses as their IPv4 address).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl AuthThrottle {
    /// A builder with the defaults (10 failures in 60 s, 10,000 addresses).
    pub fn builder() -> AuthThrottleBuilder {
        AuthThrottleBuilder {
            max_failures: 10,
            window: Duration::from_secs(60),
            max_tracked: 10_000,
            clock: Arc::new(SystemClock),
            key: Box::new(peer_address),
        }
    }

    /// The throttling key of a request (see [`AuthThrottleBuilder::key`]).
    pub fn key_of(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        (self.shared.key)(headers, extensions)
    }

    /// `Some(wait)` when `peer` is throttled: the time until its window ends (counted in
    /// [`AuthThrottle::throttled_total`], and logged once per window).
    pub fn check(&self, peer: IpAddr) -> Option<Duration> {
        let peer = bucket(peer);
        let now = self.shared.clock.now_millis();
        let mut table = self.shared.table.lock();
        let entry = table.get_mut(&peer)?;
        let ends = entry.start.saturating_add(self.shared.window_ms);
        if now >= ends || entry.failures < self.shared.max_failures {
            return None;
        }
        self.shared.throttled.fetch_add(1, Ordering::Relaxed);
        if !entry.logged {
            entry.logged = true;
            tracing::warn!(
                peer = %peer,
                failures = entry.failures,
                window_secs = self.shared.window_ms / 1000,
                "admin authentication throttled for this address until its window ends"
            );
        }
        Some(Duration::from_millis(ends - now))
    }

    /// Records a failed authentication from `peer`. Returns whether it was the first of
    /// its window (the caller logs that one and not the rest).
    pub fn record_failure(&self, peer: IpAddr) -> bool {
        let peer = bucket(peer);
        self.shared.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.shared.clock.now_millis();
        let window = self.shared.window_ms;
        let mut table = self.shared.table.lock();
        if let Some(entry) = table.get_mut(&peer) {
            if now < entry.start.saturating_add(window) {
                entry.failures = entry.failures.saturating_add(1);
                return false;
            }
            *entry = Entry {
                start: now,
                failures: 1,
                logged: false,
            };
            return true;
        }
        if table.len() >= self.shared.max_tracked {
            self.make_room(&mut table, now);
        }
        table.insert(
            peer,
            Entry {
                start: now,
                failures: 1,
                logged: false,
            },
        );
        true
    }

    /// Clears `peer`'s failures (it authenticated).
    pub fn record_success(&self, peer: IpAddr) {
        let peer = bucket(peer);
        let mut table = self.shared.table.lock();
        if !table.is_empty() {
            table.remove(&peer);
        }
    }

    /// Drops expired windows; if none had expired, the tenth of the table closest to
    /// expiry, so the next inserts find room without another scan.
    fn make_room(&self, table: &mut HashMap<IpAddr, Entry>, now: u64) {
        let window = self.shared.window_ms;
        table.retain(|_, e| now < e.start.saturating_add(window));
        if table.len() < self.shared.max_tracked {
            return;
        }
        let mut starts: Vec<u64> = table.values().map(|e| e.start).collect();
        let evict = (starts.len() / 10).max(1);
        let (_, cutoff, _) = starts.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        let mut left = evict;
        table.retain(|_, e| {
            if left > 0 && e.start <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Failed authentications seen (all addresses).
    pub fn failures_total(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Requests answered 429 because their address was throttled.
    pub fn throttled_total(&self) -> u64 {
        self.shared.throttled.load(Ordering::Relaxed)
    }

    /// Addresses tracked now (at most `max_tracked`).
    pub fn tracked(&self) -> usize {
        self.shared.table.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamnet_common::ManualClock;

    fn throttle(clock: &ManualClock, max_tracked: usize) -> AuthThrottle {
        AuthThrottle::builder()
            .clock(Arc::new(clock.clone()))
            .max_tracked(max_tracked)
            .build()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ten_failures_in_a_window_throttle_until_it_ends() {
        let clock = ManualClock::new(1_000_000);
        let t = throttle(&clock, 100);
        assert!(t.record_failure(ip("10.0.0.1")), "the first of its window");
        for _ in 0..8 {
            assert!(!t.record_failure(ip("10.0.0.1")));
        }
        assert_eq!(t.check(ip("10.0.0.1")), None, "9 failures");
        t.record_failure(ip("10.0.0.1"));
        clock.advance(Duration::from_millis(20_500));
        assert_eq!(t.check(ip("10.0.0.1")), Some(Duration::from_millis(39_500)));
        assert_eq!(t.check(ip("10.0.0.2")), None);
        assert_eq!((t.failures_total(), t.throttled_total()), (10, 1));
        clock.advance(Duration::from_millis(39_500));
        assert_eq!(t.check(ip("10.0.0.1")), None);
        // A new window starts from scratch.
        assert!(t.record_failure(ip("10.0.0.1")));
        assert_eq!(t.check(ip("10.0.0.1")), None);
    }

    #[test]
    fn a_success_clears_and_ipv6_counts_per_64() {
        let clock = ManualClock::new(0);
        let t = throttle(&clock, 100);
        for i in 0..10 {
            t.record_failure(ip(&format!("2001:db8:1:2::{i:x}")));
        }
        assert!(t.check(ip("2001:db8:1:2:ffff::1")).is_some(), "same /64");
        assert!(t.check(ip("2001:db8:1:3::1")).is_none());
        t.record_success(ip("2001:db8:1:2::99"));
        assert!(t.check(ip("2001:db8:1:2::1")).is_none());
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_expired_windows_go_first() {
        let clock = ManualClock::new(0);
        let t = throttle(&clock, 50);
        for i in 0..50u8 {
            t.record_failure(IpAddr::from([10, 0, 0, i]));
        }
        clock.advance(Duration::from_secs(30));
        // A throttled address inside its window...
        for _ in 0..10 {
            t.record_failure(ip("192.0.2.1"));
        }
        assert!(t.tracked() <= 50);
        clock.advance(Duration::from_secs(31)); // the first 50 expired, 192.0.2.1 did not
        for i in 0..200u8 {
            t.record_failure(IpAddr::from([10, 1, 0, i]));
            assert!(t.tracked() <= 50);
        }
        assert!(t.tracked() > 40, "evictions take a tenth, not the table");
    }
}
