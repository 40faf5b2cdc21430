//! The admin HTTP kit shared by the DreamNet admin APIs (`dreamnet-control-core`'s and
//! `dreamnet-billable`'s routers): one bearer-token auth layer and axum extractors whose
//! rejections are RFC 9457 problem+json with the request's trace id.
//!
//! A server mounts every admin API once, behind one [`AdminAuthLayer`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use axum::{routing::post, Router};
//! use dreamnet_admin::{api::{json, with_problem_fallbacks, ApiError, JsonObject}, AdminAuthLayer, AdminToken};
//! use tower::ServiceExt;
//!
//! #[derive(serde::Deserialize)]
//! struct Credit { amount: u64 }
//!
//! let api = with_problem_fallbacks(Router::new().route(
//!     "/credit",
//!     post(|JsonObject(credit): JsonObject<Credit>| async move {
//!         Ok::<_, ApiError>(json(&serde_json::json!({ "credited": credit.amount })))
//!     }),
//! ));
//! let app = Router::new()
//!     .nest("/api/admin", api)
//!     .layer(AdminAuthLayer::new(AdminToken::new("correct-horse-battery-staple")));
//!
//! let request = |auth: &str, body: &'static str| {
//!     http::Request::post("/api/admin/credit")
//!         .header("authorization", auth)
//!         .body(axum::body::Body::from(body))
//!         .unwrap()
//! };
//! let ok = app.clone().oneshot(request("Bearer correct-horse-battery-staple", r#"{"amount":5}"#)).await.unwrap();
//! assert_eq!(ok.status(), 200);
//! let refused = app.clone().oneshot(request("Bearer wrong", r#"{"amount":5}"#)).await.unwrap();
//! assert_eq!(refused.status(), 401);
//! let array = app.oneshot(request("Bearer correct-horse-battery-staple", "[5]")).await.unwrap();
//! assert_eq!(array.status(), 400);
//! assert_eq!(array.headers()["content-type"], "application/problem+json");
//! # }
//! ```

pub mod api;
mod auth;
pub mod throttle;
mod token;

pub use auth::{AdminAuth, AdminAuthLayer, ResponseFuture};
pub use throttle::{AuthThrottle, AuthThrottleBuilder};
pub use token::{AdminToken, WeakToken, MIN_TOKEN_LEN};
