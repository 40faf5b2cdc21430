//! The request fingerprint: is a retry the same request?

use http::{request::Parts, HeaderName};
use sha2::{Digest, Sha256};

/// SHA-256 (lowercase hex) of a request's method, path and query, selected headers and body.
///
/// Every field is length-prefixed, so no two different requests frame to the same bytes
/// (`/a` + `bc` versus `/ab` + `c`).
///
/// ```
/// use dreamnet_idempotency::store::Fingerprint;
///
/// let (parts, ()) = http::Request::post("/charges?x=1").body(()).unwrap().into_parts();
/// let a = Fingerprint::compute(&parts, &[], b"{\"amount\":1}");
/// let b = Fingerprint::compute(&parts, &[], b"{\"amount\":2}");
/// assert_ne!(a, b);
/// assert_eq!(a.as_str().len(), 64);
/// ```
///
/// A computed digest is held inline (64 ASCII bytes, no heap allocation, a `Copy`-cheap
/// clone into a store record); only a value read back from a store ([`from_hex`](Self::from_hex))
/// may be a `String`, since a foreign value need not be 64 characters. Both render to the
/// same hex text, which is what every store keeps, so stored records are unchanged.
#[derive(Clone)]
pub struct Fingerprint(Repr);

#[derive(Clone)]
enum Repr {
    /// Lowercase hex of a SHA-256 digest.
    Inline([u8; 64]),
    /// Whatever a store held.
    Foreign(String),
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Fingerprint {}

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fingerprint").field(&self.as_str()).finish()
    }
}

/// Bumped if the framing ever changes, so old and new digests never compare equal by accident.
const FRAMING_VERSION: &[u8] = b"dreamnet-idempotency-fingerprint-v1";

impl Fingerprint {
    /// SHA-256 over method, path and query, the listed headers (name and every value, in
    /// order; an absent header is framed as zero values) and the body.
    pub fn compute(parts: &Parts, headers: &[HeaderName], body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        field(&mut hasher, FRAMING_VERSION);
        field(&mut hasher, parts.method.as_str().as_bytes());
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        field(&mut hasher, path_and_query.as_bytes());
        hasher.update((headers.len() as u64).to_be_bytes());
        for name in headers {
            field(&mut hasher, name.as_str().as_bytes());
            let values = parts.headers.get_all(name);
            hasher.update((values.iter().count() as u64).to_be_bytes());
            for value in values {
                field(&mut hasher, value.as_bytes());
            }
        }
        field(&mut hasher, body);
        let digest: [u8; 32] = hasher.finalize().into();
        Self(Repr::Inline(hex_array(&digest)))
    }

    /// Wraps a digest read back from a store (not validated: a foreign value simply never
    /// matches a computed one).
    pub fn from_hex(hex: impl Into<String>) -> Self {
        Self(Repr::Foreign(hex.into()))
    }

    /// The digest as 64 lowercase hex characters (a value from a store: as it was stored).
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ASCII hex digits are ever written into the array.
            Repr::Inline(hex) => std::str::from_utf8(hex).expect("hex digits are ASCII"),
            Repr::Foreign(hex) => hex,
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hex; a table lookup per nibble (the `hex` crate's iterator showed up in
/// profiles of the replay path).
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Lowercase hex of a digest into a fixed array: the per-request fingerprint without a
/// heap allocation.
fn hex_array(digest: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, &byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        listed: &[&'static str],
        body: &[u8],
    ) -> Fingerprint {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let parts = builder.body(()).unwrap().into_parts().0;
        let listed: Vec<HeaderName> = listed.iter().map(|n| HeaderName::from_static(n)).collect();
        Fingerprint::compute(&parts, &listed, body)
    }

    #[test]
    fn every_component_changes_the_digest() {
        let base = fp("POST", "/a?q=1", &[], &[], b"body");
        assert_eq!(base, fp("POST", "/a?q=1", &[], &[], b"body"));
        assert_ne!(base, fp("PATCH", "/a?q=1", &[], &[], b"body"));
        assert_ne!(base, fp("POST", "/b?q=1", &[], &[], b"body"));
        assert_ne!(base, fp("POST", "/a?q=2", &[], &[], b"body"));
        assert_ne!(base, fp("POST", "/a", &[], &[], b"body"));
        assert_ne!(base, fp("POST", "/a?q=1", &[], &[], b"bodz"));
        // Unlisted headers do not count; listed ones do.
        assert_eq!(base, fp("POST", "/a?q=1", &[("x-h", "1")], &[], b"body"));
        let listed = fp("POST", "/a?q=1", &[("x-h", "1")], &["x-h"], b"body");
        assert_ne!(
            listed,
            fp("POST", "/a?q=1", &[("x-h", "2")], &["x-h"], b"body")
        );
        assert_ne!(listed, fp("POST", "/a?q=1", &[], &["x-h"], b"body"));
    }

    #[test]
    fn hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        let digest: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(&hex_array(&digest)[..], hex::encode(digest).as_bytes());
    }

    #[test]
    fn computed_equals_the_same_digest_read_back() {
        // A record written by this or the previous version stores the hex text: it must
        // compare equal to the freshly computed (inline) fingerprint, and hash alike.
        use std::hash::BuildHasher;
        let computed = fp("POST", "/a", &[], &[], b"x");
        let read_back = Fingerprint::from_hex(computed.as_str().to_owned());
        assert_eq!(computed, read_back);
        let state = std::hash::RandomState::new();
        assert_eq!(state.hash_one(&computed), state.hash_one(&read_back));
        assert_ne!(computed, Fingerprint::from_hex("fp1"));
        assert_eq!(computed.to_string(), computed.as_str());
    }

    #[test]
    fn framing_is_unambiguous() {
        assert_ne!(
            fp("POST", "/a?b", &[], &[], b"c"),
            fp("POST", "/a", &[], &[], b"?bc")
        );
        assert_ne!(
            fp(
                "POST",
                "/",
                &[("x-a", "1"), ("x-b", "")],
                &["x-a", "x-b"],
                b""
            ),
            fp("POST", "/", &[("x-a", "1")], &["x-a", "x-b"], b"")
        );
    }
}
