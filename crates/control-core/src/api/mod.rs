//! The control HTTP API as an axum [`Router`] (feature `axum`), built once by [`router`].
//!
//! Routes are relative to the mount point; the server nests the router once, behind its
//! admin auth (e.g. `dreamnet_admin::AdminAuthLayer`): the API itself checks no credentials.
//!
//! | method, path | body | success |
//! |---|---|---|
//! | `GET /` | | 200 [`ControlView`](crate::views::ControlView) |
//! | `GET /kill-switch` | | 200 [`KillSwitchView`](crate::views::KillSwitchView) |
//! | `POST /kill-switch/enable` | `{reason, disabledBy?, ttlSeconds?}` (reason required) | 200 kill switch |
//! | `POST /kill-switch/disable` | `{reason?, disabledBy?}` or empty | 200 kill switch |
//! | `GET /cluster/{id}` | | 200 [`ClusterView`](crate::views::ClusterView) |
//! | `POST /cluster/{id}/disable` | `{reason, disabledBy?, ttlSeconds?}` (reason required) | 200 cluster |
//! | `POST /cluster/{id}/enable` | `{reason?, disabledBy?}` or empty | 200 cluster |
//! | `GET /cluster/{id}/rate-limit` | | 200 [`RateLimitView`](crate::views::RateLimitView) |
//! | `POST /cluster/{id}/rate-limit` | `{requestsPerMinute?, requestsPerHour?, requestsPerDay?, requestsPerSecond?, enabled?, windows?, reason?, disabledBy?}` | 200 rate limit |
//! | `GET /cluster/{id}/circuit-breaker` | | 200 [`BreakerView`](crate::views::BreakerView) |
//! | `POST /cluster/{id}/circuit-breaker/trip` / `reset` | `{reason?, disabledBy?}` or empty | 200 breaker |
//! | `GET /audit?limit=100&cluster=id` | | 200 `[...]`: the entries, newest first |
//! | `GET /metrics` | | 200 [`MetricsSnapshot`](crate::views::MetricsSnapshot) |
//!
//! Errors are problem+json with the trace id: 400 (malformed JSON, a non-object body, wrong
//! types, negative or non-integer limits, unknown fields, missing reason), 404 (unknown
//! path or cluster), 405 (wrong method, with `Allow`), 413 (body over 64 KiB), 503 (store
//! unreachable; nothing changed). A refused request changes nothing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use dreamnet_control_core::{api, ControlPlane};
//! use tower::ServiceExt;
//!
//! let plane = ControlPlane::builder().build();
//! let app = axum::Router::new().nest("/api/control", api::router(plane.clone()));
//! let request = http::Request::post("/api/control/cluster/wolf-pack/disable")
//!     .body(axum::body::Body::from(r#"{"reason":"Rate limit exceeded","disabledBy":"system"}"#))
//!     .unwrap();
//! assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
//! assert!(!plane.cluster("wolf-pack").unwrap().enabled);
//! # }
//! ```

mod bodies;
#[cfg(feature = "openapi")]
mod doc;
mod handlers;

use axum::{
    routing::{get, post},
    Router,
};
use dreamnet_admin::api::with_problem_fallbacks;

use crate::ControlPlane;
#[cfg(feature = "openapi")]
pub use doc::ApiDoc;

/// The control API over `plane`, with routes relative to where it is mounted.
pub fn router(plane: ControlPlane) -> Router {
    let routes = Router::new()
        .route("/", get(handlers::overview))
        .route("/kill-switch", get(handlers::kill_switch))
        .route("/kill-switch/enable", post(handlers::engage_kill_switch))
        .route("/kill-switch/disable", post(handlers::release_kill_switch))
        .route("/cluster/{id}", get(handlers::cluster))
        .route("/cluster/{id}/disable", post(handlers::disable_cluster))
        .route("/cluster/{id}/enable", post(handlers::enable_cluster))
        .route(
            "/cluster/{id}/rate-limit",
            get(handlers::rate_limit).post(handlers::set_rate_limit),
        )
        .route("/cluster/{id}/circuit-breaker", get(handlers::breaker))
        .route(
            "/cluster/{id}/circuit-breaker/trip",
            post(handlers::trip_breaker),
        )
        .route(
            "/cluster/{id}/circuit-breaker/reset",
            post(handlers::reset_breaker),
        )
        .route("/audit", get(handlers::audit))
        .route("/metrics", get(handlers::metrics));
    with_problem_fallbacks(routes).with_state(plane)
}

#[cfg(test)]
mod tests;
