//! The HTTP edge of a decision: a [`Rejection`] as problem+json, and the IETF
//! `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::plane::{Permit, RateLimitStatus, RejectReason, Rejection};
use dreamnet_common::{Problem, ProblemFormat};

/// The `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The problem `type` of each reason.
fn type_uri(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::KillSwitch => "urn:dreamnet:control:kill-switch",
        RejectReason::ClusterDisabled => "urn:dreamnet:control:cluster-disabled",
        RejectReason::CircuitOpen => "urn:dreamnet:control:circuit-open",
        RejectReason::RateLimited => "urn:dreamnet:control:rate-limited",
        RejectReason::StoreUnavailable => "urn:dreamnet:control:store-unavailable",
    }
}

/// `RateLimit-Policy`'s value (rendered once per settings change in the plane, so this
/// is a reference count, not a copy or a validation).
fn policy_value(status: &RateLimitStatus) -> Option<HeaderValue> {
    status.policy_header().cloned()
}

/// `RateLimit`'s value, e.g. `"minute";r=59;t=41`, when the counters were read.
///
/// The numbers go through `itoa` stack buffers and the parts into one `Vec` of the exact
/// length, which becomes the value's bytes as is: one allocation, no `String`, no
/// `core::fmt`, no copy.
fn ratelimit_value(status: &RateLimitStatus) -> Option<HeaderValue> {
    let window = status.reported()?;
    let (mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 6] = [
        b"\"",
        window.name.as_bytes(),
        b"\";r=",
        remaining.format(status.remaining()?).as_bytes(),
        b";t=",
        reset.format(status.reset_seconds()?).as_bytes(),
    ];
    let mut value = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        value.extend_from_slice(part);
    }
    // Window names are validated to [a-z0-9_-], so this cannot fail.
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// Inserts `RateLimit-Policy` and (when known) `RateLimit`.
pub(crate) fn insert_rate_limit(headers: &mut HeaderMap, status: &RateLimitStatus) {
    if let Some(policy) = policy_value(status) {
        headers.insert(RATELIMIT_POLICY.clone(), policy);
    }
    if let Some(ratelimit) = ratelimit_value(status) {
        headers.insert(RATELIMIT.clone(), ratelimit);
    }
}

