//! Key scopes: whose key is it?
//!
//! A key is stored as (scope, key), so one client can never replay or block another
//! client's key (the IETF draft's "unique composite key"; the "unscoped keys leak one user's
//! response to another" pitfall).

use dreamnet_common::{AccountId, ACCOUNT_ID_HEADER};
use http::{header, request::Parts};
use sha2::{Digest, Sha256};

use crate::fingerprint::hex_lower;

/// Maps a request to the scope its idempotency keys live in.
///
/// Implemented for closures, so a route can scope by anything it trusts:
///
/// ```
/// use dreamnet_idempotency::ScopeExtractor;
///
/// let by_tenant = |parts: &http::request::Parts| {
///     parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
/// };
/// let (parts, ()) = http::Request::builder().header("x-tenant", "t1").body(()).unwrap().into_parts();
/// assert_eq!(by_tenant.scope(&parts), "t1");
/// ```
pub trait ScopeExtractor: Send + Sync + 'static {
    /// The scope of this request's key.
    fn scope(&self, parts: &Parts) -> String;
}

impl<F> ScopeExtractor for F
where
    F: Fn(&Parts) -> String + Send + Sync + 'static,
{
    fn scope(&self, parts: &Parts) -> String {
        self(parts)
    }
}

/// The default scope: `account:<id>` from a valid `X-Account-Id` (an
/// [`AccountId`]: 1..=128 chars of `[A-Za-z0-9._@:-]`), else `auth:<sha256-hex>` of the `Authorization` header (never the raw
/// credential, which would otherwise end up in the store and its logs), else `anonymous`.
///
/// The prefixes keep the three namespaces apart: no account id can collide with a
/// credential hash or the anonymous scope.
///
/// `X-Account-Id` is trusted as sent: put the layer behind something that sets or checks it
/// (an auth gateway), or use a [`ScopeExtractor`] that reads your verified identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultScope;

impl DefaultScope {
    /// The scope shared by requests that carry no account and no credentials.
    pub const ANONYMOUS: &'static str = "anonymous";
}

impl ScopeExtractor for DefaultScope {
    fn scope(&self, parts: &Parts) -> String {
        if let Some(account) = parts
            .headers
            .get(&ACCOUNT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            // Checked in place: building an `AccountId` would allocate once more per request.
            .filter(|v| AccountId::is_valid(v))
        {
            let mut scope = String::with_capacity(8 + account.len());
            scope.push_str("account:");
            scope.push_str(account);
            return scope;
        }
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            return format!("auth:{}", hex_lower(&Sha256::digest(auth.as_bytes())));
        }
        Self::ANONYMOUS.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn account_then_authorization_then_anonymous() {
        assert_eq!(
            DefaultScope.scope(&parts(&[("x-account-id", "acct_1")])),
            "account:acct_1"
        );
        let auth = DefaultScope.scope(&parts(&[("authorization", "Bearer secret")]));
        assert!(auth.starts_with("auth:"));
        assert_eq!(auth.len(), 5 + 64);
        assert!(!auth.contains("secret"));
        assert_eq!(DefaultScope.scope(&parts(&[])), DefaultScope::ANONYMOUS);
        let both = parts(&[("x-account-id", "a"), ("authorization", "Bearer secret")]);
        assert_eq!(DefaultScope.scope(&both), "account:a");
    }

    #[test]
    fn invalid_account_id_falls_back() {
        let long = "a".repeat(129);
        assert_eq!(
            DefaultScope.scope(&parts(&[("x-account-id", &long)])),
            DefaultScope::ANONYMOUS
        );
        assert_eq!(
            DefaultScope.scope(&parts(&[("x-account-id", "a b")])),
            DefaultScope::ANONYMOUS
        );
        assert_eq!(
            DefaultScope.scope(&parts(&[("x-account-id", "")])),
            DefaultScope::ANONYMOUS
        );
        let credentials =
            DefaultScope.scope(&parts(&[("x-account-id", "{x}"), ("authorization", "t")]));
        assert!(credentials.starts_with("auth:"));
    }

    #[test]
    fn different_credentials_get_different_scopes() {
        let a = DefaultScope.scope(&parts(&[("authorization", "Bearer a")]));
        let b = DefaultScope.scope(&parts(&[("authorization", "Bearer b")]));
        assert_ne!(a, b);
    }
}
