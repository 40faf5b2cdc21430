//! problem+json for every error, including the ones axum produces itself.

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use dreamnet_common::{problem::PROBLEM_JSON, Problem};
use dreamnet_trace_id::TraceContext;
use http::{header, Extensions, StatusCode};
use http_body_util::BodyExt;

use crate::after::{After, AfterLayer, Then};

/// The trace id of a request, from the [`TraceContext`] the trace-id layer stored.
pub(crate) fn trace_id(extensions: &Extensions) -> Option<String> {
    TraceContext::from_extensions(extensions).map(|ctx| ctx.trace_id().to_owned())
}

/// A problem+json response with the request's trace id.
pub(crate) fn respond(
    status: StatusCode,
    detail: impl Into<String>,
    extensions: &Extensions,
) -> Response {
    Problem::from_status(status)
        .detail(detail)
        .maybe_trace_id(trace_id(extensions))
        .into_response()
        .map(Body::new)
}

/// Bodies of non-problem error responses longer than this are not quoted as the detail.
const MAX_QUOTED_DETAIL: usize = 512;

/// Middleware: any error response (status >= 400) that is not already problem+json (axum's
/// 405, extractor rejections, a layer's plain-text error) is rewritten as problem+json with
/// the trace id, keeping its status and headers (`Allow`, `WWW-Authenticate`, ...).
pub(crate) fn problem_errors() -> AfterLayer<ProblemErrors> {
    AfterLayer::new(ProblemErrors)
}

/// The [`After`] of [`problem_errors`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProblemErrors;

impl After for ProblemErrors {
    /// The request's trace context (a clone of shared ids), for the rare rewrite.
    type Seed = Option<TraceContext>;

    fn seed<B>(&self, request: &http::Request<B>) -> Self::Seed {
        TraceContext::from_extensions(request.extensions()).cloned()
    }

    fn after(&self, trace: Self::Seed, response: Response) -> Then {
        if response.status().as_u16() < 400 || is_problem(response.headers()) {
            return Then::Done(response);
        }
        Then::Later(Box::pin(rewrite(response, trace)))
    }
}

/// `response` (an error that is not problem+json) as problem+json, its body quoted as the
/// detail when short.
async fn rewrite(response: Response, trace: Option<TraceContext>) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_QUOTED_DETAIL)
        .collect()
        .await
    {
        Ok(collected) => String::from_utf8(collected.to_bytes().to_vec()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let detail = if text.trim().is_empty() {
        default_detail(status).to_owned()
    } else {
        text.trim().to_owned()
    };
    let problem = Problem::from_status(status)
        .detail(detail)
        .maybe_trace_id(trace.map(|ctx| ctx.trace_id().to_owned()));
    let body = problem.to_json();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(PROBLEM_JSON),
    );
    Response::from_parts(parts, Body::from(body))
}

fn is_problem(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON))
}

fn default_detail(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "no such route",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route",
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type",
        _ => "request failed",
    }
}

/// The router's fallback: 404 problem+json.
pub(crate) async fn not_found(request: Request) -> impl IntoResponse {
    respond(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
        request.extensions(),
    )
}

/// The router's 405 fallback.
pub(crate) async fn method_not_allowed(request: Request) -> impl IntoResponse {
    respond(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
        request.extensions(),
    )
}
