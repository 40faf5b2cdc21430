//! Per-request latency of the layer on each store, sequentially, for a 1 KiB POST: the first
//! call with a key (claim + complete) and a replay (one claim). Not a criterion bench because
//! the benches crate does not enable this crate's `redis` / `postgres` features.
//!
//! ```sh
//! cargo run --release -p dreamnet-idempotency --all-features --example backend_latency
//! ```
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore, RequestBody};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const N: usize = 2_000;

fn post(key: &str) -> Request<Full<Bytes>> {
    Request::post("/api/charges")
        .header("x-account-id", "acct_latency")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .expect("request")
}

async fn measure(name: &str, store: Arc<dyn IdempotencyStore>) {
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::builder().shared_store(store).build())
        .service(service_fn(|_r: Request<RequestBody<Full<Bytes>>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                b"{\"ok\":true}",
            ))))
        }));
    let run = format!("{:x}", std::process::id());
    // The same N keys twice: first calls, then their replays.
    let mut latencies = [Vec::with_capacity(N), Vec::with_capacity(N)];
    for (pass, samples) in latencies.iter_mut().enumerate() {
        for i in 0..N {
            let started = Instant::now();
            let response = svc
                .clone()
                .oneshot(post(&format!("lat-{run}-{i}")))
                .await
                .expect("ok");
            samples.push(started.elapsed());
            assert_eq!(response.status(), 200);
            let replayed = response.headers().get("idempotent-replayed");
            let replayed = replayed.is_some_and(|v| v == "true");
            assert_eq!(replayed, pass == 1, "only the second pass replays");
        }
    }
    let [mut first, mut replay] = latencies;
    println!(
        "{name:>10}  first call: median {:>8.1?} p99 {:>8.1?}   replay: median {:>8.1?} p99 {:>8.1?}",
        percentile(&mut first, 50),
        percentile(&mut first, 99),
        percentile(&mut replay, 50),
        percentile(&mut replay, 99),
    );
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort_unstable();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    measure("memory", Arc::new(MemoryStore::new())).await;
    #[cfg(feature = "redis")]
    {
        let url = dreamnet_test_support::redis_url();
        match dreamnet_idempotency::RedisStore::builder(&url)
            .prefix("dreamnet-latency:")
            .connect()
            .await
        {
            Ok(store) => measure("redis", Arc::new(store)).await,
            Err(err) => println!("     redis  skipped: {err}"),
        }
    }
    #[cfg(feature = "postgres")]
    {
        let url = dreamnet_test_support::database_url();
        let schema = format!("latency_{:x}", std::process::id());
        match dreamnet_idempotency::PostgresStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
        {
            Ok(store) => {
                measure("postgres", Arc::new(store)).await;
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                        .await;
                }
            }
            Err(err) => println!("  postgres  skipped: {err}"),
        }
    }
}
