//! The control plane: global and per-cluster kill switches, multi-window rate limits and
//! circuit breakers as a tower layer, with an audit trail, a control HTTP API and memory or
//! Redis state.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use dreamnet_control_core::{ControlApi, ControlPlane};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! # use http_body_util::Full; use bytes::Bytes;
//!
//! let plane = ControlPlane::builder().build(); // the seed's 12 clusters, memory store
//! let handler = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let guarded = ServiceBuilder::new().layer(plane.layer("wolf-pack")).service(handler);
//!
//! // An operator disables the cluster through the control API...
//! let api = ControlApi::new(plane.clone()).strip_prefix("/api/control");
//! let request = http::Request::post("/api/control/cluster/wolf-pack/disable")
//!     .body(Full::new(Bytes::from(r#"{"reason":"Rate limit exceeded","disabledBy":"system"}"#)))
//!     .unwrap();
//! assert_eq!(api.oneshot(request).await.unwrap().status(), 200);
//!
//! // ...and its guarded routes answer 503.
//! let response = guarded.oneshot(http::Request::new(Full::default())).await.unwrap();
//! assert_eq!(response.status(), 503);
//! # }
//! ```
//!
//! Semantics (see the crate README for the full table):
//! - checks run in order: global kill switch (503), cluster disabled (503), breaker (503),
//!   rate limit (429); control, health and metrics routes are simply not wrapped;
//! - rate limits: fixed windows aligned to the epoch (why: [`window`]); all windows admit or
//!   nothing is taken; `RateLimit-Policy` / `RateLimit` headers; `Retry-After` >= 1 s;
//! - breakers: resilience4j's state machine ([`breaker`]);
//! - state: [`ControlStore`] ([`MemoryStore`] or, with feature `redis`, `RedisStore`); a
//!   change made through one plane is enforced by every plane on the same Redis within
//!   one refresh interval (250 ms), usually on the next request.

mod api;
pub mod breaker;
pub mod config;
mod layer;
mod plane;
pub mod state;
pub mod store;
pub mod time;
pub mod window;

pub use api::{AllowAll, Authorize, BearerToken, ControlApi};
pub use breaker::{BreakerState, ClassifyFailure, Outcome, ServerErrors};
pub use config::{
    BreakerConfig, BreakerOverrides, ClusterConfig, ControlConfig, SlidingWindow, WindowConfig,
};
pub use layer::{Control, ControlLayer, ResolveCluster, ResponseFuture};
pub use plane::{
    BreakerView, ClusterMetrics, ClusterView, ControlError, ControlPlane, ControlPlaneBuilder,
    ControlView, KillSwitchView, MetricsSnapshot, Permit, RateLimitUpdate, RateLimitView,
    RejectReason, Rejection, Rejections, UsageView, WindowUsage, DEFAULT_REFRESH_INTERVAL,
    RATELIMIT, RATELIMIT_POLICY,
};
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::{memory::MemoryStore, ControlStore, StoreError};
