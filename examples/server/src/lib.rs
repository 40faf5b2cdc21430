//! The DreamNet example server: every DreamNet layer wired onto real endpoints.
//!
//! The binary (`cargo run -p dreamnet-server`) is a thin shell around this library: parse the
//! command line into a [`Config`], build the [`App`], [`serve`] it until SIGINT / SIGTERM.
//! Tests do the same in-process on `127.0.0.1:0`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use dreamnet_server::{serve, App, Config};
//!
//! let app = App::build(Config::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, app.router(), dreamnet_server::signal(), std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Layer order, outermost first: trace id -> HTTP metrics -> access log (tower-http
//! `TraceLayer`) -> problem+json
//! mapping -> per route: admin auth (control and billable APIs), or control(cluster) ->
//! idempotency (cluster routes) / mint validation -> billable (mints) -> handler.

mod after;
mod app;
mod billing;
mod config;
mod conn;
mod console;
mod edge;
mod handlers;
mod metrics;
mod openapi;
#[cfg(feature = "otlp")]
mod otlp;
mod problem;
mod readiness;
mod serve;
mod telemetry;

pub use app::{App, BuildError};
pub use config::{
    redact_url, AccountConfig, BillingConfig, Config, ConfigError, FileConfig, LogFormat,
    DEFAULT_ACCOUNT, DEFAULT_ADDR, DEFAULT_CURRENCY, DEFAULT_MINT_DREAM_PRICE,
    DEFAULT_MINT_TOKEN_PRICE,
};
pub use dreamnet_admin::AdminToken;
pub use edge::{EdgeConfig, EdgeMetrics};
pub use handlers::MAX_BODY_BYTES;
pub use metrics::HttpMetrics;
pub use serve::{serve, serve_with, signal, Shutdown};
pub use telemetry::init as init_tracing;
