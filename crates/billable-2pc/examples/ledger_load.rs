//! Load on the PostgreSQL ledger through the layer, and the same machine's per-commit
//! ceiling measured in the same run, so the ratio is read at once.
//!
//! `cargo run --release -p dreamnet-billable --features postgres --example ledger_load --
//! --clients 32 --accounts 1 --seconds 10` (`--writers N`: batches of a kind in flight;
//! `--combined 1`: one writer for both kinds, `0`: one per kind) (server from `DREAMNET_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! 1. the ceiling: `clients` connections doing `UPDATE t SET n = n + 1 WHERE id = 1` in
//!    autocommit for `seconds` (one hot row), then the same spread over 64 rows;
//! 2. `clients` tasks minting through [`BillableLayer`] on a [`PostgresLedger`] (fresh key
//!    each, account `i % accounts`), printing charged mints/s, p50/p99 and commits per mint
//!    (`pg_stat_database.xact_commit` before and after: other sessions on the server count
//!    too, so it is an upper bound);
//! 3. where the time goes: CPU seconds per mint of this process (client, layer, ledger) and
//!    of the ledger's PostgreSQL backends (found by their `application_name`, read from
//!    `/proc/<pid>/stat`: the server must run on this machine), steadier than the rate on a
//!    shared machine.
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use deadpool_postgres::Pool;
use dreamnet_billable::{ledger::postgres::pool_for, BillableLayer, PostgresLedger};
use dreamnet_idempotency::RequestBody;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};

struct Args {
    clients: usize,
    accounts: usize,
    seconds: u64,
    /// Batches of one kind in flight at once (`PostgresLedgerBuilder::batch_writers`).
    writers: usize,
    /// One writer for both kinds (`PostgresLedgerBuilder::combined_batches`).
    combined: bool,
}

