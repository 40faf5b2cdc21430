//! The `Idempotency-Key` header: parsing (RFC 8941, through `sfv`) and validation.
//!
//! The IETF draft defines the header as an RFC 8941 Item whose value is an sf-string. The
//! value is parsed as an Item by `sfv`, with this mapping:
//!
//! | value | key |
//! |---|---|
//! | sf-string `"abc"` (escapes `\"` `\\`) | `abc` |
//! | sf-string with parameters `"abc";p=1` | `abc` (parameters ignored) |
//! | sf-token `abc`, `abc;p=1` (leniency: unquoted) | `abc` (parameters ignored) |
//! | sf-integer `42`, sf-decimal `4.5`, sf-boolean `?1`, byte sequence `:YWJj:` | 400 [`KeyError::NotAString`] |
//! | not an Item but visible ASCII without spaces (`8e03978e-40d5`, `order#42`) | the value as sent (leniency: opaque keys, e.g. UUIDs starting with a digit) |
//! | not an Item, starting like a string, boolean or byte sequence (`"abc`, `?2`, `:YWJj`) | 400 [`KeyError::Malformed`] |
//!
//! Then the key rule: 1..=255 printable ASCII characters.

use std::convert::Infallible;

use http::{HeaderMap, HeaderName, HeaderValue};
use sfv::{visitor::Ignored, BareItemFromInput, Parser, Version};

/// The longest key accepted, in characters (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// The headers a key is read from by default, in order of preference: `Idempotency-Key`
/// (the IETF draft) and its common alias `X-Idempotency-Key`.
pub const DEFAULT_KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-idempotency-key"),
];

/// Why an `Idempotency-Key` header value was refused (every variant maps to 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty (`Idempotency-Key: ""` or a blank header).
    #[error("the idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    #[error("the idempotency key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    /// The key contains a character outside printable ASCII.
    #[error("the idempotency key must be printable ASCII")]
    NotPrintableAscii,
    /// The value starts like an RFC 8941 sf-string, boolean or byte sequence but is not one
    /// (unterminated quote, bad escape, malformed parameters, data after the item), or is
    /// an unquoted value with a space in it.
    #[error("the idempotency key is not a valid RFC 8941 sf-string")]
    Malformed,
    /// The value is a valid RFC 8941 Item of another type (integer, decimal, boolean, byte
    /// sequence): the header's value is an sf-string.
    #[error("the idempotency key must be an RFC 8941 sf-string (\"...\"), not {found}")]
    NotAString {
        /// The type the value parsed as: `an integer`, `a decimal`, `a boolean` or
        /// `a byte sequence`.
        found: &'static str,
    },
    /// The header was sent more than once, so which key the client meant is ambiguous.
    #[error("the idempotency key header was sent more than once")]
    MultipleValues,
    /// Two alias headers (e.g. `Idempotency-Key` and `X-Idempotency-Key`) carry different
    /// keys, so which one the client meant is ambiguous.
    #[error("the idempotency key headers disagree")]
    ConflictingHeaders,
}

/// A validated idempotency key: 1..=255 printable ASCII characters.
///
/// ```
/// use dreamnet_idempotency::protocol::{IdempotencyKey, KeyError};
/// use http::HeaderValue;
///
/// let parse = |v: &'static str| IdempotencyKey::parse(&HeaderValue::from_static(v));
/// let quoted = parse("\"8e03978e-40d5\"").unwrap();
/// assert_eq!(quoted.as_str(), "8e03978e-40d5");
/// assert_eq!(parse("8e03978e-40d5").unwrap(), quoted); // unquoted: accepted as sent
/// assert_eq!(parse("\"8e03978e-40d5\";p=1").unwrap(), quoted); // parameters ignored
/// assert_eq!(parse("42"), Err(KeyError::NotAString { found: "an integer" }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// What `sfv` made of a header value.
enum Item {
    /// An sf-string or sf-token: the key (parameters dropped).
    Text(String),
    /// Another item type, named for the error.
    Other(&'static str),
}

impl IdempotencyKey {
    /// Parses a header value as an RFC 8941 Item (see the module table): an sf-string, or
    /// leniently an sf-token, parameters ignored; other item types are refused; a value
    /// that is not an Item at all is taken as sent when it is visible ASCII without spaces.
    ///
    /// # Errors
    /// [`KeyError`] when the value is another item type, a malformed sf-string, empty, too
    /// long or not printable ASCII.
    pub fn parse(value: &HeaderValue) -> Result<Self, KeyError> {
        let bytes = trim_ows(value.as_bytes());
        let key = match parse_item(bytes) {
            Some(Item::Text(key)) => key,
            Some(Item::Other(found)) => return Err(KeyError::NotAString { found }),
            None => bare_value(bytes)?,
        };
        Self::from_validated(key)
    }

