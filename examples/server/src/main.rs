//! `dreamnet-server`: parse the command line, start logging, build the app, serve it.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use dreamnet_server::{App, Config, EdgeConfig, FileConfig, LogFormat};

/// The DreamNet example server: trace ids, kill switches, rate limits, circuit breakers,
/// idempotency and two-phase billing on real endpoints.
///
/// With no flags it serves on 127.0.0.1:5000 with in-memory stores. Give --redis-url and
/// --database-url to share state between several replicas behind a load balancer.
#[derive(Debug, Parser)]
#[command(
    name = "dreamnet-server",
    version,
    after_help = "Environment:\n  DREAMNET_ADMIN_TOKEN  Bearer token for /api/control and /api/billable, \
                  at least 16 characters (shorter: the server refuses to start). \
                  When unset, a random token is generated and printed once at start. \
                  10 failed attempts in 60 s from one address get 429 until the window ends.\n  \
                  RUST_LOG              Log filter (default: info), e.g. RUST_LOG=debug."
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "DREAMNET_ADDR", default_value = dreamnet_server::DEFAULT_ADDR)]
    addr: SocketAddr,

    /// Redis URL (e.g. redis://127.0.0.1:6379). Moves the control state, rate-limit counters and
    /// idempotency records to Redis so replicas share them. In memory when unset. With
    /// --redis-cluster: a comma-separated list of seed nodes of a Redis Cluster
    /// (redis://10.0.0.1:7001,redis://10.0.0.2:7002; one reachable node is enough to find the
    /// others, and at start every master must answer).
    #[arg(long, env = "DREAMNET_REDIS_URL")]
    redis_url: Option<String>,

    /// The --redis-url nodes form a Redis Cluster: keys are routed by hash slot, MOVED/ASK
    /// followed by the client. A master that cannot be reached fails only the requests whose
    /// keys live on it (idempotency 503; rate limits fail open, counted in /metrics).
    #[arg(long, env = "DREAMNET_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    redis_cluster: bool,

    /// Prefix of every Redis key, to let several deployments share one Redis.
    #[arg(long, env = "DREAMNET_REDIS_PREFIX", default_value = "dreamnet:")]
    redis_prefix: String,

    /// Milliseconds one Redis call may take; past it the call counts as Redis being down
    /// (keyed requests 503, rate limits fail open). Default: 2000 for idempotency records,
    /// 500 for the control plane (the admission path fails open quickly).
    #[arg(long, env = "DREAMNET_REDIS_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    redis_timeout_ms: Option<u64>,

    /// Milliseconds one billing-ledger call may take (pool wait, connect and
    /// statement_timeout included); past it a mint is 503 with Retry-After.
    #[arg(long, env = "DREAMNET_DATABASE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    database_timeout_ms: u64,

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

    /// Seconds in-flight requests may take to finish after SIGINT / SIGTERM (idle and
    /// half-sent connections are closed at once).
    #[arg(long, env = "DREAMNET_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    shutdown_timeout: u64,

    /// Seconds a client has to send a complete request head: from connecting, or from the
    /// first byte of the next request on a keep-alive connection. Cuts slowloris clients.
    #[arg(long, env = "DREAMNET_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout: u64,

    /// Seconds a keep-alive connection may sit idle between requests.
    #[arg(long, env = "DREAMNET_IDLE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,

    /// Seconds a whole request may take (head in to response head out); past it the
    /// answer is 503 problem+json.
    #[arg(long, env = "DREAMNET_REQUEST_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,

    /// Seconds a request body may take to arrive in full.
    #[arg(long, env = "DREAMNET_BODY_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout: u64,

    /// Connections open at once; over it new connections are closed at once (counted in
    /// /metrics) while the open ones keep being served. Keep it under `ulimit -n`.
    #[arg(long, env = "DREAMNET_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// The largest request body of any route, in bytes (413 problem+json above).
    #[arg(long, env = "DREAMNET_MAX_BODY_BYTES", default_value_t = dreamnet_server::MAX_BODY_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_body_bytes: u64,

    /// Export a span of every request over OTLP/HTTP protobuf to this collector base URL
    /// (`/v1/traces` is appended), e.g. http://127.0.0.1:4318. Needs a build with
    /// `--features otlp`; without it the setting is logged and ignored.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
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
        redis_cluster: cli.redis_cluster,
        redis_prefix: cli.redis_prefix,
        database_url: cli.database_url.filter(|url| !url.is_empty()),
        database_schema: cli.database_schema.filter(|s| !s.is_empty()),
        redis_timeout: cli.redis_timeout_ms.map(Duration::from_millis),
        database_timeout: Duration::from_millis(cli.database_timeout_ms),
        admin_token: std::env::var("DREAMNET_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        file,
        shutdown_grace: Duration::from_secs(cli.shutdown_timeout),
        edge: EdgeConfig {
            header_read_timeout: Duration::from_secs(cli.header_read_timeout),
            idle_timeout: Duration::from_secs(cli.idle_timeout),
            request_timeout: Duration::from_secs(cli.request_timeout),
            body_read_timeout: Duration::from_secs(cli.body_read_timeout),
            max_connections: usize::try_from(cli.max_connections).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(cli.max_body_bytes).unwrap_or(usize::MAX),
        },
        otlp_endpoint: cli.otlp_endpoint.filter(|url| !url.is_empty()),
    };
    let addr = config.addr;
    let grace = config.shutdown_grace;
    let edge = config.edge.clone();
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
    // Handlers in place before the "listening" line: a SIGTERM right after it is clean.
    let signal = dreamnet_server::signal();
    tracing::info!(addr = %local, "dreamnet-server listening");
    eprintln!("dreamnet-server listening on http://{local}");
    let router = app.router();
    let outcome =
        dreamnet_server::serve_with(listener, router, signal, grace, &edge, app.edge_metrics())
            .await;
    app.shutdown().await;
    outcome?;
    Ok(())
}
