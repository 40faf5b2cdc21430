//! [`AdminToken`]: the admin bearer token, kept only as its digest.

use std::{fmt, sync::Arc};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest admin token [`AdminToken::strong`] accepts, in characters. 16 random
/// characters of a URL-safe alphabet are ~95 bits: beyond any online guessing, even at
/// the throttle's pace across many addresses.
pub const MIN_TOKEN_LEN: usize = 16;

/// A configured admin token refused by [`AdminToken::strong`] as too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the admin token has {len} characters; at least {MIN_TOKEN_LEN} are required (generate one with `openssl rand -hex 32`)")]
pub struct WeakToken {
    /// How many characters the refused token had.
    pub len: usize,
}

/// The admin token, kept only as its SHA-256 digest.
///
/// Comparing digests with [`subtle`] makes the check constant-time in the token's content
/// *and* length (a plain `ct_eq` on the raw bytes returns early on a length mismatch).
///
/// ```
/// use dreamnet_admin::AdminToken;
/// use http::HeaderValue;
///
/// let token = AdminToken::new("correct-horse-battery-staple");
/// assert!(token.verify(Some(&HeaderValue::from_static("Bearer correct-horse-battery-staple"))));
/// assert!(token.verify(Some(&HeaderValue::from_static("bearer correct-horse-battery-staple"))));
/// assert!(!token.verify(Some(&HeaderValue::from_static("Bearer s3cre"))));
/// assert!(!token.verify(None));
/// ```
#[derive(Clone)]
pub struct AdminToken {
    digest: Arc<[u8; 32]>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Keeps the digest of `token`.
    pub fn new(token: &str) -> Self {
        Self {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// Keeps the digest of `token` if it has at least [`MIN_TOKEN_LEN`] characters (for a
    /// token an operator configured; [`AdminToken::new`] takes any, for tests).
    ///
    /// ```
    /// use dreamnet_admin::AdminToken;
    /// assert!(AdminToken::strong("s3cret").is_err());
    /// assert!(AdminToken::strong("correct-horse-battery-staple").is_ok());
    /// ```
    ///
    /// # Errors
    /// [`WeakToken`] when it is shorter.
    pub fn strong(token: &str) -> Result<Self, WeakToken> {
        let len = token.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(WeakToken { len });
        }
        Ok(Self::new(token))
    }

    /// A fresh random token: 32 random bytes as 64 hex digits.
    pub fn generate() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    /// Whether an `Authorization` header value carries this token as a Bearer credential.
    pub fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(credential) = authorization.and_then(bearer_credential) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(credential).into();
        presented.ct_eq(&*self.digest).into()
    }
}

/// The credential of `Bearer <token>` (scheme case-insensitive, RFC 9110 section 11.1).
fn bearer_credential(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let space = bytes.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_bearer_token() {
        let token = AdminToken::new("correct-horse-battery-staple");
        let ok = |v: &str| token.verify(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(ok("Bearer correct-horse-battery-staple"));
        assert!(ok("bearer correct-horse-battery-staple"));
        assert!(ok("BEARER  correct-horse-battery-staple "));
        assert!(!ok("Bearer s3cre"));
        assert!(!ok("Bearer correct-horse-battery-staple2"));
        assert!(!ok("Basic correct-horse-battery-staple"));
        assert!(!ok("correct-horse-battery-staple"));
        assert!(!ok("Bearer "));
        assert!(!token.verify(None));
    }

    #[test]
    fn generated_tokens_are_long_distinct_and_never_printed() {
        let a = AdminToken::generate();
        assert_eq!(a.len(), 64);
        assert_ne!(a, AdminToken::generate());
        assert!(!format!("{:?}", AdminToken::new(&a)).contains(&a));
    }
}
