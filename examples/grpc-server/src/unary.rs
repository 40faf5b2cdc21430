//! Making a unary gRPC response storable by the idempotency and billing layers, and putting
//! it back on the wire as the gRPC spec wants it.
//!
//! Those layers keep (and replay) a response's status, allow-listed headers and whole body,
//! and only a body whose exact size is known; they keep no trailers. A tonic unary response
//! is a streamed body (no exact size) whose `grpc-status` comes in the trailers, so as is it
//! would be neither kept nor charged (the layers void the hold and release the key).
//!
//! - [`KeepWhole`] (inside the layers, around the tonic service) reads the unary response
//!   whole and lifts `grpc-status` / `grpc-message` / `grpc-status-details-bin` from its
//!   trailers into its headers: a buffered body of exact size the layers can keep and replay.
//! - [`RestoreTrailers`] (outside the layers) moves those three back into trailers whenever a
//!   response has them in its headers *and* a body, so the client sees a standard response
//!   (headers, message, trailers), the first time and on every replay. A trailers-only
//!   response (empty body: every rejection, every handler error) goes out untouched.
//!
//! Only for unary methods: a streaming response is never read whole, so mount [`KeepWhole`]
//! on unary services only. Trailing metadata other than the three status fields becomes
//! initial metadata.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::grpc::{GRPC_MESSAGE, GRPC_STATUS};
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use http_body_util::{combinators::WithTrailers, BodyExt, Full};
use tonic::Status;

/// The status-details trailer (a binary `google.rpc.Status`).
pub static GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// The headers that belong in trailers and travel in the headers while buffered.
fn status_fields() -> [&'static HeaderName; 3] {
    [&GRPC_STATUS, &GRPC_MESSAGE, &GRPC_STATUS_DETAILS]
}

/// The headers the layers must store and replay for a buffered gRPC response.
pub fn replayed_headers() -> Vec<HeaderName> {
    vec![
        http::header::CONTENT_TYPE,
        GRPC_STATUS.clone(),
        GRPC_MESSAGE.clone(),
        GRPC_STATUS_DETAILS.clone(),
    ]
}

/// Reads a unary gRPC response whole, its status trailers lifted into the headers.
#[derive(Debug, Clone)]
pub struct KeepWhole<S> {
    inner: S,
}

impl<S> KeepWhole<S> {
    /// Wraps a unary gRPC service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for KeepWhole<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>, Error = Infallible>,
    S::Future: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: std::fmt::Display,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = future.await;
            let (mut parts, body) = response.into_parts();
            let collected = match body.collect().await {
                Ok(collected) => collected,
                Err(err) => {
                    let status = Status::internal(format!("the response body failed: {err}"));
                    return Ok(status.into_http());
                }
            };
            if let Some(trailers) = collected.trailers() {
                for name in status_fields() {
                    if let Some(value) = trailers.get(name) {
                        parts.headers.insert(name.clone(), value.clone());
                    }
                }
            }
            Ok(Response::from_parts(parts, Full::new(collected.to_bytes())))
        })
    }
}

/// The trailers of a restored response: ready at once.
type ReadyTrailers<E> = std::future::Ready<Option<Result<HeaderMap, E>>>;

/// The body [`RestoreTrailers`] answers with: the inner body, then the restored trailers.
pub type RestoredBody<B> = WithTrailers<B, ReadyTrailers<<B as Body>::Error>>;

/// Moves status fields that travel in the headers of a response with a body back into its
/// trailers (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RestoreTrailers<S> {
    inner: S,
}

impl<S> RestoreTrailers<S> {
    /// Wraps the service whose responses may carry lifted status fields.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for RestoreTrailers<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<RestoredBody<ResB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let (mut parts, body) = future.await?.into_parts();
            let mut trailers = HeaderMap::new();
            if parts.headers.contains_key(&GRPC_STATUS) && !body.is_end_stream() {
                for name in status_fields() {
                    if let Some(value) = parts.headers.remove(name) {
                        trailers.insert(name.clone(), value);
                    }
                }
            }
            let trailers = (!trailers.is_empty()).then_some(Ok(trailers));
            let body = body.with_trailers(std::future::ready(trailers));
            Ok(Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tower::{service_fn, ServiceExt};

    fn trailers(code: &'static str, message: &'static str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS.clone(), HeaderValue::from_static(code));
        trailers.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(message));
        trailers
    }

    #[tokio::test]
    async fn keep_whole_reads_the_body_and_lifts_the_status_trailers() {
        let inner = service_fn(|_req: Request<()>| async {
            let body = Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))
                .with_trailers(std::future::ready(Some(Ok(trailers("0", "ok")))));
            Ok::<_, Infallible>(Response::new(body))
        });
        let response = KeepWhole::new(inner)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.headers()[&GRPC_STATUS], "0");
        assert_eq!(response.headers()[&GRPC_MESSAGE], "ok");
        assert_eq!(response.body().size_hint().exact(), Some(7), "storable");
    }

    #[tokio::test]
    async fn restore_puts_the_status_fields_back_into_trailers() {
        let inner = service_fn(|_req: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")));
            response.headers_mut().extend(trailers("0", "ok"));
            Ok::<_, Infallible>(response)
        });
        let response = RestoreTrailers::new(inner)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert!(response.headers().get(&GRPC_STATUS).is_none());
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers[&GRPC_STATUS], "0");
        assert_eq!(trailers[&GRPC_MESSAGE], "ok");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x02hi"));
    }

    #[tokio::test]
    async fn a_trailers_only_response_goes_out_untouched() {
        let inner = service_fn(|_req: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::new()));
            response
                .headers_mut()
                .extend(trailers("8", "Too Many Requests"));
            Ok::<_, Infallible>(response)
        });
        let response = RestoreTrailers::new(inner)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.headers()[&GRPC_STATUS], "8");
        let collected = response.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_none());
    }
}
