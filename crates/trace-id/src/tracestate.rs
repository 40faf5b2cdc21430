//! W3C Trace Context `tracestate`: validation, combination of several fields, and the
//! validated text that is propagated.

use crate::traceparent::trim_ows;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The most list-members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A valid, non-empty W3C `tracestate`, kept as the header text it is sent on as.
///
/// The rules of W3C Trace Context, section "tracestate Header Field Values":
///
/// - the value is a list of `key=value` list-members separated by commas; spaces and tabs
///   around list-members are optional whitespace; empty list-members are allowed and ignored;
/// - several `tracestate` fields are combined, in order, into one list (RFC 9110
///   section 5.3);
/// - at most [`MAX_TRACESTATE_MEMBERS`] (32) list-members;
/// - `key` is a simple key, `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")`, or a
///   multi-tenant key `tenant-id "@" system-id`, where `tenant-id` is
///   `(lcalpha / DIGIT) 0*240(...)` and `system-id` is `lcalpha 0*13(...)` (same characters);
/// - `value` is 1..=256 printable ASCII characters except `,` and `=`, not ending in a
///   space (leading spaces are part of it).
///
/// A `tracestate` with any invalid list-member, or more than 32, is invalid as a whole and
/// is dropped (the W3C test suite at its default strict level requires exactly this: a
/// valid member next to an invalid one is not propagated either).
///
/// Duplicate keys: the recommendation says only one entry per key is allowed and that a
/// vendor MUST NOT add a key twice (sections "Combined Header Value" and "Mutating the
/// tracestate Field"), and that a receiver MAY remove duplicates it did not make (w3c/trace-context
/// PR 477). This type keeps the **first** (left-most) entry of a key and drops later ones:
/// the left-most entry is the most recent position of that vendor, because vendors add and
/// move their entry to the left.
///
/// The text is stored once, as received when it already is in that form (one field, no
/// whitespace, no empty or duplicate members: the common case, no allocation), else
/// rebuilt once as `key=value` members joined by `,`. Propagating it is a cheap clone.
///
/// ```
/// use dreamnet_trace_id::TraceState;
///
/// let state = TraceState::parse("rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE,,").unwrap().unwrap();
/// assert_eq!(state.as_str(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
/// assert_eq!(state.iter().count(), 2);
///
/// // Empty is valid but nothing to propagate; one bad member invalidates the whole list.
/// assert_eq!(TraceState::parse(" , ").unwrap(), None);
/// assert!(TraceState::parse("rojo=1,Congo=2").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceState {
    value: HeaderValue,
}

/// Why a `tracestate` is invalid (it is then dropped as a whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceStateError {
    /// A field holds bytes that are not visible ASCII, space or tab.
    #[error("a tracestate field is not ASCII text")]
    NotText,
    /// A list-member has no `=`.
    #[error("a tracestate list-member has no `=`")]
    MissingEquals,
    /// A key does not match the simple-key / multi-tenant-key grammar.
    #[error("a tracestate key does not match the key grammar")]
    InvalidKey,
    /// A value does not match the value grammar.
    #[error("a tracestate value does not match the value grammar")]
    InvalidValue,
    /// More than [`MAX_TRACESTATE_MEMBERS`] list-members.
    #[error("more than 32 tracestate list-members")]
    TooManyMembers,
}

impl TraceState {
    /// Parses one `tracestate` field value: `Ok(None)` when it holds no list-member.
    ///
    /// # Errors
    ///
    /// The rule the value breaks, see [`TraceStateError`].
    pub fn parse(value: &str) -> Result<Option<Self>, TraceStateError> {
        let value = HeaderValue::from_str(value).map_err(|_| TraceStateError::NotText)?;
        Self::from_fields([&value])
    }

