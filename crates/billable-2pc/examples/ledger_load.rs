//! Load on the PostgreSQL ledger through the layer, and the same machine's per-commit
//! ceiling measured in the same run, so the ratio is read at once.
//!
//! `cargo run --release -p dreamnet-billable --features postgres --example ledger_load --
//! --clients 32 --accounts 1 --seconds 10` (server from `DREAMNET_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! 1. the ceiling: `clients` connections doing `UPDATE t SET n = n + 1 WHERE id = 1` in
//!    autocommit for `seconds` (one hot row), then the same spread over 64 rows;
//! 2. `clients` tasks minting through [`BillableLayer`] on a [`PostgresLedger`] (fresh key
//!    each, account `i % accounts`), printing charged mints/s, p50/p99 and commits per mint
//!    (`pg_stat_database.xact_commit` before and after: other sessions on the server count
//!    too, so it is an upper bound).
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
}

fn args() -> Args {
    let mut args = Args {
        clients: 32,
        accounts: 1,
        seconds: 10,
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
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn pool(size: usize) -> Pool {
    let pool = pool_for(&dreamnet_test_support::database_url()).expect("pool");
    pool.resize(size);
    pool
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
    let ledger = Arc::new(
        PostgresLedger::builder(pool(8))
            .schema(schema.clone())
            .build()
            .await
            .expect("ledger"),
    );
    let svc = ServiceBuilder::new()
        .layer(BillableLayer::with_shared_ledger(ledger, "mint-dream", 1))
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"minted",
                ))))
            },
        ));
    let before = commits(&admin).await;
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
    let after = commits(&admin).await;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let charged = latencies.len() as f64;
    let rate = charged / elapsed;
    println!(
        "clients {} accounts {} seconds {}",
        args.clients, args.accounts, args.seconds
    );
    println!("UPDATE ceiling: hot row {hot:.0}/s, spread over 64 rows {spread:.0}/s");
    println!(
        "ledger: {rate:.0} charged mints/s, p50 {:.2} ms, p99 {:.2} ms, {:.3} commits per mint",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        (after - before) as f64 / charged
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
