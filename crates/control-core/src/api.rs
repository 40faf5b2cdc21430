//! [`ControlApi`]: the control HTTP API (`/api/control...`) as a tower service.
//!
//! | method, path (relative to the mount point) | body | success |
//! |---|---|---|
//! | `GET /` | | 200 [`ControlView`](crate::ControlView) |
//! | `GET /kill-switch` | | 200 [`KillSwitchView`](crate::KillSwitchView) |
//! | `POST /kill-switch/enable` | `{reason, disabledBy?, ttlSeconds?}` (reason required) | 200 kill switch |
//! | `POST /kill-switch/disable` | `{reason?, disabledBy?}` or empty | 200 kill switch |
//! | `GET /cluster/{id}` | | 200 [`ClusterView`](crate::ClusterView) |
//! | `POST /cluster/{id}/disable` | `{reason, disabledBy?, ttlSeconds?}` (reason required) | 200 cluster |
//! | `POST /cluster/{id}/enable` | `{reason?, disabledBy?}` or empty | 200 cluster |
//! | `GET /cluster/{id}/rate-limit` | | 200 [`RateLimitView`](crate::RateLimitView) |
//! | `POST /cluster/{id}/rate-limit` | `{requestsPerMinute?, requestsPerHour?, requestsPerDay?, requestsPerSecond?, enabled?, windows?, reason?, disabledBy?}` | 200 rate limit |
//! | `GET /cluster/{id}/circuit-breaker` | | 200 [`BreakerView`](crate::BreakerView) |
//! | `POST /cluster/{id}/circuit-breaker/trip` / `reset` | `{reason?, disabledBy?}` or empty | 200 breaker |
//! | `GET /audit?limit=100&cluster=id` | | 200 `[...]`: the entries, newest first |
//! | `GET /metrics` | | 200 [`MetricsSnapshot`](crate::MetricsSnapshot) |
//!
//! Errors are problem+json: 400 (malformed JSON, wrong types, negative or non-integer
//! limits, unknown fields, missing reason), 404 (unknown path or cluster), 405 (wrong
//! method, with `Allow`), 413 (body over 64 KiB), 503 (store unreachable; nothing changed),
//! and whatever the [`Authorize`] hook answers (e.g. 401). A refused request changes nothing.

// A `Problem` is the response we answer with; boxing it would buy nothing on these cold paths.
#![allow(clippy::result_large_err)]

