//! Several planes on one Redis: shared counters, shared control state, and what happens
//! when Redis goes away. Each test uses its own key prefix.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{guarded, send, status, yearly};
use dreamnet_control_core::{
    api, BreakerState, ClusterConfig, ControlConfig, ControlPlane, RateLimitUpdate, RedisStore,
    WindowConfig,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

mod common;

/// A store on the test Redis with a fresh prefix, or `None` after a loud skip notice.
async fn store() -> Option<RedisStore> {
    match RedisStore::connect(&dreamnet_test_support::redis_url()).await {
        Ok(store) => Some(store.prefix(&dreamnet_test_support::unique_prefix("control"))),
        Err(e) => {
            dreamnet_test_support::unavailable("redis", &e);
            None
        }
    }
}

/// Two clusters; `alpha` allows `limit` requests per (long) window, so no window boundary
/// falls inside a test.
fn config(limit: u64, fail_open: bool) -> ControlConfig {
    let mut clusters = BTreeMap::new();
    clusters.insert("alpha".to_owned(), yearly(limit));
    clusters.insert(
        "beta".to_owned(),
        ClusterConfig::per_minute_hour_day(1000, 10_000, 100_000),
    );
    ControlConfig {
        clusters,
        fail_open,
        ..ControlConfig::default()
    }
}

fn plane(store: &RedisStore, config: ControlConfig) -> ControlPlane {
    ControlPlane::builder()
        .config(config)
        .store(store.clone())
        .build()
}

/// A plane that never polls in the background: only its requests (and `sync`) can notice
/// a change made elsewhere.
fn plane_without_polling(store: &RedisStore, config: ControlConfig) -> ControlPlane {
    ControlPlane::builder()
        .config(config)
        .store(store.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
}

/// Polls `check` until it holds, failing after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    dreamnet_test_support::eventually(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// Two replicas (each its own store, so its own take batches) send 200 concurrent
/// requests at a limit of 60: exactly 60 pass, each told a different remaining count (a
/// batch answers each take as if it ran alone, in order), the rest get 429 with `r=0`.
/// Returns the round trips the requests cost.
async fn two_replicas_admit_exactly_the_limit(store: &RedisStore, batch: bool) -> u64 {
    let replica = || plane(&store.clone().batch_takes(batch), config(60, true));
    let (a, b) = (guarded(&replica(), "alpha"), guarded(&replica(), "alpha"));
    let before = store.round_trips();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let response = svc.oneshot(Request::new(Full::default())).await.unwrap();
                (response.status(), response.headers().clone())
            })
        })
        .collect();
    let mut remaining = Vec::new();
    for task in tasks {
        let (status, headers) = task.await.unwrap();
        assert_eq!(headers["ratelimit-policy"], "\"year\";q=60;w=31536000");
        let ratelimit = headers["ratelimit"].to_str().unwrap();
        let r = ratelimit
            .strip_prefix("\"year\";r=")
            .and_then(|rest| rest.split(';').next())
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("ratelimit {ratelimit:?}"));
        if status == StatusCode::OK {
            remaining.push(r);
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r, 0, "{ratelimit}");
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry_after >= 1);
        }
    }
    let trips = store.round_trips() - before;
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..60).collect::<Vec<_>>(),
        "batch_takes({batch})"
    );
    store.purge().await.unwrap();
    trips
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_planes_admit_exactly_the_limit_under_200_concurrent_requests() {
    let Some(store) = store().await else { return };
    let alone = two_replicas_admit_exactly_the_limit(&store, false).await;
    assert!(
        alone >= 200,
        "{alone} round trips for 200 takes on their own"
    );
    let batched = two_replicas_admit_exactly_the_limit(&store, true).await;
    // Concurrent takes share script runs (a background poll or two may add a trip).
    assert!(batched < 150, "{batched} round trips for 200 batched takes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_engaged_on_one_plane_stops_the_other_within_a_second() {
    let Some(store) = store().await else { return };
    let plane_a = plane(&store, config(1000, true));
    let plane_b = plane(&store, config(1000, true));
    let b_beta = guarded(&plane_b, "beta");
    let b_alpha = guarded(&plane_b, "alpha");
    assert_eq!(status(&b_beta).await, StatusCode::OK);

    let started = Instant::now();
    plane_a
        .engage_kill_switch("incident", "alice", None)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(1),
        "plane B enforces A's kill switch",
        || async { status(&b_beta).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    assert!(plane_b.kill_switch().enabled);
    eprintln!("kill switch propagated in {:?}", started.elapsed());
    assert_eq!(status(&b_alpha).await, StatusCode::SERVICE_UNAVAILABLE);

    // B releases it through the HTTP API; A lets traffic through again.
    let api = axum::Router::new().nest("/api/control", api::router(plane_b.clone()));
    let release = Request::post("/api/control/kill-switch/disable")
        .body(axum::body::Body::from(Bytes::from_static(
            br#"{"reason":"resolved","disabledBy":"bob"}"#,
        )))
        .unwrap();
    assert_eq!(api.oneshot(release).await.unwrap().status(), StatusCode::OK);
    let a_beta = guarded(&plane_a, "beta");
    eventually(
        Duration::from_secs(1),
        "plane A sees B's release",
        || async { status(&a_beta).await == StatusCode::OK },
    )
    .await;

    // One audit trail, newest first, with both actors.
    let audit = plane_a.audit(10).await.unwrap();
    let who: Vec<_> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_deref()))
        .collect();
    assert_eq!(
        who,
        [
            ("kill_switch.disable", Some("bob")),
            ("kill_switch.enable", Some("alice"))
        ]
    );
    store.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_disables_and_manual_trips_are_shared() {
    let Some(store) = store().await else { return };
    let plane_a = plane(&store, config(1000, true));
    let plane_b = plane(&store, config(1000, true));
    let b_alpha = guarded(&plane_b, "alpha");
    assert_eq!(status(&b_alpha).await, StatusCode::OK);

    // A new limit set on A: B's next request notices the epoch change and reloads.
    let update = RateLimitUpdate {
        windows: Some(vec![WindowConfig::new("year", 1, 365 * 86_400)]),
        ..RateLimitUpdate::default()
    };
    plane_a
        .set_rate_limit("alpha", &update, "ops", None)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(1),
        "B enforces A's new limit",
        || async { status(&b_alpha).await == StatusCode::TOO_MANY_REQUESTS },
    )
    .await;
    assert_eq!(plane_b.rate_limit("alpha").unwrap().windows[0].limit, 1);

    plane_a
        .disable_cluster("beta", "noisy", "ops", None)
        .await
        .unwrap();
    let b_beta = guarded(&plane_b, "beta");
    eventually(Duration::from_secs(1), "B sees beta disabled", || async {
        status(&b_beta).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    plane_a.enable_cluster("beta", None, "ops").await.unwrap();

    plane_a
        .trip_breaker("beta", Some("upstream down"), "ops")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(1),
        "B's breaker is forced open",
        || async { plane_b.breaker("beta").unwrap().state == BreakerState::ForcedOpen },
    )
    .await;
    assert_eq!(status(&b_beta).await, StatusCode::SERVICE_UNAVAILABLE);
    plane_b.reset_breaker("beta", None, "ops").await.unwrap();
    eventually(
        Duration::from_secs(1),
        "A's breaker is closed again",
        || async { plane_a.breaker("beta").unwrap().state == BreakerState::Closed },
    )
    .await;
    assert_eq!(status(&b_beta).await, StatusCode::OK);
    store.purge().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_redis_fails_closed_when_configured() {
    let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
    let plane = plane(&store, config(1, false));
    let alpha = guarded(&plane, "alpha");
    let response = send(&alpha).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(plane.metrics().rejected.store_unavailable, 1);
}

/// A TCP proxy to Redis that the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_known_state_stays_in_force_when_redis_goes_away() {
    let Some(direct) = store().await else { return };
    let url = dreamnet_test_support::redis_url();
    let upstream = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(upstream).await;
    let prefix = direct.key_prefix().to_owned();
    let via_proxy = RedisStore::connect(&format!("redis://{}", proxy.addr))
        .await
        .unwrap()
        .prefix(&prefix);
    let admin = plane(&direct, config(1000, true));
    let replica = plane(&via_proxy, config(1000, true));
    admin
        .disable_cluster("beta", "maintenance", "ops", None)
        .await
        .unwrap();
    replica.sync().await.unwrap();
    let beta = guarded(&replica, "beta");
    let alpha = guarded(&replica, "alpha");
    assert_eq!(status(&beta).await, StatusCode::SERVICE_UNAVAILABLE);

    proxy.cut();
    // Disabled stays disabled; alpha's rate limit fails open.
    for _ in 0..3 {
        assert_eq!(status(&beta).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(&alpha).await, StatusCode::OK);
    }
    assert!(replica.sync().await.is_err());
    assert!(!replica.cluster("beta").unwrap().enabled);
    assert!(replica.metrics().fail_open_admissions >= 1);
    direct.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_after_a_change_elsewhere_is_judged_by_it() {
    let Some(store) = store().await else { return };
    let plane_a = plane(&store, config(1000, true));
    let plane_b = plane_without_polling(&store, config(1000, true));
    let b_beta = guarded(&plane_b, "beta");
    assert_eq!(status(&b_beta).await, StatusCode::OK);
    plane_a
        .engage_kill_switch("incident", "alice", None)
        .await
        .unwrap();
    assert_eq!(status(&b_beta).await, StatusCode::SERVICE_UNAVAILABLE);
    plane_a.release_kill_switch(None, "alice").await.unwrap();
    // Rejected requests only read counters (for `RateLimit`), not the epoch; this one is let
    // through by the kill switch's release only once B reloads, which `sync` (or the
    // background poll) does.
    plane_b.sync().await.unwrap();
    assert_eq!(status(&b_beta).await, StatusCode::OK);
    plane_a
        .disable_cluster("beta", "noisy", "ops", None)
        .await
        .unwrap();
    assert_eq!(status(&b_beta).await, StatusCode::SERVICE_UNAVAILABLE);
    store.purge().await.unwrap();
}

/// 503s before the limiter report `RateLimit-Policy` only and cost no round trip: the
/// rejections take nothing, across planes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_503s_report_the_policy_without_touching_the_counters() {
    let Some(store) = store().await else { return };
    let plane_a = plane(&store, config(10, true));
    let plane_b = plane(&store, config(10, true));
    let a = guarded(&plane_a, "alpha");
    let b = guarded(&plane_b, "alpha");
    for svc in [&a, &b] {
        assert_eq!(status(svc).await, StatusCode::OK);
    }
    plane_a
        .disable_cluster("alpha", "maintenance", "ops", None)
        .await
        .unwrap();
    plane_b.sync().await.unwrap();
    let before = store.round_trips();
    for svc in [&a, &b, &a, &b] {
        let response = send(svc).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!response.headers().contains_key("ratelimit"));
        assert!(response.headers().contains_key("ratelimit-policy"));
    }
    // No round trip per rejection (at most a background version poll or two).
    let trips = store.round_trips() - before;
    assert!(trips <= 4, "{trips} round trips");
    let usage = plane_b.usage("alpha").await.unwrap();
    assert_eq!(usage[0].used, 2, "a rejection took quota");
    plane_b.enable_cluster("alpha", None, "ops").await.unwrap();
    eventually(Duration::from_secs(1), "A sees the enable", || async {
        status(&a).await == StatusCode::OK
    })
    .await;
    assert_eq!(plane_b.usage("alpha").await.unwrap()[0].used, 3);
    store.purge().await.unwrap();
}

