//! The `Idempotency-Key` header: parsing and validation.

use http::{HeaderMap, HeaderName, HeaderValue};

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
    /// The value starts like an RFC 8941 sf-string but is not one (unterminated quote, bad
    /// escape, data after the closing quote).
    #[error("the idempotency key is not a valid structured-field string")]
    Malformed,
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
/// use dreamnet_idempotency::protocol::IdempotencyKey;
/// use http::HeaderValue;
///
/// let quoted = IdempotencyKey::parse(&HeaderValue::from_static("\"8e03978e-40d5\"")).unwrap();
/// let bare = IdempotencyKey::parse(&HeaderValue::from_static("8e03978e-40d5")).unwrap();
/// assert_eq!(quoted, bare);
/// assert_eq!(quoted.as_str(), "8e03978e-40d5");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value: an RFC 8941 sf-string (`"abc"`, with `\"` and `\\` escapes),
    /// or, leniently, a bare value of visible ASCII characters.
    ///
    /// # Errors
    /// [`KeyError`] when the value is empty, too long, not printable ASCII or a malformed
    /// sf-string.
    pub fn parse(value: &HeaderValue) -> Result<Self, KeyError> {
        let bytes = trim_ows(value.as_bytes());
        let key = if bytes.first() == Some(&b'"') {
            parse_sf_string(bytes)?
        } else {
            if let Some(bad) = bytes.iter().find(|b| !b.is_ascii_graphic()) {
                // A space inside a bare value is a character we do not accept unquoted; any
                // other byte is not printable ASCII at all.
                return Err(if *bad == b' ' {
                    KeyError::Malformed
                } else {
                    KeyError::NotPrintableAscii
                });
            }
            // Only ASCII graphic bytes remain, so this cannot fail.
            String::from_utf8(bytes.to_vec()).map_err(|_| KeyError::NotPrintableAscii)?
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

/// RFC 8941 section 4.2.5: a DQUOTE, printable ASCII with `\"` / `\\` escapes, a DQUOTE.
fn parse_sf_string(bytes: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(bytes.len());
    let mut iter = bytes.iter().skip(1);
    loop {
        match iter.next() {
            None => return Err(KeyError::Malformed),
            Some(b'"') => break,
            Some(b'\\') => match iter.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                _ => return Err(KeyError::Malformed),
            },
            Some(&c) if is_printable(c) => out.push(char::from(c)),
            Some(_) => return Err(KeyError::NotPrintableAscii),
        }
    }
    if iter.next().is_some() {
        return Err(KeyError::Malformed);
    }
    Ok(out)
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
        headers.insert("x-idempotency-key", HeaderValue::from_static("b"));
        assert!(matches!(
            key_from_headers(&headers, &DEFAULT_KEY_HEADERS),
            Err(KeyError::ConflictingHeaders)
        ));
    }
}
