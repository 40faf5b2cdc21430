//! Authorization hooks for the admin HTTP APIs (`ControlApi`, `BillableApi`).
//!
//! Authentication is the server's job; these make it one line, and both APIs share them so a
//! server configures one authorizer for all of its admin routes.

use std::{fmt, sync::Arc};

use http::{header, request::Parts, HeaderValue, StatusCode};

use crate::Problem;

/// Decides whether a request may use an admin API. Implemented for closures.
///
/// ```
/// use dreamnet_common::auth::{Authorize, BearerToken};
///
/// let auth = BearerToken::new("s3cret");
/// let (ok, _) = http::Request::get("/").header("authorization", "Bearer s3cret")
///     .body(()).unwrap().into_parts();
/// assert!(auth.authorize(&ok).is_ok());
/// let (bad, _) = http::Request::get("/").body(()).unwrap().into_parts();
/// assert_eq!(auth.authorize(&bad).unwrap_err().status, 401);
/// ```
// A rejection is rare and becomes a response at once; boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
pub trait Authorize: Send + Sync + 'static {
    /// `Ok(())` to proceed, or the problem to answer with (e.g. 401).
    ///
    /// # Errors
    /// The rejection.
    fn authorize(&self, parts: &Parts) -> Result<(), Problem>;
}

#[allow(clippy::result_large_err)]
impl<F> Authorize for F
where
    F: Fn(&Parts) -> Result<(), Problem> + Send + Sync + 'static,
{
    fn authorize(&self, parts: &Parts) -> Result<(), Problem> {
        self(parts)
    }
}

/// Lets every request through (the default: mount the API behind your own auth layer).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn authorize(&self, _parts: &Parts) -> Result<(), Problem> {
        Ok(())
    }
}

/// `Authorization: Bearer <token>`, compared in constant time; otherwise 401 with
/// `WWW-Authenticate: Bearer`. An empty configured token accepts nothing.
#[derive(Clone)]
pub struct BearerToken {
    token: Arc<[u8]>,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Accepts this token.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: Arc::from(token.into().into_bytes()),
        }
    }
}

impl Authorize for BearerToken {
    fn authorize(&self, parts: &Parts) -> Result<(), Problem> {
        use subtle::ConstantTimeEq;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match given {
            Some(given) if !self.token.is_empty() && bool::from(given.ct_eq(&self.token)) => Ok(()),
            _ => Err(Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized")
                .detail("a valid admin bearer token is required")
                .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
        }
    }
}