impl Rejection {
    /// The response status: 503, 429 (rate limited) or 404 (unknown cluster).
    pub fn status(&self) -> StatusCode {
        match self.reason {
            None => StatusCode::NOT_FOUND,
            Some(RejectReason::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
            Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The problem details: `type` `urn:dreamnet:control:<reason>`, the detail, the trace
    /// id, `Retry-After` (whole seconds, rounded up, at least 1) and the rate-limit headers.
    pub fn into_problem(self) -> Problem {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let mut problem = Problem::new(status, title).detail(self.detail);
        if let Some(reason) = self.reason {
            problem = problem.type_uri(type_uri(reason));
        }
        if let Some(millis) = self.retry_after_millis {
            problem = problem.retry_after_millis(millis);
        }
        if let Some(status) = &self.rate_limit {
            if let Some(policy) = policy_value(status) {
                problem = problem.header(RATELIMIT_POLICY.clone(), policy);
            }
            if let Some(ratelimit) = ratelimit_value(status) {
                problem = problem.header(RATELIMIT.clone(), ratelimit);
            }
        }
        problem.maybe_trace_id(self.trace_id)
    }

    /// The `application/problem+json` response (see [`Rejection::into_problem`]).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.into_problem().into_response()
    }

    /// The response in the request's `format`: problem+json, or for a gRPC request a
    /// trailers-only response (429 -> `RESOURCE_EXHAUSTED`, 503 -> `UNAVAILABLE`, with
    /// `grpc-retry-pushback-ms` and the rate-limit headers as metadata; see
    /// [`dreamnet_common::grpc`]).
    pub fn render(self, format: ProblemFormat) -> Response<Full<Bytes>> {
        self.into_problem().render(format)
    }
}

impl Permit {
    /// Moves `RateLimit-Policy` and `RateLimit` into a response's headers (once: a second
    /// call adds nothing).
    pub fn decorate(&mut self, headers: &mut HeaderMap) {
        if let Some(status) = self.take_rate_limit() {
            insert_rate_limit(headers, &status);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{ClusterConfig, ControlConfig, ControlPlane};
    use dreamnet_common::ManualClock;

    /// 2026-01-01T00:00:00Z plus 19 s: 41 s left in the minute.
    const T: u64 = 1_767_225_600_000 + 19_000;

    fn plane(minute: u64) -> ControlPlane {
        let mut clusters = std::collections::BTreeMap::new();
        let alpha = ClusterConfig::per_minute_hour_day(minute, 1000, 10_000);
        clusters.insert("alpha".to_owned(), alpha);
        let config = ControlConfig {
            clusters,
            ..ControlConfig::default()
        };
        let clock = std::sync::Arc::new(ManualClock::new(T));
        ControlPlane::builder().config(config).clock(clock).build()
    }

    #[tokio::test]
    async fn an_admitted_call_gets_both_headers_once() {
        let plane = plane(3);
        let mut permit = plane.acquire("alpha", None).await.unwrap();
        let mut headers = HeaderMap::new();
        permit.decorate(&mut headers);
        assert_eq!(headers[&RATELIMIT], "\"minute\";r=2;t=41");
        assert_eq!(
            headers[&RATELIMIT_POLICY],
            "\"minute\";q=3;w=60, \"hour\";q=1000;w=3600, \"day\";q=10000;w=86400"
        );
        let mut again = HeaderMap::new();
        permit.decorate(&mut again);
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn a_rejection_renders_as_problem_json_with_retry_after() {
        let plane = plane(1);
        drop(plane.acquire("alpha", None).await.unwrap());
        let rejection = plane.acquire("alpha", Some("t-1")).await.unwrap_err();
        assert_eq!(rejection.retry_after(), Some(Duration::from_secs(41)));
        assert_eq!(rejection.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = rejection.into_response();
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(headers["retry-after"], "41");
        assert_eq!(headers[&RATELIMIT], "\"minute\";r=0;t=41");
        let problem: serde_json::Value = {
            use http_body_util::BodyExt;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&body).unwrap()
        };
        assert_eq!(problem["type"], "urn:dreamnet:control:rate-limited");
        assert_eq!(problem["traceId"], "t-1");
        assert_eq!(problem["status"], 429);
    }

    #[test]
    fn the_longest_ratelimit_value_is_rendered_whole() {
        use crate::{plane::Limits, store::RateLimitSettings, window::Verdict, WindowConfig};
        let name = "w".repeat(32);
        let settings = RateLimitSettings {
            enabled: true,
            windows: vec![WindowConfig::new(name.clone(), 5, 60)],
            per_client: Vec::new(),
        };
        let verdict = Verdict {
            admitted: true,
            retry_after_millis: 0,
            reported: 0,
            remaining: u64::MAX,
            reset_secs: u64::MAX - 1,
        };
        let status =
            RateLimitStatus::new(std::sync::Arc::new(Limits::new(&settings)), Some(verdict));
        let value = ratelimit_value(&status).unwrap();
        let expected = format!("\"{name}\";r={};t={}", u64::MAX, u64::MAX - 1);
        assert_eq!(value, expected.as_str());
        assert_eq!(
            policy_value(&status).unwrap(),
            format!("\"{name}\";q=5;w=60").as_str()
        );
    }

    #[tokio::test]
    async fn an_unknown_cluster_is_a_plain_404() {
        let plane = plane(1);
        let rejection = plane.acquire("nope", None).await.unwrap_err();
        let problem = rejection.into_problem();
        assert_eq!(problem.status, 404);
        assert_eq!(problem.type_uri, "about:blank");
        assert_eq!(problem.detail.as_deref(), Some("unknown cluster \"nope\""));
        assert!(problem.headers.is_empty());
    }
}
