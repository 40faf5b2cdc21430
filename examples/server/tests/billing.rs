//! Billable mints and the billable admin API over HTTP, on the memory ledger.

mod common;

use common::{assert_fields, Http, Stores, TestServer};
use serde_json::json;

const MINT: &str = r#"{"dreamId": "dream-123", "wallet": "0xabc"}"#;

async fn mint_charges_once_and_replays(http: &Http) {
    let first = http
        .post_json(
            "/api/mint-dream",
            &[
                ("x-idempotency-key", "unique-key-123"),
                ("x-trace-id", "trace-456"),
            ],
            MINT,
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text());
    let body = first.json();
    let action_id = body["actionId"].as_str().expect("actionId").to_owned();
    assert_eq!(body["dreamId"], "dream-123");
    assert_eq!(body["wallet"], "0xabc");
    assert_eq!(body["traceId"], "trace-456");
    assert!(body["tokenId"].as_str().unwrap().starts_with("dream-"));
    assert!(first.header("idempotent-replayed").is_none());

    // Same key, same body, from another trace: the stored response, nothing charged again.
    let replay = http
        .post_json(
            "/api/mint-dream",
            &[("x-idempotency-key", "unique-key-123")],
            MINT,
        )
        .await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), body);

    // Same key, another body: 422, nothing runs.
    http.post_json(
        "/api/mint-dream",
        &[("x-idempotency-key", "unique-key-123")],
        r#"{"dreamId": "dream-999", "wallet": "0xabc"}"#,
    )
    .await
    .assert_problem(422);

    // No key: 400, nothing runs.
    http.post_json("/api/mint-dream", &[], MINT)
        .await
        .assert_problem(400);

    let stats = http.admin_get("/api/billable/stats").await.json();
    assert_eq!(stats["charged"], 1, "{stats}");
    assert_eq!(stats["pending"], 0);
    assert_eq!(stats["failed"], 0);
    assert_eq!(stats["amounts"]["charged"], 100);

    let action = http
        .admin_get(&format!("/api/billable/{action_id}"))
        .await
        .json();
    assert_fields(
        &action,
        json!({
            "actionId": action_id,
            "idempotencyKey": "unique-key-123",
            "action": "mint-dream",
            "account": "default",
            "amount": 100,
            "currency": "USD",
            "state": "charged",
            "traceId": "trace-456",
        }),
    );
    assert!(action["createdAt"].is_string());
    assert!(action["updatedAt"].is_string());

    let account = http
        .admin_get("/api/billable/accounts/default")
        .await
        .json();
    assert_eq!(account["charged"], 100);
    assert_eq!(account["pending"], 0);
    assert!(account["credit"].is_null(), "unlimited: {account}");

    // The token mint is its own action with its own price.
    let token = http
        .post_json(
            "/api/mint-dream-token",
            &[("idempotency-key", "tok-1")],
            MINT,
        )
        .await;
    assert_eq!(token.status, 201, "{}", token.text());
    assert!(token.json()["tokenId"]
        .as_str()
        .unwrap()
        .starts_with("token-"));
    let stats = http.admin_get("/api/billable/stats").await.json();
    assert_eq!(stats["charged"], 2);
    assert_eq!(
        stats["amounts"]["charged"],
        100 + dreamnet_server::DEFAULT_MINT_TOKEN_PRICE
    );

    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("dreamnet_billable_actions{state=\"charged\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("dreamnet_billable_amount{state=\"charged\",currency=\"USD\"} 125"),
        "{text}"
    );
}