    /// Combines several `tracestate` fields, in order, into one `tracestate`: `Ok(None)`
    /// when they hold no list-member.
    ///
    /// ```
    /// use dreamnet_trace_id::TraceState;
    /// use http::HeaderValue;
    ///
    /// let fields = [HeaderValue::from_static("foo=1,bar=2"), HeaderValue::from_static("baz=3")];
    /// let state = TraceState::from_fields(&fields).unwrap().unwrap();
    /// assert_eq!(state.as_str(), "foo=1,bar=2,baz=3");
    /// ```
    ///
    /// # Errors
    ///
    /// The rule the combined list breaks, see [`TraceStateError`].
    pub fn from_fields<'a, I>(fields: I) -> Result<Option<Self>, TraceStateError>
    where
        I: IntoIterator<Item = &'a HeaderValue>,
    {
        let mut fields = fields.into_iter().peekable();
        if fields.peek().is_none() {
            return Ok(None);
        }
        // Borrowed slices on the stack: validating allocates nothing.
        let mut members = [""; MAX_TRACESTATE_MEMBERS];
        let mut keys = [""; MAX_TRACESTATE_MEMBERS];
        let (mut kept, mut seen) = (0, 0);
        let mut single: Option<&'a HeaderValue> = None;
        let mut as_received = true;

        for (index, field) in fields.enumerate() {
            if index == 0 {
                single = Some(field);
            } else {
                as_received = false;
            }
            let text = field_text(field)?;
            for raw in text.split(',') {
                let member = trim_ows(raw);
                if member.len() != raw.len() || member.is_empty() {
                    as_received = false;
                }
                if member.is_empty() {
                    continue;
                }
                let (key, value) = member
                    .split_once('=')
                    .ok_or(TraceStateError::MissingEquals)?;
                if !is_valid_key(key.as_bytes()) {
                    return Err(TraceStateError::InvalidKey);
                }
                if !is_valid_value(value.as_bytes()) {
                    return Err(TraceStateError::InvalidValue);
                }
                seen += 1;
                if seen > MAX_TRACESTATE_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
                if keys[..kept].contains(&key) {
                    // Keep the left-most (most recent) entry of a key.
                    as_received = false;
                    continue;
                }
                members[kept] = member;
                keys[kept] = key;
                kept += 1;
            }
        }

        if kept == 0 {
            return Ok(None);
        }
        let value = match single {
            Some(field) if as_received => field.clone(),
            _ => {
                let text = members[..kept].join(",");
                HeaderValue::from_maybe_shared(Bytes::from(text))
                    .expect("validated list-members are visible ASCII")
            }
        };
        Ok(Some(Self { value }))
    }

    /// The combined `tracestate` fields of `headers` under `name`.
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        name: &HeaderName,
    ) -> Result<Option<Self>, TraceStateError> {
        Self::from_fields(headers.get_all(name))
    }

    /// The text that is propagated: `key=value` list-members joined by `,`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only built from validated visible ASCII.
        self.value.to_str().unwrap_or_default()
    }

    /// The header value that is propagated.
    #[must_use]
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// The value of `key`, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The `(key, value)` list-members, left-most (most recent) first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.as_str()
            .split(',')
            .filter_map(|member| member.split_once('='))
    }
}

impl std::fmt::Display for TraceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field as text, if it holds only visible ASCII, spaces and tabs.
fn field_text(field: &HeaderValue) -> Result<&str, TraceStateError> {
    let bytes = field.as_bytes();
    if bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(bytes).map_err(|_| TraceStateError::NotText)
    } else {
        Err(TraceStateError::NotText)
    }
}

fn is_key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `first rest*` with at most `max` characters, `first` a lowercase letter (or a digit).
fn is_key_part(part: &[u8], max: usize, digit_first: bool) -> bool {
    let Some((&first, rest)) = part.split_first() else {
        return false;
    };
    part.len() <= max
        && (first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit()))
        && rest.iter().all(|&b| is_key_char(b))
}

/// `simple-key / multi-tenant-key`.
fn is_valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => is_key_part(key, 256, false),
        Some(at) => is_key_part(&key[..at], 241, true) && is_key_part(&key[at + 1..], 14, false),
    }
}

