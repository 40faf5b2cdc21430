//! The HTTP contract of DESIGN.md section 4, over a real TCP socket, on memory stores.

mod common;

use bytes::Bytes;
use common::{Http, TOKEN};
use http::Method;

async fn health_unknown_routes_and_methods(http: &Http) {
    let health = http.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    // /metrics is Prometheus text: every sample belongs to a family with HELP and TYPE.
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            typed.insert(name.to_owned());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| typed.contains(*family))
                .unwrap_or(name);
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            if series.contains('{') {
                assert!(series.ends_with('}'), "{line}");
            }
        }
    }
    for family in [
        "dreamnet_requests_total",
        "dreamnet_rejections_total",
        "dreamnet_circuit_breaker_state",
        "dreamnet_billable_actions",
        "dreamnet_http_responses_total",
    ] {
        assert!(typed.contains(family), "missing {family}:\n{text}");
    }
    assert!(
        text.contains("dreamnet_circuit_breaker_state{cluster=\"wolf-pack\",state=\"closed\"} 1")
    );

    http.get("/no/such/route").await.assert_problem(404);
    http.get("/api/mint-dream").await.assert_problem(405);
    http.send(Method::DELETE, "/healthz", &[], Bytes::new())
        .await
        .assert_problem(405);
}

async fn trace_id_is_kept_when_valid_and_replaced_when_not(http: &Http) {
    let kept = http
        .get_with_headers("/api/wolf-pack/echo", &[("x-trace-id", "trace-456")])
        .await;
    assert_eq!(kept.header("x-trace-id"), Some("trace-456"));
    assert_eq!(kept.json()["traceId"], "trace-456");

    let replaced = http
        .get_with_headers("/api/wolf-pack/echo", &[("x-trace-id", "bad trace id!")])
        .await;
    let id = replaced.header("x-trace-id").unwrap();
    assert_ne!(id, "bad trace id!");
    assert_eq!(replaced.json()["traceId"], id);
}

