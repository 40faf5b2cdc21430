//! The refusals an admin API answers, as OpenAPI responses (feature `openapi`): list them in
//! a handler's `#[utoipa::path(responses(...))]` beside its success, so every operation
//! documents its problem+json answers from one place.
//!
//! ```
//! use dreamnet_admin::api::openapi::{BadRequest, NotFound};
//! use utoipa::IntoResponses;
//!
//! let responses = BadRequest::responses();
//! assert!(responses.contains_key("400"));
//! assert!(NotFound::responses().contains_key("404"));
//! ```

use dreamnet_common::Problem;

/// 400: malformed JSON, a body that is not an object, wrong types, unknown fields, a missing
/// required field or an invalid value. Nothing was changed.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 400,
    description = "The request is invalid; nothing was changed",
    content_type = "application/problem+json"
)]
pub struct BadRequest(pub Problem);

/// 404: the resource named in the path does not exist.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 404,
    description = "No such resource",
    content_type = "application/problem+json"
)]
pub struct NotFound(pub Problem);

/// 413: the body is larger than the API accepts.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 413,
    description = "The request body is too large; nothing was changed",
    content_type = "application/problem+json"
)]
pub struct TooLarge(pub Problem);

/// 503: the store behind the API is unreachable or contended; nothing was changed.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "The store is unavailable; nothing was changed (see Retry-After)",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
)]
pub struct Unavailable(pub Problem);

/// 401: no admin token, or a wrong one (answered by [`AdminAuthLayer`](crate::AdminAuthLayer)).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "Missing or wrong admin bearer token",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "Bearer"))
)]
pub struct Unauthorized(pub Problem);

/// 429: too many failed admin logins from this address (the [`AuthThrottle`](crate::AuthThrottle)).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Too many failed admin authentications from this address",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds until the window ends"))
)]
pub struct Throttled(pub Problem);