fn args() -> Args {
    let mut args = Args {
        clients: 32,
        accounts: 1,
        seconds: 10,
        writers: dreamnet_billable::ledger::postgres::DEFAULT_WRITERS,
        combined: dreamnet_billable::ledger::postgres::DEFAULT_COMBINED,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number after the flag");
        match flag.as_str() {
            "--clients" => args.clients = value,
            "--accounts" => args.accounts = value,
            "--seconds" => args.seconds = value as u64,
            "--writers" => args.writers = value,
            "--combined" => args.combined = value != 0,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn pool(size: usize) -> Pool {
    pool_at(&dreamnet_test_support::database_url(), size)
}

fn pool_at(url: &str, size: usize) -> Pool {
    let pool = pool_for(url).expect("pool");
    pool.resize(size);
    pool
}

/// User + system CPU seconds of process `pid` (`/proc/<pid>/stat` fields 14 and 15, in
/// clock ticks of 1/100 s on Linux), 0 when it cannot be read.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds, per pid, of the backends named `application` (the ledger's connections).
async fn backend_cpu(admin: &Pool, application: &str) -> std::collections::HashMap<i32, f64> {
    let client = admin.get().await.expect("connection");
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|row| {
            let pid: i32 = row.get(0);
            (pid, cpu_seconds(&pid.to_string()))
        })
        .collect()
}

async fn commits(pool: &Pool) -> i64 {
    let client = pool.get().await.expect("connection");
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database")
        .get(0)
}

/// `clients` connections doing single-row UPDATEs in autocommit; rows 1..=`rows`.
async fn ceiling(pool: &Pool, table: &str, clients: usize, rows: i32, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (pool, done, sql) = (
                pool.clone(),
                done.clone(),
                format!("UPDATE {table} SET n = n + 1 WHERE id = $1"),
            );
            tokio::spawn(async move {
                let client = pool.get().await.expect("connection");
                let st = client.prepare(&sql).await.expect("prepare");
                let mut i = i32::try_from(c).unwrap_or(0);
                while Instant::now() < until {
                    i = i.wrapping_add(7);
                    let id = i.rem_euclid(rows) + 1;
                    client.execute(&st, &[&id]).await.expect("update");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

#[tokio::main]
async fn main() {
    let args = args();
    let admin = pool(args.clients + 2);
    let table = format!("t_ceiling_{:016x}", rand::random::<u64>());
    admin
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
             INSERT INTO {table} (id) SELECT generate_series(1, 64);"
        ))
        .await
        .expect("ceiling table");
    let hot = ceiling(&admin, &table, args.clients, 1, args.seconds).await;
    let spread = ceiling(&admin, &table, args.clients, 64, args.seconds).await;

    let schema = format!("t_bill_load_{:016x}", rand::random::<u64>());
    let application = schema.clone();
    let url = dreamnet_test_support::database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let ledger_url = format!("{url}{separator}application_name={application}");
    let ledger = Arc::new(
        PostgresLedger::builder(pool_at(&ledger_url, 8))
            .schema(schema.clone())
            .batch_writers(args.writers)
            .combined_batches(args.combined)
            .build()
            .await
            .expect("ledger"),
    );
    let svc = ServiceBuilder::new()
        .layer(BillableLayer::with_shared_ledger(
            ledger.clone(),
            "mint-dream",
            1,
        ))
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"minted",
                ))))
            },
        ));
    let before = commits(&admin).await;
    let backends_before = backend_cpu(&admin, &application).await;
    let client_before = cpu_seconds("self");
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let svc = svc.clone();
            let account = format!("acct-load-{}", c % args.accounts.max(1));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let request = Request::post("/api/mint-dream")
                        .header("idempotency-key", format!("load-{c}-{n}"))
                        .header("x-account-id", account.as_str())
                        .body(Full::new(Bytes::from_static(b"{\"dreamId\":\"d-1\"}")))
                        .expect("request");
                    let t = Instant::now();
                    let response = svc.clone().oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), 200, "every mint is charged");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds("self") - client_before;
    let backends_cpu: f64 = backend_cpu(&admin, &application)
        .await
        .iter()
        .map(|(pid, cpu)| cpu - backends_before.get(pid).copied().unwrap_or(0.0))
        .sum();
    let after = commits(&admin).await;
    let (reserves, settles, all) = (
        ledger.reserve_batches(),
        ledger.settle_batches(),
        ledger.batches(),
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let charged = latencies.len() as f64;
    let rate = charged / elapsed;
    println!(
        "clients {} accounts {} seconds {} writers {} combined {}",
        args.clients, args.accounts, args.seconds, args.writers, args.combined
    );
    println!("UPDATE ceiling: hot row {hot:.0}/s, spread over 64 rows {spread:.0}/s");
    println!(
        "ledger: {rate:.0} charged mints/s, p50 {:.2} ms, p99 {:.2} ms, {:.3} commits per mint",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        (after - before) as f64 / charged
    );
    let mean = |b: dreamnet_billable::ledger::postgres::BatchCounts| {
        b.calls as f64 / b.batches.max(1) as f64
    };
    println!(
        "batches: {} with reserves ({:.1} on average), {} with settles ({:.1}), {} in all \
         ({:.1} calls): {:.3} ledger commits per mint",
        reserves.batches,
        mean(reserves),
        settles.batches,
        mean(settles),
        all.batches,
        mean(all),
        all.batches as f64 / charged
    );
    println!(
        "CPU per mint: {:.1} us in this process, {:.1} us in the ledger's PostgreSQL backends \
         ({:.2} + {:.2} of {} cores busy)",
        client_cpu / charged * 1e6,
        backends_cpu / charged * 1e6,
        client_cpu / elapsed,
        backends_cpu / elapsed,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "ratio: {:.2}x the hot-row ceiling, {:.2}x the spread ceiling",
        rate / hot,
        rate / spread
    );
    admin
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "DROP TABLE {table}; DROP SCHEMA \"{schema}\" CASCADE"
        ))
        .await
        .expect("cleanup");
}
