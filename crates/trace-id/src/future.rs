//! [`ResponseFuture`] of the [`TraceId`](crate::TraceId) service.

use crate::scope::Scoped;
use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

pin_project! {
    /// Response future of [`TraceId`](crate::TraceId): polls the inner future inside the
    /// request's `tracing` span and with its [`TraceContext`](crate::TraceContext) as
    /// [`TraceContext::current`](crate::TraceContext::current), then sets the trace id
    /// header on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Scoped<F>,
        header: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: Scoped<F>, name: HeaderName, value: HeaderValue) -> Self {
        Self {
            inner,
            header: Some((name, value)),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some((name, value)) = this.header.take() {
            // Whatever the inner service answered, including another layer's rejection,
            // carries the request's trace id (and only ours).
            response.headers_mut().insert(name, value);
        }
        Poll::Ready(Ok(response))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}
