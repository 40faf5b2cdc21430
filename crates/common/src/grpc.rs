//! gRPC-native rejections: the one mapping from a [`Problem`] to a gRPC *trailers-only*
//! response, shared by every layer.
//!
//! A gRPC client reads the body of a problem+json response as a gRPC frame and fails with
//! `INTERNAL: protocol error` (and no retry policy can act on it). So when the request's
//! `content-type` is `application/grpc*` ([`ProblemFormat::of`]), a layer renders its
//! rejection as the gRPC over HTTP/2 spec's *Trailers-Only* response instead: HTTP 200, an
//! empty body, and `grpc-status` / `grpc-message` (percent-encoded) in the one `HEADERS`
//! frame, with `content-type: application/grpc`. The problem's extra headers (`Retry-After`,
//! `RateLimit`, `RateLimit-Policy`, `WWW-Authenticate`) go out beside them as metadata, and a
//! `Retry-After` also becomes `grpc-retry-pushback-ms` (gRFC A6, so a retry policy waits).
//!
//! The status mapping ([`GrpcCode::for_http`]) is by HTTP status, with a per-problem override
//! ([`Problem::grpc_code`]) for the rare status whose meaning differs by cause:
//!
//! | HTTP | gRPC | why |
//! | --- | --- | --- |
//! | 400 | `INVALID_ARGUMENT` (3) | the request itself is malformed (key, body, account) |
//! | 401 | `UNAUTHENTICATED` (16) | no or bad credentials |
//! | 402 | `FAILED_PRECONDITION` (9) | the account lacks credit: a state to fix, not a retry |
//! | 403 | `PERMISSION_DENIED` (7) | |
//! | 404 | `NOT_FOUND` (5) | e.g. an unknown control cluster |
//! | 409 | `ABORTED` (10) | a request with this key is still in flight: retry later |
//! | 413 | `RESOURCE_EXHAUSTED` (8) | the body is over the layer's limit |
//! | 422 | `FAILED_PRECONDITION` (9) | the key was used with another payload (see below) |
//! | 429 | `RESOURCE_EXHAUSTED` (8) | rate limited, with pushback |
//! | 500 | `INTERNAL` (13) | |
//! | 501 | `UNIMPLEMENTED` (12) | |
//! | 502, 503 | `UNAVAILABLE` (14) | kill switch, disabled cluster, open breaker, store down |
//! | 504 | `DEADLINE_EXCEEDED` (4) | |
//! | other | `UNKNOWN` (2) | |
//!
//! A 422 fingerprint mismatch is `FAILED_PRECONDITION`, not `INVALID_ARGUMENT`: the payload is
//! valid on its own (with a fresh key the same call succeeds); it is refused only because of
//! the server's state (the key is bound to another payload), and the gRPC status guide says
//! `INVALID_ARGUMENT` is for arguments that are problematic *regardless of the state of the
//! system*, while `FAILED_PRECONDITION` means "do not retry until the state is fixed" (here:
//! until the client picks a new key).
//!
//! ```
//! use dreamnet_common::{grpc::{GrpcCode, ProblemFormat}, Problem};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//!
//! let mut request_headers = HeaderMap::new();
//! request_headers.insert("content-type", HeaderValue::from_static("application/grpc+proto"));
//! let format = ProblemFormat::of(&request_headers);
//! let response = Problem::from_status(StatusCode::TOO_MANY_REQUESTS)
//!     .detail("cluster star-bridge is over 30/min")
//!     .retry_after_millis(41_000)
//!     .render(format);
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["grpc-status"], "8");
//! assert_eq!(response.headers()["grpc-retry-pushback-ms"], "41000");
//! assert_eq!(GrpcCode::ResourceExhausted.http_equivalent(), StatusCode::TOO_MANY_REQUESTS);
//! ```

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::Problem;

