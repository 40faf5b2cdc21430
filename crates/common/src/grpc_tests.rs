//! Unit tests of the gRPC rendering: the status mapping (one table, and a test for each
//! status that carries more than a code), the encoding of `grpc-message`,
//! the metadata kept, and the classification of gRPC outcomes.

use super::*;
use crate::StoreFault;
use http_body::Body as _;

fn grpc_request() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// Renders a problem of `status` for a gRPC request and returns (`grpc-status`, response).
fn render(problem: Problem) -> (u8, Response<Full<Bytes>>) {
    let response = problem.render(ProblemFormat::of(&grpc_request()));
    let code = response.headers()[&GRPC_STATUS]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (code, response)
}

fn code_of(status: u16) -> u8 {
    render(Problem::from_status(StatusCode::from_u16(status).unwrap())).0
}

#[test]
fn a_429_is_resource_exhausted_with_pushback_from_retry_after() {
    let (code, response) =
        render(Problem::from_status(StatusCode::TOO_MANY_REQUESTS).retry_after_millis(40_500));
    assert_eq!(code, 8);
    assert_eq!(response.headers()[&GRPC_RETRY_PUSHBACK_MS], "41000");
    assert_eq!(response.headers()[header::RETRY_AFTER], "41");
}

#[test]
fn a_503_is_unavailable_with_pushback_only_when_known() {
    let (code, response) =
        render(Problem::from_status(StatusCode::SERVICE_UNAVAILABLE).retry_after_millis(1000));
    assert_eq!(code, 14);
    assert_eq!(response.headers()[&GRPC_RETRY_PUSHBACK_MS], "1000");
    let (code, response) = render(Problem::from_status(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(code, 14);
    assert!(response.headers().get(&GRPC_RETRY_PUSHBACK_MS).is_none());
}

#[test]
fn a_402_is_failed_precondition_with_the_detail_in_the_message() {
    let (code, response) = render(
        Problem::new(StatusCode::PAYMENT_REQUIRED, "Insufficient Funds")
            .detail("account acct-1 has 5 USD available; this action requires 10"),
    );
    assert_eq!(code, 9);
    assert_eq!(
        response.headers()[&GRPC_MESSAGE],
        "Insufficient Funds: account acct-1 has 5 USD available; this action requires 10"
    );
}

#[test]
fn every_status_follows_the_table() {
    let table = [
        (400, 3),  // INVALID_ARGUMENT
        (401, 16), // UNAUTHENTICATED
        (403, 7),
        (404, 5),
        (408, 4),
        (409, 10), // an in-flight duplicate: ABORTED
        (412, 9),
        (413, 8), // RESOURCE_EXHAUSTED
        (418, 2),
        (422, 9),  // a key reused with another payload: FAILED_PRECONDITION
        (500, 13), // INTERNAL
        (501, 12),
        (502, 14),
        (504, 4),
        (507, 2),
    ];
    for (status, code) in table {
        assert_eq!(code_of(status), code, "HTTP {status}");
    }
}

#[test]
fn an_override_wins_over_the_status_mapping() {
    let (code, _) = render(
        Problem::new(StatusCode::CONFLICT, "Currency Mismatch")
            .grpc_code(GrpcCode::FailedPrecondition),
    );
    assert_eq!(code, 9);
}

#[tokio::test]
async fn trailers_only_is_http_200_empty_body_grpc_content_type_and_metadata() {
    let ratelimit = HeaderName::from_static("ratelimit");
    let (_, response) = render(
        Problem::from_status(StatusCode::TOO_MANY_REQUESTS)
            .type_uri("urn:dreamnet:control:rate-limited")
            .header(
                ratelimit.clone(),
                HeaderValue::from_static("\"minute\";r=0;t=41"),
            )
            .trace_id("t-1"),
    );
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(headers[&ratelimit], "\"minute\";r=0;t=41");
    assert_eq!(
        headers[&PROBLEM_TYPE_METADATA],
        "urn:dreamnet:control:rate-limited"
    );
    assert!(headers.get(header::CACHE_CONTROL).is_none());
    // An empty body ends the stream with the HEADERS frame: that is what trailers-only is.
    assert!(response.body().is_end_stream());
    assert_eq!(response.body().size_hint().exact(), Some(0));
}

#[test]
fn about_blank_sends_no_problem_type() {
    let (_, response) = render(Problem::from_status(StatusCode::BAD_REQUEST));
    assert!(response.headers().get(&PROBLEM_TYPE_METADATA).is_none());
}

#[test]
fn the_store_fault_mark_is_kept() {
    let (_, response) =
        render(Problem::from_status(StatusCode::SERVICE_UNAVAILABLE).store_fault("idempotency"));
    assert_eq!(
        StoreFault::of(&response).map(StoreFault::store),
        Some("idempotency")
    );
}

#[test]
fn grpc_message_is_percent_encoded_per_the_spec() {
    // Printable ASCII but `%` passes; `%`, controls, DEL and non-ASCII (as UTF-8) are %XX.
    assert_eq!(encode_message("a b~!\"#$&'()"), "a b~!\"#$&'()");
    assert_eq!(encode_message("100%"), "100%25");
    assert_eq!(encode_message("line\nbreak\t\x7f"), "line%0Abreak%09%7F");
    assert_eq!(encode_message("über 🚀"), "%C3%BCber %F0%9F%9A%80");
    let text = "Too Many Requests: 100% of 30/min used; réessayez\r\n";
    let encoded = encode_message(text);
    assert!(
        encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{encoded}"
    );
    let decoded = percent_encoding::percent_decode_str(&encoded)
        .decode_utf8()
        .unwrap();
    assert_eq!(decoded, text);
}

#[test]
fn an_encoded_message_is_a_valid_header_value() {
    let (_, response) =
        render(Problem::from_status(StatusCode::BAD_REQUEST).detail("clé\u{0} invalide: 50%"));
    assert_eq!(
        response.headers()[&GRPC_MESSAGE],
        "Bad Request: cl%C3%A9%00 invalide: 50%25"
    );
}

#[test]
fn grpc_content_types_are_detected_and_others_are_not() {
    for grpc in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
        "application/grpc; charset=utf-8",
        "Application/GRPC",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(grpc));
        assert_eq!(
            ProblemFormat::of(&headers),
            ProblemFormat::GrpcTrailersOnly,
            "{grpc}"
        );
    }
    for other in ["application/json", "application/gr", "text/plain"] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(other));
        assert_eq!(
            ProblemFormat::of(&headers),
            ProblemFormat::ProblemJson,
            "{other}"
        );
    }
    assert_eq!(
        ProblemFormat::of(&HeaderMap::new()),
        ProblemFormat::ProblemJson
    );
}

