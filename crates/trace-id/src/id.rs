//! Trace id validation and generation.

use bytes::Bytes;
use dreamnet_common::SharedClock;
use http::Request;
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest trace id accepted from a client.
pub const MAX_TRACE_ID_LEN: usize = 128;

/// Whether `id` may be used as a trace id: 1..=128 characters of `[A-Za-z0-9._-]`.
///
/// This is the rule for incoming `X-Trace-Id` values and for ids made by a [`MakeTraceId`]
/// policy. The allow-list keeps ids safe to echo in headers, log lines and JSON bodies.
///
/// ```
/// use dreamnet_trace_id::is_valid_trace_id;
///
/// assert!(is_valid_trace_id("mbx2k9q1-3f9a0c1e77d24b6a"));
/// assert!(!is_valid_trace_id(""));
/// assert!(!is_valid_trace_id("has space"));
/// assert!(!is_valid_trace_id(&"a".repeat(129)));
/// ```
#[must_use]
pub fn is_valid_trace_id(id: &str) -> bool {
    is_valid_trace_id_bytes(id.as_bytes())
}

/// `ALLOWED[b]`: whether byte `b` may appear in a trace id (one load per byte on the hot path).
static ALLOWED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// [`is_valid_trace_id`] of bytes (e.g. a header value's).
///
/// Branch-free over the bytes: a trace id is short and almost always valid, so one pass
/// that ANDs a table load per byte (eight at a time) costs less than a test and a branch
/// per byte that would stop early on the rare invalid one.
#[inline]
pub(crate) fn is_valid_trace_id_bytes(id: &[u8]) -> bool {
    if !(1..=MAX_TRACE_ID_LEN).contains(&id.len()) {
        return false;
    }
    let mut chunks = id.chunks_exact(8);
    let mut ok = true;
    for chunk in &mut chunks {
        ok &= chunk
            .iter()
            .fold(true, |all, &b| all & ALLOWED[usize::from(b)]);
    }
    chunks
        .remainder()
        .iter()
        .fold(ok, |all, &b| all & ALLOWED[usize::from(b)])
}

/// A policy that makes the trace id of a request that brought no usable one.
///
/// Shipped default: [`TimestampHex`]. Any `Fn() -> String` closure is a policy too. An id
/// that does not pass [`is_valid_trace_id`] is replaced by a [`TimestampHex`] id (and a
/// warning with its length is logged), so a faulty policy can never put an unsafe value
/// into headers or logs.
///
/// ```
/// use dreamnet_trace_id::{MakeTraceId, TraceIdLayer};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// // A closure...
/// let _layer = TraceIdLayer::new().make_trace_id(|| "fixed-id".to_owned());
///
/// // ... or a type that looks at the request.
/// struct PerHost(AtomicU64);
/// impl MakeTraceId for PerHost {
///     fn make_trace_id<B>(&self, request: &http::Request<B>) -> String {
///         let host = request.uri().host().unwrap_or("local");
///         format!("{host}-{}", self.0.fetch_add(1, Ordering::Relaxed))
///     }
/// }
/// let _layer = TraceIdLayer::new().make_trace_id(PerHost(AtomicU64::new(0)));
/// ```
pub trait MakeTraceId {
    /// A new trace id for `request`.
    fn make_trace_id<B>(&self, request: &Request<B>) -> String;

    /// A new trace id for `request` as the bytes the layer stores and sends.
    ///
    /// The default is [`make_trace_id`](Self::make_trace_id)'s `String` (not copied). A
    /// policy that can write its id without a `String` may override it, as [`TimestampHex`]
    /// does. The layer calls this one and checks its output with [`is_valid_trace_id`]
    /// whichever way it was made.
    fn make_trace_id_bytes<B>(&self, request: &Request<B>) -> Bytes {
        Bytes::from(self.make_trace_id(request))
    }
}

impl<F> MakeTraceId for F
where
    F: Fn() -> String,
{
    #[inline]
    fn make_trace_id<B>(&self, _request: &Request<B>) -> String {
        self()
    }
}

/// The default id policy, the seed's `timestamp-hex` shape: base36 Unix milliseconds, `-`,
/// 16 random lowercase hex digits, e.g. `mbx2k9q1-3f9a0c1e77d24b6a`.
///
/// The random part (64 bits) comes from a thread-local CSPRNG seeded from the operating
/// system, so ids are unique across threads and processes (a collision needs the same
/// millisecond *and* the same 64 random bits). One limitation is inherited from
/// `rand::ThreadRng`: a process that `fork`s without `exec` must reseed it in the child.
///
/// ```
/// use dreamnet_trace_id::{is_valid_trace_id, TimestampHex};
///
/// let id = TimestampHex::new().generate();
/// let (millis, random) = id.split_once('-').unwrap();
/// assert!(u64::from_str_radix(millis, 36).is_ok());
/// assert_eq!(random.len(), 16);
/// assert!(is_valid_trace_id(&id));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TimestampHex {
    clock: Option<SharedClock>,
}

