//! A `redis-server` of the test's own on a free loopback port, started and stopped by the
//! test by its pid (the shared 6379 is never touched).

use std::time::Duration;

use tokio::process::{Child, Command};

/// A free loopback port (bound then released: nobody listens on it afterwards).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A running `redis-server` (no persistence), killed on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Child,
}

impl OwnRedis {
    /// Starts `redis-server` on `port` and waits until it answers `PING`; `None` after a
    /// loud skip when it is not installed and backends are not required.
    pub async fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else {
            assert!(
                !dreamnet_test_support::backends::backends_required(),
                "redis-server is not installed"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return None;
        };
        let url = format!("redis://127.0.0.1:{port}");
        dreamnet_test_support::eventually("redis-server answers", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            }
        })
        .await;
        Some(Self { port, child })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its port is dead afterwards) and reaps it.
    pub async fn stop(mut self) {
        self.child.kill().await.expect("stop redis-server");
    }
}
