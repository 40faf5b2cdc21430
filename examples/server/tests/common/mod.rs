//! A real server on 127.0.0.1:0 and a small HTTP/1.1 client for the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use dreamnet_server::{serve, App, Config, FileConfig, Shutdown};
use dreamnet_test_support::{backends, redis_server::OwnRedis};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

pub mod exposition;

pub const TOKEN: &str = "test-admin-token";

/// A file config whose breakers open at 50 % failures of 4 calls (at least 4), for a minute:
/// a few failed calls open one, and it stays open for the rest of a test.
pub const TOUCHY_BREAKER: &str = r#"
[control.breaker]
window_size = 4
minimum_calls = 4
failure_rate_threshold = 50.0
wait_in_open_ms = 60000
"#;

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "not JSON ({err}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a problem+json error with the given status, carrying the response's trace id.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let json = self.json();
        assert_eq!(json["status"], status);
        assert!(json["title"].is_string());
        assert!(json["type"].is_string());
        let trace = self
            .header("x-trace-id")
            .expect("X-Trace-Id on every response");
        assert_eq!(json["traceId"], trace, "problem carries the trace id");
        json
    }
}

/// Asserts that every field of the JSON object `expected` has that value in `actual`; fields
/// `expected` does not name are not looked at.
#[track_caller]
pub fn assert_fields(actual: &Value, expected: Value) {
    let Value::Object(expected) = expected else {
        panic!("expected fields must be a JSON object: {expected}");
    };
    for (field, value) in expected {
        assert_eq!(actual[&field], value, "{field} of {actual}");
    }
}

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .expect("HTTP request")
    }

    /// As [`Http::send`], but a connection that fails or is cut (the server killed) is an
    /// `Err` instead of a panic.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("response within 30 s")
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        assert!(
            reply.header("x-trace-id").is_some(),
            "every response carries X-Trace-Id: {} {path} -> {}",
            "",
            reply.status
        );
        Ok(reply)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.get_with_headers(path, &[]).await
    }

    pub async fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        self.send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    pub async fn admin_post(&self, path: &str, json: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        self.send(
            Method::POST,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Bytes::copy_from_slice(json.as_bytes()),
        )
        .await
    }

    /// Turns the global kill switch on (`disabledBy: "admin"`); the reply is the admin API's.
    pub async fn kill_switch_on(&self, reason: &str) -> Reply {
        let body = serde_json::json!({ "reason": reason, "disabledBy": "admin" });
        self.admin_post("/api/control/kill-switch/enable", &body.to_string())
            .await
    }

    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], json: &str) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(
            Method::POST,
            path,
            &all,
            Bytes::copy_from_slice(json.as_bytes()),
        )
        .await
    }
}

/// Which stores a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stores {
    /// Memory stores (no set-up).
    Memory,
    /// Redis (control, rate limits, idempotency) and PostgreSQL (ledger), with a fresh key
    /// prefix and schema per server.
    Shared,
}

impl Stores {
    /// The backend names the server reports for these stores (in metrics labels and
    /// `/readyz`): the idempotency and control stores', then the ledger's.
    pub fn backends(self) -> (&'static str, &'static str) {
        match self {
            Self::Memory => ("memory", "memory"),
            Self::Shared => ("redis", "postgres"),
        }
    }
}

/// Runs each named test once per backend, as `memory::name` and `redis_postgres::name`.
///
/// A test listed first is an `async fn name(http: &Http)` run against a server with the
/// default config ([`on_default_server`]); one listed after `own_server:` is an
/// `async fn name(stores: Stores)` that starts the server it needs itself.
#[macro_export]
macro_rules! on_every_backend {
    (@backend $module:ident, $stores:ident; $($name:ident),*; $($own:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on_default_server(
                        $crate::common::Stores::$stores,
                        super::$name,
                    )
                    .await;
                }
            )*
            $(
                #[tokio::test]
                async fn $own() {
                    super::$own($crate::common::Stores::$stores).await;
                }
            )*
        }
    };
    (own_server: $($own:ident),* $(,)?) => {
        $crate::on_every_backend!(; own_server: $($own),*);
    };
    ($($name:ident),* $(,)? $(; own_server: $($own:ident),* $(,)?)?) => {
        $crate::on_every_backend!(@backend memory, Memory; $($name),*; $($($own),*)?);
        $crate::on_every_backend!(@backend redis_postgres, Shared; $($name),*; $($($own),*)?);
    };
}