/// The media type of gRPC (the request's, with any `+proto` / `;` suffix, starts with it).
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";
/// The `grpc-status` header (a trailer, or a header of a trailers-only response).
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-message` header: the status message, percent-encoded ([`encode_message`]).
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// The `grpc-retry-pushback-ms` header of gRFC A6: how long a retry policy waits.
pub static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
/// The metadata carrying the problem's `type` URI (when not `about:blank`), so a gRPC client
/// can tell a kill switch from an open breaker as an HTTP client reads the problem body.
pub static PROBLEM_TYPE_METADATA: HeaderName = HeaderName::from_static("dreamnet-problem-type");

/// The gRPC status codes (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// 2: an unknown error.
    Unknown = 2,
    /// 3: the client specified an invalid argument (whatever the system's state).
    InvalidArgument = 3,
    /// 4: the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// 5: some requested entity was not found.
    NotFound = 5,
    /// 6: the entity a client attempted to create already exists.
    AlreadyExists = 6,
    /// 7: the caller may not execute the operation.
    PermissionDenied = 7,
    /// 8: some resource (a quota, a size limit) has been exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// 10: aborted, typically by a concurrency issue; retry at a higher level.
    Aborted = 10,
    /// 11: the operation was attempted past the valid range.
    OutOfRange = 11,
    /// 12: not implemented or not supported.
    Unimplemented = 12,
    /// 13: an internal error.
    Internal = 13,
    /// 14: the service is currently unavailable; retrying (with backoff) may succeed.
    Unavailable = 14,
    /// 15: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// 16: no valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [Self; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The numeric code sent in `grpc-status`.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code of a numeric `grpc-status`, when it is one of the 17.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The code a rejection with this HTTP status gets (the table in the [module docs](self)).
    pub fn for_http(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Ok,
            400 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            402 | 412 | 422 => Self::FailedPrecondition,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            408 | 504 => Self::DeadlineExceeded,
            409 => Self::Aborted,
            413 | 429 => Self::ResourceExhausted,
            500 => Self::Internal,
            501 => Self::Unimplemented,
            502 | 503 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    /// The HTTP status equivalent to this code (google.rpc.Code's documented mapping), used
    /// to classify a gRPC response by its outcome ([`effective_status`]).
    pub fn http_equivalent(self) -> StatusCode {
        let code = match self {
            Self::Ok => 200,
            Self::Cancelled => 499,
            Self::InvalidArgument | Self::FailedPrecondition | Self::OutOfRange => 400,
            Self::DeadlineExceeded => 504,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Aborted => 409,
            Self::PermissionDenied => 403,
            Self::Unauthenticated => 401,
            Self::ResourceExhausted => 429,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::Unknown | Self::Internal | Self::DataLoss => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// How a layer renders its rejection, chosen from the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProblemFormat {
    /// RFC 9457 `application/problem+json` (every request that is not gRPC).
    #[default]
    ProblemJson,
    /// A gRPC trailers-only response (the request's `content-type` is `application/grpc*`).
    GrpcTrailersOnly,
}

impl ProblemFormat {
    /// The format for a request with these headers: gRPC when its `content-type` starts with
    /// `application/grpc` (any case: `application/grpc`, `+proto`, `+json`, `;charset=...`).
    pub fn of(headers: &HeaderMap) -> Self {
        if is_grpc(headers) {
            Self::GrpcTrailersOnly
        } else {
            Self::ProblemJson
        }
    }
}

/// Whether the `content-type` in `headers` is a gRPC one (`application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().get(..GRPC_CONTENT_TYPE.len()))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(GRPC_CONTENT_TYPE.as_bytes()))
}

/// The bytes `grpc-message` percent-encodes: everything outside `0x20..=0x7E`, and `%`
/// itself (gRPC over HTTP/2, "Percent-Byte-Unencoded"). Non-ASCII is always encoded, as UTF-8.
const GRPC_MESSAGE_ENCODED: &AsciiSet = &CONTROLS.add(b'%');

/// `message` percent-encoded for `grpc-message`: UTF-8, with every byte outside printable
/// ASCII and every `%` as `%XX`, so any text is a valid header value and decodes back exactly.
pub fn encode_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE_ENCODED).to_string()
}

/// The status a response's outcome amounts to: the HTTP equivalent of its `grpc-status` when
/// it is a trailers-only gRPC response (whose HTTP status is always 200), else its own status.
///
/// Layers that decide by outcome (a breaker counting failures, billing charging only a
/// success, idempotency keeping only some statuses) use this so a gRPC error is not read as
/// a success. A streamed gRPC response's status is in its trailers, which are not seen here.
pub fn effective_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    headers
        .get(&GRPC_STATUS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u8>().ok())
        .and_then(GrpcCode::from_u8)
        .map_or(status, GrpcCode::http_equivalent)
}

impl Problem {
    /// Overrides the gRPC status this problem renders with (by default
    /// [`GrpcCode::for_http`] of its HTTP status), for a status whose gRPC meaning depends on
    /// the cause (e.g. a 409 that is not a retryable conflict).
    #[must_use]
    pub fn grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc = Some(code);
        self
    }

    /// The gRPC status this problem renders with.
    pub fn grpc_status(&self) -> GrpcCode {
        self.grpc
            .unwrap_or_else(|| GrpcCode::for_http(self.status_code()))
    }

    /// The `grpc-message` text before encoding: the title, and the detail when there is one.
    pub fn grpc_message(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {detail}", self.title),
            None => self.title.clone(),
        }
    }

    /// Builds the gRPC trailers-only response (see the [module docs](self)): HTTP 200, empty
    /// body, `content-type: application/grpc`, `grpc-status`, `grpc-message`, the problem's
    /// headers as metadata, `grpc-retry-pushback-ms` from `Retry-After`, the problem type as
    /// `dreamnet-problem-type`; the [`StoreFault`](crate::StoreFault) mark is kept.
    pub fn into_grpc_response(self) -> Response<Full<Bytes>> {
        let code = self.grpc_status();
        let message = encode_message(&self.grpc_message());
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(GRPC_CONTENT_TYPE),
        );
        headers.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(u16::from(code.as_u8())),
        );
        // Percent-encoding leaves only printable ASCII, always a valid header value.
        if let Ok(message) = HeaderValue::try_from(message) {
            headers.insert(GRPC_MESSAGE.clone(), message);
        }
        if self.type_uri != "about:blank" {
            if let Ok(type_uri) = HeaderValue::try_from(self.type_uri.as_str()) {
                headers.insert(PROBLEM_TYPE_METADATA.clone(), type_uri);
            }
        }
        for (name, value) in self.headers {
            if name == header::RETRY_AFTER {
                if let Some(millis) = pushback_millis(&value) {
                    headers.insert(GRPC_RETRY_PUSHBACK_MS.clone(), HeaderValue::from(millis));
                }
            }
            headers.append(name, value);
        }
        if let Some(fault) = self.fault {
            fault.mark(&mut response);
        }
        response
    }
}

/// `Retry-After` (delay-seconds, the only form the layers send) in milliseconds.
fn pushback_millis(retry_after: &HeaderValue) -> Option<u64> {
    let secs: u64 = retry_after.to_str().ok()?.trim().parse().ok()?;
    secs.checked_mul(1000)
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
