//! A TCP proxy in front of PostgreSQL that, once armed, lets one settle batch through to
//! the server and loses the reply: the server commits, the client sees its connection
//! drop. (Or, in [`Cut::BeforeSend`], drops the connection before the call reaches the
//! server, so nothing commits.) Every other connection and message is forwarded as is.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Where the armed proxy cuts the settle's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// After the server answered (`ReadyForQuery`: the implicit transaction committed),
    /// before the answer reaches the client.
    AfterCommit,
    /// Before the call is forwarded: the server never sees it.
    BeforeSend,
}

/// The SQL text that marks the prepare of a settle batch (its Bind follows).
const SETTLE_MARK: &[u8] = b"dreamnet_billable_resolve_batch(";
/// PostgreSQL's `ReadyForQuery` message head: type `Z`, length 5.
const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

/// The proxy: listening on [`addr`](Self::addr), forwarding to `upstream`.
pub struct ReplyCutter {
    addr: SocketAddr,
    armed: Arc<Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
}

impl ReplyCutter {
    /// Starts the proxy on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let armed = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (task_armed, task_cuts) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(forward(
                    client,
                    server,
                    task_armed.clone(),
                    task_cuts.clone(),
                ));
            }
        });
        Self { addr, armed, cuts }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the next settle batch (once) at `cut`.
    pub fn arm(&self, cut: Cut) {
        *self.armed.lock() = Some(cut);
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    armed: Arc<Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    // Set when this connection's settle was forwarded and its reply is to be lost.
    let losing_reply = AtomicBool::new(false);
    let upstream = async {
        let mut primed: Option<Cut> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_rx.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let chunk = &buf[..n];
            if primed.is_none() && contains(chunk, SETTLE_MARK) {
                primed = armed.lock().take();
            } else if let (Some(cut), Some(b'B')) = (primed, chunk.first()) {
                // The Bind + Execute + Sync of the prepared settle batch.
                cuts.fetch_add(1, Ordering::SeqCst);
                if cut == Cut::BeforeSend {
                    return;
                }
                losing_reply.store(true, Ordering::SeqCst);
                primed = None;
            }
            if server_tx.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut lost = Vec::new();
        loop {
            let n = server_rx.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if losing_reply.load(Ordering::SeqCst) {
                // Swallow the reply until the server says the transaction is over.
                lost.extend_from_slice(&buf[..n]);
                if contains(&lost, READY_FOR_QUERY) {
                    return;
                }
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending drops both sockets: the client sees its connection close.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
