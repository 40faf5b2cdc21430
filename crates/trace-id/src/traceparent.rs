//! W3C Trace Context `traceparent` parsing and the mapping of any trace id to a W3C one.

use crate::incoming::Field;
#[cfg(test)]
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// A parsed, valid W3C `traceparent` header, of version `00` or a future version.
///
/// The rules of W3C Trace Context (section "Versioning of traceparent"):
///
/// - optional whitespace (spaces, tabs) around the value is ignored (RFC 9110 field values);
/// - `version` is two lowercase hex digits followed by `-`; `ff` is invalid;
/// - version `00` is exactly `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
///   55 characters;
/// - a higher version (`01`..`fe`) is parsed by the same fields from its first 55
///   characters; it may be longer only if character 56 is `-` (fields a future version
///   appends, never looked at);
/// - hex digits are lowercase; neither id may be all zeros.
///
/// Anything else is invalid: the layer then ignores the header and drops `tracestate`, as
/// the recommendation requires. The outbound header is always version `00`, built from
/// these fields ([`TraceContext::traceparent`](crate::TraceContext::traceparent)).
///
/// ```
/// use dreamnet_trace_id::Traceparent;
///
/// let tp = Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(tp.parent_id(), "00f067aa0ba902b7");
/// assert!(tp.sampled());
///
/// // A future version with an extra field is parsed by the version-00 fields.
/// let future = Traceparent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later").unwrap();
/// assert_eq!(future.version(), 0xcc);
/// assert!(!future.sampled());
///
/// assert!(Traceparent::parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
/// assert!(Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent<'a> {
    version: u8,
    trace_id: &'a str,
    parent_id: &'a str,
    flags: u8,
}

/// Length of a version-00 `traceparent`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const TRACEPARENT_LEN: usize = 55;

impl<'a> Traceparent<'a> {
    /// Parses a `traceparent` value; `None` when it is not valid.
    #[must_use]
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = trim_ows(value);
        let b = value.as_bytes();
        if b.len() < TRACEPARENT_LEN || b[2] != b'-' {
            return None;
        }
        let version = lower_hex_byte(&b[0..2])?;
        let length_ok = match version {
            0xff => false,
            0x00 => b.len() == TRACEPARENT_LEN,
            // A future version may append fields, each introduced by a dash.
            _ => b.len() == TRACEPARENT_LEN || b[TRACEPARENT_LEN] == b'-',
        };
        if !length_ok || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let flags = lower_hex_byte(&b[53..55])?;
        // Slicing below must not split a character.
        if !b[..TRACEPARENT_LEN].is_ascii() {
            return None;
        }
        let (trace_id, parent_id) = (&value[3..35], &value[36..52]);
        if !is_lower_hex(trace_id)
            || !is_lower_hex(parent_id)
            || is_all_zero(trace_id)
            || is_all_zero(parent_id)
        {
            return None;
        }
        Some(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The request's `traceparent`, if there is exactly one field and it is valid (several
    /// `traceparent` fields make the request's trace context invalid).
    pub(crate) fn from_field(field: Field<'a>) -> Option<Self> {
        match field {
            Field::One(value) => Self::parse(value.to_str().ok()?),
            Field::Absent | Field::Repeated => None,
        }
    }

    /// [`Traceparent::from_field`] of `headers` under `name`.
    #[cfg(test)]
    pub(crate) fn from_headers(headers: &'a HeaderMap, name: &HeaderName) -> Option<Self> {
        Self::from_field(Field::of(headers, name))
    }

    /// The version byte of the header as received (`0x00`..=`0xfe`).
    #[must_use]
    pub fn version(&self) -> u8 {
        self.version
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

    /// The trace flags byte as received, unknown bits included.
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The flags this service carries on: the ones the recommendation defines, unknown bits
    /// cleared (see [`TraceFlags::from_bits`]).
    #[must_use]
    pub fn trace_flags(&self) -> TraceFlags {
        TraceFlags::from_bits(self.flags)
    }

    /// Whether the caller sampled this trace (flag bit 0).
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The `trace-flags` of a W3C trace: `sampled` (bit 0) and, from Trace Context Level 2,
/// `random` (bit 1, the trace id's right-most 7 bytes are random).
///
/// Only those two bits are ever kept: the recommendation reserves the others and says
/// vendors MUST set them to zero, and a future `traceparent` version's other flags are not
/// to be interpreted. Incoming flags are carried to outbound calls unchanged otherwise, so a
/// caller's "not sampled" (`00`) goes on as `00`.
///
/// ```
/// use dreamnet_trace_id::TraceFlags;
///
/// let flags = TraceFlags::from_bits(0xff);
/// assert_eq!(flags.bits(), 0x03);
/// assert!(flags.sampled() && flags.random());
/// assert_eq!(TraceFlags::SAMPLED.to_string(), "01");
/// assert!(!TraceFlags::NONE.sampled());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// No flag set (`00`): the caller did not record this trace.
    pub const NONE: Self = Self(0);
    /// The `sampled` flag (`01`).
    pub const SAMPLED: Self = Self(0x01);
    /// The Level 2 `random` flag (`02`).
    pub const RANDOM: Self = Self(0x02);
    /// The bits this crate knows; others are cleared.
    const KNOWN: u8 = 0x03;

    /// Flags from a `trace-flags` byte, with the reserved bits cleared.
    #[must_use]
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::KNOWN)
    }

