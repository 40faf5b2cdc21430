//! Small pieces of the JSON admin APIs (`ControlApi`, `BillableApi`): routing on path
//! segments under a mount prefix, method checks, JSON bodies in and out.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    body::{buffer_limited, BufferError},
    Problem,
};

/// The path's non-empty segments after `prefix` (when given); `None` when the path is not
/// under the prefix (`/api/controlx` is not under `/api/control`).
///
/// ```
/// use dreamnet_common::json_api::route_segments;
///
/// assert_eq!(route_segments("/api/control/kill-switch", Some("/api/control")), Some(vec!["kill-switch"]));
/// assert_eq!(route_segments("/api/control", Some("/api/control")), Some(vec![]));
/// assert_eq!(route_segments("/api/controlx", Some("/api/control")), None);
/// assert_eq!(route_segments("/stats/", None), Some(vec!["stats"]));
/// ```
pub fn route_segments<'a>(path: &'a str, prefix: Option<&str>) -> Option<Vec<&'a str>> {
    let rest = match prefix {
        None => path,
        Some(prefix) => match path.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return None,
        },
    };
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}

/// `Ok(())` when `method` is one of `allowed`, else 405 with an `Allow` header.
///
/// # Errors
/// The 405 problem.
#[allow(clippy::result_large_err)] // becomes a response at once; boxing only allocates
pub fn allow_methods(method: &Method, allowed: &[Method]) -> Result<(), Problem> {
    if allowed.contains(method) {
        return Ok(());
    }
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Err(
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            .detail(format!("use {list}"))
            .header(
                header::ALLOW,
                HeaderValue::try_from(list).unwrap_or_else(|_| HeaderValue::from_static("GET")),
            ),
    )
}

/// A 200 `application/json` response that caches nowhere (admin state changes).
///
/// # Errors
/// A 500 problem if `value` cannot be serialized.
#[allow(clippy::result_large_err)]
pub fn json_ok<T: Serialize + ?Sized>(value: &T) -> Result<Response<Full<Bytes>>, Problem> {
    let body = serde_json::to_vec(value).map_err(|_| {
        Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR).detail("serialization failed")
    })?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A 400 problem with `detail`.
pub fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "Bad Request").detail(detail)
}

/// Reads a JSON object body of at most `limit` bytes into `T`; `Ok(None)` for an empty (or
/// all-whitespace) body, so the caller decides whether a body is required.
///
/// Only a JSON object is accepted: serde's derive would also read a struct from an array
/// (`["reason", "actor"]`), which is never what an API client meant.
///
/// # Errors
/// 413 over the limit; 400 for an unreadable body, malformed JSON, a non-object or wrong
/// field types.
pub async fn read_json_object<T, B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Option<T>, Problem>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
{
    let bytes = buffer_limited(headers, body, limit)
        .await
        .map_err(|err| match err {
            BufferError::TooLarge { limit } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
                    .detail(format!("the request body is larger than {limit} bytes"))
            }
            BufferError::Body(_) => bad_request("the request body could not be read"),
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|err| bad_request(format!("malformed JSON: {err}")))?;
    if !value.is_object() {
        return Err(bad_request("the JSON body must be an object"));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|err| bad_request(format!("malformed JSON: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Credit {
        amount: i64,
    }

    async fn read(body: &'static str) -> Result<Option<Credit>, Problem> {
        read_json_object(
            &HeaderMap::new(),
            Full::new(Bytes::from_static(body.as_bytes())),
            64,
        )
        .await
    }

    #[tokio::test]
    async fn reads_objects_only() {
        assert_eq!(
            read(r#"{"amount":5}"#).await.unwrap(),
            Some(Credit { amount: 5 })
        );
        assert_eq!(read("  \n").await.unwrap(), None);
        assert_eq!(read("[5]").await.unwrap_err().status, 400);
        assert_eq!(read("{").await.unwrap_err().status, 400);
        assert_eq!(read(r#"{"amount":"5"}"#).await.unwrap_err().status, 400);
        let big = Box::leak(format!(r#"{{"amount":{}}}"#, "1".repeat(80)).into_boxed_str());
        assert_eq!(read(big).await.unwrap_err().status, 413);
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_ones() {
        let problem = allow_methods(&Method::PUT, &[Method::GET, Method::POST]).unwrap_err();
        assert_eq!(problem.status, 405);
        assert_eq!(problem.headers[0].1, "GET, POST");
        assert!(allow_methods(&Method::GET, &[Method::GET]).is_ok());
    }
}