use std::{
    convert::Infallible, fmt, future::Future, pin::Pin, sync::Arc, task::Context, task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http::{request::Parts, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::{de::DeserializeOwned, Deserialize};
use tower_service::Service;

use crate::{
    config::WindowConfig,
    plane::{ControlError, ControlPlane, RateLimitUpdate},
    store::memory::AUDIT_CAPACITY,
};
use dreamnet_common::{
    json_api::{
        allow_methods as allow_any, bad_request, json_ok as ok, read_json_object, route_segments,
    },
    Problem,
};
use dreamnet_trace_id::TraceContext;

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest accepted `ttlSeconds` (one year).
const MAX_TTL_SECONDS: u64 = 366 * 86_400;

pub use dreamnet_common::auth::{AllowAll, Authorize, BearerToken};

/// The control HTTP API as a tower service (see the module docs for the routes).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dreamnet_control_core::{BearerToken, ControlApi, ControlPlane};
/// use tower::ServiceExt;
/// # use http_body_util::Full; use bytes::Bytes;
///
/// let plane = ControlPlane::builder().build();
/// let api = ControlApi::new(plane)
///     .strip_prefix("/api/control")
///     .authorize(BearerToken::new("s3cret"));
/// let request = http::Request::get("/api/control/kill-switch")
///     .header("authorization", "Bearer s3cret")
///     .body(Full::<Bytes>::default())
///     .unwrap();
/// let response = api.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 200);
/// # }
/// ```
#[derive(Clone)]
pub struct ControlApi {
    plane: ControlPlane,
    prefix: Option<Arc<str>>,
    authorizer: Arc<dyn Authorize>,
}

impl fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlApi")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ControlApi {
    /// The API over `plane`, routing on the whole path, letting every request through.
    pub fn new(plane: ControlPlane) -> Self {
        Self {
            plane,
            prefix: None,
            authorizer: Arc::new(AllowAll),
        }
    }

    /// Routes on the path after `prefix` (e.g. `/api/control`); other paths are 404.
    #[must_use]
    pub fn strip_prefix(mut self, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        self.prefix = (!prefix.is_empty()).then(|| Arc::from(prefix));
        self
    }

    /// Checks every request with `authorizer` before anything else.
    #[must_use]
    pub fn authorize(mut self, authorizer: impl Authorize) -> Self {
        self.authorizer = Arc::new(authorizer);
        self
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let trace_id = parts
            .extensions
            .get::<TraceContext>()
            .map(|t| t.trace_id().to_owned());
        let result = match self.authorizer.authorize(&parts) {
            Err(problem) => Err(problem),
            Ok(()) => self.route(&parts, body).await,
        };
        match result {
            Ok(response) => response,
            Err(problem) => problem.maybe_trace_id(trace_id).into_response(),
        }
    }

    async fn route<B>(&self, parts: &Parts, body: B) -> Result<Response<Full<Bytes>>, Problem>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let segments = route_segments(parts.uri.path(), self.prefix.as_deref())
            .ok_or_else(|| not_found("no such control endpoint"))?;
        let method = &parts.method;
        let plane = &self.plane;
        match segments.as_slice() {
            [] => {
                allow(method, &Method::GET)?;
                ok(&plane.overview().await)
            }
            ["kill-switch"] => {
                allow(method, &Method::GET)?;
                ok(&plane.kill_switch())
            }
            ["kill-switch", "enable"] => {
                allow(method, &Method::POST)?;
                let b: SwitchBody = parse(parts, body, false).await?;
                let view = plane
                    .engage_kill_switch(&b.reason()?, b.actor(), b.ttl()?)
                    .await
                    .map_err(problem)?;
                ok(&view)
            }
            ["kill-switch", "disable"] => {
                allow(method, &Method::POST)?;
                let b: NoteBody = parse(parts, body, true).await?;
                let view = plane
                    .release_kill_switch(b.reason.as_deref(), b.actor())
                    .await
                    .map_err(problem)?;
                ok(&view)
            }
            ["audit"] => {
                allow(method, &Method::GET)?;
                let query = AuditQuery::parse(parts.uri.query())?;
                let mut entries = plane
                    .audit(if query.cluster.is_some() {
                        AUDIT_CAPACITY
                    } else {
                        query.limit
                    })
                    .await
                    .map_err(problem)?;
                if let Some(cluster) = &query.cluster {
                    entries.retain(|e| e.cluster.as_deref() == Some(cluster.as_str()));
                    entries.truncate(query.limit);
                }
                ok(&entries)
            }
            ["metrics"] => {
                allow(method, &Method::GET)?;
                ok(&plane.metrics())
            }
            ["cluster", id, rest @ ..] => self.cluster_route(parts, body, id, rest).await,
            _ => Err(not_found("no such control endpoint")),
        }
    }

    async fn cluster_route<B>(
        &self,
        parts: &Parts,
        body: B,
        id: &str,
        rest: &[&str],
    ) -> Result<Response<Full<Bytes>>, Problem>
    where
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
    {
        let known = matches!(
            rest,
            [] | ["enable" | "disable" | "rate-limit" | "circuit-breaker"]
                | ["circuit-breaker", "trip" | "reset"]
        );
        if !known {
            return Err(not_found("no such control endpoint"));
        }
        let plane = &self.plane;
        if !plane.has_cluster(id) {
            return Err(not_found(&format!("unknown cluster {id:?}")));
        }
        let method = &parts.method;
        match rest {
            [] => {
                allow(method, &Method::GET)?;
                let mut view = plane.cluster(id).ok_or_else(|| unknown(id))?;
                view.usage.windows = plane.usage(id).await.unwrap_or_default();
                ok(&view)
            }
            ["disable"] => {
                allow(method, &Method::POST)?;
                let b: SwitchBody = parse(parts, body, false).await?;
                let mut view = plane
                    .disable_cluster(id, &b.reason()?, b.actor(), b.ttl()?)
                    .await
                    .map_err(problem)?;
                // The same shape as `GET /cluster/{id}`: usage windows included.
                view.usage.windows = plane.usage(id).await.unwrap_or_default();
                ok(&view)
            }
            ["enable"] => {
                allow(method, &Method::POST)?;
                let b: NoteBody = parse(parts, body, true).await?;
                let mut view = plane
                    .enable_cluster(id, b.reason.as_deref(), b.actor())
                    .await
                    .map_err(problem)?;
                // The same shape as `GET /cluster/{id}`: usage windows included.
                view.usage.windows = plane.usage(id).await.unwrap_or_default();
                ok(&view)
            }
            ["rate-limit"] => {
                if method == Method::GET {
                    return ok(&plane.rate_limit(id).ok_or_else(|| unknown(id))?);
                }
                allow_any(method, &[Method::GET, Method::POST])?;
                let b: RateLimitBody = parse(parts, body, false).await?;
                let (update, reason, actor) = b.into_update()?;
                let view = plane
                    .set_rate_limit(id, &update, &actor, reason.as_deref())
                    .await
                    .map_err(problem)?;
                ok(&view)
            }
            ["circuit-breaker"] => {
                allow(method, &Method::GET)?;
                ok(&plane.breaker(id).ok_or_else(|| unknown(id))?)
            }
            ["circuit-breaker", action] => {
                allow(method, &Method::POST)?;
                let b: NoteBody = parse(parts, body, true).await?;
                let view = if *action == "trip" {
                    plane.trip_breaker(id, b.reason.as_deref(), b.actor()).await
                } else {
                    plane
                        .reset_breaker(id, b.reason.as_deref(), b.actor())
                        .await
                };
                ok(&view.map_err(problem)?)
            }
            _ => Err(not_found("no such control endpoint")),
        }
    }
}

