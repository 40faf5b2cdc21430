//! Pieces of an admin API on axum whose every error is problem+json with the trace id:
//! [`ApiError`], the [`JsonObject`] body and [`ApiPath`] parameter extractors, [`json`]
//! answers, and [`with_problem_fallbacks`] for unknown routes and methods.

mod error;
mod fallback;
mod json;
#[cfg(feature = "openapi")]
pub mod openapi;
mod path;

pub use error::ApiError;
pub use fallback::with_problem_fallbacks;
pub use json::{json, JsonObject, BODY_LIMIT};
pub use path::ApiPath;