/// A 503 before the limiter does not read the counters, so an unreachable Redis does not
/// slow it: it answers at once with `RateLimit-Policy` and without `RateLimit`.
#[tokio::test(flavor = "current_thread")]
async fn a_503_without_redis_omits_ratelimit() {
    let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "alpha".to_owned(),
        ClusterConfig::per_minute_hour_day(100, 1000, 10_000),
    );
    let config = ControlConfig {
        clusters,
        breaker: dreamnet_control_core::BreakerConfig {
            minimum_calls: 2,
            window_size: 2,
            ..dreamnet_control_core::BreakerConfig::default()
        },
        ..ControlConfig::default()
    };
    let plane = ControlPlane::builder().config(config).store(store).build();
    let alpha = ServiceBuilder::new()
        .layer(plane.layer("alpha"))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, Infallible>(response)
        }));
    let started = Instant::now();
    for _ in 0..2 {
        let response = alpha.clone().oneshot(Request::new(Full::default())).await;
        assert_eq!(response.unwrap().status(), 500, "fail open admits");
    }
    let response = alpha
        .clone()
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "breaker open"
    );
    assert!(response.headers().contains_key("ratelimit-policy"));
    assert!(!response.headers().contains_key("ratelimit"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        plane.metrics().store_errors >= 2,
        "the failed takes are counted"
    );
}