impl<B> Service<Request<B>> for ControlApi
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: fmt::Display,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(req).await) })
    }
}

/// `{reason, disabledBy, ttlSeconds}`: engaging a switch.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SwitchBody {
    reason: Option<String>,
    disabled_by: Option<String>,
    ttl_seconds: Option<u64>,
}

impl SwitchBody {
    fn reason(&self) -> Result<String, Problem> {
        match self.reason.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => Ok(r.to_owned()),
            _ => Err(bad_request("a non-empty \"reason\" is required")),
        }
    }

    fn actor(&self) -> &str {
        actor(self.disabled_by.as_deref())
    }

    fn ttl(&self) -> Result<Option<Duration>, Problem> {
        match self.ttl_seconds {
            None => Ok(None),
            Some(s) if (1..=MAX_TTL_SECONDS).contains(&s) => Ok(Some(Duration::from_secs(s))),
            Some(_) => Err(bad_request(format!(
                "\"ttlSeconds\" must be an integer in 1..={MAX_TTL_SECONDS}"
            ))),
        }
    }
}

/// `{reason?, disabledBy?}`: releasing a switch, breaker actions.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NoteBody {
    reason: Option<String>,
    disabled_by: Option<String>,
}

impl NoteBody {
    fn actor(&self) -> &str {
        actor(self.disabled_by.as_deref())
    }
}

