//! [`AdminAuthLayer`]: `Authorization: Bearer <token>` in front of every admin route.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{Problem, ResponseBody};
use dreamnet_trace_id::TraceContext;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{AdminToken, AuthThrottle};

/// Lets a request through only with `Authorization: Bearer <token>` (compared in constant
/// time); otherwise answers 401 problem+json with `WWW-Authenticate: Bearer` and the
/// request's trace id (never the credential).
///
/// Failed attempts are throttled per peer address by an [`AuthThrottle`] (default: 10
/// failures in 60 s, then 429 problem+json with `Retry-After` for that address until its
/// window ends). A refusal is logged at WARN once per window and address (the first
/// failure, then the throttling), at DEBUG otherwise, so a brute force cannot flood the log.
///
/// Generic over request and response bodies, so it wraps an axum `Router` or any tower
/// service; see the crate docs for an example.
#[derive(Debug, Clone)]
pub struct AdminAuthLayer {
    token: AdminToken,
    throttle: Option<AuthThrottle>,
}

impl AdminAuthLayer {
    /// Requires `token`, with the default [`AuthThrottle`].
    pub fn new(token: AdminToken) -> Self {
        Self {
            token,
            throttle: Some(AuthThrottle::default()),
        }
    }

    /// Throttles failures with `throttle` (keep a clone to read its counters).
    #[must_use]
    pub fn with_throttle(mut self, throttle: AuthThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// No throttling (when something in front already limits failed attempts).
    #[must_use]
    pub fn without_throttle(mut self) -> Self {
        self.throttle = None;
        self
    }

    /// The throttle in use, if any (its counters feed `/metrics`).
    pub fn throttle(&self) -> Option<&AuthThrottle> {
        self.throttle.as_ref()
    }
}

impl<S> Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminAuth {
            inner,
            token: self.token.clone(),
            throttle: self.throttle.clone(),
        }
    }
}

/// The service of [`AdminAuthLayer`].
#[derive(Debug, Clone)]
pub struct AdminAuth<S> {
    inner: S,
    token: AdminToken,
    throttle: Option<AuthThrottle>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AdminAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let throttled = self.throttle.as_ref().and_then(|throttle| {
            let peer = throttle.key_of(request.headers(), request.extensions())?;
            Some((throttle, peer))
        });
        // Checked before the token: a throttled address learns nothing, not even that a
        // guess was right.
        if let Some(wait) = throttled.and_then(|(throttle, peer)| throttle.check(peer)) {
            return ResponseFuture::Refused {
                response: Some(too_many_failures(&request, wait)),
            };
        }
        if self
            .token
            .verify(request.headers().get(header::AUTHORIZATION))
        {
            if let Some((throttle, peer)) = throttled {
                throttle.record_success(peer);
            }
            return ResponseFuture::Inner {
                future: self.inner.call(request),
            };
        }
        let first_in_window =
            throttled.is_none_or(|(throttle, peer)| throttle.record_failure(peer));
        ResponseFuture::Refused {
            response: Some(refusal(&request, first_in_window)),
        }
    }
}

fn trace_id_of<B>(request: &Request<B>) -> Option<&str> {
    TraceContext::from_extensions(request.extensions()).map(TraceContext::trace_id)
}

/// The 429 for an address over its failure budget.
fn too_many_failures<B>(request: &Request<B>, wait: std::time::Duration) -> Response<Full<Bytes>> {
    Problem::from_status(StatusCode::TOO_MANY_REQUESTS)
        .type_uri("urn:dreamnet:admin:auth-throttled")
        .detail("too many failed admin authentications from this address; retry later")
        .retry_after_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
        .maybe_trace_id(trace_id_of(request))
        .into_response()
}

