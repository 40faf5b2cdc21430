//! Shared helpers for the DreamNet criterion benchmarks.
//!
//! Each layer's bench compares the layer against the bare service, so the figure reported
//! is the layer's own overhead per request.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

/// The bare handler every bench wraps: answers 200 with a small body.
///
/// Generic over the request body: a layer may hand its inner service another body type than
/// the one it received (the idempotency layer's `RequestBody`, for one).
pub async fn bare_handler<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

/// A plane with one cluster, `wolf-pack`, whose 3 windows (minute, hour, day) are so large
/// that no request is ever rate limited: every request takes the full admission path (all 3
/// windows checked and taken, the breaker ticket recorded, both rate-limit headers written).
pub fn unlimited_plane() -> dreamnet_control_core::ControlPlane {
    use dreamnet_control_core::{ClusterConfig, ControlConfig, ControlPlane, MAX_LIMIT};
    let cluster = ClusterConfig::per_minute_hour_day(MAX_LIMIT, MAX_LIMIT, MAX_LIMIT);
    ControlPlane::new(ControlConfig {
        clusters: [("wolf-pack".to_owned(), cluster)].into(),
        ..ControlConfig::default()
    })
}

/// A multi-threaded tokio runtime with 2 workers, as on the CI machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `future` once on this thread and returns its output.
///
/// The memory stores and the bare handler never wait, so a bench driven this way measures
/// the layer's own work without the runtime's scheduling noise.
///
/// # Panics
///
/// If the future is not ready at the first poll: the benched path waited on something.
pub fn poll_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benched service must answer at once, without waiting"),
    }
}
