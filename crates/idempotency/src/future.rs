//! [`ResponseFuture`], the response future of [`Idempotency`](crate::Idempotency).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use dreamnet_common::{Problem, ProblemFormat, ResponseBody};
use http::Response;
use pin_project_lite::pin_project;

pub(crate) type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency): the inner future itself
    /// for requests the layer does not guard, a ready rejection, or the boxed guarded flow
    /// (where a store round trip dominates the allocation).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Guarded { future: BoxedResponse<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    /// A rejection rendered in the request's `format` (problem+json, or gRPC trailers-only).
    pub(crate) fn rejected(problem: Problem, format: ProblemFormat) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(ResponseBody::from_full_response(problem.render(format))),
            },
        }
    }

    pub(crate) fn guarded(future: BoxedResponse<B, E>) -> Self {
        Self {
            kind: Kind::Guarded { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                future.poll(cx).map_ok(ResponseBody::from_inner_response)
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Guarded { future } => future.as_mut().poll(cx),
        }
    }
}
