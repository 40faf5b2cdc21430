//! [`Control`]: the service [`ControlLayer`](crate::ControlLayer) produces.

use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use crate::{
    future::ResponseFuture,
    layer::Target,
    plane::{Admission, ControlPlane, Decision, Rejection},
};
use dreamnet_common::{ProblemFormat, ResponseBody};
use dreamnet_trace_id::TraceContext;

/// The service [`ControlLayer`](crate::ControlLayer) produces: decides, then calls the
/// inner service or answers the rejection itself.
#[derive(Clone)]
pub struct Control<S> {
    inner: S,
    plane: ControlPlane,
    target: Target,
}

impl<S> Control<S> {
    pub(crate) fn new(inner: S, plane: ControlPlane, target: Target) -> Self {
        Self {
            inner,
            plane,
            target,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Control<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Control<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (rt, req) = match &self.target {
            Target::Static(rt) => (Arc::clone(rt), req),
            Target::Dynamic(resolver) => {
                let (parts, body) = req.into_parts();
                let resolved = resolver.resolve(&parts);
                let req = Request::from_parts(parts, body);
                let Some(id) = resolved else {
                    return ResponseFuture::inner(self.inner.call(req), None);
                };
                let Some(rt) = self.plane.runtime(&id) else {
                    let rejection = Rejection::unknown_cluster(&id, trace_id(&req));
                    return ResponseFuture::rejected(rejection, ProblemFormat::of(req.headers()));
                };
                (Arc::clone(rt), req)
            }
        };
        let client_key = &self.plane.inner.client_key;
        let client = || client_key.of(req.headers(), req.extensions());
        let admission = self.plane.admit(&rt, trace_id(&req), client);
        match admission {
            Admission::Ready(Decision::Deny(rejection)) => {
                ResponseFuture::rejected(rejection, ProblemFormat::of(req.headers()))
            }
            Admission::Ready(Decision::Admit(permit)) => {
                ResponseFuture::inner(self.inner.call(req), Some(permit))
            }
            Admission::Pending(decision) => {
                // The inner service moves into the future: keep the one that is ready.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::pending(decision, inner, req)
            }
        }
    }
}

/// The request's trace id, borrowed from its extensions.
#[inline]
fn trace_id<B>(req: &Request<B>) -> Option<&str> {
    TraceContext::from_extensions(req.extensions()).map(TraceContext::trace_id)
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn burst_admits_exactly_the_limit_and_rejections_take_nothing() {
        let (plane, clock) = plane(5);
        let svc = guarded(&plane, "alpha", ok_status());
        clock.advance(Duration::from_secs(19));
        let mut statuses = Vec::new();
        for _ in 0..12 {
            let response = send(&svc).await;
            statuses.push(response.status().as_u16());
            assert_eq!(
                header(&response, "ratelimit-policy"),
                "\"minute\";q=5;w=60, \"hour\";q=1000;w=3600, \"day\";q=10000;w=86400"
            );
            if statuses.len() == 1 {
                assert_eq!(header(&response, "ratelimit"), "\"minute\";r=4;t=41");
            }
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(header(&response, "retry-after"), "41");
                assert_eq!(header(&response, "ratelimit"), "\"minute\";r=0;t=41");
                assert_eq!(
                    header(&response, "content-type"),
                    "application/problem+json"
                );
            }
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429, 429]
        );
        // The 7 rejections took nothing: the next minute admits 5 again, and the hour saw 10.
        clock.advance(Duration::from_secs(41));
        let admitted = futures_util::future::join_all((0..8).map(|_| send(&svc)))
            .await
            .iter()
            .filter(|r| r.status() == StatusCode::OK)
            .count();
        assert_eq!(admitted, 5);
        let usage = plane.usage("alpha").await.unwrap();
        assert_eq!((usage[1].name.as_str(), usage[1].used), ("hour", 10));
    }

    #[tokio::test]
    async fn retry_after_is_rounded_up_and_at_least_one() {
        let (plane, clock) = plane(1);
        let svc = guarded(&plane, "alpha", ok_status());
        clock.advance(Duration::from_millis(59_500));
        assert_eq!(send(&svc).await.status(), 200);
        let response = send(&svc).await;
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "retry-after"), "1");
        clock.advance(Duration::from_millis(500));
        assert_eq!(send(&svc).await.status(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_burst_admits_exactly_the_limit() {
        let (plane, _clock) = plane(60);
        let svc = guarded(&plane, "alpha", ok_status());
        let tasks = (0..200).map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc).await.status() })
        });
        let statuses = futures_util::future::join_all(tasks).await;
        let ok = statuses
            .iter()
            .filter(|s| *s.as_ref().unwrap() == 200)
            .count();
        assert_eq!(ok, 60);
        assert_eq!(plane.metrics().rejected.rate_limited, 140);
    }

    #[tokio::test]
    async fn checks_run_in_order_kill_switch_disabled_breaker_rate_limit() {
        let (plane, _clock) = plane(1);
        let svc = guarded(&plane, "alpha", ok_status());
        assert_eq!(send(&svc).await.status(), 200); // the minute is used up
        plane
            .trip_breaker("alpha", Some("probe"), "ops")
            .await
            .unwrap();
        plane
            .disable_cluster("alpha", "maintenance", "ops", None)
            .await
            .unwrap();
        plane
            .engage_kill_switch("incident", "ops", None)
            .await
            .unwrap();
        let kinds = [
            "urn:dreamnet:control:kill-switch",
            "urn:dreamnet:control:cluster-disabled",
            "urn:dreamnet:control:circuit-open",
            "urn:dreamnet:control:rate-limited",
        ];
        for (step, kind) in kinds.iter().enumerate() {
            let response = send(&svc).await;
            let expected = if step == 3 { 429 } else { 503 };
            assert_eq!(response.status(), expected, "step {step}");
            assert!(header(&response, "ratelimit-policy").starts_with("\"minute\";q=1;w=60"));
            // `RateLimit` only where the quota is the answer: the 429.
            let counts = if step == 3 { "\"minute\";r=0;t=60" } else { "" };
            assert_eq!(header(&response, "ratelimit"), counts, "step {step}");
            let body = json(response).await;
            assert_eq!(body["type"], *kind);
            match step {
                0 => {
                    assert_eq!(
                        body["detail"],
                        "the global kill switch is engaged: incident"
                    );
                    plane.release_kill_switch(None, "ops").await.unwrap();
                }
                1 => {
                    assert_eq!(body["detail"], "cluster alpha is disabled: maintenance");
                    plane.enable_cluster("alpha", None, "ops").await.unwrap();
                }
                2 => {
                    plane.reset_breaker("alpha", None, "ops").await.unwrap();
                }
                _ => {}
            }
        }
        let m = plane.metrics();
        let alpha = &m.clusters[0];
        assert_eq!(alpha.admitted, 1);
        assert_eq!(
            (
                alpha.rejected.kill_switch,
                alpha.rejected.cluster_disabled,
                alpha.rejected.circuit_open,
                alpha.rejected.rate_limited
            ),
            (1, 1, 1, 1)
        );
    }

    /// The 503s before the limiter report the policy (the quota) but no `RateLimit`: its
    /// `r` beside a refusal would read as room to send more.
    #[tokio::test]
    async fn switched_off_and_open_breaker_503s_report_the_policy_only_and_consume_nothing() {
        let (plane, clock) = plane(5);
        let svc = guarded(&plane, "alpha", ok_status());
        let policy = "\"minute\";q=5;w=60, \"hour\";q=1000;w=3600, \"day\";q=10000;w=86400";
        let refused_without_counts = |response: &Response<ResponseBody<Full<Bytes>>>| {
            assert_eq!(response.status(), 503);
            assert_eq!(header(response, "ratelimit-policy"), policy);
            assert!(response.headers().get("ratelimit").is_none());
        };
        plane
            .engage_kill_switch("incident", "ops", None)
            .await
            .unwrap();
        refused_without_counts(&send(&svc).await);
        plane.release_kill_switch(None, "ops").await.unwrap();
        for _ in 0..2 {
            assert_eq!(send(&svc).await.status(), 200);
        }
        clock.advance(Duration::from_secs(19));
        plane
            .disable_cluster("alpha", "maintenance", "ops", None)
            .await
            .unwrap();
        for _ in 0..4 {
            refused_without_counts(&send(&svc).await);
        }
        plane.enable_cluster("alpha", None, "ops").await.unwrap();
        plane.trip_breaker("alpha", None, "ops").await.unwrap();
        refused_without_counts(&send(&svc).await);
        plane.reset_breaker("alpha", None, "ops").await.unwrap();
        // Six rejections took nothing: the next admitted request leaves 2.
        let response = send(&svc).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit"), "\"minute\";r=2;t=41");
    }

    /// `Retry-After` on a switch 503 is the time left on its TTL, rounded up to whole
    /// seconds and at least 1; a switch without a TTL gives none.
    #[tokio::test]
    async fn switch_503s_carry_the_ttl_left_as_retry_after() {
        let (plane, clock) = plane(100);
        let alpha = guarded(&plane, "alpha", ok_status());
        let beta = guarded(&plane, "beta", ok_status());
        plane
            .engage_kill_switch("deploy", "ops", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        clock.advance(Duration::from_millis(10_200));
        assert_eq!(header(&send(&alpha).await, "retry-after"), "20");
        clock.advance(Duration::from_millis(19_750)); // 50 ms left
        assert_eq!(header(&send(&alpha).await, "retry-after"), "1");
        clock.advance(Duration::from_millis(50));
        assert_eq!(send(&alpha).await.status(), 200, "ended by its TTL");

        plane
            .disable_cluster("beta", "maintenance", "ops", Some(Duration::from_secs(90)))
            .await
            .unwrap();
        clock.advance(Duration::from_millis(500));
        let response = send(&beta).await;
        assert_eq!(response.status(), 503);
        assert_eq!(header(&response, "retry-after"), "90");
        assert_eq!(send(&alpha).await.status(), 200, "only beta is disabled");

        plane
            .engage_kill_switch("incident", "ops", None)
            .await
            .unwrap();
        let response = send(&alpha).await;
        assert_eq!(response.status(), 503);
        assert!(
            response.headers().get("retry-after").is_none(),
            "no TTL, no promise"
        );
        plane.release_kill_switch(None, "ops").await.unwrap();
        plane
            .disable_cluster("alpha", "maintenance", "ops", None)
            .await
            .unwrap();
        let response = send(&alpha).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("retry-after").is_none());
    }

    #[tokio::test]
    async fn kill_switch_ttl_ends_by_itself_and_disabling_one_cluster_spares_the_others() {
        let (plane, clock) = plane(100);
        let alpha = guarded(&plane, "alpha", ok_status());
        let beta = guarded(&plane, "beta", ok_status());
        plane
            .engage_kill_switch("deploy", "ops", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        let response = send(&beta).await;
        assert_eq!(response.status(), 503);
        assert_eq!(header(&response, "retry-after"), "30");
        assert!(plane.kill_switch().enabled);
        assert_eq!(
            plane.kill_switch().expires_at.as_deref(),
            Some("2026-01-01T00:00:30.000Z")
        );
        clock.advance(Duration::from_secs(30));
        let ended = plane.kill_switch();
        assert!(!ended.enabled);
        // Read as released by its TTL, not as the stale "deploy" change with a past expiry.
        assert_eq!(ended.reason.as_deref(), Some("ended by ttl"));
        assert_eq!(ended.disabled_by.as_deref(), Some("system"));
        assert_eq!(
            ended.changed_at.as_deref(),
            Some("2026-01-01T00:00:30.000Z")
        );
        assert_eq!(ended.expires_at, None);
        assert_eq!(send(&beta).await.status(), 200);

        plane
            .disable_cluster("alpha", "bad deploy", "ops", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(send(&alpha).await.status(), 503);
        assert_eq!(send(&beta).await.status(), 200);
        assert!(!plane.cluster("alpha").unwrap().enabled);
        clock.advance(Duration::from_secs(10));
        assert_eq!(send(&alpha).await.status(), 200);
        let alpha_view = plane.cluster("alpha").unwrap();
        assert!(alpha_view.enabled);
        assert_eq!(alpha_view.reason.as_deref(), Some("ended by ttl"));
        assert_eq!(alpha_view.expires_at, None);
    }

    #[tokio::test]
    async fn disabled_rate_limit_admits_everything_without_headers() {
        let (plane, _clock) = plane(1);
        plane
            .set_rate_limit(
                "alpha",
                &RateLimitUpdate {
                    enabled: Some(false),
                    ..RateLimitUpdate::default()
                },
                "ops",
                Some("load test"),
            )
            .await
            .unwrap();
        let svc = guarded(&plane, "alpha", ok_status());
        for _ in 0..5 {
            let response = send(&svc).await;
            assert_eq!(response.status(), 200);
            assert!(response.headers().get("ratelimit").is_none());
        }
    }

    #[tokio::test]
    async fn rate_limit_changes_apply_to_the_next_request() {
        let (plane, _clock) = plane(2);
        let svc = guarded(&plane, "alpha", ok_status());
        for _ in 0..2 {
            assert_eq!(send(&svc).await.status(), 200);
        }
        assert_eq!(send(&svc).await.status(), 429);
        let view = set_limit(
            &plane,
            "alpha",
            RateLimitUpdate {
                requests_per_minute: Some(3),
                windows: None,
                ..RateLimitUpdate::default()
            },
        )
        .await;
        assert_eq!(view.requests_per_minute, Some(3));
        assert_eq!(view.requests_per_hour, Some(1000));
        let response = send(&svc).await;
        assert_eq!(response.status(), 200);
        assert_eq!(&header(&response, "ratelimit")[..13], "\"minute\";r=0;");
        let bad = RateLimitUpdate {
            windows: Some(vec![WindowConfig::new("Bad", 1, 1)]),
            ..RateLimitUpdate::default()
        };
        assert!(plane
            .set_rate_limit("alpha", &bad, "ops", None)
            .await
            .is_err());
        assert_eq!(
            plane.rate_limit("alpha").unwrap().requests_per_minute,
            Some(3)
        );
    }

    #[tokio::test]
    async fn problems_carry_the_trace_id() {
        let (plane, _clock) = plane(100);
        let svc = guarded(&plane, "alpha", ok_status());
        plane
            .engage_kill_switch("incident", "ops", None)
            .await
            .unwrap();
        let mut req = Request::new(Full::default());
        req.extensions_mut().insert(TraceContext::new("trace-456"));
        let response = svc.oneshot(req).await.unwrap();
        let body = json(response).await;
        assert_eq!(body["traceId"], "trace-456");
        assert_eq!(body["status"], 503);
    }

    #[tokio::test]
    async fn per_client_windows_limit_each_client_named_by_the_default_policy() {
        let (plane, clock) = plane(1000);
        let update = RateLimitUpdate {
            requests_per_hour: Some(7),
            per_client: Some(crate::PerClientUpdate {
                requests_per_minute: Some(Some(3)),
                ..Default::default()
            }),
            ..RateLimitUpdate::default()
        };
        plane
            .set_rate_limit("alpha", &update, "ops", None)
            .await
            .unwrap();
        let svc = guarded(&plane, "alpha", ok_status());
        clock.advance(Duration::from_secs(19));
        let call = |build: fn(http::request::Builder) -> http::request::Builder| {
            let svc = svc.clone();
            let req = build(Request::get("/")).body(Full::default()).unwrap();
            async move { svc.oneshot(req).await.unwrap() }
        };
        let acme = |b: http::request::Builder| b.header("x-account-id", "acme");
        for remaining in [2, 1, 0] {
            let response = call(acme).await;
            assert_eq!(response.status(), 200);
            assert_eq!(
                header(&response, "ratelimit"),
                format!("\"client-minute\";r={remaining};t=41")
            );
        }
        let refused = call(acme).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(header(&refused, "ratelimit"), "\"client-minute\";r=0;t=41");
        assert_eq!(header(&refused, "retry-after"), "41");
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            "\"minute\";q=1000;w=60, \"hour\";q=7;w=3600, \"day\";q=10000;w=86400, \"client-minute\";q=3;w=60"
        );
        // Another account, a credential and a peer address are three more clients; the
        // cluster's hour (7) binds the fourth of them.
        let token = |b: http::request::Builder| b.header("authorization", "Bearer t");
        let peer = |b: http::request::Builder| {
            b.extension(std::net::SocketAddr::from(([10, 0, 0, 1], 5000)))
        };
        let other = |b: http::request::Builder| b.header("x-account-id", "other");
        assert_eq!(call(token).await.status(), 200);
        assert_eq!(call(token).await.status(), 200);
        assert_eq!(call(peer).await.status(), 200);
        let last = call(other).await;
        assert_eq!(last.status(), 200);
        assert_eq!(header(&last, "ratelimit"), "\"hour\";r=0;t=3581");
        let refused = call(other).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(header(&refused, "ratelimit"), "\"hour\";r=0;t=3581");
        assert_eq!(plane.usage("alpha").await.unwrap()[1].used, 7);
        // Requests without any key share the anonymous client's quota.
        let anonymous = |b: http::request::Builder| b;
        set_limit(
            &plane,
            "alpha",
            RateLimitUpdate {
                requests_per_hour: Some(1000),
                ..RateLimitUpdate::default()
            },
        )
        .await;
        let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| call(anonymous)))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
    }
}
