//! The client-side CPU of the Redis path, in process and without HTTP: 32 concurrent tasks
//! (as the load example's 32 clients) drive one of three workloads against one Redis, and
//! each run prints the process's CPU time (user + system, from `/proc/self/stat`) per
//! operation next to the wall-clock rate. Modes, interleaved round by round (A B C A B C):
//!
//! - `raw`: a plain redis-rs `MultiplexedConnection` sending `EVALSHA` of a trivial script
//!   (one key, one argument): the floor of the client library;
//! - `lua`: the same script through `dreamnet_common`'s `LuaScript::invoke` on a
//!   `RedisConnection` built as the stores build theirs (connection manager, timeouts);
//! - `idem`: `dreamnet_idempotency::RedisStore` claim of a fresh key + complete (two round
//!   trips per operation, as a keyed request makes).
//!
//! ```text
//! cargo run --release -p dreamnet-benches --example redis_path
//! DREAMNET_REDIS_PATH_OPS=50000 DREAMNET_REDIS_PATH_ROUNDS=3 DREAMNET_REDIS_PATH_MODES=raw,lua,idem \
//!     cargo run --release -p dreamnet-benches --example redis_path
//! ```
//!
//! Instructions per operation with callgrind: run one mode at two operation counts and
//! divide the difference of the totals by the difference of the counts (setup cancels):
//!
//! ```text
//! for n in 2000 4000; do DREAMNET_REDIS_PATH_MODES=idem DREAMNET_REDIS_PATH_OPS=$n \
//!   DREAMNET_REDIS_PATH_ROUNDS=1 valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!   target/release/examples/redis_path; done
//! ```
//!
//! `DREAMNET_REDIS_URL` picks the server (default `redis://127.0.0.1:6379`); keys live under
//! a fresh prefix and expire by themselves.
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dreamnet_common::redis_connection::{
    redis, LuaScript, RedisConnection, RedisEndpoint, RedisTimeouts,
};
use dreamnet_idempotency::{
    store::{ClaimRequest, Completion, Fingerprint, StoredResponse},
    IdempotencyStore, RedisStore,
};

/// Concurrent tasks (the load example's clients).
const TASKS: usize = 32;

