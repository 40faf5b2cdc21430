//! The endpoint handlers: health, echo, status and the mints.

use axum::{
    body::Body,
    extract::{Path, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use dreamnet_common::body::{buffer_limited, BufferError};
use dreamnet_idempotency::{
    key_from_headers, Fingerprint, DEFAULT_KEY_HEADERS, IDEMPOTENT_REPLAYED, LOG_TARGET,
};
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::problem;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `GET /healthz`.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Reads the whole body within [`MAX_BODY_BYTES`], or the 400/413 problem to answer.
pub(crate) async fn read_body(request: Request) -> Result<(http::request::Parts, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match buffer_limited(&parts.headers, body, MAX_BODY_BYTES).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(BufferError::TooLarge { limit }) => Err(problem::respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
            &parts.extensions,
        )),
        Err(BufferError::Body(err)) => Err(problem::respond(
            StatusCode::BAD_REQUEST,
            format!("request body could not be read: {err}"),
            &parts.extensions,
        )),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"))
}

/// `ANY /api/{cluster}/echo`: 200 `{cluster, method, traceId, body}`.
///
/// `body` is the request body: `null` when empty, the parsed value when it is JSON, the text
/// otherwise. A body declared JSON that does not parse is 400; a body that is not UTF-8 text
/// is 400 too (the echo answers in JSON).
pub(crate) async fn echo(Path(cluster): Path<String>, request: Request) -> Response {
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let body = if bytes.is_empty() {
        Value::Null
    } else if is_json(&parts.headers) {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => value,
            Err(err) => {
                return problem::respond(
                    StatusCode::BAD_REQUEST,
                    format!("malformed JSON body: {err}"),
                    &parts.extensions,
                )
            }
        }
    } else {
        match std::str::from_utf8(&bytes) {
            Ok(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::from(text)),
            Err(_) => {
                return problem::respond(
                    StatusCode::BAD_REQUEST,
                    "the echo only accepts JSON or UTF-8 text bodies",
                    &parts.extensions,
                )
            }
        }
    };
    Json(json!({
        "cluster": cluster,
        "method": parts.method.as_str(),
        "traceId": problem::trace_id(&parts.extensions),
        "body": body,
    }))
    .into_response()
}

/// `ANY /api/{cluster}/status/{code}`: answers with `code` (to exercise breakers).
///
/// 200..=599 is answered; anything else, including the informational 1xx codes that HTTP/1.1
/// cannot send as a final response, is 400. Error codes answer problem+json (every error is),
/// others a small JSON body (none for 204, 205 and 304, which must not have one).
pub(crate) async fn status(
    Path((cluster, code)): Path<(String, String)>,
    request: Request,
) -> Response {
    let extensions = request.extensions();
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return problem::respond(
            StatusCode::BAD_REQUEST,
            format!("status code must be an integer in 200..=599, got {code:?}"),
            extensions,
        );
    };
    if status.as_u16() >= 400 {
        return problem::respond(
            status,
            format!("cluster {cluster} answered {} as asked", status.as_u16()),
            extensions,
        );
    }
    if matches!(status.as_u16(), 204 | 205 | 304) {
        return (status, Body::empty()).into_response();
    }
    (
        status,
        Json(json!({
            "cluster": cluster,
            "status": status.as_u16(),
            "traceId": problem::trace_id(extensions),
        })),
    )
        .into_response()
}

/// The body of the mint endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MintRequest {
    pub(crate) dream_id: String,
    pub(crate) wallet: String,
}

/// The 201 body of the mint endpoints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MintResponse {
    pub(crate) action_id: Option<String>,
    pub(crate) dream_id: String,
    pub(crate) wallet: String,
    pub(crate) token_id: String,
    pub(crate) trace_id: Option<String>,
}

/// Parses and validates a mint body: a JSON object with non-empty string `dreamId` and
/// `wallet` (at most 256 bytes each).
pub(crate) fn parse_mint(bytes: &[u8]) -> Result<MintRequest, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| format!("malformed JSON body: {err}"))?;
    let request: MintRequest = serde_json::from_value(value).map_err(|err| {
        format!("body must be {{\"dreamId\": string, \"wallet\": string}}: {err}")
    })?;
    for (field, value) in [("dreamId", &request.dream_id), ("wallet", &request.wallet)] {
        if value.trim().is_empty() {
            return Err(format!("{field} must be a non-empty string"));
        }
        if value.len() > 256 {
            return Err(format!("{field} must be at most 256 bytes"));
        }
    }
    Ok(request)
}

/// The idempotency key and request digest of a mint, for the DeployKeeper log lines.
#[derive(Debug, Clone)]
pub(crate) struct MintLog {
    key: String,
    digest: String,
}

