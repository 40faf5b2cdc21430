//! Serving: hyper-util's server builder (HTTP/1.1 and h2c side by side) behind a
//! connection cap, with per-connection timeouts (see `conn.rs`) and a graceful, bounded
//! shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    conn,
    edge::{EdgeConfig, EdgeMetrics},
};

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished within the grace period.
    Drained,
    /// The grace period elapsed with requests still running; they were dropped.
    GraceElapsed,
}

/// [`serve_with`] with the default [`EdgeConfig`] and fresh counters.
///
/// # Errors
/// When accepting connections fails fatally.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<Shutdown> {
    let edge = EdgeConfig::default();
    serve_with(
        listener,
        router,
        shutdown,
        grace,
        &edge,
        EdgeMetrics::default(),
    )
    .await
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, closes
/// every connection without a running request at once (idle ones and ones whose request
/// head is only half in), lets the running requests finish for at most `grace`, and
/// returns.
///
/// At most `edge.max_connections` connections are open at once: past that a new
/// connection is closed as soon as it is accepted (counted in `metrics`, logged at most
/// once per 10 s), and the open ones are served as before. Request heads must arrive within
/// `edge.header_read_timeout`, keep-alive connections close after `edge.idle_timeout`.
///
/// Requests still running when the grace period ends are dropped. The billable layer makes
/// that safe: a reservation whose handler never finished stays `pending` and is voided by the
/// sweeper (or the next start-up's recovery); one whose response was stored is `confirmed` and
/// recovery charges it exactly once.
///
/// # Errors
/// When accepting connections fails fatally.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    edge: &EdgeConfig,
    metrics: EdgeMetrics,
) -> std::io::Result<Shutdown> {
    let builder = Arc::new(conn::builder());
    let edge = Arc::new(edge.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(edge.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Over the cap: close at once (the client sees a reset or EOF, not a hang) so
            // the descriptors and memory of the open connections stay theirs.
            drop(stream);
            let refused = metrics.refused();
            let now = tokio::time::Instant::now();
            if last_refusal_log.is_none_or(|at| now - at >= Duration::from_secs(10)) {
                last_refusal_log = Some(now);
                tracing::warn!(
                    max_connections = edge.max_connections,
                    refused_total = refused,
                    "connection cap reached: new connections are closed at once"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.accepted();
        let task = conn::serve_connection(
            Arc::clone(&builder),
            stream,
            peer,
            router.clone(),
            Arc::clone(&edge),
            metrics.clone(),
            stop_rx.clone(),
        );
        let metrics = metrics.clone();
        connections.spawn(async move {
            task.await;
            metrics.closed();
            drop(slot);
        });
    }
    drop(listener);
    let running = connections.len();
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        connections = running,
        "shutdown: no longer accepting; idle connections closed, draining requests in flight"
    );
    let _ = stop_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_ok() {
        tracing::info!("shutdown: drained");
        return Ok(Shutdown::Drained);
    }
    tracing::warn!("shutdown: grace period elapsed, dropping requests still in flight");
    connections.abort_all();
    Ok(Shutdown::GraceElapsed)
}

/// An accept error: per-connection ones (the peer reset before we took it) are skipped;
/// others (out of file descriptors) pause accepting briefly instead of spinning.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled, so
/// a signal sent right after the "listening" line (as a supervisor or a test may) is never
/// lost to the default action. Call it inside the tokio runtime.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (interrupt, terminate) = handlers;
            tokio::select! {
                () = received(interrupt, "SIGINT") => tracing::info!("SIGINT received"),
                () = received(terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(%err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received");
        }
    }
}

/// Resolves when the handler installed for the signal `name` receives it; never, after
/// logging why, when it could not be installed (the other signal still stops the server).
#[cfg(unix)]
async fn received(handler: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match handler {
        Ok(mut signal) => drop(signal.recv().await),
        Err(err) => {
            tracing::error!(%err, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}
