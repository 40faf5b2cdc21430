//! [`ControlLayer`]: guards a service with a cluster's kill switches, breaker and rate limit.

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{request::Parts, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    breaker::Outcome,
    plane::{Admission, CallGuard, ClusterRuntime, ControlError, ControlPlane},
};
use dreamnet_common::{Problem, ResponseBody};
use dreamnet_trace_id::TraceContext;

/// Maps a request to the cluster that guards it (for [`ControlLayer::dynamic`]).
///
/// `None` means the request belongs to no cluster and passes through unguarded (health
/// checks, the control API itself); `Some(id)` of an unknown cluster is answered with 404.
pub trait ResolveCluster: Send + Sync + 'static {
    /// The cluster id for this request.
    fn resolve(&self, parts: &Parts) -> Option<String>;
}

impl<F> ResolveCluster for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn resolve(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

#[derive(Clone)]
enum Target {
    Static(Arc<ClusterRuntime>),
    Dynamic(Arc<dyn ResolveCluster>),
}

/// Applies the control plane to a service, for one cluster or one resolved per request.
///
/// Checks, in order: global kill switch (503), cluster disabled (503), breaker (503), rate
/// limit (429). Rejections are `application/problem+json` with the request's trace id;
/// responses the rate limiter judged carry `RateLimit-Policy` and `RateLimit`, and a 429
/// carries `Retry-After` (whole seconds, rounded up, at least 1).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dreamnet_control_core::ControlPlane;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// # use http_body_util::Full; use bytes::Bytes;
///
/// let plane = ControlPlane::builder().build();
/// let service = ServiceBuilder::new()
///     .layer(plane.layer("wolf-pack"))
///     .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
///     }));
/// let response = service.oneshot(http::Request::new(Full::default())).await.unwrap();
/// assert_eq!(response.status(), 200);
/// let ratelimit = response.headers()["ratelimit"].to_str().unwrap();
/// assert!(ratelimit.starts_with("\"minute\";r=59;t="), "{ratelimit}");
/// assert!(response.headers().contains_key("ratelimit-policy"));
/// # }
/// ```
#[derive(Clone)]
pub struct ControlLayer {
    plane: ControlPlane,
    target: Target,
}

impl fmt::Debug for ControlLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Static(rt) => rt.id.to_string(),
            Target::Dynamic(_) => "<per request>".to_owned(),
        };
        f.debug_struct("ControlLayer")
            .field("cluster", &target)
            .finish()
    }
}

impl ControlLayer {
    /// Guards with one cluster.
    ///
    /// # Panics
    /// When the plane has no such cluster (use [`ControlLayer::try_new`] to handle it).
    pub fn new(plane: ControlPlane, cluster: &str) -> Self {
        match Self::try_new(plane, cluster) {
            Ok(layer) => layer,
            Err(e) => panic!("{e}"),
        }
    }

    /// Guards with one cluster.
    ///
    /// # Errors
    /// [`ControlError::UnknownCluster`].
    pub fn try_new(plane: ControlPlane, cluster: &str) -> Result<Self, ControlError> {
        let rt = plane
            .runtime(cluster)
            .cloned()
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))?;
        Ok(Self {
            plane,
            target: Target::Static(rt),
        })
    }

    /// Resolves the cluster per request (see [`ResolveCluster`] for what `None` means).
    pub fn dynamic(plane: ControlPlane, resolver: impl ResolveCluster) -> Self {
        Self {
            plane,
            target: Target::Dynamic(Arc::new(resolver)),
        }
    }
}

impl ControlPlane {
    /// A layer guarding with `cluster`.
    ///
    /// # Panics
    /// When there is no such cluster.
    pub fn layer(&self, cluster: &str) -> ControlLayer {
        ControlLayer::new(self.clone(), cluster)
    }
}

impl<S> Layer<S> for ControlLayer {
    type Service = Control<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Control {
            inner,
            plane: self.plane.clone(),
            target: self.target.clone(),
        }
    }
}

/// The service [`ControlLayer`] produces.
#[derive(Clone)]
pub struct Control<S> {
    inner: S,
    plane: ControlPlane,
    target: Target,
}

impl<S: fmt::Debug> fmt::Debug for Control<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

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
        let trace_id = req
            .extensions()
            .get::<TraceContext>()
            .map(|t| t.trace_id().to_owned());
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
                    let problem = Problem::new(StatusCode::NOT_FOUND, "Not Found")
                        .detail(format!("unknown cluster {id:?}"))
                        .maybe_trace_id(trace_id);
                    return ResponseFuture::ready(problem.into_response());
                };
                (Arc::clone(rt), req)
            }
        };
        match self.plane.admit(&rt, trace_id.as_deref()) {
            Admission::Rejected(rejection) => ResponseFuture::ready(rejection.into_response()),
            Admission::Admitted(guard) => ResponseFuture::inner(self.inner.call(req), Some(guard)),
            Admission::Pending(decision) => {
                // The inner service moves into the future: keep the one that is ready.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                let future: BoxedResponse<ResBody, S::Error> = Box::pin(async move {
                    match decision.await {
                        Err(rejection) => {
                            Ok(ResponseBody::from_full_response(rejection.into_response()))
                        }
                        Ok(guard) => Ok(finish(Some(guard), inner.call(req).await)?),
                    }
                });
                ResponseFuture {
                    kind: Kind::Boxed { future },
                }
            }
        }
    }
}

fn finish<B, E>(
    guard: Option<CallGuard>,
    result: Result<Response<B>, E>,
) -> Result<Response<ResponseBody<B>>, E> {
    match result {
        Ok(mut response) => {
            if let Some(mut guard) = guard {
                guard.decorate(response.headers_mut());
                guard.finish(Outcome::Status(response.status()));
            }
            Ok(ResponseBody::from_inner_response(response))
        }
        Err(error) => {
            if let Some(guard) = guard {
                guard.finish(Outcome::Error);
            }
            Err(error)
        }
    }
}

pin_project! {
    /// The response future of [`Control`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Ready { response: Option<Response<ResponseBody<B>>> },
        Inner { #[pin] future: F, guard: Option<CallGuard> },
        Boxed { future: BoxedResponse<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn ready(response: Response<http_body_util::Full<bytes::Bytes>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(ResponseBody::from_full_response(response)),
            },
        }
    }

    fn inner(future: F, guard: Option<CallGuard>) -> Self {
        Self {
            kind: Kind::Inner { future, guard },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Inner { future, guard } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(finish(guard.take(), result))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