#[test]
fn a_non_grpc_request_still_gets_problem_json() {
    let response = Problem::from_status(StatusCode::TOO_MANY_REQUESTS)
        .retry_after_millis(1000)
        .render(ProblemFormat::ProblemJson);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert!(response.headers().get(&GRPC_STATUS).is_none());
}

#[test]
fn effective_status_reads_a_trailers_only_grpc_status() {
    let mut headers = HeaderMap::new();
    assert_eq!(effective_status(StatusCode::OK, &headers), StatusCode::OK);
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("14"));
    assert_eq!(
        effective_status(StatusCode::OK, &headers),
        StatusCode::SERVICE_UNAVAILABLE
    );
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("0"));
    assert_eq!(effective_status(StatusCode::OK, &headers), StatusCode::OK);
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("99"));
    assert_eq!(effective_status(StatusCode::OK, &headers), StatusCode::OK);
}

#[test]
fn every_code_round_trips_and_maps_to_an_http_equivalent() {
    for n in 0..=16u8 {
        let code = GrpcCode::from_u8(n).unwrap();
        assert_eq!(code.as_u8(), n);
        let http = code.http_equivalent();
        assert_eq!(http.is_success(), n == 0, "{code:?}");
    }
    assert_eq!(GrpcCode::from_u8(17), None);
    // The rejections map back to their own HTTP status class.
    for status in [400u16, 401, 404, 409, 429, 500, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(GrpcCode::for_http(status).http_equivalent(), status);
    }
}