/// Runs `test` against a server on `stores` with the default config, then stops it; does
/// nothing when the backends are unreachable and not required (the skip was reported).
pub async fn on_default_server(stores: Stores, test: impl AsyncFnOnce(&Http)) {
    let Some(server) = TestServer::on(stores, Config::default()).await else {
        return;
    };
    test(&server.http).await;
    server.stop().await;
}

/// A server running in this test process on a real TCP socket.
pub struct TestServer {
    pub addr: SocketAddr,
    pub http: Http,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<Shutdown>>>,
    app: Option<App>,
    backends: Option<Backends>,
}

impl TestServer {
    /// A server on `stores` with `config` (its store URLs filled in); `None` when the
    /// backends are unreachable and not required (the skip was reported).
    pub async fn on(stores: Stores, mut config: Config) -> Option<Self> {
        let backends = match stores {
            Stores::Memory => None,
            Stores::Shared => {
                let backends = Backends::reserve().await?;
                backends.configure(&mut config);
                Some(backends)
            }
        };
        let mut server = Self::start_with(config).await;
        server.backends = backends;
        Some(server)
    }

    /// Like [`TestServer::on`], with the default config but for the file config `toml`.
    pub async fn on_file_config(stores: Stores, toml: &str) -> Option<Self> {
        let file = FileConfig::from_toml(toml).expect("a valid test file config");
        Self::on(
            stores,
            Config {
                file,
                ..Config::default()
            },
        )
        .await
    }

    /// A server whose Redis is `redis` (one of the test's own, to stop and restart) under
    /// a fresh prefix, with `config` for the rest (its ledger in memory unless it says
    /// otherwise).
    pub async fn on_own_redis(redis: &OwnRedis, config: Config) -> Self {
        Self::start_with(Config {
            redis_url: Some(redis.url()),
            redis_prefix: dreamnet_test_support::unique_prefix("own-redis"),
            ..config
        })
        .await
    }

    /// Memory stores, the test admin token.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(mut config: Config) -> Self {
        config.admin_token = Some(TOKEN.to_owned());
        let app = App::build(config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let router = app.router();
        let handle = tokio::spawn(serve(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        Self {
            addr,
            http: Http::new(addr),
            stop: Some(stop),
            handle: Some(handle),
            app: Some(app),
            backends: None,
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Shutdown {
        let _ = self.stop.take().expect("running").send(());
        let outcome = self
            .handle
            .take()
            .expect("running")
            .await
            .expect("serve task")
            .expect("serve");
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        if let Some(backends) = self.backends.take() {
            backends.drop_all().await;
        }
        outcome
    }
}

/// The `dreamnet-server` binary running as a child process.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub http: Http,
    /// Everything the process wrote to stderr before it was listening (banner lines).
    pub banner: Vec<String>,
    /// Log lines (stdout), collected in the background.
    pub logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Process {
    /// The binary on `127.0.0.1:0` with `args`, and of the environment's `DREAMNET_*`
    /// settings only `envs`.
    fn command(args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dreamnet-server"));
        command
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("DREAMNET_ADMIN_TOKEN")
            .env_remove("DREAMNET_REDIS_URL")
            .env_remove("DREAMNET_REDIS_CLUSTER")
            .env_remove("DREAMNET_DATABASE_URL")
            .env_remove("DREAMNET_CONFIG")
            .env_remove("DREAMNET_ADDR")
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied());
        command
    }

    /// Runs the binary with `args` and `envs`, which must make it refuse to start: its
    /// stderr.
    pub async fn refused_start(args: &[&str], envs: &[(&str, &str)]) -> String {
        let output = Self::command(args, envs)
            .output()
            .await
            .expect("run dreamnet-server");
        assert!(
            !output.status.success(),
            "dreamnet-server started with {args:?}"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Starts the binary with `args` and `envs` on `127.0.0.1:0`; returns once it listens.
    pub async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut command = Self::command(args, envs);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn dreamnet-server");
        let logs = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut banner = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("stderr") {
                if let Some(url) = line.strip_prefix("dreamnet-server listening on http://") {
                    return url.parse::<SocketAddr>().expect("listen address");
                }
                banner.push(line);
            }
            panic!("dreamnet-server exited before listening: {banner:?}");
        })
        .await
        .expect("dreamnet-server listens within 30 s");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr,
            http: Http::new(addr),
            banner,
            logs,
        }
    }

    /// Sends SIGTERM and waits (at most 15 s) for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits within 15 s of SIGTERM")
            .expect("exit status")
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().clone()
    }
}