/// `0*255(chr) nblk-chr`, `chr` = `%x20-2B / %x2D-3C / %x3E-7E`, `nblk-chr` the same
/// without the space.
fn is_valid_value(value: &[u8]) -> bool {
    value.len() <= 256
        && value.last().is_some_and(|&b| b != b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<TraceState>, TraceStateError> {
        TraceState::parse(value)
    }

    fn text(value: &str) -> String {
        parse(value)
            .unwrap_or_else(|e| panic!("{value:?}: {e}"))
            .unwrap_or_else(|| panic!("{value:?} is empty"))
            .as_str()
            .to_owned()
    }

    fn fields(values: &[&str]) -> Result<Option<TraceState>, TraceStateError> {
        let values: Vec<_> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        TraceState::from_fields(&values)
    }

    #[test]
    fn a_canonical_single_field_is_kept_as_received() {
        let field = HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        let state = TraceState::from_fields([&field]).unwrap().unwrap();
        // The same bytes (a static value stays static: nothing was copied).
        assert_eq!(state.header_value(), &field);
        assert_eq!(state.as_str().as_ptr(), field.as_bytes().as_ptr());
        assert_eq!(state.get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(state.get("nope"), None);
        assert_eq!(state.to_string(), state.as_str());
    }

    #[test]
    fn optional_whitespace_and_empty_members() {
        // The W3C suite's `test_tracestate_ows_handling` and `test_tracestate_empty_header`.
        for value in [
            "foo=1 \t , \t bar=2, \t baz=3",
            "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
            ",foo=1,,bar=2,baz=3,",
            " , foo=1 ,bar=2 ,  baz=3 ",
        ] {
            assert_eq!(text(value), "foo=1,bar=2,baz=3", "{value:?}");
        }
        for value in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
            assert_eq!(text(value), "foo=1", "{value:?}");
        }
        for empty in ["", " ", "\t", ",", " , ,\t,"] {
            assert_eq!(parse(empty), Ok(None), "{empty:?}");
        }
        assert_eq!(fields(&["foo=1", ""]).unwrap().unwrap().as_str(), "foo=1");
        assert_eq!(fields(&["", "foo=1"]).unwrap().unwrap().as_str(), "foo=1");
        assert_eq!(fields(&[]), Ok(None));
        // Leading spaces belong to the value; trailing ones are whitespace.
        assert_eq!(parse("foo=  1  ").unwrap().unwrap().get("foo"), Some("  1"));
    }

    #[test]
    fn several_fields_are_combined_in_order() {
        let state = fields(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"])
            .unwrap()
            .unwrap();
        assert_eq!(state.as_str(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
        let keys: Vec<_> = state.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["foo", "bar", "rojo", "congo", "baz"]);
        // An invalid member in any field invalidates the combined list.
        assert_eq!(
            fields(&["foo=1", "BAR=2"]),
            Err(TraceStateError::InvalidKey)
        );
    }

    #[test]
    fn duplicate_keys_keep_the_left_most_entry() {
        assert_eq!(text("foo=1,foo=1"), "foo=1");
        assert_eq!(text("foo=1,foo=2"), "foo=1");
        assert_eq!(text("foo=2,bar=1,foo=1"), "foo=2,bar=1");
        let state = fields(&["foo=1", "foo=2"]).unwrap().unwrap();
        assert_eq!(state.as_str(), "foo=1");
        // Tenants of one system are different keys.
        assert_eq!(text("a@sys=1,b@sys=2,sys=3"), "a@sys=1,b@sys=2,sys=3");
    }

    #[test]
    fn at_most_32_members() {
        let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let header = |n: usize| members[..n].join(",");
        let state = parse(&header(32)).unwrap().unwrap();
        assert_eq!(state.iter().count(), 32);
        assert_eq!(state.get("bar01"), Some("01"));
        assert_eq!(parse(&header(33)), Err(TraceStateError::TooManyMembers));

        // The W3C suite's split: 10 + 10 + 10 + 2 (or 3) members over four fields.
        let chunks =
            |n: usize| -> Vec<String> { members[..n].chunks(10).map(|c| c.join(",")).collect() };
        let split: Vec<String> = chunks(32);
        let refs: Vec<&str> = split.iter().map(String::as_str).collect();
        assert_eq!(fields(&refs).unwrap().unwrap().iter().count(), 32);
        let split = chunks(33);
        let refs: Vec<&str> = split.iter().map(String::as_str).collect();
        assert_eq!(fields(&refs), Err(TraceStateError::TooManyMembers));

        // Empty members do not count; duplicates do (they are list-members as sent).
        assert!(parse(&format!("{},,,", header(32))).unwrap().is_some());
        assert_eq!(
            parse(&format!("{},bar01=x", header(32))),
            Err(TraceStateError::TooManyMembers)
        );
    }

    #[test]
    fn key_grammar() {
        let all = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        for key in [
            "a",
            all,
            &format!("{all}@a-z0-9_-*/"),
            &"z".repeat(256),
            &format!("{}@{}", "t".repeat(241), "v".repeat(14)),
            "0tenant@sys",
            "t@v",
        ] {
            assert!(parse(&format!("{key}=1")).is_ok(), "{key:?} is valid");
        }
        for key in [
            "",
            "FOO",
            "Foo",
            "foo.bar",
            "foo ",
            "0simple",
            "_a",
            "foo@",
            "@foo",
            "foo@@bar",
            "foo@bar@baz",
            "foo@0sys",
            "foo@Sys",
            "é",
            &"z".repeat(257),
            &format!("{}@v", "t".repeat(242)),
            &format!("t@{}", "v".repeat(15)),
        ] {
            let result = parse(&format!("{key}=1,bar=2"));
            assert!(
                matches!(
                    result,
                    Err(TraceStateError::InvalidKey | TraceStateError::NotText)
                ),
                "{key:?} is invalid: {result:?}"
            );
        }
    }

    #[test]
    fn value_grammar() {
        let mut all = String::new();
        all.extend((0x20u8..=0x2b).map(char::from));
        all.extend((0x2du8..=0x3c).map(char::from));
        all.extend((0x3eu8..=0x7e).map(char::from));
        let state = parse(&format!("foo={all}")).unwrap().unwrap();
        assert_eq!(state.get("foo"), Some(all.as_str()));
        assert!(parse(&format!("foo={}", "v".repeat(256))).is_ok());

        for (value, error) in [
            ("foo=bar=baz", TraceStateError::InvalidValue),
            ("foo=,bar=3", TraceStateError::InvalidValue),
            ("foo", TraceStateError::MissingEquals),
            ("foo=1,bar", TraceStateError::MissingEquals),
            ("=1", TraceStateError::InvalidKey),
            ("foo=a\tb", TraceStateError::InvalidValue),
            (
                &format!("foo={}", "v".repeat(257)),
                TraceStateError::InvalidValue,
            ),
        ] {
            assert_eq!(parse(value), Err(error), "{value:?}");
        }
        let bytes = HeaderValue::from_bytes(b"foo=caf\xc3\xa9").unwrap();
        assert_eq!(
            TraceState::from_fields([&bytes]),
            Err(TraceStateError::NotText)
        );
    }

    proptest::proptest! {
        /// Whatever parses is re-parsed to itself, as received (the stored text is canonical).
        #[test]
        fn parsed_text_is_canonical(
            value in proptest::prop_oneof![
                "[ -~\t]{0,120}",
                "([a-z][a-z0-9_*/-]{0,6}(@[a-z]{1,3})?=[!-+\\--<>-~ ]{0,5}[!-+\\--<>-~]\\s?,?){0,40}",
            ],
        ) {
            if let Ok(Some(state)) = TraceState::parse(&value) {
                let again = TraceState::parse(state.as_str()).unwrap().unwrap();
                proptest::prop_assert_eq!(again.as_str(), state.as_str());
                proptest::prop_assert!(state.iter().count() <= MAX_TRACESTATE_MEMBERS);
                let keys: Vec<_> = state.iter().map(|(k, _)| k).collect();
                let mut unique = keys.clone();
                unique.sort_unstable();
                unique.dedup();
                proptest::prop_assert_eq!(unique.len(), keys.len());
            }
        }
    }
}
