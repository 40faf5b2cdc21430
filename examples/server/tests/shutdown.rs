//! Graceful shutdown over a real socket: in-flight requests finish, new connections are
//! refused, and the grace period bounds the wait.

mod common;

use std::time::Duration;

use common::TestServer;
use dreamnet_server::{serve, App, Config, Shutdown};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends the head of a POST whose body is not complete yet: the request is in flight.
async fn start_slow_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/wolf-pack/echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    stream
}

async fn wait_until_refused(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn in_flight_request_finishes_after_the_signal() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut stream = start_slow_request(addr).await;
    // Make sure the server has read the head (the handler is now waiting for the body).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(server.stop());
    wait_until_refused(addr).await;
    stream.write_all(b"\"ok\"}").await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""body":{"a":"ok"}"#), "{response}");
    assert_eq!(stopping.await.unwrap(), Shutdown::Drained);
}

#[tokio::test]
async fn grace_period_bounds_the_wait() {
    let config = Config {
        admin_token: Some("shutdown-test-token".to_owned()),
        ..Config::default()
    };
    let app = App::build(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(serve(
        listener,
        app.router(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_millis(300),
    ));
    let _stuck = start_slow_request(addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("serve returns within the grace period")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Shutdown::GraceElapsed);
    assert!(started.elapsed() >= Duration::from_millis(300));
    app.shutdown().await;
}