    /// The flags byte.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether the `sampled` bit is set.
    #[must_use]
    pub const fn sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 != 0
    }

    /// Whether the `random` bit is set.
    #[must_use]
    pub const fn random(self) -> bool {
        self.0 & Self::RANDOM.0 != 0
    }

    /// These flags with `sampled` set or cleared.
    #[must_use]
    pub const fn with_sampled(self, sampled: bool) -> Self {
        if sampled {
            Self(self.0 | Self::SAMPLED.0)
        } else {
            Self(self.0 & !Self::SAMPLED.0)
        }
    }

    /// The two lowercase hex digits of the `traceparent` field.
    pub(crate) fn hex(self) -> [u8; 2] {
        [
            crate::id::HEX[usize::from(self.0 >> 4)],
            crate::id::HEX[usize::from(self.0 & 0xf)],
        ]
    }
}

impl std::fmt::Display for TraceFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

/// `s` without the optional whitespace (spaces, horizontal tabs) of RFC 9110 around it.
pub(crate) fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Two lowercase hex digits as a byte.
fn lower_hex_byte(digits: &[u8]) -> Option<u8> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    match digits {
        [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
        _ => None,
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
            tp("0", TRACE, PARENT, "01"),
            tp("000", TRACE, PARENT, "01"),
            tp("0000", TRACE, PARENT, "01"),
            tp(".0", TRACE, PARENT, "01"),
            tp("0.", TRACE, PARENT, "01"),
            tp("0A", TRACE, PARENT, "01"),
            tp("CC", TRACE, PARENT, "01"),
            // wrong lengths
            tp("00", &TRACE[1..], PARENT, "01"),
            tp("00", &format!("{TRACE}0"), PARENT, "01"),
            tp("00", TRACE, &PARENT[1..], "01"),
            tp("00", TRACE, &format!("{PARENT}0"), "01"),
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
            tp("00", TRACE, PARENT, ".0"),
            tp("00", TRACE, PARENT, "0."),
            // non-hex ids
            tp("00", &format!("{}z", &TRACE[..31]), PARENT, "01"),
            tp("00", &format!(".{}", &TRACE[1..]), PARENT, "01"),
            tp("00", TRACE, &format!("{}x", &PARENT[..15]), "01"),
            tp("00", TRACE, &format!(".{}", &PARENT[1..]), "01"),
            // version 00 is exactly 55 characters: no extra fields
            format!("{}-extra", tp("00", TRACE, PARENT, "01")),
            format!("{}-", tp("00", TRACE, PARENT, "01")),
            format!("{}.", tp("00", TRACE, PARENT, "01")),
            // separators, whitespace inside
            tp("00", TRACE, PARENT, "01").replace('-', "_"),
            tp("00", TRACE, PARENT, "01").replacen('-', " -", 1),
            String::new(),
            "00".to_owned(),
            " \t ".to_owned(),
        ];
        for case in &cases {
            assert_eq!(Traceparent::parse(case), None, "{case:?} should be invalid");
        }
    }

    #[test]
    fn surrounding_whitespace_is_optional_whitespace() {
        // The W3C suite's `test_traceparent_ows_handling`: OWS around a field value is not
        // part of it (RFC 9110 section 5.5); hyper strips it, other stacks may not.
        let value = tp("00", TRACE, PARENT, "01");
        for padded in [
            format!(" {value}"),
            format!("\t{value}"),
            format!("{value} "),
            format!("{value}\t"),
            format!("\t {value} \t"),
        ] {
            let parsed = Traceparent::parse(&padded).expect("OWS is ignored");
            assert_eq!(parsed.trace_id(), TRACE);
        }
    }

    #[test]
    fn future_versions_are_parsed_by_the_version_00_fields() {
        for version in ["01", "02", "cc", "fe"] {
            let exact = tp(version, TRACE, PARENT, "01");
            let parsed = Traceparent::parse(&exact).expect(&exact);
            assert_eq!(parsed.version(), u8::from_str_radix(version, 16).unwrap());
            assert_eq!(parsed.trace_id(), TRACE);
            assert_eq!(parsed.parent_id(), PARENT);
            assert!(parsed.sampled());

            // Longer is fine when the 56th character starts a new field.
            for extra in ["-what-the-future-will-be-like", "-", "-x"] {
                let longer = format!("{exact}{extra}");
                let parsed = Traceparent::parse(&longer).expect(&longer);
                assert_eq!(parsed.trace_id(), TRACE);
                assert_eq!(parsed.parent_id(), PARENT);
            }
            // ... and invalid when it does not.
            for extra in [".what-the-future-will-be-like", "0", "x-y"] {
                let longer = format!("{exact}{extra}");
                assert_eq!(Traceparent::parse(&longer), None, "{longer:?}");
            }
            // The version-00 field rules still hold.
            assert_eq!(
                Traceparent::parse(&tp(version, &"0".repeat(32), PARENT, "01")),
                None
            );
            assert_eq!(Traceparent::parse(&tp(version, TRACE, PARENT, "0A")), None);
            assert_eq!(
                Traceparent::parse(&tp(version, TRACE, &PARENT[1..], "01")),
                None
            );
        }
        // Shorter than 55 characters is never parsed, whatever the version.
        assert_eq!(Traceparent::parse(&tp("cc", TRACE, PARENT, "1")), None);
    }

    #[test]
    fn flags_keep_sampled_and_random_and_clear_reserved_bits() {
        let parse = |flags: &str| {
            let value = tp("00", TRACE, PARENT, flags);
            Traceparent::parse(&value).unwrap().trace_flags()
        };
        assert_eq!(parse("00"), TraceFlags::NONE);
        assert_eq!(parse("01"), TraceFlags::SAMPLED);
        assert_eq!(parse("02"), TraceFlags::RANDOM);
        assert_eq!(parse("03").bits(), 3);
        assert_eq!(parse("09"), TraceFlags::SAMPLED, "bit 3 is reserved");
        assert_eq!(parse("fe"), TraceFlags::RANDOM);
        assert_eq!(TraceFlags::SAMPLED.with_sampled(false), TraceFlags::NONE);
        assert_eq!(TraceFlags::RANDOM.with_sampled(true).bits(), 3);
        assert_eq!(&TraceFlags::from_bits(0x03).hex(), b"03");
        assert_eq!(TraceFlags::default(), TraceFlags::NONE);
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
            value in proptest::prop_oneof!["\\PC{0,80}", "00-\\PC{32}-\\PC{16}-\\PC{2}", "00-[0-9a-fA-F\\-é]{32}-[0-9a-f]{14}é", "[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}[-.é]\\PC{0,8}"],
        ) {
            if let Some(parsed) = Traceparent::parse(&value) {
                let trimmed = trim_ows(&value);
                proptest::prop_assert!(trimmed.len() == 55 || (trimmed.len() > 55 && !trimmed.starts_with("00-")));
                proptest::prop_assert!(!trimmed.starts_with("ff-"));
                proptest::prop_assert!(is_lower_hex(parsed.trace_id()) && !is_all_zero(parsed.trace_id()));
                proptest::prop_assert!(is_lower_hex(parsed.parent_id()) && !is_all_zero(parsed.parent_id()));
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
