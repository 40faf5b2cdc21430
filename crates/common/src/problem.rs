//! RFC 9457 problem details (`application/problem+json`).
//!
//! Every rejection a DreamNet layer produces is a [`Problem`]: a response rather than a new
//! error type, so the layers compose under axum with `Error = S::Error`. A layer renders it
//! with [`Problem::render`] in the [`ProblemFormat`] of the request: problem+json, or a gRPC
//! trailers-only response for a gRPC request (see [`crate::grpc`]).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::{
    grpc::{GrpcCode, ProblemFormat},
    StoreFault,
};

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object: `{"type","title","status","detail","traceId"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI reference that identifies the problem type (`about:blank` when generic).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation specific to this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The trace id of the request, so a client can quote it to an operator.
    #[serde(rename = "traceId", default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Extra response headers (e.g. `Retry-After`, `WWW-Authenticate`); not serialized.
    #[serde(skip)]
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Set when the rejection is ours because our own store failed; the response then
    /// carries the [`StoreFault`] marker (so an outer breaker ignores it). Not serialized.
    #[serde(skip)]
    pub fault: Option<StoreFault>,
    /// The gRPC status to render with instead of the HTTP status's default mapping (set with
    /// [`Problem::grpc_code`]). Not serialized.
    #[serde(skip)]
    pub grpc: Option<GrpcCode>,
}

impl Problem {
    /// A problem with `type` `about:blank`, the given status and title.
    pub fn new(status: StatusCode, title: impl Into<String>) -> Self {
        Self {
            type_uri: "about:blank".to_owned(),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            trace_id: None,
            headers: Vec::new(),
            fault: None,
            grpc: None,
        }
    }

    /// A problem whose title is the status code's canonical reason phrase.
    pub fn from_status(status: StatusCode) -> Self {
        Self::new(status, status.canonical_reason().unwrap_or("Error"))
    }

    /// Sets the problem type URI.
    #[must_use]
    pub fn type_uri(mut self, type_uri: impl Into<String>) -> Self {
        self.type_uri = type_uri.into();
        self
    }

    /// Sets the occurrence-specific detail.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the trace id carried in the body.
    #[must_use]
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Sets the trace id when one is known.
    #[must_use]
    pub fn maybe_trace_id(mut self, trace_id: Option<impl Into<String>>) -> Self {
        self.trace_id = trace_id.map(Into::into);
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in whole seconds, rounded up and at least 1 (never `0`, which
    /// clients read as "retry now" and hammer the server with).
    #[must_use]
    pub fn retry_after_millis(self, millis: u64) -> Self {
        let secs = retry_after_secs(millis);
        self.header(header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// Marks the response as a rejection caused by our own `store` being unavailable
    /// (see [`StoreFault`]): a circuit breaker around it does not count it as the
    /// upstream's failure.
    #[must_use]
    pub fn store_fault(mut self, store: &'static str) -> Self {
        self.fault = Some(StoreFault::new(store));
        self
    }

    /// The status as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The serialized JSON body.
    pub fn to_json(&self) -> Bytes {
        // Serializing a struct of strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Builds the response in `format`: the request's (see [`ProblemFormat::of`]), so a gRPC
    /// client gets a trailers-only response it can read and every other client problem+json.
    pub fn render(self, format: ProblemFormat) -> Response<Full<Bytes>> {
        match format {
            ProblemFormat::ProblemJson => self.into_response(),
            ProblemFormat::GrpcTrailersOnly => self.into_grpc_response(),
        }
    }

    /// Builds the `application/problem+json` response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = self.to_json();
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status_code();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(fault) = self.fault {
            fault.mark(&mut response);
        }
        response
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(millis: u64) -> u64 {
    millis.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_has_rfc9457_fields_and_headers() {
        let response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            .detail("kill switch engaged")
            .trace_id("t-1")
            .retry_after_millis(1)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], "Service Unavailable");
        assert_eq!(json["status"], 503);
        assert_eq!(json["detail"], "kill switch engaged");
        assert_eq!(json["traceId"], "t-1");
    }

    #[tokio::test]
    async fn a_store_fault_marks_the_response_and_stays_out_of_the_body() {
        let plain = Problem::from_status(StatusCode::SERVICE_UNAVAILABLE).into_response();
        assert!(StoreFault::of(&plain).is_none());
        let marked = Problem::from_status(StatusCode::SERVICE_UNAVAILABLE)
            .store_fault("idempotency")
            .into_response();
        assert_eq!(
            StoreFault::of(&marked).map(StoreFault::store),
            Some("idempotency")
        );
        let body = marked.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.get("fault").is_none(), "{json}");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(59_999), 60);
    }
}