/// The 401 for a request without the right token. A wrong token gets RFC 6750's
/// `error="invalid_token"`, so a client can tell a typo from a missing header.
fn refusal<B>(request: &Request<B>, log_warning: bool) -> Response<Full<Bytes>> {
    let had_credentials = request.headers().contains_key(header::AUTHORIZATION);
    let (challenge, detail) = if had_credentials {
        (
            HeaderValue::from_static(r#"Bearer realm="dreamnet-admin", error="invalid_token""#),
            "the bearer token is not valid for the admin API",
        )
    } else {
        (
            HeaderValue::from_static(r#"Bearer realm="dreamnet-admin""#),
            "the admin API needs Authorization: Bearer <token>",
        )
    };
    if log_warning {
        tracing::warn!(
            path = request.uri().path(),
            had_credentials,
            "admin request refused"
        );
    } else {
        tracing::debug!(
            path = request.uri().path(),
            had_credentials,
            "admin request refused"
        );
    }
    Problem::from_status(StatusCode::UNAUTHORIZED)
        .detail(detail)
        .maybe_trace_id(trace_id_of(request))
        .header(header::WWW_AUTHENTICATE, challenge)
        .into_response()
}

pin_project! {
    /// The future of [`AdminAuth`]: the inner service's, or the refusal.
    // pin-project-lite cannot carry field docs; the variants say what they hold.
    #[allow(missing_docs)]
    #[project = ResponseFutureProj]
    #[derive(Debug)]
    pub enum ResponseFuture<F> {
        /// The request was authorized.
        Inner {
            #[pin]
            future: F,
        },
        /// The request was refused.
        Refused {
            response: Option<Response<Full<Bytes>>>,
        },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => {
                future.poll(cx).map_ok(ResponseBody::from_inner_response)
            }
            ResponseFutureProj::Refused { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(ResponseBody::from_full_response(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;

    const TOKEN: &str = "correct-horse-battery-staple";

    async fn send(authorization: Option<&str>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let service = ServiceBuilder::new()
            .layer(AdminAuthLayer::new(AdminToken::new(TOKEN)))
            .service(service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }));
        let mut request = Request::get("/api/control");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let mut request = request.body(Full::default()).unwrap();
        request
            .extensions_mut()
            .insert(TraceContext::new("trace-1"));
        let response = service.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn the_right_token_passes() {
        let (status, _, body) = send(Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({}));
    }

    #[tokio::test]
    async fn missing_and_wrong_tokens_get_a_401_problem_with_a_challenge() {
        let (status, headers, body) = send(None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="dreamnet-admin""#
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["status"], 401);
        assert_eq!(body["traceId"], "trace-1");

        let (status, headers, body) = send(Some("Bearer wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#));
        assert!(
            !body.to_string().contains("wrong"),
            "never echo the credential"
        );
    }

    mod throttling {
        use std::{net::SocketAddr, sync::Arc, time::Duration};

        use axum::extract::ConnectInfo;
        use dreamnet_common::ManualClock;

        use super::*;

        type Svc = tower::util::BoxCloneService<
            Request<Full<Bytes>>,
            Response<ResponseBody<Full<Bytes>>>,
            Infallible,
        >;

        fn service(clock: &ManualClock) -> (Svc, AuthThrottle) {
            let throttle = AuthThrottle::builder()
                .clock(Arc::new(clock.clone()))
                .build();
            let layer = AdminAuthLayer::new(AdminToken::new(TOKEN)).with_throttle(throttle.clone());
            let svc = ServiceBuilder::new().layer(layer).service(service_fn(
                |_req: Request<Full<Bytes>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                },
            ));
            (tower::util::BoxCloneService::new(svc), throttle)
        }

        async fn from(svc: &Svc, peer: &str, token: &str) -> Response<ResponseBody<Full<Bytes>>> {
            let mut request = Request::get("/api/control")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Full::default())
                .unwrap();
            let addr: SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(ConnectInfo(addr));
            svc.clone().oneshot(request).await.unwrap()
        }

        #[tokio::test]
        async fn the_eleventh_wrong_token_from_one_address_is_a_429_until_the_window_passes() {
            let clock = ManualClock::new(1_000_000);
            let (svc, throttle) = service(&clock);
            for _ in 0..10 {
                let response = from(&svc, "198.51.100.7:40001", "guess").await;
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
            clock.advance(Duration::from_millis(15_200));
            // The 11th, from another port of the same address: 429 with the time left.
            let response = from(&svc, "198.51.100.7:40999", "guess").await;
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], "45");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            // Even the right token: the address is throttled, whatever it sends.
            let response = from(&svc, "198.51.100.7:40002", TOKEN).await;
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            // Another address is unaffected.
            assert_eq!(
                from(&svc, "203.0.113.9:5000", TOKEN).await.status(),
                StatusCode::OK
            );
            for _ in 0..20 {
                from(&svc, "198.51.100.7:40003", "guess").await;
            }
            assert_eq!(throttle.throttled_total(), 22);
            assert_eq!(
                throttle.failures_total(),
                10,
                "throttled attempts are not verified"
            );
            clock.advance(Duration::from_millis(44_800));
            assert_eq!(
                from(&svc, "198.51.100.7:40004", TOKEN).await.status(),
                StatusCode::OK
            );
        }

        #[tokio::test]
        async fn without_a_peer_address_nothing_is_throttled() {
            let clock = ManualClock::new(0);
            let (svc, throttle) = service(&clock);
            for _ in 0..30 {
                let request = Request::get("/api/control")
                    .header(header::AUTHORIZATION, "Bearer guess")
                    .body(Full::default())
                    .unwrap();
                let response = svc.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
            assert_eq!((throttle.throttled_total(), throttle.tracked()), (0, 0));
        }
    }
}
