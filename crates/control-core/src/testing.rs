//! Test fixtures: a memory plane with a fake clock and a guarded `service_fn` handler.

pub(crate) use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};

pub(crate) use bytes::Bytes;
pub(crate) use http::{Request, Response, StatusCode};
pub(crate) use http_body_util::{BodyExt, Full};
pub(crate) use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};

pub(crate) use crate::{
    BreakerConfig, BreakerState, Classification, ClusterConfig, ControlConfig, ControlLayer,
    ControlPlane, Outcome, RateLimitUpdate, WindowConfig,
};
pub(crate) use dreamnet_common::{ManualClock, ResponseBody};
pub(crate) use dreamnet_trace_id::TraceContext;

/// 2026-01-01T00:00:00Z, a whole day (so minute, hour and day windows all start here).
pub(crate) const T0: u64 = 1_767_225_600_000;

pub(crate) type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, std::io::Error>;

pub(crate) fn config(minute: u64) -> ControlConfig {
    let mut clusters = std::collections::BTreeMap::new();
    clusters.insert(
        "alpha".to_owned(),
        ClusterConfig::per_minute_hour_day(minute, 1000, 10_000),
    );
    clusters.insert(
        "beta".to_owned(),
        ClusterConfig::per_minute_hour_day(minute, 1000, 10_000),
    );
    ControlConfig {
        clusters,
        breaker: BreakerConfig::default(),
        fail_open: true,
    }
}

pub(crate) fn plane(minute: u64) -> (ControlPlane, ManualClock) {
    let clock = ManualClock::new(T0);
    let plane = ControlPlane::builder()
        .config(config(minute))
        .clock(Arc::new(clock.clone()))
        .build();
    (plane, clock)
}

/// Applies `update` to `cluster`'s rate limit as `ops`, with no reason.
pub(crate) async fn set_limit(
    plane: &ControlPlane,
    cluster: &str,
    update: RateLimitUpdate,
) -> crate::views::RateLimitView {
    plane
        .set_rate_limit(cluster, &update, "ops", None)
        .await
        .expect("a valid rate-limit update")
}

/// A handler answering with the status in `status` (shared so tests can change it).
pub(crate) fn guarded(plane: &ControlPlane, cluster: &str, status: Arc<AtomicU16>) -> Svc {
    let service = ServiceBuilder::new()
        .layer(plane.layer(cluster))
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let status = status.load(Ordering::SeqCst);
            async move {
                if status == 0 {
                    return Err(std::io::Error::other("inner failure"));
                }
                let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(response)
            }
        }));
    BoxCloneService::new(service)
}

pub(crate) fn ok_status() -> Arc<AtomicU16> {
    Arc::new(AtomicU16::new(200))
}

pub(crate) fn send(
    svc: &Svc,
) -> impl std::future::Future<Output = Response<ResponseBody<Full<Bytes>>>> + Send {
    let svc = svc.clone();
    async move { svc.oneshot(Request::new(Full::default())).await.unwrap() }
}

pub(crate) async fn json(response: Response<ResponseBody<Full<Bytes>>>) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

pub(crate) fn header(response: &Response<ResponseBody<Full<Bytes>>>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

pub(crate) fn header_of<B>(response: &Response<B>, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}
