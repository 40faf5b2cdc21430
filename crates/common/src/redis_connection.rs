//! One Redis connection type for every Redis store (feature `redis`): a single server
//! (`ConnectionManager`) or a Redis Cluster (`cluster_async::ClusterConnection`), behind the
//! same [`RedisConnection`], so a store has one code path for its scripts and commands.
//!
//! - [`RedisEndpoint`]: where Redis is — one `redis://` URL, or (cluster) a comma-separated
//!   list of seed nodes; parsing rejects a bad URL or a list without cluster mode.
//! - [`RedisConnection::lazy`]: connects on first use and reconnects by itself. On a cluster
//!   the client follows `MOVED` / `ASK` redirections itself (they never reach the store); a
//!   slot whose master cannot be reached is an error of that one command.
//! - [`LuaScript`] / [`ScriptCall`]: `EVALSHA`, and on `NOSCRIPT` an `EVAL` of the source on
//!   the node that owns the keys. Why not `redis::Script`: on a cluster its fallback is a
//!   `SCRIPT LOAD` sent to *every* master, which fails while any one master is down — so a
//!   slot on a healthy master would fail with it.
//!
//! Every script must touch keys of one slot: give all its keys the same hash tag (`{...}`).
//! A cluster refuses the script otherwise (`CROSSSLOT`).
//!
//! ```
//! use dreamnet_common::redis_connection::RedisEndpoint;
//!
//! let one = RedisEndpoint::parse("redis://127.0.0.1:6379", false).unwrap();
//! assert!(!one.is_cluster());
//! let seeds = RedisEndpoint::parse("redis://10.0.0.1:7001, redis://10.0.0.2:7002", true).unwrap();
//! assert_eq!(seeds.nodes().len(), 2);
//! // Several URLs without cluster mode is a mistake, not a silent choice of the first one.
//! assert!(RedisEndpoint::parse("redis://a:1,redis://b:2", false).is_err());
//! ```

use std::time::Duration;

/// The `redis` crate this module is built on (the version the stores use), for callers that
/// need its own types beside a [`RedisConnection`] (benchmarks comparing against it, tests).
pub use redis;
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, ToRedisArgs,
    Value,
};

/// A Redis endpoint that cannot be used, with what is wrong (never the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis endpoint: {0}")]
pub struct InvalidRedisEndpoint(String);

/// Where Redis is: one server, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    nodes: Vec<String>,
    cluster: bool,
}

impl RedisEndpoint {
    /// Parses `urls`: one `redis://` URL, or with `cluster` a comma-separated list of seed
    /// nodes (any one reachable node is enough; the client discovers the others).
    ///
    /// # Errors
    /// An empty list, an empty entry, a URL the redis client cannot read, or several URLs
    /// without `cluster`.
    pub fn parse(urls: &str, cluster: bool) -> Result<Self, InvalidRedisEndpoint> {
        let nodes: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
        if nodes.iter().any(String::is_empty) {
            return Err(InvalidRedisEndpoint(
                "an empty URL in the list (expected redis://host:port[,redis://host:port...])"
                    .to_owned(),
            ));
        }
        for (i, node) in nodes.iter().enumerate() {
            if let Err(e) = node.as_str().into_connection_info() {
                return Err(InvalidRedisEndpoint(format!(
                    "URL #{} of the list: {e}",
                    i + 1
                )));
            }
        }
        if nodes.len() > 1 && !cluster {
            return Err(InvalidRedisEndpoint(format!(
                "{} URLs given but cluster mode is off (several seed nodes need --redis-cluster)",
                nodes.len()
            )));
        }
        Ok(Self { nodes, cluster })
    }

    /// One server at `url` (not checked until the first connection).
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            nodes: vec![url.into()],
            cluster: false,
        }
    }

    /// The seed nodes of a Redis Cluster (not checked until the first connection).
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
        }
    }

    /// The URLs: the server, or the cluster's seed nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Whether the nodes form a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }
}

/// The client's time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTimeouts {
    /// How long one connection attempt may take.
    pub connection: Duration,
    /// How long one command may wait for its answer.
    pub response: Duration,
}

/// A connection to a single Redis or to a Redis Cluster; cheap to clone (clones share it).
///
/// Implements [`ConnectionLike`], so `redis::AsyncCommands` work on both kinds. Commands of
/// a pipeline must all hash to one slot on a cluster; [`is_cluster`](Self::is_cluster) lets
/// a store split one that does not.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnected by the manager.
    Single(ConnectionManager),
    /// A Redis Cluster: commands are routed by key slot, redirections followed.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// How often the cluster client re-sends one command (after `MOVED`, `ASK`, `TRYAGAIN`, a
/// dropped connection) before the error reaches the store. Small, because the store's own
/// deadline bounds the whole operation anyway.
const CLUSTER_RETRIES: u32 = 3;