    /// Builds a key from an already-unquoted string, applying the same rules as
    /// [`parse`](Self::parse) (1..=255 printable ASCII characters).
    ///
    /// # Errors
    /// [`KeyError`] when the key is empty, too long or not printable ASCII.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if !key.bytes().all(is_printable) {
            return Err(KeyError::NotPrintableAscii);
        }
        Self::from_validated(key)
    }

    fn from_validated(key: String) -> Result<Self, KeyError> {
        match key.len() {
            0 => Err(KeyError::Empty),
            len if len > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(Self(key)),
        }
    }

    /// The key, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Parses `bytes` as an RFC 8941 Item (parameters parsed, then ignored); `None` when it is
/// not one.
fn parse_item(bytes: &[u8]) -> Option<Item> {
    if bytes.is_empty() {
        // sfv refuses an empty Item; a blank header is an empty key, not a malformed one.
        return Some(Item::Text(String::new()));
    }
    let mut item = None;
    let visitor = |bare: BareItemFromInput<'_>| {
        item = Some(match bare {
            BareItemFromInput::String(s) => Item::Text(s.as_str().to_owned()),
            BareItemFromInput::Token(t) => Item::Text(t.as_str().to_owned()),
            BareItemFromInput::Integer(_) => Item::Other("an integer"),
            BareItemFromInput::Decimal(_) => Item::Other("a decimal"),
            BareItemFromInput::Boolean(_) => Item::Other("a boolean"),
            BareItemFromInput::ByteSequence(_) => Item::Other("a byte sequence"),
            // RFC 9651 types; unreachable with `Version::Rfc8941`, refused all the same.
            BareItemFromInput::Date(_) => Item::Other("a date"),
            BareItemFromInput::DisplayString(_) => Item::Other("a display string"),
        });
        Ok::<_, Infallible>(Ignored)
    };
    // The item is only recorded once the whole value (parameters, no trailing data) parses.
    Parser::new(bytes)
        .with_version(Version::Rfc8941)
        .parse_item_with_visitor(visitor)
        .ok()?;
    item
}

/// The leniency for values that are not an RFC 8941 Item: visible ASCII without spaces is
/// the key as sent (opaque keys such as UUIDs starting with a digit); a value starting like
/// an sf-string, boolean or byte sequence is a malformed one.
fn bare_value(bytes: &[u8]) -> Result<String, KeyError> {
    if let Some(bad) = bytes.iter().find(|b| !b.is_ascii_graphic()) {
        // A space is printable but not accepted unquoted; any other byte is not printable.
        return Err(if *bad == b' ' {
            KeyError::Malformed
        } else {
            KeyError::NotPrintableAscii
        });
    }
    if matches!(bytes.first(), Some(b'"' | b'?' | b':')) {
        return Err(KeyError::Malformed);
    }
    // Only ASCII graphic bytes remain, so this cannot fail.
    String::from_utf8(bytes.to_vec()).map_err(|_| KeyError::NotPrintableAscii)
}

