//! `dreamnet-grpc-server`: the gRPC example on `--addr` (default 127.0.0.1:50051).

use std::net::SocketAddr;

use clap::Parser;
use dreamnet_grpc_server::{serve, App, Settings};
use tracing_subscriber::EnvFilter;

/// The DreamNet gRPC example: grpc.health.v1.Health and dreamnet.mint.v1.Mint behind every
/// DreamNet layer (memory stores).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, env = "DREAMNET_GRPC_ADDR", default_value = serve::DEFAULT_ADDR)]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "dreamnet-grpc-server listening");
    let app = App::new(Settings::default()).await;
    let shutdown = async {
        // Ctrl-C stops accepting; a failed signal handler just never fires.
        let _ = tokio::signal::ctrl_c().await;
    };
    serve::serve(listener, app.service(), shutdown).await;
    Ok(())
}