fn actor(given: Option<&str>) -> &str {
    given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("api")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateLimitBody {
    requests_per_second: Option<u64>,
    requests_per_minute: Option<u64>,
    requests_per_hour: Option<u64>,
    requests_per_day: Option<u64>,
    enabled: Option<bool>,
    windows: Option<Vec<WindowConfig>>,
    reason: Option<String>,
    disabled_by: Option<String>,
}

impl RateLimitBody {
    fn into_update(self) -> Result<(RateLimitUpdate, Option<String>, String), Problem> {
        let update = RateLimitUpdate {
            requests_per_second: self.requests_per_second,
            requests_per_minute: self.requests_per_minute,
            requests_per_hour: self.requests_per_hour,
            requests_per_day: self.requests_per_day,
            enabled: self.enabled,
            windows: self.windows,
        };
        if update == RateLimitUpdate::default() {
            return Err(bad_request(
                "nothing to change: give requestsPerMinute, requestsPerHour, requestsPerDay, enabled or windows",
            ));
        }
        let actor = actor(self.disabled_by.as_deref()).to_owned();
        Ok((update, self.reason, actor))
    }
}

struct AuditQuery {
    limit: usize,
    cluster: Option<String>,
}

impl AuditQuery {
    fn parse(query: Option<&str>) -> Result<Self, Problem> {
        let mut out = Self {
            limit: 100,
            cluster: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=AUDIT_CAPACITY).contains(n))
                        .ok_or_else(|| {
                            bad_request(format!(
                                "\"limit\" must be an integer in 1..={AUDIT_CAPACITY}"
                            ))
                        })?;
                }
                "cluster" => out.cluster = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(out)
    }
}

async fn parse<T, B>(parts: &Parts, body: B, empty_ok: bool) -> Result<T, Problem>
where
    T: DeserializeOwned + Default,
    B: Body<Data = Bytes>,
{
    match read_json_object(&parts.headers, body, BODY_LIMIT).await? {
        Some(value) => Ok(value),
        None if empty_ok => Ok(T::default()),
        None => Err(bad_request("a JSON body is required")),
    }
}

fn allow(method: &Method, allowed: &Method) -> Result<(), Problem> {
    allow_any(method, std::slice::from_ref(allowed))
}

fn not_found(detail: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "Not Found").detail(detail)
}

