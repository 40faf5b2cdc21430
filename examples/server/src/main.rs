//! `dreamnet-server`: parse the command line, start logging, build the app, serve it.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use dreamnet_server::{App, Config, FileConfig, LogFormat};

/// The DreamNet example server: trace ids, kill switches, rate limits, circuit breakers,
/// idempotency and two-phase billing on real endpoints.
///
/// With no flags it serves on 127.0.0.1:5000 with in-memory stores. Give --redis-url and
/// --database-url to share state between several replicas behind a load balancer.
#[derive(Debug, Parser)]
#[command(
    name = "dreamnet-server",
    version,
    after_help = "Environment:\n  DREAMNET_ADMIN_TOKEN  Bearer token for /api/control and /api/billable. \
                  When unset, a random token is generated and printed once at start.\n  \
                  RUST_LOG              Log filter (default: info), e.g. RUST_LOG=debug."
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "DREAMNET_ADDR", default_value = dreamnet_server::DEFAULT_ADDR)]
    addr: SocketAddr,

    /// Redis URL (e.g. redis://127.0.0.1:6379). Moves the control state, rate-limit counters and
    /// idempotency records to Redis so replicas share them. In memory when unset.
    #[arg(long, env = "DREAMNET_REDIS_URL")]
    redis_url: Option<String>,

    /// Prefix of every Redis key, to let several deployments share one Redis.
    #[arg(long, env = "DREAMNET_REDIS_PREFIX", default_value = "dreamnet:")]
    redis_prefix: String,

    /// PostgreSQL URL (e.g. postgres://postgres@127.0.0.1:5432/dreamnet). Moves the billing
    /// ledger to PostgreSQL (durable, shared by replicas). In memory when unset.
    #[arg(long, env = "DREAMNET_DATABASE_URL")]
    database_url: Option<String>,

    /// PostgreSQL schema of the ledger tables (created if missing).
    #[arg(long, env = "DREAMNET_DATABASE_SCHEMA")]
    database_schema: Option<String>,

    /// TOML file with clusters and rate limits, breaker settings, prices per billable action
    /// and account credit lines (see examples/server/README.md). Built-in defaults otherwise.
    #[arg(long, env = "DREAMNET_CONFIG")]
    config: Option<PathBuf>,

    /// Log format: "text" (human-readable) or "json" (one object per line, with trace ids).
    #[arg(long, env = "DREAMNET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    /// Seconds in-flight requests may take to finish after SIGINT / SIGTERM.
    #[arg(long, env = "DREAMNET_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    shutdown_timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = dreamnet_server::init_tracing(cli.log_format) {
        eprintln!("dreamnet-server: cannot start logging: {err}");
        return ExitCode::FAILURE;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "dreamnet-server failed");
            eprintln!("dreamnet-server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = Config {
        addr: cli.addr,
        redis_url: cli.redis_url.filter(|url| !url.is_empty()),
        redis_prefix: cli.redis_prefix,
        database_url: cli.database_url.filter(|url| !url.is_empty()),
        database_schema: cli.database_schema.filter(|s| !s.is_empty()),
        admin_token: std::env::var("DREAMNET_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        file,
        shutdown_grace: Duration::from_secs(cli.shutdown_timeout),
    };
    let addr = config.addr;
    let grace = config.shutdown_grace;
    let app = App::build(config).await?;
    if app.token_generated() {
        // Printed once, to the terminal only: never through the log pipeline.
        eprintln!(
            "dreamnet-server: DREAMNET_ADMIN_TOKEN is not set; generated admin token (shown once):\n\n    export DREAMNET_ADMIN_TOKEN={}\n",
            app.admin_token()
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "dreamnet-server listening");
    eprintln!("dreamnet-server listening on http://{local}");
    let router = app.router();
    let outcome = dreamnet_server::serve(listener, router, dreamnet_server::signal(), grace).await;
    app.shutdown().await;
    outcome?;
    Ok(())
}
