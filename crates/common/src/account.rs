//! [`AccountId`]: the one rule for account ids, shared by idempotency scoping, billing and the
//! admin APIs.

use std::{borrow::Borrow, fmt, str::FromStr};

use http::{HeaderMap, HeaderName};

/// The header that names the account a request acts for.
pub const ACCOUNT_ID_HEADER: HeaderName = HeaderName::from_static("x-account-id");

/// The longest account id accepted.
pub const MAX_ACCOUNT_ID_LEN: usize = 128;

/// An account id: 1..=128 characters of `A-Z a-z 0-9 . _ @ : -`.
///
/// The alphabet keeps ids safe to put in a Redis key, a log line or a URL path without
/// escaping, and leaves `{` / `}` out so an id can never forge a Redis Cluster hash tag.
///
/// ```
/// use dreamnet_common::AccountId;
///
/// let id: AccountId = "acct_1@example.com".parse().unwrap();
/// assert_eq!(id.as_str(), "acct_1@example.com");
/// assert!(AccountId::parse("a b").is_err());
/// assert!(AccountId::parse("").is_err());
/// assert!(AccountId::parse(&"a".repeat(129)).is_err());
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(AccountId::from_headers(&headers), Ok(None));
/// headers.insert("x-account-id", "acme".parse().unwrap());
/// assert_eq!(AccountId::from_headers(&headers).unwrap().unwrap().as_str(), "acme");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(Box<str>);

/// A string that breaks the [`AccountId`] rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an account id is 1..=128 characters of A-Z a-z 0-9 . _ @ : -")]
pub struct InvalidAccountId;

impl AccountId {
    /// Checks `id` against the rule.
    ///
    /// # Errors
    /// [`InvalidAccountId`] when it is empty, longer than 128 bytes or has another character.
    pub fn parse(id: &str) -> Result<Self, InvalidAccountId> {
        if Self::is_valid(id) {
            Ok(Self(id.into()))
        } else {
            Err(InvalidAccountId)
        }
    }

    /// Whether `id` follows the rule (no allocation).
    pub fn is_valid(id: &str) -> bool {
        (1..=MAX_ACCOUNT_ID_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b':' | b'-'))
    }

    /// The account named by [`ACCOUNT_ID_HEADER`]: `Ok(None)` when the header is absent.
    ///
    /// # Errors
    /// [`InvalidAccountId`] when the header is present but breaks the rule (or is not text).
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidAccountId> {
        match headers.get(ACCOUNT_ID_HEADER) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map_err(|_| InvalidAccountId)
                .and_then(Self::parse)
                .map(Some),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0.into_string()
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = InvalidAccountId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AccountId {
    type Error = InvalidAccountId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if Self::is_valid(&s) {
            Ok(Self(s.into_boxed_str()))
        } else {
            Err(InvalidAccountId)
        }
    }
}

impl TryFrom<&str> for AccountId {
    type Error = InvalidAccountId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> Self {
        id.into_string()
    }
}

impl PartialEq<str> for AccountId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for AccountId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl serde::Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::try_from(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in [
            "acme",
            "user@example.com",
            "a.b_c:d-e",
            "0",
            &"a".repeat(128),
        ] {
            assert!(AccountId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "{x}", "é", "a/b", "a%20b", &"a".repeat(129)] {
            assert_eq!(AccountId::parse(bad), Err(InvalidAccountId), "{bad}");
        }
    }

    #[test]
    fn headers_absent_valid_invalid() {
        let mut headers = HeaderMap::new();
        assert_eq!(AccountId::from_headers(&headers), Ok(None));
        headers.insert(ACCOUNT_ID_HEADER, "a b".parse().unwrap());
        assert_eq!(AccountId::from_headers(&headers), Err(InvalidAccountId));
        headers.insert(
            ACCOUNT_ID_HEADER,
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        assert_eq!(AccountId::from_headers(&headers), Err(InvalidAccountId));
        headers.insert(ACCOUNT_ID_HEADER, "acct-1".parse().unwrap());
        assert_eq!(
            AccountId::from_headers(&headers).unwrap().unwrap(),
            "acct-1"
        );
    }

    #[test]
    fn serde_validates() {
        let id: AccountId = serde_json::from_str(r#""acme""#).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""acme""#);
        assert!(serde_json::from_str::<AccountId>(r#""a b""#).is_err());
    }
}
