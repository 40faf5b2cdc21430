//! [`AfterLayer`]: a middleware that looks at each response of the service it wraps, with
//! no allocation when the response passes as it is.
//!
//! The server's own middleware (the metrics, the problem+json rewrite, the route tag) needs
//! something of the request, then the response, and only on rare error responses an `await`
//! (reading a small body). `axum::middleware::from_fn` would box the inner service and the
//! future on every request (about a dozen allocations per request for the three of them,
//! callgrind); here the common case is a plain function call and only the rare slow path
//! boxes.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

/// What an [`AfterLayer`] does around each request.
pub(crate) trait After: Clone + Send + Sync + 'static {
    /// What it keeps of the request before the inner service takes it.
    type Seed: Send + 'static;

    /// Reads what the response will need from the request.
    fn seed<B>(&self, request: &http::Request<B>) -> Self::Seed;

    /// The response, as it is or changed, at once; or a future for the rare case that needs
    /// waiting (an error body to read).
    fn after(&self, seed: Self::Seed, response: Response) -> Then;
}

/// The outcome of [`After::after`].
pub(crate) enum Then {
    /// The final response, at once (no allocation).
    Done(Response),
    /// The final response needs an `await` (boxed: the slow path only).
    Later(BoxFuture<'static, Response>),
}

/// Wraps a service in an [`After`].
#[derive(Clone, Copy)]
pub(crate) struct AfterLayer<A> {
    after: A,
}

impl<A> AfterLayer<A> {
    /// A layer running `after` around every request.
    pub(crate) fn new(after: A) -> Self {
        Self { after }
    }
}

impl<S, A: Clone> Layer<S> for AfterLayer<A> {
    type Service = AfterService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AfterService {
            inner,
            after: self.after.clone(),
        }
    }
}

/// The service of an [`AfterLayer`].
#[derive(Clone)]
pub(crate) struct AfterService<S, A> {
    inner: S,
    after: A,
}

impl<S, A, B> Service<http::Request<B>> for AfterService<S, A>
where
    S: Service<http::Request<B>, Error = Infallible>,
    S::Response: IntoResponse,
    A: After,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AfterFuture<S::Future, A>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let seed = self.after.seed(&request);
        AfterFuture {
            state: State::Inner {
                future: self.inner.call(request),
                seed: Some(seed),
                after: self.after.clone(),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`AfterService`].
    pub(crate) struct AfterFuture<F, A: After> {
        #[pin]
        state: State<F, A>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, A: After> {
        Inner { #[pin] future: F, seed: Option<A::Seed>, after: A },
        Later { future: BoxFuture<'static, Response> },
    }
}

impl<F, R, A> Future for AfterFuture<F, A>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
    A: After,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner {
                    future,
                    seed,
                    after,
                } => {
                    let Ok(response) = ready!(future.poll(cx));
                    let seed = seed.take().expect("polled after completion");
                    match after.after(seed, response.into_response()) {
                        Then::Done(response) => return Poll::Ready(Ok(response)),
                        Then::Later(future) => state.set(State::Later { future }),
                    }
                }
                StateProj::Later { future } => return future.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use axum::body::Body;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceExt};

    use super::*;

    /// Keeps the request path; answers 2xx as they are and rewrites errors later.
    #[derive(Clone, Default)]
    struct Probe {
        later: Arc<AtomicUsize>,
    }

    impl After for Probe {
        type Seed = String;

        fn seed<B>(&self, request: &http::Request<B>) -> String {
            request.uri().path().to_owned()
        }

        fn after(&self, path: String, response: Response) -> Then {
            if response.status().is_success() {
                return Then::Done(response);
            }
            self.later.fetch_add(1, Ordering::SeqCst);
            Then::Later(Box::pin(async move {
                tokio::task::yield_now().await;
                (response.status(), format!("failed: {path}")).into_response()
            }))
        }
    }

    async fn call(probe: &Probe, status: StatusCode) -> (StatusCode, String) {
        let inner = service_fn(move |_: http::Request<Body>| async move {
            Ok::<_, Infallible>((status, "inner"))
        });
        let response = AfterLayer::new(probe.clone())
            .layer(inner)
            .oneshot(http::Request::get("/p").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_passing_response_is_returned_as_it_is() {
        let probe = Probe::default();
        assert_eq!(
            call(&probe, StatusCode::OK).await,
            (StatusCode::OK, "inner".to_owned())
        );
        assert_eq!(probe.later.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_slow_path_sees_the_seed_and_its_future_is_awaited() {
        let probe = Probe::default();
        assert_eq!(
            call(&probe, StatusCode::NOT_FOUND).await,
            (StatusCode::NOT_FOUND, "failed: /p".to_owned())
        );
        assert_eq!(probe.later.load(Ordering::SeqCst), 1);
    }
}