/// The trivial script of `raw` and `lua`.
const TRIVIAL: &str = "return ARGV[1]";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU of this process, from `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

#[derive(Clone)]
enum Mode {
    Raw(redis::aio::MultiplexedConnection, Arc<String>),
    Lua(RedisConnection, Arc<LuaScript>),
    Idem(RedisStore, Arc<StoredResponse>),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::Raw(..) => "raw",
            Self::Lua(..) => "lua",
            Self::Idem(..) => "idem",
        }
    }

    async fn op(&mut self, prefix: &str, n: usize) {
        match self {
            Self::Raw(conn, sha) => {
                let v: String = redis::cmd("EVALSHA")
                    .arg(sha.as_str())
                    .arg(1)
                    .arg(format!("{prefix}raw:{n}"))
                    .arg(n)
                    .query_async(conn)
                    .await
                    .expect("raw EVALSHA");
                assert_eq!(v, n.to_string());
            }
            Self::Lua(conn, script) => {
                let v: String = script
                    .call()
                    .key(format!("{prefix}lua:{n}"))
                    .arg(n)
                    .invoke(conn)
                    .await
                    .expect("LuaScript::invoke");
                assert_eq!(v, n.to_string());
            }
            Self::Idem(store, response) => {
                let key = format!("k{n}");
                let fingerprint = Fingerprint::from_hex(format!("{n:064x}"));
                let claim = store
                    .claim(ClaimRequest {
                        scope: "bench",
                        key: &key,
                        fingerprint: &fingerprint,
                        trace_id: Some("mbx2k9q1-3f9a0c1e77d24b6a"),
                        lease: Duration::from_secs(30),
                    })
                    .await
                    .expect("claim");
                let dreamnet_idempotency::store::Claim::Proceed(token) = claim else {
                    panic!("a fresh key must proceed: {claim:?}");
                };
                let done = store
                    .complete("bench", &key, token, response, Duration::from_secs(60))
                    .await
                    .expect("complete");
                assert_eq!(done, Completion::Stored);
            }
        }
    }
}

/// Runs `ops` operations over [`TASKS`] tasks; returns (CPU per op, wall ops/s).
async fn run(mode: &Mode, prefix: &str, ops: usize, base: usize) -> (Duration, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let mut mode = mode.clone();
        let next = Arc::clone(&next);
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops {
                    break;
                }
                mode.op(&prefix, base + n).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    (
        cpu / u32::try_from(ops).expect("ops"),
        ops as f64 / wall.as_secs_f64(),
    )
}

fn main() {
    let url =
        std::env::var("DREAMNET_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let ops = env_or("DREAMNET_REDIS_PATH_OPS", 30_000);
    let rounds = env_or("DREAMNET_REDIS_PATH_ROUNDS", 3);
    let wanted =
        std::env::var("DREAMNET_REDIS_PATH_MODES").unwrap_or_else(|_| "raw,lua,idem".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("dreamnet-redis-path-{nanos}:");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut modes = Vec::new();
        for name in wanted.split(',') {
            modes.push(match name.trim() {
                "raw" => {
                    let client = redis::Client::open(url.as_str()).expect("url");
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("connect");
                    let sha: String = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(TRIVIAL)
                        .query_async(&mut conn)
                        .await
                        .expect("SCRIPT LOAD");
                    Mode::Raw(conn, Arc::new(sha))
                }
                "lua" => {
                    let timeouts = RedisTimeouts {
                        connection: Duration::from_secs(1),
                        response: Duration::from_secs(1),
                    };
                    let conn = RedisConnection::lazy(&RedisEndpoint::single(url.as_str()), timeouts)
                        .expect("connection");
                    Mode::Lua(conn, Arc::new(LuaScript::new(TRIVIAL)))
                }
                "idem" => {
                    let store = RedisStore::builder(&url)
                        .prefix(prefix.clone())
                        .connect()
                        .await
                        .expect("store");
                    let response = StoredResponse::decode(
                        &StoredResponse::capture(
                            &http::Response::builder()
                                .status(201)
                                .header("content-type", "application/json")
                                .body(())
                                .expect("response")
                                .into_parts()
                                .0,
                            bytes::Bytes::from_static(br#"{"cluster":"load","method":"POST","traceId":"mbx2k9q1-3f9a0c1e77d24b6a","body":"{}"}"#),
                            &[http::header::CONTENT_TYPE],
                        )
                        .encode(),
                    )
                    .expect("round trip");
                    Mode::Idem(store, Arc::new(response))
                }
                other => panic!("unknown mode {other:?} (raw, lua, idem)"),
            });
        }
        // Warm up: connections made, scripts cached on the server.
        for mode in &modes {
            run(mode, &prefix, 200, usize::MAX / 2).await;
        }
        println!("{TASKS} tasks, {ops} ops per run, {rounds} rounds; CPU = user+system of this process");
        let mut base = 0;
        let mut results: Vec<Vec<(Duration, f64)>> = vec![Vec::new(); modes.len()];
        for round in 1..=rounds {
            for (i, mode) in modes.iter().enumerate() {
                let (cpu, rate) = run(mode, &prefix, ops, base).await;
                base += ops;
                println!(
                    "round {round} {:<5} {:>7.2} us CPU/op {:>9.0} ops/s",
                    mode.name(),
                    cpu.as_secs_f64() * 1e6,
                    rate
                );
                results[i].push((cpu, rate));
            }
        }
        for (i, mode) in modes.iter().enumerate() {
            let mut cpus: Vec<f64> = results[i].iter().map(|r| r.0.as_secs_f64() * 1e6).collect();
            cpus.sort_by(f64::total_cmp);
            let mut rates: Vec<f64> = results[i].iter().map(|r| r.1).collect();
            rates.sort_by(f64::total_cmp);
            println!(
                "median {:<5} {:>7.2} us CPU/op ({:.2}-{:.2}) {:>9.0} ops/s",
                mode.name(),
                cpus[cpus.len() / 2],
                cpus[0],
                cpus[cpus.len() - 1],
                rates[rates.len() / 2]
            );
        }
    });
}
