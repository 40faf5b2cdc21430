//! W3C Trace Context `traceparent` parsing and the mapping of any trace id to a W3C one.

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// A parsed, valid W3C `traceparent` header (version `00`).
///
/// The only accepted form is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, exactly
/// 55 characters, all hex digits lowercase, with neither id all zeros. Anything else
/// (another version, `ff`, upper case, extra fields, surrounding spaces) is invalid; the layer
/// then ignores the header and drops `tracestate`, as the W3C recommendation requires.
///
/// ```
/// use dreamnet_trace_id::Traceparent;
///
/// let tp = Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(tp.parent_id(), "00f067aa0ba902b7");
/// assert!(tp.sampled());
/// assert!(Traceparent::parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent<'a> {
    trace_id: &'a str,
    parent_id: &'a str,
    flags: u8,
}

/// Length of a version-00 `traceparent`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const TRACEPARENT_LEN: usize = 55;

impl<'a> Traceparent<'a> {
    /// Parses a version-00 `traceparent` value; `None` when it is not valid.
    #[must_use]
    pub fn parse(value: &'a str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() != TRACEPARENT_LEN || &b[0..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = &value[3..35];
        let parent_id = &value[36..52];
        let flags = &value[53..55];
        if !is_lower_hex(trace_id)
            || !is_lower_hex(parent_id)
            || !is_lower_hex(flags)
            || is_all_zero(trace_id)
            || is_all_zero(parent_id)
        {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The single `traceparent` of `headers` under `name`, if there is exactly one and it is
    /// valid (several `traceparent` fields make the request's trace context invalid).
    pub(crate) fn from_headers(headers: &'a HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut values = headers.get_all(name).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(value.to_str().ok()?)
    }

    /// The 32 lowercase hex digit trace id.
    #[must_use]
    pub fn trace_id(&self) -> &'a str {
        self.trace_id
    }

    /// The 16 lowercase hex digit id of the caller's span.
    #[must_use]
    pub fn parent_id(&self) -> &'a str {
        self.parent_id
    }

    /// The trace flags byte.
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller sampled this trace (flag bit 0).
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_all_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

fn is_hex_nonzero(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && !is_all_zero(s)
}

/// The W3C (32 lowercase hex, not all zero) form of any trace id, deterministically:
///
/// 1. 32 hex digits, not all zero: the same digits in lower case;
/// 2. a hyphenated UUID (`8-4-4-4-12` hex digits, not all zero): its 32 digits in lower case;
/// 3. anything else (e.g. a `timestamp-hex` id): the first 16 bytes of SHA-256 of the id,
///    as 32 lowercase hex digits (an all-zero digest prefix, probability 2^-128, ends in `1`).
///
/// The same input always gives the same output, on every service, so a downstream service
/// that receives both `X-Trace-Id` and `traceparent` can tell that they name the same trace.
///
/// ```
/// use dreamnet_trace_id::w3c_trace_id;
///
/// assert_eq!(w3c_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(w3c_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(w3c_trace_id("mbx2k9q1-3f9a0c1e77d24b6a"), "dd7ac4dfda839867ebc15179a4f1e0ed");
/// ```
#[must_use]
pub fn w3c_trace_id(id: &str) -> Cow<'_, str> {
    if is_lower_hex(id) && is_hex_nonzero(id, 32) {
        return Cow::Borrowed(id);
    }
    if is_hex_nonzero(id, 32) {
        return Cow::Owned(id.to_ascii_lowercase());
    }
    if is_uuid(id) {
        let digits: String = id
            .chars()
            .filter(|&c| c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !is_all_zero(&digits) {
            return Cow::Owned(digits);
        }
    }
    Cow::Owned(hashed_hex(id, 16))
}

/// The W3C span id (16 lowercase hex, not all zero) form of a span id, by the same rules as
/// [`w3c_trace_id`] (16 hex digits kept, anything else hashed). Span ids made by this crate
/// already have that form.
pub(crate) fn w3c_span_id(id: &str) -> Cow<'_, str> {
    if is_lower_hex(id) && is_hex_nonzero(id, 16) {
        Cow::Borrowed(id)
    } else if is_hex_nonzero(id, 16) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Owned(hashed_hex(id, 8))
    }
}

fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The first `bytes` bytes of SHA-256(`id`) as lowercase hex, never all zero.
fn hashed_hex(id: &str, bytes: usize) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let mut out = hex::encode(&digest[..bytes]);
    if is_all_zero(&out) {
        out.pop();
        out.push('1');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, parent: &str, flags: &str) -> String {
        format!("{version}-{trace}-{parent}-{flags}")
    }

    #[test]
    fn valid_version_00() {
        let value = tp("00", TRACE, PARENT, "01");
        let parsed = Traceparent::parse(&value).unwrap();
        assert_eq!(parsed.trace_id(), TRACE);
        assert_eq!(parsed.parent_id(), PARENT);
        assert_eq!(parsed.flags(), 1);
        assert!(parsed.sampled());
        let unsampled = tp("00", TRACE, PARENT, "00");
        assert!(!Traceparent::parse(&unsampled).unwrap().sampled());
        // Unknown flag bits are carried, not rejected.
        let other = tp("00", TRACE, PARENT, "ff");
        assert_eq!(Traceparent::parse(&other).unwrap().flags(), 0xff);
    }

    #[test]
    fn invalid_values() {
        let cases = [
            // versions
            tp("ff", TRACE, PARENT, "01"),
            tp("01", TRACE, PARENT, "01"),
            tp("0", TRACE, PARENT, "01"),
            tp("000", TRACE, PARENT, "01"),
            // wrong lengths
            tp("00", &TRACE[1..], PARENT, "01"),
            tp("00", &format!("{TRACE}0"), PARENT, "01"),
            tp("00", TRACE, &PARENT[1..], "01"),
            tp("00", TRACE, PARENT, "1"),
            tp("00", TRACE, PARENT, "001"),
            // upper case
            tp("00", &TRACE.to_uppercase(), PARENT, "01"),
            tp("00", TRACE, &PARENT.to_uppercase(), "01"),
            tp("00", TRACE, PARENT, "0A"),
            // all zero
            tp("00", &"0".repeat(32), PARENT, "01"),
            tp("00", TRACE, &"0".repeat(16), "01"),
            // flags not hex
            tp("00", TRACE, PARENT, "0g"),
            tp("00", TRACE, PARENT, "-1"),
            tp("00", TRACE, PARENT, "+1"),
            // non-hex ids
            tp("00", &format!("{}z", &TRACE[..31]), PARENT, "01"),
            tp("00", TRACE, &format!("{}x", &PARENT[..15]), "01"),
            // extra fields, separators, spaces
            format!("{}-extra", tp("00", TRACE, PARENT, "01")),
            format!("{}-", tp("00", TRACE, PARENT, "01")),
            format!(" {}", tp("00", TRACE, PARENT, "01")),
            format!("{} ", tp("00", TRACE, PARENT, "01")),
            tp("00", TRACE, PARENT, "01").replace('-', "_"),
            String::new(),
            "00".to_owned(),
        ];
        for case in &cases {
            assert_eq!(Traceparent::parse(case), None, "{case:?} should be invalid");
        }
    }

    #[test]
    fn several_traceparent_fields_are_invalid() {
        let name = HeaderName::from_static("traceparent");
        let value = HeaderValue::from_str(&tp("00", TRACE, PARENT, "01")).unwrap();
        let mut headers = HeaderMap::new();
        headers.append(&name, value.clone());
        assert!(Traceparent::from_headers(&headers, &name).is_some());
        headers.append(&name, value);
        assert!(Traceparent::from_headers(&headers, &name).is_none());
        let bytes = HeaderValue::from_bytes(b"00-\xff").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(&name, bytes);
        assert!(Traceparent::from_headers(&headers, &name).is_none());
    }

    #[test]
    fn w3c_mapping_is_deterministic_and_valid() {
        assert_eq!(w3c_trace_id(TRACE), TRACE);
        assert!(matches!(w3c_trace_id(TRACE), Cow::Borrowed(_)));
        assert_eq!(w3c_trace_id(&TRACE.to_uppercase()), TRACE);
        assert_eq!(
            w3c_trace_id("4BF92F35-77B3-4DA6-A3CE-929D0E0E4736"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // All-zero inputs are not valid W3C ids: they are hashed.
        let zeros = "0".repeat(32);
        assert_ne!(w3c_trace_id(&zeros), zeros);
        let zero_uuid = w3c_trace_id("00000000-0000-0000-0000-000000000000");
        assert_ne!(zero_uuid, zeros);
        for id in ["mbx2k9q1-3f9a0c1e77d24b6a", "a", "x.y_z", &"q".repeat(128)] {
            let w3c = w3c_trace_id(id);
            assert_eq!(w3c, w3c_trace_id(id), "deterministic");
            assert_eq!(w3c.len(), 32);
            assert!(is_lower_hex(&w3c) && !is_all_zero(&w3c));
            let full = tp("00", &w3c, PARENT, "01");
            assert!(Traceparent::parse(&full).is_some());
        }
        assert_eq!(
            w3c_trace_id("mbx2k9q1-3f9a0c1e77d24b6a"),
            "dd7ac4dfda839867ebc15179a4f1e0ed"
        );
        assert_ne!(w3c_trace_id("a"), w3c_trace_id("b"));
    }

    #[test]
    fn w3c_span_mapping() {
        assert_eq!(w3c_span_id(PARENT), PARENT);
        assert_eq!(w3c_span_id("00F067AA0BA902B7"), PARENT);
        for id in ["not-hex", &"0".repeat(16), ""] {
            let span = w3c_span_id(id);
            assert_eq!(span.len(), 16);
            assert!(is_lower_hex(&span) && !is_all_zero(&span));
        }
    }

    proptest::proptest! {
        /// Well-formed parts parse back to themselves; all-zero ids never parse.
        #[test]
        fn parse_accepts_exactly_the_valid_form(
            trace in "[0-9a-f]{32}",
            parent in "[0-9a-f]{16}",
            flags in "[0-9a-f]{2}",
        ) {
            let value = tp("00", &trace, &parent, &flags);
            let parsed = Traceparent::parse(&value);
            if is_all_zero(&trace) || is_all_zero(&parent) {
                proptest::prop_assert!(parsed.is_none());
            } else {
                let parsed = parsed.unwrap();
                proptest::prop_assert_eq!(parsed.trace_id(), trace.as_str());
                proptest::prop_assert_eq!(parsed.parent_id(), parent.as_str());
                proptest::prop_assert_eq!(format!("{:02x}", parsed.flags()), flags);
            }
        }

        /// Arbitrary strings never panic the parser, and what parses is well-formed.
        #[test]
        fn parse_never_panics(
            value in proptest::prop_oneof!["\\PC{0,80}", "00-\\PC{32}-\\PC{16}-\\PC{2}", "00-[0-9a-fA-F\\-é]{32}-[0-9a-f]{14}é"],
        ) {
            if let Some(parsed) = Traceparent::parse(&value) {
                proptest::prop_assert_eq!(value.len(), 55);
                proptest::prop_assert!(value.starts_with("00-"));
                proptest::prop_assert!(is_lower_hex(parsed.trace_id()) && !is_all_zero(parsed.trace_id()));
            }
        }

        /// The W3C mapping of any valid trace id is a valid W3C trace id.
        #[test]
        fn w3c_mapping_always_valid(id in "[A-Za-z0-9._-]{1,128}") {
            let w3c = w3c_trace_id(&id);
            proptest::prop_assert_eq!(w3c.len(), 32);
            proptest::prop_assert!(is_lower_hex(&w3c) && !is_all_zero(&w3c));
        }
    }
}
