//! A 3-master Redis Cluster of the test's own (no replicas), on free loopback ports, for the
//! store suites on a cluster and for fault tests that kill one master. The shared 6379 is
//! never touched, and nothing has to be started before `cargo test` (only `redis-server` on
//! the `PATH`).
//!
//! ```no_run
//! use dreamnet_test_support::redis_cluster::OwnRedisCluster;
//!
//! // One cluster per test binary, for suites that only need *a* cluster:
//! let Some(shared) = OwnRedisCluster::shared() else { return }; // skipped (loudly)
//! let seeds = shared.seeds(); // "redis://127.0.0.1:<p1>,redis://127.0.0.1:<p2>,..."
//! // A cluster of its own, for a test that kills a master:
//! let Some(mut cluster) = OwnRedisCluster::start() else { return };
//! let master = cluster.master_of("{tenant-7}:counter");
//! cluster.stop_master(master); // that slot range is now unreachable, the others serve
//! cluster.restart_master(master); // back, empty, in the cluster again
//! # let _ = seeds;
//! ```
//!
//! How: each node is `redis-server --cluster-enabled yes` (no persistence,
//! `cluster-require-full-coverage no` so a dead master takes down only its own slots, a 2 s
//! node timeout), the 16384 slots are split in three with `CLUSTER ADDSLOTSRANGE`, the nodes
//! are joined with `CLUSTER MEET`, and the helper waits for `cluster_state:ok` on every
//! node. The calls block (up to a few seconds): use them from multi-thread tokio tests.
//!
//! Each `redis-server` runs under a small `sh` watchdog that kills it (SIGKILL) when the
//! test process's pipe to it closes — on drop, or when the test binary exits, which is what
//! cleans up the [`shared`](OwnRedisCluster::shared) cluster (statics are never dropped).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use crate::{backends::backends_required, redis_server::free_port};

/// The slot ranges of the three masters (16384 slots split like `redis-cli --cluster create`).
const SLOT_RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// How long a cluster may take to form (or a restarted node to rejoin) before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A Redis Cluster of three masters this test started; every node is killed on drop.
#[derive(Debug)]
pub struct OwnRedisCluster {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    process: Option<Watched>,
}

/// A `sh` watchdog and the write end of its stdin: closing it kills the redis-server.
#[derive(Debug)]
struct Watched {
    watchdog: Child,
    pipe: ChildStdin,
}

impl OwnRedisCluster {
    /// Starts three masters and waits until the cluster is up. `None` (with a loud
    /// `SKIPPED` line) when redis-server cannot be started; under
    /// `DREAMNET_REQUIRE_BACKENDS=1` that panics instead, so CI never skips silently.
    pub fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(cluster) => Some(cluster),
            Err(why) if backends_required() => panic!("cannot start a Redis Cluster: {why}"),
            Err(why) => {
                eprintln!("SKIPPED: cannot start a Redis Cluster: {why}");
                None
            }
        }
    }

    /// One cluster for the whole test binary, started on first use (tests sharing it must
    /// use their own key prefixes). `None` as for [`start`](Self::start).
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<OwnRedisCluster>> = OnceLock::new();
        SHARED.get_or_init(Self::start).as_ref()
    }

    fn try_start() -> Result<Self, String> {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dreamnet-redis-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Self {
            nodes: Vec::with_capacity(SLOT_RANGES.len()),
        };
        for _ in SLOT_RANGES {
            let port = free_port();
            let mut node = Node {
                port,
                bus_port: free_port(),
                dir: std::env::temp_dir().join(format!("{name}-node-{port}")),
                process: None,
            };
            node.spawn()?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            node.wait_answers()?;
        }
        for (node, (first, last)) in cluster.nodes.iter().zip(SLOT_RANGES) {
            node.command::<()>(
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(first)
                    .arg(last),
            )?;
        }
        let (first, others) = cluster.nodes.split_first().expect("three nodes");
        for other in others {
            first.command::<()>(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(other.port)
                    .arg(other.bus_port),
            )?;
        }
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// The nodes' URLs (`redis://127.0.0.1:<port>`), master 0 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The seed list as `--redis-url` takes it: the URLs joined by commas.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// How many masters the cluster has (3).
    pub fn masters(&self) -> usize {
        self.nodes.len()
    }

    /// The master (index into [`urls`](Self::urls)) that owns `key`'s slot, asked of a
    /// live node with `CLUSTER KEYSLOT`.
    ///
    /// # Panics
    /// When no node answers.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .find_map(|n| {
                n.command(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
                    .ok()
            })
            .expect("a live cluster node answers CLUSTER KEYSLOT");
        SLOT_RANGES
            .iter()
            .position(|&(first, last)| (first..=last).contains(&slot))
            .expect("every slot has a master")
    }

    /// Kills master `index` (SIGKILL, as a crash would) and waits for it to exit. Its slots
    /// are unreachable until [`restart_master`](Self::restart_master); the others serve.
    pub fn stop_master(&mut self, index: usize) {
        self.nodes[index].stop(true);
    }

    /// Starts master `index` again on the same ports with its cluster configuration (node
    /// id, slots) but no data, and waits until the whole cluster reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When it does not come back within 20 s.
    pub fn restart_master(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.stop(true);
        node.spawn().expect("restart redis-server");
        node.wait_answers().expect("the restarted node answers");
        self.wait_ok().expect("the cluster is whole again");
    }

    /// Waits until every live node reports `cluster_state:ok` and knows all its peers.
    fn wait_ok(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let expected = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let all_ok = self.nodes.iter().filter(|n| n.process.is_some()).all(|n| {
                n.command::<String>(redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains(&expected))
                    && n.command::<String>(redis::cmd("CLUSTER").arg("NODES"))
                        .is_ok_and(|nodes| !nodes.contains("fail") && !nodes.contains("handshake"))
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no cluster_state:ok within {} s",
                    READY_WITHIN.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop(false);
        }
    }
}

