//! The API mounted as the server mounts it (`nest("/api/control", ...)`).

use axum::{body::Body, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::ControlPlane;

fn api() -> (Router, ControlPlane) {
    let plane = ControlPlane::builder().build();
    let app = Router::new().nest("/api/control", super::router(plane.clone()));
    (app, plane)
}

async fn call(
    api: &Router,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, Value, http::HeaderMap) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(Bytes::from(body.to_owned())))
        .unwrap();
    let response = api.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, headers)
}

#[tokio::test]
async fn overview_has_the_documented_shape() {
    let (api, _) = api();
    let (status, body, headers) = call(&api, "GET", "/api/control", "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["killSwitch"]["enabled"], false);
    let wolf = &body["clusters"]["wolf-pack"];
    assert_eq!(wolf["enabled"], true);
    assert_eq!(wolf["rateLimit"]["requestsPerMinute"], 60);
    assert_eq!(wolf["rateLimit"]["requestsPerHour"], 1000);
    assert_eq!(wolf["rateLimit"]["requestsPerDay"], 10_000);
    assert_eq!(wolf["rateLimit"]["enabled"], true);
    assert_eq!(wolf["circuitBreaker"]["state"], "closed");
    assert_eq!(wolf["usage"]["windows"][0]["remaining"], 60);
    assert!(wolf.get("reason").is_some() && wolf.get("disabledBy").is_some());
    assert_eq!(body["clusters"].as_object().unwrap().len(), 12);
}

#[tokio::test]
async fn seed_curl_examples_work() {
    let (api, plane) = api();
    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/kill-switch/enable",
        r#"{"reason": "Emergency maintenance", "disabledBy": "admin"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["enabled"], true);
    assert_eq!(body["reason"], "Emergency maintenance");
    assert_eq!(body["disabledBy"], "admin");
    assert!(body["changedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["expiresAt"], Value::Null);
    let (_, body, _) = call(&api, "GET", "/api/control/kill-switch", "").await;
    assert_eq!(body["enabled"], true);
    let (status, body, _) = call(&api, "POST", "/api/control/kill-switch/disable", "").await;
    assert_eq!((status, &body["enabled"]), (StatusCode::OK, &json!(false)));

    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/wolf-pack/disable",
        r#"{"reason": "Rate limit exceeded", "disabledBy": "system"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["enabled"], false);
    assert_eq!(body["disabledBy"], "system");
    assert_eq!(body["usage"]["windows"][0]["name"], "minute");
    let (status, body, _) = call(&api, "POST", "/api/control/cluster/wolf-pack/enable", "{}").await;
    assert_eq!((status, &body["enabled"]), (StatusCode::OK, &json!(true)));
    assert_eq!(body["usage"]["windows"].as_array().unwrap().len(), 3);

    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/orca-pack/rate-limit",
        r#"{"requestsPerMinute": 50, "requestsPerHour": 1000, "requestsPerDay": 10000, "enabled": true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["requestsPerMinute"], 50);
    assert_eq!(
        plane.rate_limit("orca-pack").unwrap().requests_per_hour,
        Some(1000)
    );
    let (_, body, _) = call(&api, "GET", "/api/control/cluster/orca-pack/rate-limit", "").await;
    assert_eq!(body["requestsPerDay"], 10_000);
}

#[tokio::test]
async fn ttl_seconds_is_recorded() {
    let (api, _) = api();
    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/ai-seo/disable",
        r#"{"reason":"deploy","disabledBy":"ci","ttlSeconds":120}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["expiresAt"].is_string());
}

#[tokio::test]
async fn invalid_input_is_refused_and_changes_nothing() {
    let (api, plane) = api();
    let before = serde_json::to_value(plane.overview().await).unwrap();
    let cases: &[(&str, &str, StatusCode)] = &[
        (
            "/api/control/kill-switch/enable",
            r#"{"disabledBy":"admin"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"{"reason":"  "}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"{"reason":"x","ttlSeconds":0}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"{"reason":"x","ttlSeconds":1.5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"{"reason":"x","ttlSeconds":"60"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"{"reason":"x","bogus":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"["reason"]"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/kill-switch/enable",
            r#"["array body", "admin", 60]"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/disable",
            r#"["array body", "admin", null]"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"[null, 5, null, null, null, null, null, null]"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/circuit-breaker/trip",
            r#"["array body", "admin"]"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/disable",
            r#"{"disabledBy":"x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/nope/disable",
            r#"{"reason":"x"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/control/cluster/nope/rate-limit",
            r#"{"requestsPerMinute":1}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute":-1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute":50.5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute":50.0}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute":"50"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerHour":1e3}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"enabled":"yes"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinuet":5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"requestsPerMinute":99999999999999}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"perClient":{}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"perClient":{"requestsPerWeek":5}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"perClient":{"requestsPerMinute":4294967296}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"perClient":{"requestsPerMinute":-1}}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/rate-limit",
            r#"{"perClient":5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/circuit-breaker/trip",
            r#"{"reason":5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/control/cluster/wolf-pack/circuit-breaker/explode",
            "",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (path, body, expected) in cases {
        let (status, problem, headers) = call(&api, "POST", path, body).await;
        assert_eq!(status, *expected, "{path} {body}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["status"], expected.as_u16());
    }
    let after = serde_json::to_value(plane.overview().await).unwrap();
    assert_eq!(before, after);
    assert!(plane.audit(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn partial_rate_limit_update_keeps_other_fields() {
    let (api, _) = api();
    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/wolf-pack/rate-limit",
        r#"{"requestsPerMinute": 7, "reason": "abuse", "disabledBy": "ops"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["requestsPerMinute"], 7);
    assert_eq!(body["requestsPerHour"], 1000);
    assert_eq!(body["enabled"], true);
    let (_, audit, _) = call(&api, "GET", "/api/control/audit?limit=1", "").await;
    let entry = &audit[0];
    assert_eq!(entry["action"], "rate_limit.update");
    assert_eq!(entry["actor"], "ops");
    assert_eq!(entry["reason"], "abuse");
    assert_eq!(entry["before"]["windows"][0]["limit"], 60);
    assert_eq!(entry["after"]["windows"][0]["limit"], 7);
}

#[tokio::test]
async fn per_client_limits_are_set_partially_shown_audited_and_removed() {
    let (api, plane) = api();
    let path = "/api/control/cluster/wolf-pack/rate-limit";
    let (status, body, _) = call(
        &api,
        "POST",
        path,
        r#"{"perClient": {"requestsPerMinute": 5}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["perClient"], json!({"requestsPerMinute": 5}));
    assert_eq!(body["requestsPerMinute"], 60, "the aggregate windows stay");
    let (status, body, _) = call(
        &api,
        "POST",
        path,
        r#"{"perClient": {"requestsPerDay": 50}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["perClient"],
        json!({"requestsPerMinute": 5, "requestsPerDay": 50})
    );
    let (_, shown, _) = call(&api, "GET", path, "").await;
    assert_eq!(shown, body);
    let (_, overview, _) = call(&api, "GET", "/api/control", "").await;
    assert_eq!(
        overview["clusters"]["wolf-pack"]["rateLimit"]["perClient"]["requestsPerDay"],
        50
    );
    let (_, audit, _) = call(&api, "GET", "/api/control/audit?limit=1", "").await;
    assert_eq!(
        audit[0]["after"]["perClient"][1],
        json!({"name": "day", "limit": 50, "seconds": 86400})
    );
    // Guarded traffic: the client's minute binds, named as the client's window.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        match plane.decide_for("wolf-pack", "account:acme", None).await {
            crate::Decision::Admit(mut permit) => {
                let mut headers = http::HeaderMap::new();
                permit.decorate(&mut headers);
                statuses.push(headers["ratelimit"].to_str().unwrap().to_owned());
            }
            crate::Decision::Deny(rejection) => {
                let status = rejection.rate_limit().unwrap();
                assert_eq!(status.reported().unwrap().name, "client-minute");
                assert!(
                    rejection.detail().contains("this client's rate limit"),
                    "{}",
                    rejection.detail()
                );
                statuses.push("429".to_owned());
            }
        }
    }
    assert!(
        statuses[0].starts_with("\"client-minute\";r=4;"),
        "{statuses:?}"
    );
    assert_eq!(statuses[5], "429");
    assert!(matches!(
        plane.decide_for("wolf-pack", "account:other", None).await,
        crate::Decision::Admit(_)
    ));
    // `null` removes a per-client window; removing all of them leaves `{}`.
    let (status, body, _) = call(
        &api,
        "POST",
        path,
        r#"{"perClient": {"requestsPerMinute": null, "requestsPerDay": null}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["perClient"], json!({}));
    assert!(matches!(
        plane.decide_for("wolf-pack", "account:acme", None).await,
        crate::Decision::Admit(_)
    ));
}

#[tokio::test]
async fn breaker_trip_and_reset() {
    let (api, _) = api();
    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/jaggy-core/circuit-breaker/trip",
        "",
    )
    .await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("forced_open"))
    );
    let (_, body, _) = call(&api, "GET", "/api/control", "").await;
    assert_eq!(
        body["clusters"]["jaggy-core"]["circuitBreaker"]["state"],
        "forced_open"
    );
    let (status, body, _) = call(
        &api,
        "POST",
        "/api/control/cluster/jaggy-core/circuit-breaker/reset",
        "{}",
    )
    .await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("closed")));
}

#[tokio::test]
async fn audit_is_newest_first_with_limit_and_cluster_filter() {
    let (api, _) = api();
    for (path, body) in [
        ("/api/control/kill-switch/enable", r#"{"reason":"a"}"#),
        (
            "/api/control/cluster/wolf-pack/disable",
            r#"{"reason":"b"}"#,
        ),
        ("/api/control/kill-switch/disable", r#"{"reason":"c"}"#),
    ] {
        assert_eq!(call(&api, "POST", path, body).await.0, 200);
    }
    let (_, body, _) = call(&api, "GET", "/api/control/audit", "").await;
    let reasons: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("c"), json!("b"), json!("a")]);
    let (_, body, _) = call(&api, "GET", "/api/control/audit?limit=2", "").await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (_, body, _) = call(&api, "GET", "/api/control/audit?cluster=wolf-pack", "").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["cluster"], "wolf-pack");
    for bad in ["0", "-1", "x", "100000"] {
        let (status, ..) = call(&api, "GET", &format!("/api/control/audit?limit={bad}"), "").await;
        assert_eq!(status, 400, "limit={bad}");
    }
}

#[tokio::test]
async fn routing_errors() {
    let (api, _) = api();
    let (status, _, headers) = call(&api, "GET", "/api/control/kill-switch/enable", "").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    let (status, _, headers) = call(
        &api,
        "DELETE",
        "/api/control/cluster/wolf-pack/rate-limit",
        "",
    )
    .await;
    assert_eq!(status, 405);
    let allow = headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(call(&api, "GET", "/api/control/nope", "").await.0, 404);
    assert_eq!(call(&api, "GET", "/api/controlx", "").await.0, 404);
    assert_eq!(call(&api, "GET", "/elsewhere", "").await.0, 404);
    assert_eq!(
        call(&api, "GET", "/api/control/cluster/nope", "").await.0,
        404
    );
    // axum's `nest` serves the mount point itself, not the mount point with a slash (the
    // hand-written router of 0.1 answered both).
    assert_eq!(call(&api, "GET", "/api/control", "").await.0, 200);
    assert_eq!(
        call(&api, "GET", "/api/control/cluster/wolf-pack", "")
            .await
            .0,
        200
    );
    assert_eq!(call(&api, "GET", "/api/control/metrics", "").await.0, 200);
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(
        call(&api, "POST", "/api/control/kill-switch/enable", &big)
            .await
            .0,
        413
    );
}
