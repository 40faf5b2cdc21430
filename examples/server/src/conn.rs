//! One connection's life at the edge: the socket wrapped to notice the first byte of each
//! request ([`WatchedIo`]), the requests running on it ([`Activity`]), and the watchdog that
//! closes it when a request head is late, when it idles too long, or at shutdown when no
//! request is running.
//!
//! The watchdog is a lazy timer: requests only store timestamps in atomics and never wake
//! it (an earlier version notified it twice per request, which re-armed a tokio timer and
//! re-polled the connection each time). It wakes at the earliest deadline it knows of, and
//! at least once per the shorter of the header and idle timeouts, so a head or an idle spell
//! that began since its last look is still seen before its deadline: each close happens at
//! its exact deadline, as before.
//!
//! Why not hyper's own `header_read_timeout` and hyper-util's `GracefulShutdown`: hyper-util's
//! auto (HTTP/1.1 + h2c) connection has no timer while it reads the first bytes to pick
//! the protocol, so a peer that sends nothing is held forever; hyper's h1 timeout does not
//! separate "idle between requests" from "slow head"; and a graceful shutdown of an h1
//! connection whose request head is only half in waits for that request (hyper#2730).
//! Tracking "is a request running?" ourselves gives each case its own rule.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::Instant,
};
use tower::ServiceExt;

use crate::edge::{EdgeConfig, EdgeMetrics};

/// What the watchdog needs to know about a connection. Times are milliseconds since
/// `epoch`; `pending` is 0 when no byte of a next request has arrived yet (else ms + 1).
struct Activity {
    epoch: Instant,
    running: AtomicUsize,
    served: AtomicUsize,
    idle_since: AtomicU64,
    pending: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            running: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes arrived while no request runs: the head of the next request has begun.
    fn bytes_read(&self) {
        if self.running.load(Ordering::Acquire) == 0 && self.pending.load(Ordering::Acquire) == 0 {
            self.pending.store(self.now_ms() + 1, Ordering::Release);
        }
    }

    /// A request head is complete and its handler runs (until the response body is sent).
    fn begin(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        self.pending.store(0, Ordering::Release);
        Running(Arc::clone(self))
    }
}

/// A running request; dropped when hyper is done with its response body.
struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.served.fetch_add(1, Ordering::Relaxed);
        if activity.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .idle_since
                .store(activity.now_ms(), Ordering::Release);
            activity.pending.store(0, Ordering::Release);
        }
    }
}

/// The TCP stream, reporting reads to the connection's [`Activity`] (`Unpin`, like the
/// stream, so no pin projection is needed).
struct WatchedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The hyper-util builder: HTTP/1.1 with keep-alive, and HTTP/2 with prior knowledge (h2c,
/// no `Upgrade`). Timeouts are the watchdog's, not hyper's (see the module docs).
pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).header_read_timeout(None);
    builder
}

/// Why the watchdog closed a connection.
enum Closed {
    Finished,
    HeaderTimeout,
    IdleTimeout,
    Shutdown,
}

/// Serves one connection until the client closes it, a timeout closes it, or shutdown
/// (at once when no request runs; after the running ones otherwise).
pub(crate) async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    edge: Arc<EdgeConfig>,
    metrics: EdgeMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let running = activity.begin();
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await?;
                // The request counts as running until hyper has sent the whole body.
                Ok::<_, Infallible>(response.map(move |body| {
                    body.map_frame(move |frame| {
                        let _still_running = &running;
                        frame
                    })
                }))
            }
        })
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let watchdog = tokio::time::sleep_until(next_look(&activity, &edge, Instant::now()));
    tokio::pin!(watchdog);
    let mut draining = false;
    let mut server_gone = false;
    let closed = loop {
        if (server_gone || *shutdown.borrow()) && !draining {
            if activity.running.load(Ordering::Acquire) == 0 {
                break Closed::Shutdown;
            }
            // Finish the running requests, take no new one (h2: GOAWAY); hyper closes
            // the connection after the last response.
            connection.as_mut().graceful_shutdown();
            draining = true;
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break Closed::Finished;
            }
            () = watchdog.as_mut() => {
                let now = Instant::now();
                if let Some((_, why)) = deadline(&activity, &edge).filter(|(at, _)| *at <= now) {
                    break why;
                }
                watchdog.as_mut().reset(next_look(&activity, &edge, now));
            }
            changed = shutdown.changed(), if !draining && !server_gone => {
                server_gone = changed.is_err();
            }
        }
    };
    match closed {
        Closed::HeaderTimeout => {
            metrics.header_timeout();
            tracing::debug!(%peer, "closed: the request head did not arrive in time");
        }
        Closed::IdleTimeout => metrics.idle_timeout(),
        Closed::Finished | Closed::Shutdown => {}
    }
}

/// When the watchdog looks next: at the connection's deadline, but no later than the shorter
/// of the header and idle timeouts from `now`, since a request head or an idle spell may
/// begin meanwhile without telling it (see the module docs). At least 10 ms apart, so a zero
/// timeout from a library caller cannot make it spin while a request runs.
fn next_look(activity: &Activity, edge: &EdgeConfig, now: Instant) -> Instant {
    let every = edge
        .header_read_timeout
        .min(edge.idle_timeout)
        .max(Duration::from_millis(10));
    let latest = now + every;
    deadline(activity, edge).map_or(latest, |(at, _)| at.min(latest))
}

/// When the connection must be closed if nothing changes, and why; `None` while a request
/// runs (the request timeout and body deadline bound it then).
fn deadline(activity: &Activity, edge: &EdgeConfig) -> Option<(Instant, Closed)> {
    if activity.running.load(Ordering::Acquire) > 0 {
        return None;
    }
    let pending = activity.pending.load(Ordering::Acquire);
    if pending > 0 {
        let at = activity.at(pending - 1) + edge.header_read_timeout;
        return Some((at, Closed::HeaderTimeout));
    }
    let since = activity.at(activity.idle_since.load(Ordering::Acquire));
    if activity.served.load(Ordering::Relaxed) == 0 {
        // A new connection owes its first request head within the header timeout.
        Some((since + edge.header_read_timeout, Closed::HeaderTimeout))
    } else {
        Some((since + edge.idle_timeout, Closed::IdleTimeout))
    }
}
