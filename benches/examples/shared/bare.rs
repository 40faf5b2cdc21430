//! The bare server both load examples measure against: the example server's echo route with
//! the same JSON shape, and no layers. Included by `load.rs` and `stack_per_request.rs`.

use axum::{extract::Path, routing::any, Json, Router};
use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

async fn bare_echo(Path(cluster): Path<String>, method: Method, body: Bytes) -> Json<Value> {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    Json(json!({ "cluster": cluster, "method": method.as_str(), "traceId": null, "body": body }))
}

/// `/api/{cluster}/echo` on a plain axum router.
pub(crate) fn bare_router() -> Router {
    Router::new().route("/api/{cluster}/echo", any(bare_echo))
}
