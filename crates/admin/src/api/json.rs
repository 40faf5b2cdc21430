//! JSON in ([`JsonObject`]) and out ([`json`]).

use axum::{
    extract::{FromRequest, OptionalFromRequest, Request},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use dreamnet_common::{
    body::{buffer_limited, BufferError},
    Problem,
};
use http::{header, HeaderValue, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

use super::ApiError;

/// The largest admin request body accepted (64 KiB); a larger one is 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body that must be a JSON object, read into `T`.
///
/// Only an object is accepted: serde's derive also reads a struct from an array
/// (`["reason", "actor"]`), which is never what an API client meant. Rejections are
/// problem+json: 413 over [`BODY_LIMIT`], 400 for an unreadable body, malformed JSON, a
/// non-object, wrong field types or an empty body. `Option<JsonObject<T>>` is `None` for an
/// empty (or all-whitespace) body, for endpoints whose body is optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonObject<T>(pub T);

impl<S, T> FromRequest<S> for JsonObject<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        <Self as OptionalFromRequest<S>>::from_request(request, state)
            .await?
            .ok_or_else(|| ApiError::bad_request("a JSON object body is required"))
    }
}

impl<S, T> OptionalFromRequest<S> for JsonObject<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = buffer_limited(&parts.headers, body, BODY_LIMIT)
            .await
            .map_err(|error| match error {
                BufferError::TooLarge { limit } => ApiError::new(
                    Problem::from_status(StatusCode::PAYLOAD_TOO_LARGE)
                        .detail(format!("the request body is larger than {limit} bytes")),
                ),
                BufferError::Body(_) => ApiError::bad_request("the request body could not be read"),
            })?;
        parse(&bytes).map(|value| value.map(Self))
    }
}

/// `None` for a blank body, else the object read into `T`.
fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<Option<T>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the JSON body must be an object"));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}")))
}

/// A 200 `application/json` answer that no cache keeps (admin state changes under it).
///
/// A value that cannot be serialized becomes a 500 problem.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(_) => ApiError::new(
            Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR).detail("serialization failed"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Credit {
        amount: i64,
    }

    async fn read(body: String) -> Result<Option<Credit>, StatusCode> {
        let request = Request::post("/").body(Body::from(body)).unwrap();
        <JsonObject<Credit> as OptionalFromRequest<()>>::from_request(request, &())
            .await
            .map(|value| value.map(|JsonObject(credit)| credit))
            .map_err(|error| error.status())
    }

    #[tokio::test]
    async fn reads_objects_only() {
        assert_eq!(
            read(r#"{"amount":5}"#.into()).await,
            Ok(Some(Credit { amount: 5 }))
        );
        assert_eq!(read("  \n".into()).await, Ok(None));
        assert_eq!(read("[5]".into()).await, Err(StatusCode::BAD_REQUEST));
        assert_eq!(read("{".into()).await, Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            read(r#"{"amount":"5"}"#.into()).await,
            Err(StatusCode::BAD_REQUEST)
        );
        let big = format!(r#"{{"amount":{}}}"#, "1".repeat(BODY_LIMIT));
        assert_eq!(read(big).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[tokio::test]
    async fn a_required_body_must_be_there() {
        let request = Request::post("/").body(Body::empty()).unwrap();
        let error = <JsonObject<Credit> as FromRequest<()>>::from_request(request, &())
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn answers_are_json_and_never_cached() {
        let response = json(&serde_json::json!({"ok": true}));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