impl TimestampHex {
    /// A generator reading the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self { clock: None }
    }

    /// A generator reading `clock` for the timestamp part (tests use a `ManualClock`).
    #[must_use]
    pub fn with_clock(clock: SharedClock) -> Self {
        Self { clock: Some(clock) }
    }

    /// A new id.
    #[must_use]
    pub fn generate(&self) -> String {
        String::from(self.generate_digits().as_str())
    }

    /// A new id, on the stack.
    fn generate_digits(&self) -> IdDigits {
        let millis = match &self.clock {
            Some(clock) => clock.now_millis(),
            None => system_millis(),
        };
        IdDigits::new(millis, rand::rng().next_u64())
    }
}

impl MakeTraceId for TimestampHex {
    #[inline]
    fn make_trace_id<B>(&self, _request: &Request<B>) -> String {
        self.generate()
    }

    /// The id written once, into the one allocation of the `Bytes` that owns it: no
    /// `String`, no UTF-8 check, and clones of the header value share it by a count.
    #[inline]
    fn make_trace_id_bytes<B>(&self, _request: &Request<B>) -> Bytes {
        Bytes::from_owner(self.generate_digits())
    }
}

fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// A `timestamp-hex` id, `base36(millis)-hex16(random)`, on the stack.
#[derive(Clone, Copy)]
pub(crate) struct IdDigits {
    /// u64::MAX has 13 base36 digits; then '-' and 16 hex digits. The id is `buf[start..]`.
    buf: [u8; 13 + 1 + 16],
    start: u8,
}

impl IdDigits {
    pub(crate) fn new(millis: u64, random: u64) -> Self {
        let mut buf = [0u8; 13 + 1 + 16];
        let mut start = 13;
        let mut n = millis;
        loop {
            start -= 1;
            buf[start] = BASE36[(n % 36) as usize];
            n /= 36;
            if n == 0 {
                break;
            }
        }
        buf[13] = b'-';
        for (i, digit) in buf[14..].iter_mut().enumerate() {
            *digit = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
        }
        Self {
            buf,
            // At most 12: the first digit of 13.
            start: start as u8,
        }
    }
}

impl AsRef<[u8]> for IdDigits {
    fn as_ref(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..]
    }
}

impl IdDigits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_ref()).expect("base36 and hex digits are ASCII")
    }
}

