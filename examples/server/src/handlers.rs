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
use http::{header, HeaderMap, StatusCode};
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
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MintRequest {
    /// The dream to mint (not blank, at most 256 bytes).
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    pub(crate) dream_id: String,
    /// The wallet it goes to (not blank, at most 256 bytes).
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    pub(crate) wallet: String,
}

/// The 201 body of the mint endpoints.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MintResponse {
    /// The billable action (`GET /api/billable/{actionId}`).
    pub(crate) action_id: Option<String>,
    /// As requested.
    pub(crate) dream_id: String,
    /// As requested.
    pub(crate) wallet: String,
    /// The minted token.
    pub(crate) token_id: String,
    /// The request's trace id.
    pub(crate) trace_id: Option<String>,
}

/// Parses and validates a mint body: a JSON object with non-empty string `dreamId` and
/// `wallet` (at most 256 bytes each).
pub(crate) fn parse_mint(bytes: &[u8]) -> Result<MintRequest, String> {
    // The common case straight into the struct (no `Value` tree). serde's derive also reads
    // a struct from a JSON array (`["d", "w"]`), so this path takes only bodies that open
    // an object; anything else, and every failure, goes the long way for its exact message.
    let request = match bytes.trim_ascii_start().first() {
        Some(b'{') => {
            serde_json::from_slice::<MintRequest>(bytes).or_else(|_| parse_mint_slowly(bytes))?
        }
        _ => parse_mint_slowly(bytes)?,
    };
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

/// [`parse_mint`] through a `Value`, which tells a malformed body from one of the wrong shape.
fn parse_mint_slowly(bytes: &[u8]) -> Result<MintRequest, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| format!("malformed JSON body: {err}"))?;
    if !value.is_object() {
        return Err(
            "body must be a JSON object {\"dreamId\": string, \"wallet\": string}".to_owned(),
        );
    }
    serde_json::from_value(value)
        .map_err(|err| format!("body must be {{\"dreamId\": string, \"wallet\": string}}: {err}"))
}

/// Middleware in front of the billable layer: a mint body that is not valid is answered 400
/// before anything is reserved, so a malformed request never touches the ledger.
///
/// The seed's DeployKeeper lines of a mint (`Status: NEW` on the reservation, `Duplicate
/// detected` on a replay, 409 or 422) come from the billable crate's ledger, which owns
/// idempotency on these routes; the server does not write them again.
pub(crate) async fn validate_mint(request: Request, next: Next) -> Response {
    let (parts, bytes) = match read_body(request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let mint = match parse_mint(&bytes) {
        Ok(mint) => mint,
        Err(detail) => return problem::respond(StatusCode::BAD_REQUEST, detail, &parts.extensions),
    };
    if dreamnet_common::AccountId::from_headers(&parts.headers).is_err() {
        return problem::respond(
            StatusCode::BAD_REQUEST,
            "X-Account-Id must be 1..=128 characters of A-Z a-z 0-9 . _ @ : -",
            &parts.extensions,
        );
    }
    // The handler takes the parsed body from here instead of parsing it again.
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(mint);
    next.run(request).await
}

/// What kind of mint a handler performs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MintKind {
    Dream,
    Token,
}

/// `POST /api/mint-dream` and `/api/mint-dream-token`: 201 with the minted token.
pub(crate) async fn mint(kind: MintKind, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = match parts.extensions.remove::<MintRequest>() {
        Some(body) => body,
        // Reached without `validate_mint` in front: parse the body here.
        None => {
            let bytes;
            (parts, bytes) = match read_body(Request::from_parts(parts, body)).await {
                Ok(read) => read,
                Err(response) => return response,
            };
            match parse_mint(&bytes) {
                Ok(body) => body,
                Err(detail) => {
                    return problem::respond(StatusCode::BAD_REQUEST, detail, &parts.extensions)
                }
            }
        }
    };
    let prefix = match kind {
        MintKind::Dream => "dream",
        MintKind::Token => "token",
    };
    let token_id = format!("{prefix}-{}", hex::encode(rand::random::<[u8; 12]>()));
    let action_id = crate::app::action_id(&parts.extensions);
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
            br#"["d","w"]"#,
            br#"["d","w",1]"#,
            b"",
            br#"null"#,
        ] {
            assert!(parse_mint(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // The fast path (a body that opens an object) keeps the long way's messages.
        let detail = |body: &[u8]| parse_mint(body).unwrap_err();
        assert!(detail(br#"{"dreamId":"d""#).starts_with("malformed JSON body: "));
        assert!(detail(br#" {"dreamId":"d"}"#).starts_with("body must be {\"dreamId\""));
        assert!(detail(br#"{"dreamId":1,"wallet":"w"}"#).contains("invalid type"));
        assert!(detail(br#"["d","w"]"#).starts_with("body must be a JSON object"));
        assert_eq!(
            detail(br#"{"dreamId":"d","wallet":" "}"#),
            "wallet must be a non-empty string"
        );
    }
}
