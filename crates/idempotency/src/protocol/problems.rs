//! The problem+json responses of the idempotency layer (also used by the billable layer).
//!
//! Each takes the request's trace id, when known, for the body's `traceId`.

use std::time::Duration;

use dreamnet_common::Problem;
use http::StatusCode;

use crate::key::KeyError;

/// The `Retry-After` sent with [`store_unavailable`].
pub const STORE_UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// 400: the route requires an `Idempotency-Key` and the request has none.
pub fn missing_key(trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::BAD_REQUEST)
        .detail("this endpoint requires an Idempotency-Key header")
        .maybe_trace_id(trace_id)
}

/// 400: the `Idempotency-Key` header is invalid.
pub fn invalid_key(err: &KeyError, trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::BAD_REQUEST)
        .detail(format!(
            "{err}; a key is 1 to 255 printable ASCII characters, sent once"
        ))
        .maybe_trace_id(trace_id)
}

/// 409 with `Retry-After`: a request with this key is still being processed.
pub fn in_flight(retry_after: Duration, trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::CONFLICT)
        .detail("a request with this Idempotency-Key is still being processed; retry later")
        .maybe_trace_id(trace_id)
        .retry_after_millis(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX))
}

/// 422: the key was used before with a different method, path, query or body.
pub fn fingerprint_mismatch(trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::UNPROCESSABLE_ENTITY)
        .detail("this Idempotency-Key was already used with a different request payload")
        .maybe_trace_id(trace_id)
}

/// 413: the request body is larger than the layer buffers.
pub fn body_too_large(limit: usize, trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::PAYLOAD_TOO_LARGE)
        .detail(format!("the request body is larger than {limit} bytes"))
        .maybe_trace_id(trace_id)
}

/// 503 with `Retry-After`: the idempotency store cannot be reached, so the request is
/// refused rather than run unprotected (fail closed). Marked as a
/// [`StoreFault`](dreamnet_common::StoreFault) of `idempotency`, so a circuit breaker
/// around this layer does not count it as its upstream failing (the handler never ran).
pub fn store_unavailable(trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::SERVICE_UNAVAILABLE)
        .store_fault("idempotency")
        .detail("the idempotency store is unavailable; the request was not processed")
        .maybe_trace_id(trace_id)
        .retry_after_millis(
            u64::try_from(STORE_UNAVAILABLE_RETRY_AFTER.as_millis()).unwrap_or(1000),
        )
}

/// 500: the record stored under this key is corrupt or not ours; the request was not
/// processed.
pub fn corrupt_record(trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR)
        .detail("the stored record for this Idempotency-Key is unreadable; the request was not processed")
        .maybe_trace_id(trace_id)
}

/// 400: the request body could not be read.
pub fn unreadable_body(trace_id: Option<&str>) -> Problem {
    Problem::from_status(StatusCode::BAD_REQUEST)
        .detail("the request body could not be read")
        .maybe_trace_id(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::RETRY_AFTER;

    #[test]
    fn statuses_headers_and_trace_ids() {
        assert_eq!(missing_key(Some("t")).status, 400);
        assert_eq!(missing_key(Some("t")).trace_id.as_deref(), Some("t"));
        assert_eq!(invalid_key(&KeyError::TooLong, None).status, 400);
        assert!(invalid_key(&KeyError::TooLong, None).trace_id.is_none());
        assert_eq!(fingerprint_mismatch(None).status, 422);
        assert_eq!(body_too_large(10, None).status, 413);
        assert_eq!(corrupt_record(None).status, 500);
        let busy = in_flight(Duration::from_millis(1500), None).into_response();
        assert_eq!(busy.status(), 409);
        assert_eq!(busy.headers()[RETRY_AFTER], "2");
        let down = store_unavailable(Some("t")).into_response();
        assert_eq!(down.status(), 503);
        assert_eq!(down.headers()[RETRY_AFTER], "1");
        let fault = dreamnet_common::StoreFault::of(&down).map(dreamnet_common::StoreFault::store);
        assert_eq!(fault, Some("idempotency"));
    }
}
