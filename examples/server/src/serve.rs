//! Serving with graceful, bounded shutdown.

use std::{future::Future, time::Duration};

use axum::Router;
use tokio::net::TcpListener;

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished within the grace period.
    Drained,
    /// The grace period elapsed with requests still running; they were dropped.
    GraceElapsed,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets the
/// requests in flight finish for at most `grace`, and returns.
///
/// Requests still running when the grace period ends are dropped. The billable layer makes
/// that safe: a reservation whose handler never finished stays `pending` and is voided by the
/// sweeper (or the next start-up's recovery); one whose response was stored is `confirmed` and
/// recovery charges it exactly once.
///
/// # Errors
/// When accepting connections fails fatally.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<Shutdown> {
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutdown: no longer accepting, draining requests in flight"
        );
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    let server = std::future::IntoFuture::into_future(server);
    let deadline = async move {
        if signalled_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            result?;
            tracing::info!("shutdown: drained");
            Ok(Shutdown::Drained)
        }
        () = deadline => {
            tracing::warn!("shutdown: grace period elapsed, dropping requests still in flight");
            Ok(Shutdown::GraceElapsed)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