impl Node {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server under its watchdog. The watchdog reads one line: `keep` (a stop
    /// for a restart) keeps the node's directory (its `nodes.conf`); end of file (drop, or
    /// the test process gone) removes it.
    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let dir = self.dir.display().to_string();
        let (port, bus) = (self.port.to_string(), self.bus_port.to_string());
        let script = r#"redis-server "$@" &
pid=$!
read -r what
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$what" = keep ] || rm -rf "$DREAMNET_NODE_DIR""#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("redis-cluster-node")
            .args([
                "--port",
                &port,
                "--cluster-port",
                &bus,
                "--bind",
                "127.0.0.1",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(format!("{dir}/nodes.conf"))
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", &dir])
            .arg("--logfile")
            .arg(format!("{dir}/redis.log"))
            .env("DREAMNET_NODE_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("sh: {e}"))?;
        let pipe = watchdog.stdin.take().expect("piped stdin");
        self.process = Some(Watched { watchdog, pipe });
        Ok(())
    }

    fn stop(&mut self, keep_config: bool) {
        if let Some(Watched {
            mut watchdog,
            mut pipe,
        }) = self.process.take()
        {
            if keep_config {
                let _ = pipe.write_all(b"keep\n");
            }
            drop(pipe);
            let _ = watchdog.wait();
        }
    }

    fn wait_answers(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        while self.command::<String>(&mut redis::cmd("PING")).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} does not answer (is redis-server >= 7 installed? \
                     see {}/redis.log)",
                    self.port,
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn command<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        cmd.query(&mut conn).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_share_the_slots_and_one_can_be_killed_and_restarted() {
        let Some(mut cluster) = OwnRedisCluster::start() else {
            return;
        };
        let owners: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| cluster.master_of(&format!("{{tag-{i}}}:k")))
            .collect();
        assert_eq!(owners.len(), 3, "keys spread over every master");
        let survivor = cluster.nodes[0].url();
        cluster.stop_master(1);
        assert!(cluster.nodes[1]
            .command::<String>(&mut redis::cmd("PING"))
            .is_err());
        // Slot 0 lives on master 0, which still serves ("{a}" hashes elsewhere, so use a
        // key found to be on master 0).
        let on_first = (0..)
            .map(|i| format!("{{k{i}}}"))
            .find(|k| cluster.master_of(k) == 0)
            .unwrap();
        let client = redis::Client::open(survivor).unwrap();
        let mut conn = client.get_connection().unwrap();
        let _: () = redis::cmd("SET")
            .arg(&on_first)
            .arg(1)
            .query(&mut conn)
            .unwrap();
        cluster.restart_master(1);
        let info: String = cluster.nodes[1]
            .command(redis::cmd("CLUSTER").arg("INFO"))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        let dir = cluster.nodes[1].dir.clone();
        assert!(
            dir.join("nodes.conf").exists(),
            "a restart keeps the node's identity"
        );
        drop(cluster);
        assert!(!dir.exists(), "drop removes the node's files");
    }
}
