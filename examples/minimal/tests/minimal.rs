//! Every layer of the minimal app, driven through its one Router.

use axum::{body::Body, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "minimal-example-admin-token";

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn post(path: &str, key: &str, body: &'static str) -> Request<Body> {
    Request::post(path)
        .header("idempotency-key", key)
        .header("x-account-id", "acct-1")
        .body(Body::from(body))
        .unwrap()
}

fn admin(method: &str, path: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_keyed_post_runs_once_and_replays_with_trace_and_rate_limit_headers() {
    let app = dreamnet_minimal::app(TOKEN);
    let first = send(&app, post("/charges", "order-1", r#"{"amount":5}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, r#"{"amount":5}"#);
    assert!(first.headers.contains_key("x-trace-id"));
    assert!(first.headers["ratelimit-policy"]
        .to_str()
        .unwrap()
        .contains(r#""minute";q=60;w=60"#));
    assert!(!first.headers.contains_key("idempotent-replayed"));

    let again = send(&app, post("/charges", "order-1", r#"{"amount":5}"#)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = send(&app, post("/charges", "order-1", r#"{"amount":6}"#)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_mint_is_charged_once_and_the_books_say_so() {
    let app = dreamnet_minimal::app(TOKEN);
    for _ in 0..2 {
        let minted = send(&app, post("/mint", "mint-1", "{}")).await;
        assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    }
    let stats = send(&app, admin("GET", "/api/billable/stats", "")).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    let stats: Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(stats["charged"], 1);
    let account = send(&app, admin("GET", "/api/billable/accounts/acct-1", "")).await;
    let account: Value = serde_json::from_str(&account.body).unwrap();
    assert_eq!(account["charged"], 100);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_its_kill_switch_stops_guarded_routes() {
    let app = dreamnet_minimal::app(TOKEN);
    let anonymous = Request::get("/api/control").body(Body::empty()).unwrap();
    assert_eq!(send(&app, anonymous).await.status, StatusCode::UNAUTHORIZED);

    let engage = admin(
        "POST",
        "/api/control/kill-switch/enable",
        r#"{"reason":"maintenance","disabledBy":"test"}"#,
    );
    assert_eq!(send(&app, engage).await.status, StatusCode::OK);
    let blocked = send(&app, post("/charges", "order-2", "{}")).await;
    assert_eq!(blocked.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(blocked.headers["content-type"], "application/problem+json");

    let release = admin("POST", "/api/control/kill-switch/disable", "");
    assert_eq!(send(&app, release).await.status, StatusCode::OK);
    let open = send(&app, post("/charges", "order-2", "{}")).await;
    assert_eq!(open.status, StatusCode::CREATED);
}
