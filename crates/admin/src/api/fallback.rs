//! problem+json for the routes and methods an API does not have.

use axum::{extract::Request, response::IntoResponse, Router};

use super::ApiError;

/// Answers unknown paths with 404 and a known path's other methods with 405 (axum adds the
/// `Allow` header), both problem+json, instead of axum's empty bodies.
///
/// Nested under a prefix (`Router::nest`), the fallbacks answer the prefix's paths only.
pub fn with_problem_fallbacks<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(request: Request) -> impl IntoResponse {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> impl IntoResponse {
    ApiError::new(
        dreamnet_common::Problem::from_status(http::StatusCode::METHOD_NOT_ALLOWED).detail(
            format!(
                "{} is not allowed on {}",
                request.method(),
                request.uri().path()
            ),
        ),
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::get};
    use http::{header, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn unknown_paths_and_methods_are_problems() {
        let api = with_problem_fallbacks(Router::new().route("/stats", get(|| async { "{}" })));
        let app = Router::new().nest("/api/billable", api);
        let send = |method: &str, uri: &str| {
            app.clone().oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let missing = send("GET", "/api/billable/nope").await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let wrong = send("DELETE", "/api/billable/stats").await.unwrap();
        assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(wrong.headers()[header::ALLOW]
            .to_str()
            .unwrap()
            .contains("GET"));
        assert_eq!(
            wrong.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