/// The sockets' settings: `TCP_NODELAY`, which redis-rs leaves off. Why: the multiplexed
/// connection writes each batch of queued commands as soon as it has them, so with Nagle's
/// algorithm a batch written while the previous one is unacknowledged waits for that ACK,
/// which the server may delay (measured: a claim + complete at 2-5 ms instead of tens of us
/// under 32 concurrent requests, with client and server both mostly idle).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

impl RedisConnection {
    /// A connection that connects on first use and reconnects by itself, so a store can be
    /// built while Redis is down. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A URL the client cannot read.
    pub fn lazy(endpoint: &RedisEndpoint, timeouts: RedisTimeouts) -> RedisResult<Self> {
        if endpoint.cluster {
            let client = ClusterClientBuilder::new(endpoint.nodes.iter().map(String::as_str))
                .connection_timeout(timeouts.connection)
                .response_timeout(timeouts.response)
                // The store's deadline bounds the whole operation, redirections included.
                .overall_response_timeout(None)
                .retries(CLUSTER_RETRIES)
                .tcp_settings(tcp_settings())
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeouts.connection)
                .set_response_timeout(timeouts.response);
            Ok(Self::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        } else {
            let url = endpoint.nodes.first().map_or("", String::as_str);
            let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connection))
                .set_response_timeout(Some(timeouts.response))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Every key matching `pattern`: `SCAN` on a single server, `KEYS` on every master of a
    /// cluster (`SCAN` cannot be routed there). For tests and full resets, not hot paths.
    ///
    /// # Errors
    /// An unreachable server (or any unreachable master).
    pub async fn keys_matching(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        match self {
            Self::Single(conn) => {
                let mut iter = redis::AsyncCommands::scan_match::<_, String>(conn, pattern).await?;
                let mut keys = Vec::new();
                while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(key?);
                }
                Ok(keys)
            }
            Self::Cluster(conn) => redis::cmd("KEYS").arg(pattern).query_async(conn).await,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A Lua script, sent by hash (`EVALSHA`) and by source when a node does not know it yet.
#[derive(Debug, Clone)]
pub struct LuaScript {
    code: &'static str,
    hash: String,
}

impl LuaScript {
    /// The script `code`; its SHA-1 is computed once here.
    pub fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// The script's SHA-1, as `EVALSHA` takes it.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// A call of this script, to be given its keys and arguments.
    pub fn call(&self) -> ScriptCall<'_> {
        ScriptCall {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`LuaScript`]: its `KEYS` (all of one hash slot) and `ARGV`.
#[derive(Clone)]
pub struct ScriptCall<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ScriptCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments may carry request data: only their number is shown.
        f.debug_struct("ScriptCall")
            .field("script", &self.script.hash)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .finish()
    }
}

impl ScriptCall<'_> {
    /// Adds a key (`KEYS[n]`).
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The keys given so far.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Runs the script: `EVALSHA`, and after `NOSCRIPT` one `EVAL` of the source (routed by
    /// the keys like the first attempt, and caching the script on that node).
    ///
    /// # Errors
    /// Whatever Redis or the connection answers.
    pub async fn invoke<T: FromRedisValue>(&self, conn: &mut RedisConnection) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.script.hash)
            .query_async(conn)
            .await
        {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.code)
                    .query_async(conn)
                    .await
            }
            other => other,
        }
    }

    fn command(&self, name: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_needs_cluster_mode_and_every_entry_must_be_a_url() {
        let err = RedisEndpoint::parse("redis://a:1,redis://b:2", false).unwrap_err();
        assert!(err.to_string().contains("--redis-cluster"), "{err}");
        let err = RedisEndpoint::parse("redis://a:1,,redis://b:2", true).unwrap_err();
        assert!(err.to_string().contains("empty URL"), "{err}");
        let err = RedisEndpoint::parse("redis://a:1,http://b:2", true).unwrap_err();
        assert!(err.to_string().contains("URL #2"), "{err}");
        let one = RedisEndpoint::parse("redis://a:1", true).unwrap();
        assert!(one.is_cluster(), "one seed node is enough for a cluster");
        assert_eq!(one.nodes(), ["redis://a:1"]);
    }

    #[test]
    fn a_call_sends_keys_before_arguments_with_their_count() {
        let script = LuaScript::new("return KEYS[1]");
        let mut call = script.call();
        call.key("k1").arg(7).key("k2");
        let packed = call.command("EVALSHA", script.hash()).get_packed_command();
        let text = String::from_utf8_lossy(&packed);
        let order: Vec<&str> = text
            .split("\r\n")
            .filter(|s| !s.starts_with(['*', '$']))
            .collect();
        assert_eq!(order[..5], ["EVALSHA", script.hash(), "2", "k1", "k2"]);
        assert_eq!(order[5], "7");
        assert_eq!(script.hash().len(), 40);
    }
}