/// Replayed bodies larger than this are not read back for the original trace id.
const MAX_LOGGED_REPLAY: usize = 64 * 1024;

/// Middleware in front of the billable layer: a mint body that is not valid is answered 400
/// before anything is reserved, so a malformed request never touches the ledger.
///
/// It also writes the seed's DeployKeeper lines for mints (the billable layer owns
/// idempotency on these routes and does not log them): `Status: NEW` from the handler when
/// the action runs, `Duplicate detected` here when the layer answered a replay (409 / 422 /
/// stored response), with the original request's trace id read back from the replayed body.
pub(crate) async fn validate_mint(request: Request, next: Next) -> Response {
    let (mut parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    if let Err(detail) = parse_mint(&bytes) {
        return problem::respond(StatusCode::BAD_REQUEST, detail, &parts.extensions);
    }
    let log = match key_from_headers(&parts.headers, &DEFAULT_KEY_HEADERS) {
        Ok(Some(key)) => Some(MintLog {
            key: key.as_str().to_owned(),
            digest: Fingerprint::compute(&parts, &[], &bytes)
                .as_str()
                .to_owned(),
        }),
        _ => None,
    };
    if let Some(log) = &log {
        parts.extensions.insert(log.clone());
    }
    let trace = problem::trace_id(&parts.extensions);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let Some(log) = log else {
        return response;
    };
    let replayed = response
        .headers()
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let outcome = match response.status() {
        _ if replayed => "replayed",
        StatusCode::CONFLICT => "in_flight",
        StatusCode::UNPROCESSABLE_ENTITY => "fingerprint_mismatch",
        _ => return response,
    };
    let (response_parts, body) = response.into_parts();
    let (original, body) = if replayed {
        match http_body_util::Limited::new(body, MAX_LOGGED_REPLAY)
            .collect()
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let original = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("traceId").and_then(Value::as_str).map(str::to_owned));
                (original, Body::from(bytes))
            }
            Err(_) => (None, Body::empty()),
        }
    } else {
        (None, body)
    };
    let trace = trace.as_deref().unwrap_or("-");
    let original = original.as_deref().unwrap_or("-");
    tracing::info!(
        target: LOG_TARGET,
        idempotency_key = %log.key,
        trace_id = trace,
        digest = %log.digest,
        original_trace_id = original,
        outcome,
        "[Idempotency] Duplicate detected - Key: {}, Trace: {}, Digest: {}, Original: {}",
        log.key,
        trace,
        log.digest,
        original,
    );
    Response::from_parts(response_parts, body)
}

/// What kind of mint a handler performs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MintKind {
    Dream,
    Token,
}

/// `POST /api/mint-dream` and `/api/mint-dream-token`: 201 with the minted token.
pub(crate) async fn mint(kind: MintKind, request: Request) -> Response {
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let body = match parse_mint(&bytes) {
        Ok(body) => body,
        Err(detail) => return problem::respond(StatusCode::BAD_REQUEST, detail, &parts.extensions),
    };
    let prefix = match kind {
        MintKind::Dream => "dream",
        MintKind::Token => "token",
    };
    let token_id = format!("{prefix}-{}", hex::encode(rand::random::<[u8; 12]>()));
    let action_id = crate::app::action_id(&parts.extensions);
    if let Some(log) = parts.extensions.get::<MintLog>() {
        let trace = problem::trace_id(&parts.extensions);
        let trace = trace.as_deref().unwrap_or("-");
        tracing::info!(
            target: LOG_TARGET,
            idempotency_key = %log.key,
            trace_id = trace,
            digest = %log.digest,
            status = "NEW",
            "[DeployKeeper] Idempotency-Key: {}, Trace-ID: {}, Digest: {}, Status: NEW",
            log.key,
            trace,
            log.digest,
        );
    }
    tracing::info!(
        dream_id = %body.dream_id,
        token_id = %token_id,
        action_id = action_id.as_deref().unwrap_or("-"),
        "minted"
    );
    let response = MintResponse {
        action_id,
        dream_id: body.dream_id,
        wallet: body.wallet,
        token_id,
        trace_id: problem::trace_id(&parts.extensions),
    };
    (StatusCode::CREATED, Json(response)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_body_validation() {
        assert!(parse_mint(br#"{"dreamId":"d","wallet":"w"}"#).is_ok());
        assert!(parse_mint(br#"{"dreamId":"d","wallet":"w","extra":1}"#).is_ok());
        for bad in [
            &br#"{"dreamId":"d""#[..],
            br#"{"dreamId":"d"}"#,
            br#"{"dreamId":1,"wallet":"w"}"#,
            br#"{"dreamId":"","wallet":"w"}"#,
            br#"{"dreamId":"d","wallet":"  "}"#,
            br#"[]"#,
            b"",
            br#"null"#,
        ] {
            assert!(parse_mint(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