async fn credit_lines_refuse_overspending_with_402(stores: Stores) {
    let Some(server) = TestServer::on_file_config(
        stores,
        r#"
        [billing.prices]
        mint-dream = 300
        [billing.accounts.acme]
        credit = 500
        "#,
    )
    .await
    else {
        return;
    };
    let http = &server.http;
    let acme = |key: &'static str| [("x-account-id", "acme"), ("idempotency-key", key)];

    assert_eq!(
        http.post_json("/api/mint-dream", &acme("a1"), MINT)
            .await
            .status,
        201
    );
    http.post_json("/api/mint-dream", &acme("a2"), MINT)
        .await
        .assert_problem(402);
    let account = http.admin_get("/api/billable/accounts/acme").await.json();
    assert_eq!(account["credit"], 500);
    assert_eq!(account["charged"], 300);
    assert_eq!(account["available"], 200);

    // Adding credit lets the same key run now (a refused reservation kept nothing).
    let credited = http
        .admin_post("/api/billable/accounts/acme/credit", r#"{"amount": 100}"#)
        .await;
    assert_eq!(credited.status, 200, "{}", credited.text());
    assert_eq!(credited.json()["credit"], 600);
    assert_eq!(
        http.post_json("/api/mint-dream", &acme("a2"), MINT)
            .await
            .status,
        201
    );
    let account = http.admin_get("/api/billable/accounts/acme").await.json();
    assert_eq!(account["available"], 0);

    // A malformed account header is refused, never charged to the default account, and the
    // problem names the header (not "no account").
    let refused = http
        .post_json(
            "/api/mint-dream",
            &[("x-account-id", "bad account"), ("idempotency-key", "a3")],
            MINT,
        )
        .await
        .assert_problem(400);
    assert!(
        refused["detail"].as_str().unwrap().contains("X-Account-Id"),
        "{refused}"
    );
    // Nothing was reserved: the key is still free for a valid request.
    let ok = http
        .post_json("/api/mint-dream", &[("idempotency-key", "a3")], MINT)
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text());

    server.stop().await;
}

async fn billable_api_validates_and_changes_nothing_on_bad_input(http: &Http) {
    http.admin_get("/api/billable/act_doesnotexist")
        .await
        .assert_problem(404);
    http.admin_get("/api/billable/accounts/nobody")
        .await
        .assert_problem(404);
    for bad in [
        r#"{"amount": -1}"#,
        r#"{"amount": 0}"#,
        r#"{"amount": "10"}"#,
        r#"{"amount": 1.5}"#,
        r#"{"amount": 10"#,
        r#"{}"#,
        // serde would read the struct from an array; only the object is the contract.
        r"[10]",
        r"[10, null]",
        r#"{"amount": 10, "currency": ""}"#,
        r#"{"amount": 10, "currency": "usd"}"#,
        r#"{"amount": 10, "currency": "not a currency"}"#,
    ] {
        http.admin_post("/api/billable/accounts/acme/credit", bad)
            .await
            .assert_problem(400);
    }
    // Account ids in the path follow the X-Account-Id rule: an account no mint could
    // charge is never opened.
    let long = format!("/api/billable/accounts/{}/credit", "a".repeat(129));
    for path in [
        "/api/billable/accounts/a%20b/credit",
        "/api/billable/accounts/a%2Fb/credit",
        "/api/billable/accounts/%C3%A9/credit",
        "/api/billable/accounts//credit",
        long.as_str(),
    ] {
        http.admin_post(path, r#"{"amount": 10}"#)
            .await
            .assert_problem(400);
    }
    http.admin_get("/api/billable/accounts/a%20b")
        .await
        .assert_problem(400);
    // Without the token it is still 401 first.
    http.post_json(
        "/api/billable/accounts/a%20b/credit",
        &[],
        r#"{"amount": 10}"#,
    )
    .await
    .assert_problem(401);
    // Nothing was created by the refused requests.
    http.admin_get("/api/billable/accounts/acme")
        .await
        .assert_problem(404);
    let stats = http.admin_get("/api/billable/stats").await.json();
    assert_eq!(stats["amounts"]["charged"], 0);
    let ok = http
        .admin_post("/api/billable/accounts/acme/credit", r#"{"amount": 10}"#)
        .await;
    assert_eq!(ok.status, 200);
    let account = http.admin_get("/api/billable/accounts/acme").await.json();
    assert_eq!(account["credit"], 10);
    assert_eq!(account["currency"], "USD");
}

on_every_backend!(
    mint_charges_once_and_replays,
    billable_api_validates_and_changes_nothing_on_bad_input;
    own_server: credit_lines_refuse_overspending_with_402
);