/// Two replicas of the binary sharing one fresh Redis prefix and PostgreSQL schema.
pub struct ReplicaPair {
    pub a: Process,
    pub b: Process,
    backends: Backends,
}

impl ReplicaPair {
    /// Reserves the backends and starts both replicas; `None` after a loud skip.
    pub async fn start() -> Option<Self> {
        let backends = Backends::reserve().await?;
        let a = backends.replica(&[]).await;
        let b = backends.replica(&[]).await;
        Some(Self { a, b, backends })
    }

    /// Sends SIGTERM to both, asserts each exits cleanly, then drops the test's data.
    pub async fn stop(self) {
        assert!(self.a.terminate().await.success());
        assert!(self.b.terminate().await.success());
        self.backends.drop_all().await;
    }
}

/// A Redis prefix and a PostgreSQL schema for one test, cleaned up by `drop_all`.
pub struct Backends {
    pub redis_url: String,
    pub database_url: String,
    pub prefix: String,
    pub schema: String,
}

impl Backends {
    /// A fresh prefix and schema on the test backends, or `None` after a loud skip.
    pub async fn reserve() -> Option<Self> {
        backends::redis_connection().await?;
        backends::pg_pool().await?;
        Some(Self {
            redis_url: backends::redis_url(),
            database_url: backends::database_url(),
            prefix: dreamnet_test_support::unique_prefix("srv"),
            schema: dreamnet_test_support::unique_schema("srv"),
        })
    }

    /// Points an in-process server's config at these backends.
    pub fn configure(&self, config: &mut Config) {
        config.redis_url = Some(self.redis_url.clone());
        config.redis_prefix = self.prefix.clone();
        config.database_url = Some(self.database_url.clone());
        config.database_schema = Some(self.schema.clone());
    }

    pub fn args(&self) -> Vec<String> {
        self.args_on_redis(&self.redis_url)
    }

    /// The flags for these backends, but with `redis_url` (a Redis Cluster's seed list) as
    /// the Redis URL.
    pub fn args_on_redis(&self, redis_url: &str) -> Vec<String> {
        vec![
            "--redis-url".into(),
            redis_url.to_owned(),
            "--redis-prefix".into(),
            self.prefix.clone(),
            "--database-url".into(),
            self.database_url.clone(),
            "--database-schema".into(),
            self.schema.clone(),
        ]
    }

    pub async fn replica(&self, extra: &[&str]) -> Process {
        self.replica_on(&self.redis_url, extra, &[]).await
    }

    /// A replica on these backends but on `redis_url` (a Redis Cluster's seed list), with
    /// `extra` flags and `envs` besides the admin token.
    pub async fn replica_on(
        &self,
        redis_url: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let args = self.args_on_redis(redis_url);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let mut all_envs = vec![("DREAMNET_ADMIN_TOKEN", TOKEN)];
        all_envs.extend_from_slice(envs);
        Process::spawn(&all, &all_envs).await
    }

    pub async fn drop_all(self) {
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
        }
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await;
        }
    }
}

/// Sets a day limit of 10 on `whale-pack` through replica `a`, waits until `b` enforces it,
/// then sends 30 concurrent guarded GETs spread over both: the (admitted, limited) counts
/// (exactly (10, 20) when the replicas share the counters). Panics on another status.
/// POSTs `body` with `headers` to `path` through `a` (answered `status`), then again through
/// `b`: the second is a replay of the first (the idempotency record is shared by the
/// replicas). Returns the first reply's JSON.
pub async fn replays_across(
    (a, b): (&Http, &Http),
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    status: u16,
) -> Value {
    let first = a.post_json(path, headers, body).await;
    assert_eq!(first.status, status, "{}", first.text());
    let retry = b.post_json(path, headers, body).await;
    assert_eq!(retry.status, status, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json(), first.json());
    first.json()
}

pub async fn exact_day_limit_across(a: &Http, b: &Http) -> (usize, usize) {
    let set = a
        .admin_post(
            "/api/control/cluster/whale-pack/rate-limit",
            r#"{"requestsPerMinute": 1000, "requestsPerHour": 1000, "requestsPerDay": 10}"#,
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert!(
        dreamnet_test_support::holds_within(Duration::from_secs(1), || async {
            b.admin_get("/api/control/cluster/whale-pack/rate-limit")
                .await
                .json()["requestsPerDay"]
                == 10
        })
        .await,
        "the new limit reaches replica B"
    );
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let http = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { http.get("/api/whale-pack/echo").await.status.as_u16() })
        })
        .collect();
    let (mut admitted, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("the request task") {
            200 => admitted += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (admitted, limited)
}
