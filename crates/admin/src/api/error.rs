//! [`ApiError`]: a problem answer from an axum handler or extractor.

use axum::response::{IntoResponse, Response};
use dreamnet_common::Problem;
use dreamnet_trace_id::TraceContext;
use http::StatusCode;

/// An RFC 9457 problem answered by an admin API.
///
/// Its response carries the request's trace id: the one the problem already names, else the
/// [`TraceContext`] the trace-id layer scopes around the handler's future.
///
/// ```
/// use axum::response::IntoResponse;
/// use dreamnet_admin::api::ApiError;
/// use dreamnet_trace_id::TraceContext;
///
/// let response = TraceContext::new("trace-7").sync_scope(|| {
///     ApiError::bad_request("limit must be an integer").into_response()
/// });
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
// Boxed: handlers return `Result<_, ApiError>` and the problem is only built on the error path.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>);

impl ApiError {
    /// Answers with `problem`.
    pub fn new(problem: Problem) -> Self {
        Self(Box::new(problem))
    }

    /// The problem this answers with.
    pub fn problem(&self) -> &Problem {
        &self.0
    }

    /// A 400 with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(Problem::from_status(StatusCode::BAD_REQUEST).detail(detail))
    }

    /// A 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Problem::from_status(StatusCode::NOT_FOUND).detail(detail))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status_code()
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::new(problem)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut problem = *self.0;
        if problem.trace_id.is_none() {
            problem.trace_id = TraceContext::current().map(|ctx| ctx.trace_id().to_owned());
        }
        problem.into_response().map(axum::body::Body::new)
    }
}
