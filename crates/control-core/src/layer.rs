//! [`ControlLayer`]: guards a service with a cluster's kill switches, breaker and rate limit.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    plane::{ClusterRuntime, ControlError, ControlPlane},
    resolve::ResolveCluster,
    service::Control,
};

/// Which cluster a layer guards with.
#[derive(Clone)]
pub(crate) enum Target {
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

    /// Resolves the cluster per request (see [`ResolveCluster`] for what `None` means;
    /// [`PathSegment`](crate::PathSegment) reads it from the path).
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
        Control::new(inner, self.plane.clone(), self.target.clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn dynamic_resolution_guards_known_clusters_404s_unknown_and_passes_none() {
        let (plane, _clock) = plane(1);
        let layer = ControlLayer::dynamic(plane.clone(), |parts: &http::request::Parts| {
            let path = parts.uri.path();
            path.strip_prefix("/api/")
                .and_then(|rest| rest.split('/').next())
                .map(str::to_owned)
        });
        let svc = ServiceBuilder::new().layer(layer).service(service_fn(
            |_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            },
        ));
        let get = |path: &str| {
            let svc = svc.clone();
            let req = Request::get(path).body(Full::default()).unwrap();
            async move { svc.oneshot(req).await.unwrap() }
        };
        assert_eq!(get("/api/alpha/echo").await.status(), 200);
        assert_eq!(get("/api/alpha/echo").await.status(), 429);
        assert_eq!(get("/api/beta/echo").await.status(), 200);
        let response = get("/api/gamma/echo").await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            header_of(&response, "content-type"),
            "application/problem+json"
        );
        for _ in 0..3 {
            let response = get("/healthz").await;
            assert_eq!(response.status(), 200);
            assert!(response.headers().get("ratelimit").is_none());
        }
    }
}
