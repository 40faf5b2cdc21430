//! `/metrics` through prometheus-client, scraped over a real TCP socket and parsed: the
//! histograms move after requests, rejections are counted by route, code, problem type and
//! store fault, store calls are timed per store, and OpenMetrics is served when asked for.

mod common;

use common::{exposition::Exposition, Http, Stores, TestServer};
use dreamnet_server::Config;
use dreamnet_test_support::redis_server::OwnRedis;

const MINT: &str = r#"{"dreamId": "dream-1", "wallet": "0xabc"}"#;
const HTTP_SECONDS: &str = "dreamnet_http_request_duration_seconds";
const STORE_SECONDS: &str = "dreamnet_store_call_duration_seconds";

async fn scrape(http: &Http) -> Exposition {
    let reply = http.get("/metrics").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let exposition = Exposition::parse(&text);
    assert!(!exposition.eof, "text 0.0.4 has no # EOF");
    exposition.check_histograms();
    exposition
}

async fn histograms_move_after_requests(stores: Stores) {
    let Some(server) = TestServer::on(stores, Config::default()).await else {
        return;
    };
    let http = &server.http;
    let (redis, postgres) = stores.backends();
    let echo_2xx = [("route", "/api/{cluster}/echo"), ("status_class", "2xx")];
    let claim = [
        ("store", "idempotency"),
        ("backend", redis),
        ("op", "claim"),
    ];
    let reserve = [
        ("store", "ledger"),
        ("backend", postgres),
        ("op", "reserve"),
    ];

    let before = scrape(http).await;
    // Pre-registered: the echo series exists before the first echo.
    assert_eq!(
        before
            .find(&format!("{HTTP_SECONDS}_count"), &echo_2xx)
            .len(),
        1
    );
    assert_eq!(
        before.value(&format!("{HTTP_SECONDS}_count"), &echo_2xx),
        0.0
    );

    for _ in 0..3 {
        assert_eq!(http.get("/api/wolf-pack/echo").await.status, 200);
    }
    let keyed = http
        .post_json(
            "/api/wolf-pack/echo",
            &[("idempotency-key", "metrics-k1")],
            "{}",
        )
        .await;
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    let mint = http
        .post_json(
            "/api/mint-dream",
            &[("x-idempotency-key", "metrics-m1")],
            MINT,
        )
        .await;
    assert_eq!(mint.status, 201, "{}", mint.text());

    let after = scrape(http).await;
    let count =
        |e: &Exposition, labels: &[(&str, &str)]| e.value(&format!("{HTTP_SECONDS}_count"), labels);
    assert_eq!(count(&after, &echo_2xx) - count(&before, &echo_2xx), 4.0);
    assert!(after.value(&format!("{HTTP_SECONDS}_sum"), &echo_2xx) > 0.0);
    let mint_2xx = [("route", "/api/mint-dream"), ("status_class", "2xx")];
    assert_eq!(count(&after, &mint_2xx), 1.0);
    // The slowest bucket holds every observation; some bucket below 30 s holds them too.
    let buckets = after.find(&format!("{HTTP_SECONDS}_bucket"), &echo_2xx);
    assert!(buckets
        .iter()
        .any(|b| b.labels["le"] == "+Inf" && b.value >= 4.0));

    let store_count = |e: &Exposition, labels: &[(&str, &str)]| {
        e.value(&format!("{STORE_SECONDS}_count"), labels)
    };
    assert_eq!(
        store_count(&after, &claim) - store_count(&before, &claim),
        1.0
    );
    let complete = [
        ("store", "idempotency"),
        ("backend", redis),
        ("op", "complete"),
    ];
    assert_eq!(
        store_count(&after, &complete) - store_count(&before, &complete),
        1.0
    );
    assert_eq!(
        store_count(&after, &reserve) - store_count(&before, &reserve),
        1.0
    );
    assert_eq!(
        after.value("dreamnet_store_call_errors_total", &claim),
        0.0,
        "no store errors on a healthy backend"
    );

    // The families that existed before the move keep their names.
    for (family, kind) in [
        ("dreamnet_http_responses_total", "counter"),
        ("dreamnet_requests_total", "counter"),
        ("dreamnet_rejections_total", "counter"),
        ("dreamnet_circuit_breaker_state", "gauge"),
        ("dreamnet_kill_switch_engaged", "gauge"),
        ("dreamnet_billable_actions", "gauge"),
        ("dreamnet_billable_ledger_up", "gauge"),
        ("dreamnet_edge_connections_open", "gauge"),
        ("dreamnet_admin_auth_failures_total", "counter"),
        ("dreamnet_build_info", "gauge"),
        (HTTP_SECONDS, "histogram"),
        (STORE_SECONDS, "histogram"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(
        after.value(
            "dreamnet_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        after.value("dreamnet_billable_actions", &[("state", "charged")]),
        1.0
    );
    server.stop().await;
}

async fn rejections_by_route_code_and_problem_type(http: &Http) {
    http.kill_switch_on("metrics test").await;
    http.get("/api/wolf-pack/echo").await.assert_problem(503);
    http.get("/api/wolf-pack/echo").await.assert_problem(503);
    http.get("/no/such/route").await.assert_problem(404);
    http.get("/api/control/kill-switch")
        .await
        .assert_problem(401);

    let e = scrape(http).await;
    let rejections = "dreamnet_http_rejections_total";
    assert_eq!(
        e.value(
            rejections,
            &[
                ("route", "/api/{cluster}/echo"),
                ("code", "503"),
                ("problem_type", "urn:dreamnet:control:kill-switch"),
                ("store_fault", "none"),
            ]
        ),
        2.0
    );
    assert_eq!(
        e.value(rejections, &[("route", "unmatched"), ("code", "404")]),
        1.0
    );
    assert_eq!(
        e.value(
            rejections,
            &[("route", "/api/control/kill-switch"), ("code", "401")]
        ),
        1.0
    );
    let echo_5xx = [("route", "/api/{cluster}/echo"), ("status_class", "5xx")];
    assert_eq!(e.value(&format!("{HTTP_SECONDS}_count"), &echo_5xx), 2.0);
}

on_every_backend!(
    rejections_by_route_code_and_problem_type;
    own_server: histograms_move_after_requests
);

/// Redis dies under a running server: an idempotent request is 503 marked as our own
/// store's fault, the rejection counter names the store and the store's error counter moves.
#[tokio::test]
async fn a_dead_store_counts_as_a_store_fault_and_a_store_error() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let server = TestServer::on_own_redis(&redis, Config::default()).await;
    let http = &server.http;
    redis.stop().await;

    let reply = http
        .post_json(
            "/api/wolf-pack/echo",
            &[("idempotency-key", "dead-1")],
            "{}",
        )
        .await;
    reply.assert_problem(503);

    let e = scrape(http).await;
    let claim = [
        ("store", "idempotency"),
        ("backend", "redis"),
        ("op", "claim"),
    ];
    assert!(e.value("dreamnet_store_call_errors_total", &claim) >= 1.0);
    assert!(e.value(&format!("{STORE_SECONDS}_count"), &claim) >= 1.0);
    assert_eq!(
        e.value(
            "dreamnet_http_rejections_total",
            &[
                ("route", "/api/{cluster}/echo"),
                ("code", "503"),
                ("store_fault", "idempotency")
            ]
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn openmetrics_when_asked_text_otherwise() {
    let server = TestServer::start().await;
    let http = &server.http;
    let reply = http
        .get_with_headers(
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            )],
        )
        .await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let open = Exposition::parse(&text);
    assert!(open.eof);
    open.check_histograms();
    // OpenMetrics names a counter family without `_total` and has an info type.
    assert_eq!(open.types["dreamnet_requests"], "counter");
    assert_eq!(open.types["dreamnet_build"], "info");
    assert_eq!(
        open.value(
            "dreamnet_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let plain = http
        .get_with_headers("/metrics", &[("accept", "text/plain")])
        .await;
    assert!(plain
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let plain = Exposition::parse(&plain.text());
    assert!(!plain.eof);
    assert_eq!(plain.types["dreamnet_requests_total"], "counter");
    server.stop().await;
}
