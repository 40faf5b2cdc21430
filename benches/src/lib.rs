//! Shared helpers for the DreamNet criterion benchmarks.
//!
//! Each layer's bench compares the layer against the bare service, so the figure reported
//! is the layer's own overhead per request.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;

/// The bare handler every bench wraps: answers 200 with a small body.
pub async fn bare_handler(
    _request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

/// A multi-threaded tokio runtime with 2 workers, as on the CI machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
