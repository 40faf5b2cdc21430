//! Latency of billable requests through the layer on PostgreSQL: `n` sequential new
//! requests (reserve + run + confirm + charge) and `n` replays, in a throwaway schema.
//!
//! `cargo run --release -p dreamnet-billable --features postgres --example pg_latency -- [n]`
//! (server from `DREAMNET_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_billable::{ledger::postgres::pool_for, BillableLayer, PostgresLedger};
use dreamnet_idempotency::RequestBody;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

fn request(key: usize) -> Request<Full<Bytes>> {
    Request::post("/api/mint-dream")
        .header("idempotency-key", format!("bench-{key}"))
        .header("x-account-id", "acct-bench")
        .body(Full::new(Bytes::from_static(b"{\"dreamId\":\"d-1\"}")))
        .expect("request")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let pool = pool_for(&dreamnet_test_support::database_url()).expect("pool");
    let schema = format!("t_bill_lat_{:016x}", rand::random::<u64>());
    let ledger = Arc::new(
        PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .build()
            .await
            .expect("ledger"),
    );
    let mut svc = ServiceBuilder::new()
        .layer(BillableLayer::with_shared_ledger(ledger, "mint-dream", 1))
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"minted",
                ))))
            },
        ));
    // Warm the pool and the prepared statements.
    for key in 0..20 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(n + key))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let timed = |what: &str, replay: bool| {
        let what = what.to_owned();
        let mut svc = svc.clone();
        async move {
            let mut times = Vec::with_capacity(n);
            let start = Instant::now();
            for key in 0..n {
                let one = Instant::now();
                let response = svc.ready().await.unwrap().call(request(key)).await.unwrap();
                times.push(one.elapsed());
                assert_eq!(response.status(), 200);
                assert_eq!(
                    response.headers().contains_key("idempotent-replayed"),
                    replay
                );
            }
            let mean: Duration = start.elapsed() / u32::try_from(n).unwrap();
            times.sort_unstable();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{what}: median {:.2} ms, p10 {:.2} ms, mean {:.2} ms ({n} sequential)",
                ms(times[n / 2]),
                ms(times[n / 10]),
                ms(mean)
            );
        }
    };
    timed("new billable request", false).await;
    timed("replay", true).await;
    let client = pool.get().await.expect("pool");
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}
