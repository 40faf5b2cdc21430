//! Billing under HTTP load on Redis + PostgreSQL (issue 9): the charged count equals the 201s
//! the clients saw, and after a SIGKILL mid-load and a restart no mint is charged twice, no
//! 201 is lost, and nothing is left pending once the sweeper has run.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{Backends, Http, Process, TOKEN};
use http::Method;
use parking_lot::Mutex;
use serde_json::Value;

const MINT: &str = r#"{"dreamId": "dream-kill", "wallet": "0xabc"}"#;
const CLIENTS: usize = 32;
/// The price of `mint-dream` in the config below.
const PRICE: u64 = 100;

/// Unlimited `dream-state` (the load must not be rate limited) and short reservations, so a
/// hold of the killed process is voided by the restarted server's sweeper within seconds.
const CONFIG: &str = r#"
[control.clusters.dream-state]
requests_per_minute = 1000000000
requests_per_hour = 1000000000
requests_per_day = 1000000000

[billing]
currency = "USD"
default_account = "default"
reservation_timeout_seconds = 2
sweep_interval_seconds = 1

[billing.prices]
mint-dream = 100
mint-dream-token = 25
"#;

/// What a client saw for one Idempotency-Key before the kill.
#[derive(Debug, Clone)]
enum Seen {
    /// A 201 with this action id.
    Created(String),
    /// No complete answer: the request was in flight when the process died.
    InFlight,
}

async fn mint(http: &Http, account: &str, key: &str) -> Result<common::Reply, String> {
    http.try_send(
        Method::POST,
        "/api/mint-dream",
        &[
            ("content-type", "application/json"),
            ("x-idempotency-key", key),
            ("x-account-id", account),
        ],
        MINT,
    )
    .await
}

fn action_id(reply: &common::Reply) -> String {
    reply.json()["actionId"]
        .as_str()
        .expect("a 201 names its action")
        .to_owned()
}

/// 32 clients minting fresh keys on `addr` until `stop` is set (each finishes the request it
/// has started) or their connection dies; every key and what its client saw.
async fn load(
    addr: SocketAddr,
    account: &'static str,
    round: &'static str,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, Seen> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (seen, stop) = (seen.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = Http::new(addr);
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("{round}-{client}-{i}");
                match mint(&http, account, &key).await {
                    Ok(reply) => {
                        assert_eq!(reply.status, 201, "{key}: {}", reply.text());
                        seen.lock().insert(key, Seen::Created(action_id(&reply)));
                    }
                    Err(_) => {
                        seen.lock().insert(key, Seen::InFlight);
                        return;
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    Arc::try_unwrap(seen).expect("clients done").into_inner()
}

async fn stats(http: &Http) -> Value {
    let reply = http.admin_get("/api/billable/stats").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn charged_of(http: &Http, account: &str) -> u64 {
    let reply = http
        .admin_get(&format!("/api/billable/accounts/{account}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["charged"].as_u64().expect("charged amount")
}

/// Retries `key` until it answers 201 (a 409 while the dead process's hold stands, a 503
/// while its outcome is unknown), within 30 s.
async fn settled(http: &Http, account: &str, key: &str) -> common::Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = mint(http, account, key)
            .await
            .expect("the restarted server answers");
        match reply.status.as_u16() {
            201 => return reply,
            409 | 503 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{key}: {other} {}", reply.text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_load_charges_nothing_twice_and_loses_no_201() {
    let Some(backends) = Backends::reserve().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("{}-sigkill.toml", backends.prefix));
    std::fs::write(&dir, CONFIG).unwrap();
    let config = dir.to_str().unwrap().to_owned();
    let args = backends.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(&["--config", &config]);
    let envs = [("DREAMNET_ADMIN_TOKEN", TOKEN)];

    // 1. A clean run: the charged count equals the 201s the clients saw.
    let server = Process::spawn(&all, &envs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(load(server.addr, "acct-clean", "clean", stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let clean = run.await.unwrap();
    holds_pending_none(&server.http).await;
    let created = clean
        .values()
        .filter(|s| matches!(s, Seen::Created(_)))
        .count() as u64;
    assert!(created > 100, "the load ran: {created} mints");
    let charged = charged_of(&server.http, "acct-clean").await / PRICE;
    assert_eq!(
        charged, created,
        "every answered mint charged once, nothing else (no request was cut)"
    );
    assert!(clean.values().all(|s| matches!(s, Seen::Created(_))));

    // 2. The same load, and SIGKILL in the middle of it.
    let never = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(load(server.addr, "acct-killed", "killed", never));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut server = server;
    server.child.start_kill().expect("SIGKILL");
    server.child.wait().await.expect("the process is reaped");
    let before = run.await.unwrap();
    let in_flight = before
        .values()
        .filter(|s| matches!(s, Seen::InFlight))
        .count();
    assert!(in_flight > 0, "the kill cut requests in flight");

    // 3. A new process on the same Redis and PostgreSQL: every 201 replays as the same
    // action, every cut request ends in exactly one 201.
    let restarted = Process::spawn(&all, &envs).await;
    for (key, seen) in &before {
        let reply = settled(&restarted.http, "acct-killed", key).await;
        if let Seen::Created(id) = seen {
            assert_eq!(
                reply.header("idempotent-replayed"),
                Some("true"),
                "{key}: a 201 before the kill is replayed, not run again"
            );
            assert_eq!(&action_id(&reply), id, "{key}: the same action");
        }
    }
    holds_pending_none(&restarted.http).await;
    let charged = charged_of(&restarted.http, "acct-killed").await / PRICE;
    assert_eq!(
        charged,
        before.len() as u64,
        "one charge per key: {} keys, {in_flight} cut by the kill",
        before.len()
    );
    assert!(restarted.terminate().await.success());
    let _ = std::fs::remove_file(&dir);
    backends.drop_all().await;
}

/// Waits (at most 15 s) until the ledger holds no pending action: the sweeper has voided
/// what the dead process or a stopped client left.
async fn holds_pending_none(http: &Http) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stats = stats(http).await;
        if stats["pending"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending after the sweeper: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