async fn echo_answers_cluster_method_trace_and_body(http: &Http) {
    let reply = http
        .post_json("/api/orca-pack/echo", &[], r#"{"hello":["world",1]}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["cluster"], "orca-pack");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["body"]["hello"][1], 1);
    assert_eq!(json["traceId"], reply.header("x-trace-id").unwrap());

    let get = http.get("/api/orca-pack/echo").await;
    assert_eq!(get.json()["method"], "GET");
    assert!(get.json()["body"].is_null());

    http.post_json("/api/orca-pack/echo", &[], r#"{"hello":"#)
        .await
        .assert_problem(400);

    let big = vec![b'x'; dreamnet_server::MAX_BODY_BYTES + 1];
    http.send(Method::POST, "/api/orca-pack/echo", &[], big)
        .await
        .assert_problem(413);
}

async fn unknown_cluster_is_404(http: &Http) {
    http.get("/api/no-such-pack/echo").await.assert_problem(404);
    http.get("/api/no-such-pack/status/200")
        .await
        .assert_problem(404);
}

async fn status_route_answers_the_code_asked(http: &Http) {
    let ok = http.get("/api/wolf-pack/status/202").await;
    assert_eq!(ok.status, 202);
    assert_eq!(ok.json()["status"], 202);
    assert_eq!(http.get("/api/wolf-pack/status/204").await.status, 204);
    http.get("/api/wolf-pack/status/418")
        .await
        .assert_problem(418);
    http.get("/api/wolf-pack/status/500")
        .await
        .assert_problem(500);
    for bad in ["99", "600", "abc", "-1", "1000000"] {
        http.get(&format!("/api/wolf-pack/status/{bad}"))
            .await
            .assert_problem(400);
    }
}

async fn admin_routes_need_the_bearer_token(http: &Http) {
    for (path, with_token) in [
        ("/api/control", 200),
        ("/api/control/kill-switch", 200),
        ("/api/control/audit", 200),
        ("/api/control/cluster/wolf-pack/rate-limit", 200),
        ("/api/control/no-such-endpoint", 404),
        ("/api/billable/stats", 200),
        ("/api/billable/act_unknown", 404),
        ("/api/billable/accounts/nobody", 404),
    ] {
        // No token and a wrong one are challenged for a bearer token; the right token under
        // another scheme is refused as well.
        let basic = format!("Basic {TOKEN}");
        for (authorization, challenged) in [
            (None, true),
            (Some("Bearer nope"), true),
            (Some(basic.as_str()), false),
        ] {
            let headers: Vec<_> = authorization
                .map(|a| ("authorization", a))
                .into_iter()
                .collect();
            let refused = http.get_with_headers(path, &headers).await;
            refused.assert_problem(401);
            if challenged {
                assert!(refused
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer"));
            }
        }
        let ok = http.admin_get(path).await;
        assert_eq!(ok.status, with_token, "{path}: {}", ok.text());
        if with_token != 200 {
            ok.assert_problem(with_token);
        }
    }
}

async fn mint_validates_before_anything_is_reserved(http: &Http) {
    let key = [("idempotency-key", "k-validate")];
    for bad in [
        r#"{"dreamId":"d""#,
        r#"{"dreamId":"d"}"#,
        r#"{"dreamId":1,"wallet":"w"}"#,
        r#"{"dreamId":"","wallet":"w"}"#,
        r"[]",
        // serde would read the struct from an array; only the object is the contract.
        r#"["d","w"]"#,
    ] {
        http.post_json("/api/mint-dream", &key, bad)
            .await
            .assert_problem(400);
    }
    let big = format!(
        r#"{{"dreamId":"{}","wallet":"w"}}"#,
        "x".repeat(dreamnet_server::MAX_BODY_BYTES)
    );
    http.post_json("/api/mint-dream", &key, &big)
        .await
        .assert_problem(413);
    // Without a key: 400 from the billable layer, nothing reserved either.
    http.post_json("/api/mint-dream", &[], r#"{"dreamId":"d","wallet":"w"}"#)
        .await
        .assert_problem(400);
    let stats = http.admin_get("/api/billable/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    let stats = stats.json();
    for state in ["pending", "confirmed", "charged", "failed"] {
        assert_eq!(stats[state], 0, "{state}: {stats}");
    }
    // The key is still free: the same key with a valid body runs now.
    let ok = http
        .post_json("/api/mint-dream", &key, r#"{"dreamId":"d","wallet":"w"}"#)
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text());
}

async fn admin_bodies_must_be_objects_and_refusals_change_nothing(http: &Http) {
    let state = |view: &serde_json::Value| {
        let clusters = view["clusters"].as_object().expect("clusters");
        let per_cluster: Vec<_> = clusters
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c["enabled"].clone(),
                    c["rateLimit"].clone(),
                    c["circuitBreaker"]["state"].clone(),
                )
            })
            .collect();
        (view["killSwitch"].clone(), per_cluster)
    };
    let before = state(&http.admin_get("/api/control").await.json());
    // Each of these is an array that serde's derive would read as the body struct
    // (positional fields): the kill switch would be engaged by the first one.
    for (path, body) in [
        (
            "/api/control/kill-switch/enable",
            r#"["array body", "admin", 60]"#,
        ),
        (
            "/api/control/cluster/wolf-pack/disable",
            r#"["array body", "admin", null]"#,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r"[null, 1, null, null, false, null, null, null]",
        ),
        (
            "/api/control/cluster/wolf-pack/circuit-breaker/trip",
            r#"["array body", "admin"]"#,
        ),
        ("/api/control/kill-switch/enable", r#""reason""#),
        ("/api/control/cluster/wolf-pack/disable", "null"),
    ] {
        http.admin_post(path, body).await.assert_problem(400);
    }
    let after = state(&http.admin_get("/api/control").await.json());
    assert_eq!(before, after);
    let audit = http.admin_get("/api/control/audit").await.json();
    assert_eq!(audit, serde_json::json!([]), "{audit}");
    // Guarded traffic still flows.
    assert_eq!(http.get("/api/wolf-pack/echo").await.status, 200);
}

on_every_backend!(
    admin_bodies_must_be_objects_and_refusals_change_nothing,
    health_unknown_routes_and_methods,
    trace_id_is_kept_when_valid_and_replaced_when_not,
    echo_answers_cluster_method_trace_and_body,
    unknown_cluster_is_404,
    status_route_answers_the_code_asked,
    admin_routes_need_the_bearer_token,
    mint_validates_before_anything_is_reserved
);
