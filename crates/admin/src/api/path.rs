//! [`ApiPath`]: typed path parameters with problem+json rejections.

use axum::{
    extract::{rejection::PathRejection, FromRequestParts, Path},
    http::request::Parts,
};
use dreamnet_common::Problem;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Like [`axum::extract::Path`], but a parameter that does not parse into `T` (an invalid
/// [`AccountId`](dreamnet_common::AccountId), say) is a 400 problem+json naming why.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use axum::{routing::get, Router};
/// use dreamnet_admin::api::{with_problem_fallbacks, ApiPath};
/// use dreamnet_common::AccountId;
/// use tower::ServiceExt;
///
/// let app = with_problem_fallbacks(Router::new().route(
///     "/accounts/{id}",
///     get(|ApiPath(id): ApiPath<AccountId>| async move { id.to_string() }),
/// ));
/// let get = |uri: &str| http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
/// assert_eq!(app.clone().oneshot(get("/accounts/acme")).await.unwrap().status(), 200);
/// assert_eq!(app.oneshot(get("/accounts/a%20b")).await.unwrap().status(), 400);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

fn rejected(rejection: &PathRejection) -> ApiError {
    let detail = match rejection {
        // The kind alone, without axum's "Invalid URL: " framing: the client sent a bad value.
        PathRejection::FailedToDeserializePathParams(error) => error.kind().to_string(),
        other => other.body_text(),
    };
    ApiError::new(Problem::from_status(rejection.status()).detail(detail))
}
