//! Kill switches, multi-window rate limits and circuit breakers as a tower layer, with an
//! audit trail, memory or Redis state, and (feature `axum`) the control HTTP API.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use dreamnet_control_core::ControlPlane;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! # use http_body_util::Full; use bytes::Bytes;
//!
//! let plane = ControlPlane::builder().build(); // the seed's 12 clusters, memory store
//! let handler = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let guarded = ServiceBuilder::new().layer(plane.layer("wolf-pack")).service(handler);
//!
//! // An operator disables the cluster (through the plane here; over HTTP with the API)...
//! plane.disable_cluster("wolf-pack", "Rate limit exceeded", "system", None).await.unwrap();
//!
//! // ...and its guarded routes answer 503.
//! let response = guarded.oneshot(http::Request::new(Full::default())).await.unwrap();
//! assert_eq!(response.status(), 503);
//! # }
//! ```
//!
//! The crate is a decision core and an HTTP edge:
//! - [`ControlPlane`] decides ([`ControlPlane::decide`] gives a [`Decision`]: a [`Permit`]
//!   or a [`Rejection`], plain data) and changes state; it never builds a response;
//! - [`ControlLayer`] / [`Control`] / [`ResponseFuture`] turn decisions into HTTP:
//!   problem+json rejections, `Retry-After`, `RateLimit-Policy` and `RateLimit`;
//! - state lives in a [`CounterStore`] and a [`StateStore`] ([`MemoryStore`] or, with
//!   feature `redis`, `RedisStore`, implementing both); the types a store implementor needs
//!   are in [`store`], the JSON shapes in [`views`];
//! - feature `axum`: `api::router`, the control API as an axum `Router`;
//!   feature `conformance`: the store behaviour suites, for outside backends.
//!
//! Semantics (see the crate README for the full table):
//! - checks run in order: global kill switch (503), cluster disabled (503), breaker (503),
//!   rate limit (429); control, health and metrics routes are simply not wrapped;
//! - rate limits: fixed windows aligned to the epoch (why: [`store`]); all windows admit or
//!   nothing is taken; `Retry-After` >= 1 s; a cluster may add per-client windows
//!   ([`PerClientLimits`], the client named by a [`ClientKey`] policy), checked in the same
//!   atomic decision and reported as `client-<window>`;
//! - breakers: resilience4j's state machine;
//! - a change made through one plane is enforced by every plane on the same Redis within
//!   one refresh interval (250 ms), usually on the next request.

#[cfg(feature = "axum")]
pub mod api;
mod breaker;
mod client_key;
mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod future;
mod layer;
mod plane;
mod render;
mod resolve;
mod service;
pub mod store;
pub mod views;
mod window;

#[cfg(test)]
mod testing;

pub use breaker::{BreakerState, Classification, ClassifyFailure, Outcome, ServerErrors};
pub use client_key::{ClientKey, DefaultClientKey, ANONYMOUS_CLIENT};
pub use config::{
    BreakerConfig, BreakerOverrides, ClusterConfig, ConfigError, ControlConfig, PerClientLimits,
    SlidingWindow, WindowConfig, MAX_CLIENT_LIMIT, MAX_CLIENT_WINDOWS, MAX_LIMIT, SEED_CLUSTERS,
};
pub use future::ResponseFuture;
pub use layer::ControlLayer;
pub use plane::{
    ControlError, ControlPlane, ControlPlaneBuilder, Decision, PerClientUpdate, Permit,
    RateLimitStatus, RateLimitUpdate, RejectReason, Rejection, DEFAULT_REFRESH_INTERVAL,
};
pub use render::{RATELIMIT, RATELIMIT_POLICY};
pub use resolve::{PathSegment, ResolveCluster};
pub use service::Control;
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::{
    BreakerOp, BreakerStore, ClientQuota, CounterStore, FleetReply, FleetTicket, OutcomeBatch,
    StateStore, StoreError,
};
