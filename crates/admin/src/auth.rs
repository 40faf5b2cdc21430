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

use crate::AdminToken;

/// Lets a request through only with `Authorization: Bearer <token>` (compared in constant
/// time); otherwise answers 401 problem+json with `WWW-Authenticate: Bearer` and the
/// request's trace id, and logs a warning (never the credential).
///
/// Generic over request and response bodies, so it wraps an axum `Router` or any tower
/// service; see the crate docs for an example.
#[derive(Debug, Clone)]
pub struct AdminAuthLayer {
    token: AdminToken,
}

impl AdminAuthLayer {
    /// Requires `token`.
    pub fn new(token: AdminToken) -> Self {
        Self { token }
    }
}

impl<S> Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminAuth {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service of [`AdminAuthLayer`].
#[derive(Debug, Clone)]
pub struct AdminAuth<S> {
    inner: S,
    token: AdminToken,
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
        if self
            .token
            .verify(request.headers().get(header::AUTHORIZATION))
        {
            return ResponseFuture::Inner {
                future: self.inner.call(request),
            };
        }
        ResponseFuture::Refused {
            response: Some(refusal(&request)),
        }
    }
}

/// The 401 for a request without the right token. A wrong token gets RFC 6750's
/// `error="invalid_token"`, so a client can tell a typo from a missing header.
fn refusal<B>(request: &Request<B>) -> Response<Full<Bytes>> {
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
    tracing::warn!(
        path = request.uri().path(),
        had_credentials,
        "admin request refused"
    );
    Problem::from_status(StatusCode::UNAUTHORIZED)
        .detail(detail)
        .maybe_trace_id(
            TraceContext::from_extensions(request.extensions()).map(TraceContext::trace_id),
        )
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

    async fn send(authorization: Option<&str>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let service = ServiceBuilder::new()
            .layer(AdminAuthLayer::new(AdminToken::new("s3cret")))
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
        let (status, _, body) = send(Some("Bearer s3cret")).await;
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
}