/// `base36(millis)-hex16(random)` as a `String`.
#[cfg(test)]
pub(crate) fn format_id(millis: u64, random: u64) -> String {
    String::from(IdDigits::new(millis, random).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamnet_common::ManualClock;
    use http::HeaderValue;
    use std::{collections::HashSet, sync::Arc};

    #[test]
    fn format_matches_the_seed_shape() {
        assert_eq!(format_id(0, 0), "0-0000000000000000");
        assert_eq!(format_id(35, u64::MAX), "z-ffffffffffffffff");
        assert_eq!(format_id(36, 0xabc), "10-0000000000000abc");
        assert_eq!(
            format_id(u64::MAX, 1),
            format!("{}-0000000000000001", "3w5e11264sgsf")
        );
        // A 2025 timestamp is 8 base36 digits.
        let id = format_id(1_749_000_000_000, 0x3f9a_0c1e_77d2_4b6a);
        assert_eq!(id, "mbh9fx1c-3f9a0c1e77d24b6a");
        assert_eq!(
            u64::from_str_radix("mbh9fx1c", 36).unwrap(),
            1_749_000_000_000
        );
    }

    #[test]
    fn injected_clock_gives_the_timestamp_part() {
        let clock = ManualClock::new(1_749_000_000_000);
        let make = TimestampHex::with_clock(Arc::new(clock));
        let id = make.generate();
        assert!(id.starts_with("mbh9fx1c-"), "{id}");
        assert_eq!(id.len(), "mbh9fx1c-".len() + 16);
        assert!(is_valid_trace_id(&id));
    }

    /// The bytes the layer takes are the id `generate` gives, made without a `String`.
    #[test]
    fn the_layer_bytes_are_a_timestamp_hex_id() {
        let make = TimestampHex::with_clock(Arc::new(ManualClock::new(1_749_000_000_000)));
        let bytes = make.make_trace_id_bytes(&Request::new(()));
        let id = std::str::from_utf8(&bytes).unwrap();
        assert!(id.starts_with("mbh9fx1c-"), "{id}");
        assert_eq!(id.len(), "mbh9fx1c-".len() + 16);
        assert!(is_valid_trace_id_bytes(&bytes));
        // A clone shares the bytes.
        let clone = bytes.clone();
        assert_eq!(clone.as_ptr(), bytes.as_ptr());
        for (millis, random) in [(0, 0), (35, u64::MAX), (u64::MAX, 1)] {
            let digits = IdDigits::new(millis, random);
            assert_eq!(digits.as_ref(), format_id(millis, random).as_bytes());
            assert_eq!(
                Bytes::from_owner(digits).as_ref(),
                format_id(millis, random).as_bytes()
            );
        }
    }

    /// A policy that only has `make_trace_id` gives the layer that `String`'s bytes.
    #[test]
    fn the_default_bytes_are_the_string() {
        let make = || "from-closure".to_owned();
        assert_eq!(
            make.make_trace_id_bytes(&Request::new(())),
            Bytes::from_static(b"from-closure")
        );
    }

    #[test]
    fn system_clock_timestamp_is_now() {
        let before = system_millis();
        let id = TimestampHex::new().generate();
        let after = system_millis();
        let (millis, random) = id.split_once('-').unwrap();
        let millis = u64::from_str_radix(millis, 36).unwrap();
        assert!((before..=after).contains(&millis));
        assert_eq!(random.len(), 16);
        assert!(random.bytes().all(|b| HEX.contains(&b)));
    }

    #[test]
    fn validation_allow_list() {
        for ok in [
            "a",
            "A-z_0.9",
            "mbx2k9q1-3f9a0c1e77d24b6a",
            &"x".repeat(128),
        ] {
            assert!(is_valid_trace_id(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            " ",
            "a b",
            " leading",
            "trailing ",
            "semi;colon",
            "quote\"",
            "slash/",
            "plus+",
            "colon:",
            "tab\t",
            "émoji",
            "<script>",
            &"x".repeat(129),
            &"y".repeat(257),
        ] {
            assert!(!is_valid_trace_id(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn header_values_with_non_ascii_bytes_are_invalid() {
        let value = HeaderValue::from_bytes(b"abc\xff\xfedef").unwrap();
        assert!(!is_valid_trace_id_bytes(value.as_bytes()));
        let value = HeaderValue::from_bytes("trace-\u{e9}".as_bytes()).unwrap();
        assert!(!is_valid_trace_id_bytes(value.as_bytes()));
        let value = HeaderValue::from_static("ok-id");
        assert!(is_valid_trace_id_bytes(value.as_bytes()));
    }

    #[test]
    fn closures_are_policies() {
        let make = || "from-closure".to_owned();
        assert_eq!(make.make_trace_id(&Request::new(())), "from-closure");
    }

    /// A correctness test (not a timing): a million ids made on two threads at once are
    /// all distinct.
    #[test]
    fn a_million_ids_from_two_threads_are_unique() {
        const PER_THREAD: usize = 500_000;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let make = TimestampHex::new();
                    (0..PER_THREAD).map(|_| make.generate()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::with_capacity(2 * PER_THREAD);
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(is_valid_trace_id(&id));
                assert!(seen.insert(id), "duplicate trace id");
            }
        }
        assert_eq!(seen.len(), 2 * PER_THREAD);
    }

    proptest::proptest! {
        /// The validator is exactly the allow-list `^[A-Za-z0-9._-]{1,128}$`.
        #[test]
        fn validator_matches_the_allow_list(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let expected = (1..=128).contains(&bytes.len())
                && bytes.iter().all(|b| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-".contains(b));
            proptest::prop_assert_eq!(is_valid_trace_id_bytes(&bytes), expected);
        }

        /// Any timestamp and random part give a valid id that decodes back.
        #[test]
        fn ids_round_trip(millis in proptest::num::u64::ANY, random in proptest::num::u64::ANY) {
            let id = format_id(millis, random);
            proptest::prop_assert!(is_valid_trace_id(&id));
            let (m, r) = id.split_once('-').unwrap();
            proptest::prop_assert_eq!(u64::from_str_radix(m, 36).unwrap(), millis);
            proptest::prop_assert_eq!(u64::from_str_radix(r, 16).unwrap(), random);
            proptest::prop_assert_eq!(r.len(), 16);
        }
    }
}
