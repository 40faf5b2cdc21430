//! `GET /api/openapi.json` over TCP: an OpenAPI 3.1 document of every endpoint, the admin
//! operations behind the bearer scheme with their 401 / 429, problem+json refusals, and the
//! server's own cluster ids. (`openapi-tests/schemathesis.sh` fuzzes the server against it.)

mod common;

use common::TestServer;
use serde_json::Value;

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            all.push((method.to_uppercase(), path.clone(), operation));
        }
    }
    all
}

#[tokio::test]
async fn the_document_describes_every_endpoint_and_its_refusals() {
    let server = TestServer::start().await;
    let reply = server.http.get("/api/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["adminToken"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    let listed: Vec<String> = operations(&doc)
        .iter()
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    for expected in [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/{cluster}/echo",
        "POST /api/{cluster}/echo",
        "GET /api/{cluster}/status/{code}",
        "POST /api/mint-dream",
        "POST /api/mint-dream-token",
        "GET /api/control",
        "POST /api/control/kill-switch/enable",
        "POST /api/control/cluster/{id}/rate-limit",
        "GET /api/control/audit",
        "GET /api/billable/stats",
        "POST /api/billable/accounts/{id}/credit",
    ] {
        assert!(
            listed.contains(&expected.to_owned()),
            "{expected} in {listed:?}"
        );
    }

    for (method, path, operation) in operations(&doc) {
        let admin = path.starts_with("/api/control") || path.starts_with("/api/billable");
        let responses = &operation["responses"];
        assert_eq!(
            operation["security"].is_array(),
            admin,
            "{method} {path}: the bearer scheme on admin operations only"
        );
        if admin {
            for status in ["401", "429"] {
                let refusal = &responses[status]["content"]["application/problem+json"];
                assert!(refusal.is_object(), "{method} {path} documents {status}");
            }
        }
    }

    // The `{cluster}` of the public routes lists this server's clusters.
    let echo = &doc["paths"]["/api/{cluster}/echo"]["get"]["parameters"][0];
    let clusters = echo["schema"]["enum"].as_array().expect("an enum");
    assert!(clusters.contains(&Value::from("jaggy-core")), "{echo}");
    assert!(!clusters.contains(&Value::from("no-such-cluster")));
    // And what the document says, the server does: a documented cluster answers.
    assert_eq!(server.http.get("/api/jaggy-core/echo").await.status, 200);
    server.stop().await;
}