/// A replica that learns of a kill switch from the rate-limit script's epoch has already
/// taken a unit for that request: it gives it back, so the 503 consumes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_noticed_through_the_epoch_gives_the_unit_back() {
    let Some(store) = store().await else { return };
    let plane_a = plane(&store, config(10, true));
    let plane_b = plane_without_polling(&store, config(10, true));
    let b_alpha = guarded(&plane_b, "alpha");
    assert_eq!(status(&b_alpha).await, StatusCode::OK);
    plane_a
        .engage_kill_switch("incident", "alice", None)
        .await
        .unwrap();
    let response = send(&b_alpha).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!response.headers().contains_key("ratelimit"));
    assert_eq!(
        plane_a.usage("alpha").await.unwrap()[0].used,
        1,
        "the refused request kept its unit"
    );
    assert_eq!(plane_b.metrics().rejected.kill_switch, 1);
    store.purge().await.unwrap();
}

/// When a kill switch or a disable ends by its TTL, the planes sharing Redis race to record
/// it (background refreshers and audit reads at once): exactly one entry per ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_ending_is_audited_exactly_once_across_planes() {
    let Some(store) = store().await else { return };
    let clock = dreamnet_common::ManualClock::new(1_767_225_600_000);
    let planes: Vec<ControlPlane> = (0..4)
        .map(|i| {
            ControlPlane::builder()
                .config(config(1000, true))
                .store(store.clone())
                .clock(Arc::new(clock.clone()))
                // Two poll in the background (and end switches there), two only on demand.
                .refresh_interval(Duration::from_millis(if i < 2 { 5 } else { 3_600_000 }))
                .build()
        })
        .collect();
    for round in 0..5u64 {
        planes[0]
            .engage_kill_switch("incident", "alice", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        planes[1]
            .disable_cluster("beta", "noisy", "bob", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        for plane in &planes {
            plane.sync().await.unwrap();
        }
        clock.advance(Duration::from_secs(11));
        let reads = planes.iter().cycle().take(16).map(|plane| {
            let plane = plane.clone();
            tokio::spawn(async move { plane.audit(1000).await.unwrap() })
        });
        for read in futures_util::future::join_all(reads).await {
            let audit = read.unwrap();
            assert!(
                audit
                    .iter()
                    .filter(|e| e.actor.as_deref() == Some("system"))
                    .count()
                    <= 2 * (round as usize + 1)
            );
        }
        let audit = planes[3].audit(1000).await.unwrap();
        let ended: Vec<_> = audit
            .iter()
            .filter(|e| e.reason.as_deref() == Some("ended by ttl"))
            .map(|e| (e.action.as_str(), e.cluster.as_deref(), e.actor.as_deref()))
            .collect();
        assert_eq!(
            ended.len(),
            2 * (round as usize + 1),
            "round {round}: {ended:?}"
        );
        assert_eq!(
            &ended[..2],
            [
                ("kill_switch.disable", None, Some("system")),
                ("cluster.enable", Some("beta"), Some("system")),
            ]
        );
        assert_eq!(
            audit.len(),
            4 * (round as usize + 1),
            "four entries per round"
        );
        for plane in &planes {
            plane.sync().await.unwrap();
            assert_eq!(plane.kill_switch().disabled_by.as_deref(), Some("system"));
            assert!(plane.cluster("beta").unwrap().enabled);
        }
    }
    store.purge().await.unwrap();
}

/// A clone of a store under another prefix counts on its own keys, also when both batch
/// concurrent takes of a cluster of the same name: each plane admits its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_under_another_prefix_counts_on_its_own_keys() {
    let Some(store) = store().await else { return };
    let other = store
        .clone()
        .prefix(&dreamnet_test_support::unique_prefix("control-other"));
    let a = guarded(&plane(&store, config(3, false)), "alpha");
    let b = guarded(&plane(&other, config(3, false)), "alpha");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let response = svc.oneshot(Request::new(Full::default())).await.unwrap();
                (i % 2, response.status())
            })
        })
        .collect();
    let mut admitted = [0, 0];
    for task in tasks {
        let (plane, status) = task.await.unwrap();
        if status == StatusCode::OK {
            admitted[plane] += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(admitted, [3, 3], "each prefix has its own quota");
    store.purge().await.unwrap();
    other.purge().await.unwrap();
}