fn unknown(id: &str) -> Problem {
    not_found(&format!("unknown cluster {id:?}"))
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(problem)`
fn problem(error: ControlError) -> Problem {
    match &error {
        ControlError::UnknownCluster(id) => unknown(id),
        ControlError::Invalid(detail) => bad_request(detail),
        ControlError::Store(_) | ControlError::Contended => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .detail(format!("{error}; nothing was changed"))
                .retry_after_millis(1000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    fn api() -> (ControlApi, ControlPlane) {
        let plane = ControlPlane::builder().build();
        (
            ControlApi::new(plane.clone()).strip_prefix("/api/control"),
            plane,
        )
    }

    async fn call(
        api: &ControlApi,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, Value, http::HeaderMap) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = api.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, headers)
    }

    #[tokio::test]
    async fn overview_has_the_documented_shape() {
        let (api, _) = api();
        let (status, body, headers) = call(&api, "GET", "/api/control", "").await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["killSwitch"]["enabled"], false);
        let wolf = &body["clusters"]["wolf-pack"];
        assert_eq!(wolf["enabled"], true);
        assert_eq!(wolf["rateLimit"]["requestsPerMinute"], 60);
        assert_eq!(wolf["rateLimit"]["requestsPerHour"], 1000);
        assert_eq!(wolf["rateLimit"]["requestsPerDay"], 10_000);
        assert_eq!(wolf["rateLimit"]["enabled"], true);
        assert_eq!(wolf["circuitBreaker"]["state"], "closed");
        assert_eq!(wolf["usage"]["windows"][0]["remaining"], 60);
        assert!(wolf.get("reason").is_some() && wolf.get("disabledBy").is_some());
        assert_eq!(body["clusters"].as_object().unwrap().len(), 12);
    }

    #[tokio::test]
    async fn seed_curl_examples_work() {
        let (api, plane) = api();
        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/kill-switch/enable",
            r#"{"reason": "Emergency maintenance", "disabledBy": "admin"}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["enabled"], true);
        assert_eq!(body["reason"], "Emergency maintenance");
        assert_eq!(body["disabledBy"], "admin");
        assert!(body["changedAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["expiresAt"], Value::Null);
        let (_, body, _) = call(&api, "GET", "/api/control/kill-switch", "").await;
        assert_eq!(body["enabled"], true);
        let (status, body, _) = call(&api, "POST", "/api/control/kill-switch/disable", "").await;
        assert_eq!((status, &body["enabled"]), (StatusCode::OK, &json!(false)));

        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/wolf-pack/disable",
            r#"{"reason": "Rate limit exceeded", "disabledBy": "system"}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["enabled"], false);
        assert_eq!(body["disabledBy"], "system");
        assert_eq!(body["usage"]["windows"][0]["name"], "minute");
        let (status, body, _) =
            call(&api, "POST", "/api/control/cluster/wolf-pack/enable", "{}").await;
        assert_eq!((status, &body["enabled"]), (StatusCode::OK, &json!(true)));
        assert_eq!(body["usage"]["windows"].as_array().unwrap().len(), 3);

        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/orca-pack/rate-limit",
            r#"{"requestsPerMinute": 50, "requestsPerHour": 1000, "requestsPerDay": 10000, "enabled": true}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["requestsPerMinute"], 50);
        assert_eq!(
            plane.rate_limit("orca-pack").unwrap().requests_per_hour,
            Some(1000)
        );
        let (_, body, _) = call(&api, "GET", "/api/control/cluster/orca-pack/rate-limit", "").await;
        assert_eq!(body["requestsPerDay"], 10_000);
    }

    #[tokio::test]
    async fn ttl_seconds_is_recorded() {
        let (api, _) = api();
        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/ai-seo/disable",
            r#"{"reason":"deploy","disabledBy":"ci","ttlSeconds":120}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert!(body["expiresAt"].is_string());
    }

    #[tokio::test]
    async fn invalid_input_is_refused_and_changes_nothing() {
        let (api, plane) = api();
        let before = serde_json::to_value(plane.overview().await).unwrap();
        let cases: &[(&str, &str, StatusCode)] = &[
            (
                "/api/control/kill-switch/enable",
                r#"{"disabledBy":"admin"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"{"reason":"  "}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                "",
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                "{not json",
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"{"reason":"x","ttlSeconds":0}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"{"reason":"x","ttlSeconds":1.5}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"{"reason":"x","ttlSeconds":"60"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"{"reason":"x","bogus":1}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"["reason"]"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/kill-switch/enable",
                r#"["array body", "admin", 60]"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/disable",
                r#"["array body", "admin", null]"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"[null, 5, null, null, null, null, null, null]"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/circuit-breaker/trip",
                r#"["array body", "admin"]"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/disable",
                r#"{"disabledBy":"x"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/nope/disable",
                r#"{"reason":"x"}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                "/api/control/cluster/nope/rate-limit",
                r#"{"requestsPerMinute":1}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinute":-1}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinute":50.5}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinute":50.0}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinute":"50"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerHour":1e3}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"enabled":"yes"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinuet":5}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                "{}",
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/rate-limit",
                r#"{"requestsPerMinute":99999999999999}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/circuit-breaker/trip",
                r#"{"reason":5}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/control/cluster/wolf-pack/circuit-breaker/explode",
                "",
                StatusCode::NOT_FOUND,
            ),
        ];
        for (path, body, expected) in cases {
            let (status, problem, headers) = call(&api, "POST", path, body).await;
            assert_eq!(status, *expected, "{path} {body}: {problem}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert_eq!(problem["status"], expected.as_u16());
        }
        let after = serde_json::to_value(plane.overview().await).unwrap();
        assert_eq!(before, after);
        assert!(plane.audit(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn partial_rate_limit_update_keeps_other_fields() {
        let (api, _) = api();
        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute": 7, "reason": "abuse", "disabledBy": "ops"}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["requestsPerMinute"], 7);
        assert_eq!(body["requestsPerHour"], 1000);
        assert_eq!(body["enabled"], true);
        let (_, audit, _) = call(&api, "GET", "/api/control/audit?limit=1", "").await;
        let entry = &audit[0];
        assert_eq!(entry["action"], "rate_limit.update");
        assert_eq!(entry["actor"], "ops");
        assert_eq!(entry["reason"], "abuse");
        assert_eq!(entry["before"]["windows"][0]["limit"], 60);
        assert_eq!(entry["after"]["windows"][0]["limit"], 7);
    }

    #[tokio::test]
    async fn breaker_trip_and_reset() {
        let (api, _) = api();
        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/jaggy-core/circuit-breaker/trip",
            "",
        )
        .await;
        assert_eq!(
            (status, &body["state"]),
            (StatusCode::OK, &json!("forced_open"))
        );
        let (_, body, _) = call(&api, "GET", "/api/control", "").await;
        assert_eq!(
            body["clusters"]["jaggy-core"]["circuitBreaker"]["state"],
            "forced_open"
        );
        let (status, body, _) = call(
            &api,
            "POST",
            "/api/control/cluster/jaggy-core/circuit-breaker/reset",
            "{}",
        )
        .await;
        assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("closed")));
    }

    #[tokio::test]
    async fn audit_is_newest_first_with_limit_and_cluster_filter() {
        let (api, _) = api();
        for (path, body) in [
            ("/api/control/kill-switch/enable", r#"{"reason":"a"}"#),
            (
                "/api/control/cluster/wolf-pack/disable",
                r#"{"reason":"b"}"#,
            ),
            ("/api/control/kill-switch/disable", r#"{"reason":"c"}"#),
        ] {
            assert_eq!(call(&api, "POST", path, body).await.0, 200);
        }
        let (_, body, _) = call(&api, "GET", "/api/control/audit", "").await;
        let reasons: Vec<_> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].clone())
            .collect();
        assert_eq!(reasons, [json!("c"), json!("b"), json!("a")]);
        let (_, body, _) = call(&api, "GET", "/api/control/audit?limit=2", "").await;
        assert_eq!(body.as_array().unwrap().len(), 2);
        let (_, body, _) = call(&api, "GET", "/api/control/audit?cluster=wolf-pack", "").await;
        assert_eq!(body.as_array().unwrap().len(), 1);
        assert_eq!(body[0]["cluster"], "wolf-pack");
        for bad in ["0", "-1", "x", "100000"] {
            let (status, ..) =
                call(&api, "GET", &format!("/api/control/audit?limit={bad}"), "").await;
            assert_eq!(status, 400, "limit={bad}");
        }
    }

    #[tokio::test]
    async fn routing_errors() {
        let (api, _) = api();
        let (status, _, headers) = call(&api, "GET", "/api/control/kill-switch/enable", "").await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "POST");
        let (status, _, headers) = call(
            &api,
            "DELETE",
            "/api/control/cluster/wolf-pack/rate-limit",
            "",
        )
        .await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "GET, POST");
        assert_eq!(call(&api, "GET", "/api/control/nope", "").await.0, 404);
        assert_eq!(call(&api, "GET", "/api/controlx", "").await.0, 404);
        assert_eq!(call(&api, "GET", "/elsewhere", "").await.0, 404);
        assert_eq!(
            call(&api, "GET", "/api/control/cluster/nope", "").await.0,
            404
        );
        assert_eq!(call(&api, "GET", "/api/control/", "").await.0, 200);
        assert_eq!(
            call(&api, "GET", "/api/control/cluster/wolf-pack", "")
                .await
                .0,
            200
        );
        assert_eq!(call(&api, "GET", "/api/control/metrics", "").await.0, 200);
        let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(
            call(&api, "POST", "/api/control/kill-switch/enable", &big)
                .await
                .0,
            413
        );
    }

    #[tokio::test]
    async fn bearer_token_authorizer() {
        let plane = ControlPlane::builder().build();
        let api = ControlApi::new(plane).authorize(BearerToken::new("s3cret"));
        let send = |auth: Option<&'static str>| {
            let api = api.clone();
            async move {
                let mut req = Request::get("/kill-switch");
                if let Some(auth) = auth {
                    req = req.header("authorization", auth);
                }
                let mut req = req.body(Full::<Bytes>::default()).unwrap();
                req.extensions_mut().insert(TraceContext::new("t-9"));
                api.oneshot(req).await.unwrap()
            }
        };
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let response = send(auth).await;
            assert_eq!(response.status(), 401, "{auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["traceId"], "t-9");
        }
        assert_eq!(send(Some("Bearer s3cret")).await.status(), 200);
    }
}
