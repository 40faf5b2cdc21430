//! Two `dreamnet-server` processes on a 3-master Redis Cluster (of this test's own, started
//! by `OwnRedisCluster`) + PostgreSQL: they start (a cluster used to stop the server at start
//! with `MOVED`), share an exact rate limit and idempotency records whose keys live on
//! different masters; per-client quotas bind exactly across both replicas (the client's
//! counters under the cluster's hash tag, one script with the aggregate ones); a seed list
//! without `--redis-cluster` is refused with a clear error.

mod common;

use common::{Backends, Process, TOKEN};
use dreamnet_test_support::redis_cluster::OwnRedisCluster;

const MINT: &str = r#"{"dreamId": "dream-123", "wallet": "0xabc"}"#;

/// The test's backends and a Redis Cluster of its own; `None` after a loud skip. The
/// backends come first, so a skip leaves no cluster running.
async fn backends_and_cluster() -> Option<(Backends, OwnRedisCluster)> {
    let backends = Backends::reserve().await?;
    let cluster = OwnRedisCluster::start()?;
    Some((backends, cluster))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_share_limits_and_idempotency_records() {
    let Some((backends, cluster)) = backends_and_cluster().await else {
        return;
    };
    let seeds = cluster.seeds();
    let a = backends.replica_on(&seeds, &["--redis-cluster"], &[]).await;
    // The environment variable works as the flag does.
    let b = backends
        .replica_on(&seeds, &[], &[("DREAMNET_REDIS_CLUSTER", "1")])
        .await;

    // An exact day limit of 10 across both replicas.
    let (admitted, limited) = common::exact_day_limit_across(&a.http, &b.http).await;
    assert_eq!((admitted, limited), (10, 20));

    // A retried mint through the other replica replays and charges once.
    for i in 0..12 {
        let key = format!("cluster-key-{i}");
        let headers = [
            ("x-idempotency-key", key.as_str()),
            ("x-account-id", "acct-cl"),
        ];
        common::replays_across((&a.http, &b.http), "/api/mint-dream", &headers, MINT, 201).await;
    }
    let account = b
        .http
        .admin_get("/api/billable/accounts/acct-cl")
        .await
        .json();
    assert_eq!(
        account["charged"],
        12 * 100,
        "one charge per key: {account}"
    );
    // Idempotent echo records (the Redis idempotency store) are shared, and the records of
    // one client are spread over the masters (the hash tag is per key, not per scope).
    for i in 0..12 {
        let key = format!("echo-key-{i}");
        let echo = [("idempotency-key", key.as_str())];
        let replicas = (&a.http, &b.http);
        common::replays_across(replicas, "/api/spider-web/echo", &echo, r#"{"n":1}"#, 200).await;
    }
    for url in cluster.urls() {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let records: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}idem:*", backends.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!records.is_empty(), "no idempotency record on {url}");
    }

    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    backends.drop_all().await;
}

/// Waits, when the minute is about to turn, for the next one: a per-client minute window
/// that rolled over mid-burst would admit more than its limit (fixed windows), and this
/// test checks exact counts.
async fn clear_of_a_minute_boundary() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_millis() % 60_000;
    if into > 40_000 {
        tokio::time::sleep(std::time::Duration::from_millis(60_000 - into as u64 + 500)).await;
    }
}

/// Sends `n` concurrent echo requests of `account`, alternating replicas; (admitted, the
/// `RateLimit` window names of the 429s).
async fn burst_of(
    a: &common::Http,
    b: &common::Http,
    account: &str,
    n: usize,
) -> (usize, Vec<String>) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let http = if i % 2 == 0 { a.clone() } else { b.clone() };
            let account = account.to_owned();
            tokio::spawn(async move {
                let reply = http
                    .get_with_headers("/api/orca-pack/echo", &[("x-account-id", &account)])
                    .await;
                let window = reply.header("ratelimit").map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_owned()
                });
                (reply.status.as_u16(), window.unwrap_or_default())
            })
        })
        .collect();
    let (mut admitted, mut limited) = (0, Vec::new());
    for task in tasks {
        match task.await.expect("the request task") {
            (200, _) => admitted += 1,
            (429, window) => limited.push(window),
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    (admitted, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_bind_exactly_across_two_replicas_on_a_redis_cluster() {
    let Some((backends, cluster)) = backends_and_cluster().await else {
        return;
    };
    let seeds = cluster.seeds();
    let a = backends.replica_on(&seeds, &["--redis-cluster"], &[]).await;
    let b = backends.replica_on(&seeds, &["--redis-cluster"], &[]).await;

    // 5 a minute per client, and 12 a day for the whole cluster.
    let set = a
        .http
        .admin_post(
            "/api/control/cluster/orca-pack/rate-limit",
            r#"{"requestsPerMinute": 1000, "requestsPerHour": 1000, "requestsPerDay": 12, "perClient": {"requestsPerMinute": 5}}"#,
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["perClient"]["requestsPerMinute"], 5);
    assert!(
        dreamnet_test_support::holds_within(std::time::Duration::from_secs(1), || async {
            b.http
                .admin_get("/api/control/cluster/orca-pack/rate-limit")
                .await
                .json()["perClient"]["requestsPerMinute"]
                == 5
        })
        .await,
        "the per-client limit reaches replica B"
    );

    // Each client gets exactly 5 across both replicas, whatever the other one used...
    clear_of_a_minute_boundary().await;
    let (admitted, limited) = burst_of(&a.http, &b.http, "acct-one", 12).await;
    assert_eq!(admitted, 5, "client one across both replicas");
    assert!(limited.iter().all(|w| w == "client-minute"), "{limited:?}");
    clear_of_a_minute_boundary().await;
    let (admitted, _) = burst_of(&a.http, &b.http, "acct-two", 12).await;
    assert_eq!(admitted, 5, "client two has its own 5");
    // ...until the cluster's day (12, 10 used) binds: a third client gets the last 2.
    let (admitted, limited) = burst_of(&a.http, &b.http, "acct-three", 12).await;
    assert_eq!(admitted, 2, "the aggregate limit still binds");
    assert!(limited.iter().all(|w| w == "day"), "{limited:?}");
    let usage = b.http.admin_get("/api/control").await.json();
    assert_eq!(
        usage["clusters"]["orca-pack"]["usage"]["windows"][2]["used"], 12,
        "rejections consumed nothing: {usage}"
    );

    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    backends.drop_all().await;
}

#[tokio::test]
async fn several_urls_without_cluster_mode_is_refused_at_start() {
    let stderr = Process::refused_start(
        &[
            "--redis-url",
            "redis://:secret@127.0.0.1:1,redis://127.0.0.1:2",
        ],
        &[("DREAMNET_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert!(stderr.contains("--redis-cluster"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "no password in the error: {stderr}"
    );
}
