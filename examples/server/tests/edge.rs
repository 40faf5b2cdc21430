//! The edge over real TCP: header and idle timeouts, the connection cap, the body deadline,
//! shutdown with half-sent requests, h2c, and admin brute-force throttling.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::Process;
use dreamnet_server::{serve_with, App, Config, EdgeConfig, EdgeMetrics, Shutdown};
use dreamnet_test_support::eventually;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

const TOKEN: &str = "edge-test-admin-token";

struct Server {
    addr: SocketAddr,
    metrics: EdgeMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<Shutdown>>,
}

impl Server {
    async fn start(edge: EdgeConfig, grace: Duration) -> Self {
        let config = Config {
            admin_token: Some(TOKEN.to_owned()),
            edge: edge.clone(),
            ..Config::default()
        };
        let app = App::build(config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = app.edge_metrics();
        let router = app.router();
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.await;
            };
            serve_with(listener, router, signal, grace, &edge, app.edge_metrics()).await
        });
        Self {
            addr,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown; resolves when `serve_with` returns.
    async fn stop(mut self) -> Shutdown {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap()
    }
}

fn edge(header_secs: u64) -> EdgeConfig {
    EdgeConfig {
        header_read_timeout: Duration::from_secs(header_secs),
        idle_timeout: Duration::from_secs(2),
        ..EdgeConfig::default()
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive stream.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return text;
            }
        }
    }
}

async fn get(stream: &mut TcpStream, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

async fn healthz_on_a_fresh_connection(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let response = get(&mut stream, "/healthz", "").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Whether the server closed `stream` (EOF or reset), waiting at most `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slowloris_and_idle_connections_are_closed_while_healthz_answers() {
    let server = Server::start(edge(1), Duration::from_secs(5)).await;
    let addr = server.addr;
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.unwrap());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost").await.unwrap();
        slow.push(s);
    }
    // A keep-alive client that was served once, then idles: closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut idle, "/healthz", "")
        .await
        .starts_with("HTTP/1.1 200"));
    let started = tokio::time::Instant::now();
    // Meanwhile everyone else is served on fresh connections.
    for _ in 0..5 {
        healthz_on_a_fresh_connection(addr).await;
    }
    // The slowloris keeps trickling a header byte: still cut at the header timeout.
    let trickler = tokio::spawn({
        let mut s = slow.pop().unwrap();
        async move {
            for _ in 0..10 {
                if s.write_all(b"x").await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            closed_within(&mut s, Duration::from_millis(10)).await
        }
    });
    for s in silent.iter_mut().chain(slow.iter_mut()) {
        assert!(closed_within(s, Duration::from_secs(3)).await, "not closed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(trickler.await.unwrap(), "the trickling client was not cut");
    healthz_on_a_fresh_connection(addr).await;
    assert!(server.metrics.header_timeouts_total() >= 80);
    assert!(closed_within(&mut idle, Duration::from_secs(4)).await);
    assert!(server.metrics.idle_timeouts_total() >= 1);
    assert_eq!(server.stop().await, Shutdown::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_new_connections_are_closed_while_open_ones_are_served() {
    let server = Server::start(
        EdgeConfig {
            max_connections: 4,
            ..EdgeConfig::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let addr = server.addr;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut s, "/healthz", "")
            .await
            .starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)).await,
            "a connection over the cap was served"
        );
    }
    assert_eq!(server.metrics.refused_total(), 3);
    for s in &mut open {
        for _ in 0..3 {
            assert!(get(s, "/healthz", "").await.starts_with("HTTP/1.1 200"));
        }
    }
    // One leaves: a new client gets its slot.
    drop(open.pop());
    eventually("a slot frees up", Duration::from_secs(5), || async {
        (server.metrics.open() < 4).then_some(())
    })
    .await;
    healthz_on_a_fresh_connection(addr).await;
    drop(open);
    assert_eq!(server.stop().await, Shutdown::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_at_the_body_timeout() {
    let server = Server::start(
        EdgeConfig {
            body_read_timeout: Duration::from_secs(1),
            ..EdgeConfig::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/wolf-pack/echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = read_response(&mut stream).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let status: u16 = response[9..12].parse().unwrap();
    assert!((400..500).contains(&status), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-trace-id"),
        "{response}"
    );
    assert_eq!(server.stop().await, Shutdown::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_half_sent_connections_at_once() {
    let server = Server::start(EdgeConfig::default(), Duration::from_secs(20)).await;
    let addr = server.addr;
    let mut half_sent = TcpStream::connect(addr).await.unwrap();
    half_sent
        .write_all(b"POST /api/wolf-pack/echo HTTP/1.1\r\nhost: x\r\ncontent-le")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut idle, "/healthz", "")
        .await
        .starts_with("HTTP/1.1 200"));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    eventually("3 connections open", Duration::from_secs(5), || async {
        (server.metrics.open() == 3).then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(server.stop().await, Shutdown::Drained);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?} of a 20 s grace",
        started.elapsed()
    );
    for s in [&mut half_sent, &mut idle, &mut silent] {
        assert!(closed_within(s, Duration::from_secs(1)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served_beside_http1() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let server = Server::start(EdgeConfig::default(), Duration::from_secs(5)).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{}/healthz", server.addr).parse().unwrap();
    let response = client.get(uri).await.expect("h2c request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-trace-id"));
    let _ = response.into_body().collect().await.unwrap();
    drop(client);
    assert_eq!(server.stop().await, Shutdown::Drained);
}

/// A keep-alive connection from a chosen loopback address (127.0.0.x are all local).
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((ip, 0)))
        .expect("bind a loopback source address");
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_brute_force_is_throttled_per_address() {
    let server = Server::start(EdgeConfig::default(), Duration::from_secs(5)).await;
    let addr = server.addr;
    let mut attacker = connect_from([127, 0, 0, 1], addr).await;
    for i in 0..10 {
        let response = get(
            &mut attacker,
            "/api/control",
            &format!("authorization: Bearer guess-{i}\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    }
    let response = get(
        &mut attacker,
        "/api/control",
        "authorization: Bearer guess-10\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    let lower = response.to_ascii_lowercase();
    let retry_after: u64 = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(lower.contains("application/problem+json"));
    assert!(lower.contains("x-trace-id"));
    // A fresh connection from the same address is still throttled, right token or not.
    let mut again = connect_from([127, 0, 0, 1], addr).await;
    let right = format!("authorization: Bearer {TOKEN}\r\n");
    assert!(get(&mut again, "/api/control", &right)
        .await
        .starts_with("HTTP/1.1 429"));
    // The operator on another address is not.
    let mut operator = connect_from([127, 0, 0, 2], addr).await;
    let response = get(&mut operator, "/api/control", &right).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let metrics = get(&mut operator, "/metrics", "").await;
    assert!(
        metrics.contains("dreamnet_admin_auth_throttled_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dreamnet_admin_auth_failures_total 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dreamnet_edge_connections_open "),
        "{metrics}"
    );
    drop((attacker, again, operator));
    assert_eq!(server.stop().await, Shutdown::Drained);
}

#[tokio::test]
async fn a_short_admin_token_refuses_to_start() {
    let config = Config {
        admin_token: Some("s3cret".to_owned()),
        ..Config::default()
    };
    let error = App::build(config).await.expect_err("a 6-character token");
    let message = error.to_string();
    assert!(
        message.contains("DREAMNET_ADMIN_TOKEN") && message.contains("16"),
        "{message}"
    );

    let stderr = Process::refused_start(&[], &[("DREAMNET_ADMIN_TOKEN", "s3cret")]).await;
    assert!(stderr.contains("at least 16"), "{stderr}");
}