/// Reads the key from the first of `names` present in `headers`; `Ok(None)` when none is.
///
/// # Errors
/// [`KeyError`] when the first present header is invalid or sent more than once (a later
/// alias is never consulted to "rescue" an invalid key), or when another alias carries a
/// different key ([`KeyError::ConflictingHeaders`]).
pub(crate) fn key_from_headers(
    headers: &HeaderMap,
    names: &[HeaderName],
) -> Result<Option<IdempotencyKey>, KeyError> {
    let mut found: Option<IdempotencyKey> = None;
    for name in names {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(KeyError::MultipleValues);
        }
        match &found {
            None => found = Some(IdempotencyKey::parse(value)?),
            // The same key under both spellings is harmless; two different ones are not.
            Some(first) => match IdempotencyKey::parse(value) {
                Ok(other) if other == *first => {}
                _ => return Err(KeyError::ConflictingHeaders),
            },
        }
    }
    Ok(found)
}

const fn is_printable(b: u8) -> bool {
    matches!(b, 0x20..=0x7e)
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<IdempotencyKey, KeyError> {
        IdempotencyKey::parse(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn accepts_sf_string_and_bare_token() {
        assert_eq!(parse("\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(parse("abc").unwrap().as_str(), "abc");
        assert_eq!(parse("  abc ").unwrap().as_str(), "abc");
        assert_eq!(parse("\"a b\"").unwrap().as_str(), "a b");
        assert_eq!(parse(r#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
    }

    #[test]
    fn refuses_empty_long_and_non_printable() {
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
        assert_eq!(parse(""), Err(KeyError::Empty));
        assert_eq!(parse(&"k".repeat(255)).unwrap().as_str().len(), 255);
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::TooLong));
        assert_eq!(
            parse(&format!("\"{}\"", "k".repeat(256))),
            Err(KeyError::TooLong)
        );
        let tab = HeaderValue::from_bytes(b"a\tb").unwrap();
        assert_eq!(
            IdempotencyKey::parse(&tab),
            Err(KeyError::NotPrintableAscii)
        );
        let utf8 = HeaderValue::from_bytes("clé".as_bytes()).unwrap();
        assert_eq!(
            IdempotencyKey::parse(&utf8),
            Err(KeyError::NotPrintableAscii)
        );
        let quoted_utf8 = HeaderValue::from_bytes("\"clé\"".as_bytes()).unwrap();
        assert_eq!(
            IdempotencyKey::parse(&quoted_utf8),
            Err(KeyError::NotPrintableAscii)
        );
        assert_eq!(
            IdempotencyKey::new("a\u{7f}"),
            Err(KeyError::NotPrintableAscii)
        );
    }

    #[test]
    fn refuses_malformed_sf_strings() {
        assert_eq!(parse("\"abc"), Err(KeyError::Malformed));
        assert_eq!(parse("\"abc\"x"), Err(KeyError::Malformed));
        assert_eq!(parse(r#""a\x""#), Err(KeyError::Malformed));
        assert_eq!(parse("a b"), Err(KeyError::Malformed));
    }

    #[test]
    fn parameters_are_accepted_and_ignored() {
        assert_eq!(parse("\"abc\";p=1").unwrap().as_str(), "abc");
        assert_eq!(parse("\"abc\";p=1;q=?0;r=\"x\"").unwrap().as_str(), "abc");
        assert_eq!(parse("\"abc\"; p=:YWJj:").unwrap().as_str(), "abc");
        assert_eq!(parse("\"abc\";p").unwrap(), parse("\"abc\"").unwrap());
        // A parameter key must be lowercase: the whole value is then not an Item.
        assert_eq!(parse("\"abc\";P=1"), Err(KeyError::Malformed));
        assert_eq!(parse("\"abc\" ;p=1"), Err(KeyError::Malformed));
    }

    #[test]
    fn other_item_types_are_refused_naming_the_type() {
        let not_a_string = |found| Err(KeyError::NotAString { found });
        assert_eq!(parse("42"), not_a_string("an integer"));
        assert_eq!(parse("-7;p=1"), not_a_string("an integer"));
        assert_eq!(parse("4.5"), not_a_string("a decimal"));
        assert_eq!(parse("?1"), not_a_string("a boolean"));
        assert_eq!(parse("?0"), not_a_string("a boolean"));
        assert_eq!(parse(":YWJj:"), not_a_string("a byte sequence"));
        let err = parse("42").unwrap_err().to_string();
        assert!(
            err.contains("RFC 8941 sf-string") && err.contains("an integer"),
            "{err}"
        );
    }

    #[test]
    fn a_bare_token_is_the_key_and_its_parameters_are_ignored() {
        assert_eq!(parse("order-42").unwrap().as_str(), "order-42");
        assert_eq!(parse("*a:b/c.d").unwrap().as_str(), "*a:b/c.d");
        assert_eq!(parse("abc;p=1").unwrap().as_str(), "abc");
        assert_eq!(parse("abc;p=1").unwrap(), parse("\"abc\"").unwrap());
    }

    #[test]
    fn values_that_are_not_items_are_taken_as_sent_unless_they_look_typed() {
        // UUIDs starting with a digit are no sf-token (nor an integer: data follows the digits).
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(uuid).unwrap().as_str(), uuid);
        assert_eq!(parse("4.5.6").unwrap().as_str(), "4.5.6");
        assert_eq!(parse("order#42=x").unwrap().as_str(), "order#42=x");
        assert_eq!(parse("abc;P=1").unwrap().as_str(), "abc;P=1");
        // A malformed boolean or byte sequence is not rescued as a bare key.
        assert_eq!(parse("?2"), Err(KeyError::Malformed));
        assert_eq!(parse(":YWJj"), Err(KeyError::Malformed));
        assert_eq!(parse(":YW Jj:"), Err(KeyError::Malformed));
    }

    #[test]
    fn header_lookup_reads_either_name_and_refuses_duplicates() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_from_headers(&headers, &DEFAULT_KEY_HEADERS), Ok(None));
        headers.insert("x-idempotency-key", HeaderValue::from_static("alias"));
        let key = key_from_headers(&headers, &DEFAULT_KEY_HEADERS)
            .unwrap()
            .unwrap();
        assert_eq!(key.as_str(), "alias");
        headers.insert("idempotency-key", HeaderValue::from_static("\"main\""));
        assert_eq!(
            key_from_headers(&headers, &DEFAULT_KEY_HEADERS),
            Err(KeyError::ConflictingHeaders)
        );
        headers.remove("x-idempotency-key");
        let key = key_from_headers(&headers, &DEFAULT_KEY_HEADERS)
            .unwrap()
            .unwrap();
        assert_eq!(key.as_str(), "main");
        headers.append("idempotency-key", HeaderValue::from_static("other"));
        assert_eq!(
            key_from_headers(&headers, &DEFAULT_KEY_HEADERS),
            Err(KeyError::MultipleValues)
        );
    }

    proptest! {
        #[test]
        fn any_printable_key_round_trips_through_an_sf_string(key in "[ -~]{1,255}") {
            let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
            let value = HeaderValue::from_str(&format!("\"{escaped}\"")).unwrap();
            let parsed = IdempotencyKey::parse(&value).unwrap();
            prop_assert_eq!(parsed.as_str(), key.as_str());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                if let Ok(key) = IdempotencyKey::parse(&value) {
                    prop_assert!((1..=MAX_KEY_LEN).contains(&key.as_str().len()));
                    prop_assert!(key.as_str().bytes().all(is_printable));
                }
            }
        }
    }

    #[test]
    fn aliases_must_agree() {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_static("a"));
        headers.insert("x-idempotency-key", HeaderValue::from_static("\"a\""));
        let key = key_from_headers(&headers, &DEFAULT_KEY_HEADERS)
            .unwrap()
            .unwrap();
        assert_eq!(key.as_str(), "a");
        // The same key with parameters is the same key.
        headers.insert("x-idempotency-key", HeaderValue::from_static("\"a\";v=1"));
        assert!(key_from_headers(&headers, &DEFAULT_KEY_HEADERS).is_ok());
        // An alias that is not a string cannot agree.
        headers.insert("x-idempotency-key", HeaderValue::from_static("?1"));
        assert_eq!(
            key_from_headers(&headers, &DEFAULT_KEY_HEADERS),
            Err(KeyError::ConflictingHeaders)
        );
        headers.insert("x-idempotency-key", HeaderValue::from_static("b"));
        assert!(matches!(
            key_from_headers(&headers, &DEFAULT_KEY_HEADERS),
            Err(KeyError::ConflictingHeaders)
        ));
    }
}
