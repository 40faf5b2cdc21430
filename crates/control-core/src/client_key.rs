//! [`ClientKey`]: who a request is, for per-client quotas (governor's `KeyExtractor`, Kong's
//! `limit_by`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{Extensions, HeaderMap};
use sha2::{Digest, Sha256};

use dreamnet_common::AccountId;

/// The client every request without a key counts as (one shared quota: callers that cannot
/// be told apart are limited together, never unlimited).
pub const ANONYMOUS_CLIENT: &str = "anonymous";

/// Names the client of a request, for the per-client windows of its cluster. Asked only
/// for clusters that have per-client windows. `None` counts the request as
/// [`ANONYMOUS_CLIENT`]'s.
///
/// A closure `Fn(&HeaderMap, &Extensions) -> Option<String>` is a `ClientKey`:
///
/// ```
/// use dreamnet_control_core::ControlPlane;
///
/// // One quota per API key header, whatever else the request carries.
/// let plane = ControlPlane::builder()
///     .client_key(|headers: &http::HeaderMap, _: &http::Extensions| {
///         headers.get("x-api-key")?.to_str().ok().map(|key| format!("key:{key}"))
///     })
///     .build();
/// # drop(plane);
/// ```
///
/// Keys should be short: the Redis store puts them in key names, and keys of different
/// kinds should not collide (the default prefixes each kind: `account:`, `auth:`, `ip:`).
pub trait ClientKey: Send + Sync + 'static {
    /// The client's key, from the request's headers and extensions.
    fn client_key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<String>;
}

impl<F> ClientKey for F
where
    F: Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync + 'static,
{
    fn client_key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<String> {
        self(headers, extensions)
    }
}

/// The default policy, first match wins:
/// 1. `X-Account-Id` when it follows the [`AccountId`] rule: `account:<id>`;
/// 2. else a hash of the `Authorization` header (the credential never reaches a store or a
///    log): `auth:<first 16 bytes of its SHA-256, hex>`;
/// 3. else the peer's IP address (axum's `ConnectInfo<SocketAddr>`, or a `SocketAddr` or
///    `IpAddr` in the extensions): `ip:<address>`.
///
/// An invalid `X-Account-Id` falls through to the next rule rather than naming a client
/// with whatever a caller sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClientKey;

impl ClientKey for DefaultClientKey {
    fn client_key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<String> {
        if let Ok(Some(account)) = AccountId::from_headers(headers) {
            return Some(format!("account:{account}"));
        }
        if let Some(auth) = headers.get(http::header::AUTHORIZATION) {
            let digest = Sha256::digest(auth.as_bytes());
            return Some(format!("auth:{}", hex::encode(&digest[..16])));
        }
        peer_ip(extensions).map(|ip| format!("ip:{ip}"))
    }
}

fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    extensions
        .get::<SocketAddr>()
        .map(SocketAddr::ip)
        .or_else(|| extensions.get::<IpAddr>().copied())
}

/// The plane's policy, shared by its clones.
#[derive(Clone)]
pub(crate) struct SharedClientKey(pub(crate) Arc<dyn ClientKey>);

impl SharedClientKey {
    /// The key of a request (or [`ANONYMOUS_CLIENT`]).
    pub(crate) fn of(&self, headers: &HeaderMap, extensions: &Extensions) -> Arc<str> {
        self.0
            .client_key(headers, extensions)
            .map_or_else(|| Arc::from(ANONYMOUS_CLIENT), Arc::from)
    }
}

impl Default for SharedClientKey {
    fn default() -> Self {
        Self(Arc::new(DefaultClientKey))
    }
}

impl fmt::Debug for SharedClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(headers: &[(&str, &str)], extensions: &Extensions) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        DefaultClientKey.client_key(&map, extensions)
    }

    fn with_peer() -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(SocketAddr::from(([10, 0, 0, 7], 4321)));
        extensions
    }

    #[test]
    fn account_then_authorization_then_peer() {
        let auth = ("authorization", "Bearer secret-token");
        assert_eq!(
            key(&[("x-account-id", "acme"), auth], &with_peer()).as_deref(),
            Some("account:acme")
        );
        let hashed = key(&[auth], &with_peer()).unwrap();
        assert!(
            hashed.starts_with("auth:") && hashed.len() == 5 + 32,
            "{hashed}"
        );
        assert!(!hashed.contains("secret"), "the credential is hashed");
        assert_ne!(
            hashed,
            key(&[("authorization", "Bearer other")], &Extensions::new()).unwrap()
        );
        // An invalid account id is not a key: the next rule decides.
        assert_eq!(
            key(&[("x-account-id", "a b")], &with_peer()).as_deref(),
            Some("ip:10.0.0.7")
        );
        assert_eq!(key(&[], &Extensions::new()), None);
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_is_the_peer() {
        let mut extensions = Extensions::new();
        extensions.insert(axum::extract::ConnectInfo(SocketAddr::from((
            [192, 0, 2, 1],
            80,
        ))));
        assert_eq!(key(&[], &extensions).as_deref(), Some("ip:192.0.2.1"));
    }
}
