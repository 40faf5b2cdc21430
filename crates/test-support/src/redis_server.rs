//! A `redis-server` process of a test's own, on a free loopback port, for fault tests that
//! stop and restart Redis (the shared 6379 is never touched).
//!
//! ```no_run
//! # async fn demo() {
//! use dreamnet_test_support::redis_server::OwnRedis;
//!
//! let Some(mut redis) = OwnRedis::start().await else { return }; // skipped (loudly)
//! let url = redis.url(); // redis://127.0.0.1:<free port>
//! redis.stop().await; // connections now fail
//! redis.restart().await; // same port again, empty
//! # let _ = url;
//! # }
//! ```

use std::{process::Stdio, time::Duration};

use tokio::process::{Child, Command};

use crate::backends::backends_required;

/// A `redis-server` this test started (no persistence, loopback only), killed on drop.
#[derive(Debug)]
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port and waits until it answers. `None` (with a loud
    /// `SKIPPED` line) when redis-server is not installed; under `DREAMNET_REQUIRE_BACKENDS=1`
    /// that panics instead, so CI never skips silently.
    pub async fn start() -> Option<Self> {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        match redis.spawn().await {
            Ok(()) => Some(redis),
            Err(why) if backends_required() => panic!("cannot start redis-server: {why}"),
            Err(why) => {
                eprintln!("SKIPPED: cannot start redis-server: {why}");
                None
            }
        }
    }

    /// The URL of this server (`redis://127.0.0.1:<port>`), stable across restarts.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process (SIGKILL, as a crash would) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop redis-server");
        }
    }

    /// Starts it again on the same port (with no data) and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await.expect("restart redis-server");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let url = self.url();
        crate::eventually("redis-server answers", Duration::from_secs(10), || {
            let url = url.clone();
            async move { ping(&url).await.ok() }
        })
        .await;
        Ok(())
    }
}

async fn ping(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut connection).await
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
