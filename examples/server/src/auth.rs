//! Bearer-token authentication for the admin routes.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use dreamnet_common::Problem;
use http::{header, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem;

/// The admin token, kept only as its SHA-256 digest.
///
/// Comparing digests with [`subtle`] makes the check constant-time in the token's content
/// *and* length (a plain `ct_eq` on the raw bytes returns early on a length mismatch).
#[derive(Clone)]
pub struct AdminToken {
    digest: Arc<[u8; 32]>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Middleware: admin routes need `Authorization: Bearer <token>`; otherwise 401
/// problem+json with `WWW-Authenticate: Bearer`.
pub(crate) async fn require_admin(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    if token.verify(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let had_credentials = request.headers().contains_key(header::AUTHORIZATION);
    let (challenge, detail) = if had_credentials {
        (
            HeaderValue::from_static(r#"Bearer realm="dreamnet-admin", error="invalid_token""#),
            "the bearer token is not valid for the admin API",
        )
    } else {
        (
            HeaderValue::from_static(r#"Bearer realm="dreamnet-admin""#),
            "the admin API needs Authorization: Bearer <DREAMNET_ADMIN_TOKEN>",
        )
    };
    tracing::warn!(
        path = request.uri().path(),
        had_credentials,
        "admin request refused"
    );
    problem::into_axum(
        Problem::from_status(StatusCode::UNAUTHORIZED)
            .detail(detail)
            .maybe_trace_id(problem::trace_id(request.extensions()))
            .header(header::WWW_AUTHENTICATE, challenge),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_bearer_token() {
        let token = AdminToken::new("s3cret");
        let ok = |v: &str| token.verify(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer s3cret"));
        assert!(ok("BEARER  s3cret "));
        assert!(!ok("Bearer s3cre"));
        assert!(!ok("Bearer s3cret2"));
        assert!(!ok("Basic s3cret"));
        assert!(!ok("s3cret"));
        assert!(!ok("Bearer "));
        assert!(!token.verify(None));
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let a = AdminToken::generate();
        assert_eq!(a.len(), 64);
        assert_ne!(a, AdminToken::generate());
        assert!(!format!("{:?}", AdminToken::new(&a)).contains(&a));
    }
}
