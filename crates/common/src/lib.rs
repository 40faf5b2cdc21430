//! Small pieces shared by the DreamNet layers.
//!
//! Kept deliberately small: only code that two or more layer crates truly share lives here.
//!
//! - [`problem`]: RFC 9457 `application/problem+json` rejections.
//! - [`grpc`]: the same rejections as gRPC trailers-only responses, for gRPC requests (the one
//!   HTTP -> gRPC status mapping), and [`grpc::effective_status`] to classify gRPC outcomes.
//! - [`body`]: a response body that is either the inner service's body or a buffered one, and
//!   request-body buffering with a size limit.
//! - [`clock`]: an injectable wall clock so TTLs, windows and breakers are testable.
//! - [`account`]: [`AccountId`], the one account-id rule, and its header.
//! - [`time`]: RFC 3339 timestamps from Unix milliseconds.
//! - [`fault`]: [`StoreFault`], the response marker of a rejection caused by our own store.
//! - [`heartbeat`]: beats beside running work (lease and reservation extension).
//! - `redis_connection` (feature `redis`): one connection type over a single Redis or a
//!   Redis Cluster, for every Redis store.
//!
//! ```
//! use dreamnet_common::problem::Problem;
//! use http::StatusCode;
//!
//! let response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
//!     .detail("cluster wolf-pack is over its per-minute limit")
//!     .trace_id("mbx2k9q1-3f9a0c1e77d24b6a")
//!     .into_response();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! ```

pub mod account;
pub mod body;
pub mod clock;
mod delegate;
pub mod fault;
pub mod grpc;
pub mod heartbeat;
pub mod problem;
#[cfg(feature = "redis")]
pub mod redis_connection;
pub mod time;

pub use account::{AccountId, InvalidAccountId, ACCOUNT_ID_HEADER};
pub use body::ResponseBody;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use fault::StoreFault;
pub use grpc::{GrpcCode, ProblemFormat};
pub use problem::Problem;
