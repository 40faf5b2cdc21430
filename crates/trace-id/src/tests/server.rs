//! The server layer: id resolution, validation, headers, extensions, span and task-local.

use super::capture::Capture;
use crate::{is_valid_trace_id, TraceContext, TraceIdLayer, Traceparent};
use bytes::Bytes;
use dreamnet_common::Problem;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use std::{convert::Infallible, sync::Arc};
use tower::{service_fn, ServiceBuilder, ServiceExt};

pub(super) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(super) const PARENT: &str = "00f067aa0ba902b7";
const VALID_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the handler saw.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) context: TraceContext,
    current: Option<TraceContext>,
    trace_id_header: Option<HeaderValue>,
    pub(super) tracestate: Option<HeaderValue>,
}

async fn echo(request: Request<()>) -> Result<Response<Seen>, Infallible> {
    // Across an await point, the request's context and span must still be current.
    tokio::task::yield_now().await;
    tracing::info!("in handler");
    let seen = Seen {
        context: TraceContext::from_extensions(request.extensions())
            .expect("TraceContext in extensions")
            .clone(),
        current: TraceContext::current(),
        trace_id_header: request.headers().get("x-trace-id").cloned(),
        tracestate: request.headers().get("tracestate").cloned(),
    };
    Ok(Response::new(seen))
}

pub(super) async fn send(request: Request<()>) -> Response<Seen> {
    ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(echo))
        .oneshot(request)
        .await
        .unwrap()
}

pub(super) fn request(headers: &[(&str, HeaderValue)]) -> Request<()> {
    let mut request = Request::builder().uri("/api/wolf-pack/echo?q=1");
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    request.body(()).unwrap()
}

pub(super) fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn response_id<B>(response: &Response<B>) -> &str {
    let mut all = response.headers().get_all("x-trace-id").iter();
    let id = all.next().expect("x-trace-id on the response");
    assert!(all.next().is_none(), "exactly one x-trace-id");
    id.to_str().unwrap()
}

pub(super) fn assert_generated(id: &str) {
    let (millis, random) = id.split_once('-').expect("timestamp-hex shape");
    assert!(u64::from_str_radix(millis, 36).is_ok(), "{id}");
    assert_eq!(random.len(), 16, "{id}");
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
}

fn assert_span_id(id: &str) {
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_ne!(id, "0000000000000000");
}

/// The response, the extension, the task-local and the header seen inside all agree.
pub(super) fn assert_consistent(response: &Response<Seen>) -> TraceContext {
    let id = response_id(response);
    let seen = response.body();
    assert_eq!(seen.context.trace_id(), id);
    assert_eq!(seen.current.as_ref(), Some(&seen.context));
    assert_eq!(seen.trace_id_header.as_ref().unwrap(), id);
    assert_span_id(seen.context.span_id());
    seen.context.clone()
}

#[tokio::test]
async fn valid_x_trace_id_is_kept() {
    for id in ["checkout-42", "a", "A.b_C-9", &"x".repeat(128), TRACE] {
        let response = send(request(&[("x-trace-id", value(id))])).await;
        let ctx = assert_consistent(&response);
        assert_eq!(ctx.trace_id(), id);
        assert_eq!(ctx.parent_span_id(), None);
    }
}

#[tokio::test]
async fn missing_x_trace_id_is_generated() {
    let first = send(request(&[])).await;
    let second = send(request(&[])).await;
    let a = assert_consistent(&first);
    let b = assert_consistent(&second);
    assert_generated(a.trace_id());
    assert_ne!(a.trace_id(), b.trace_id());
    assert_ne!(a.span_id(), b.span_id());
}

fn hostile_values() -> Vec<HeaderValue> {
    vec![
        HeaderValue::from_str(&"a".repeat(257)).unwrap(),
        HeaderValue::from_str(&"b".repeat(129)).unwrap(),
        HeaderValue::from_bytes(b"non-ascii\xc3\xa9-\xff\xfe").unwrap(),
        HeaderValue::from_bytes("trace-\u{1f600}".as_bytes()).unwrap(),
        HeaderValue::from_static(""),
        HeaderValue::from_static(" "),
        HeaderValue::from_static("two words"),
        HeaderValue::from_static("evil\tvalue"),
        HeaderValue::from_static("x;drop table"),
        HeaderValue::from_static("<script>alert(1)</script>"),
        HeaderValue::from_static("a/b"),
        HeaderValue::from_static("\"quoted\""),
    ]
}

#[tokio::test]
async fn hostile_x_trace_id_is_replaced_and_never_echoed_or_logged() {
    let (capture, _guard) = Capture::install();
    for bad in hostile_values() {
        let response = send(request(&[("x-trace-id", bad.clone())])).await;
        let ctx = assert_consistent(&response);
        assert_generated(ctx.trace_id());
        assert_ne!(response.headers()["x-trace-id"], bad);
        // The handler sees the generated id, not the hostile one.
        assert_ne!(response.body().trace_id_header.as_ref(), Some(&bad));
    }
    let text = capture.all_text();
    for needle in [
        "aaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbb",
        "two words",
        "evil",
        "drop table",
        "script",
        "a/b",
        "quoted",
        "non-ascii",
        "\\x",
    ] {
        assert!(!text.contains(needle), "{needle:?} was logged:\n{text}");
    }
    let rejected = capture.events_with_message("ignored an invalid incoming trace id");
    let lens: Vec<_> = rejected.iter().map(|f| f["len"].clone()).collect();
    assert_eq!(
        lens,
        ["257", "129", "14", "10", "0", "1", "9", "10", "12", "25", "3", "8"]
    );
    // The rejection is logged inside the request's span, with the new id.
    assert!(rejected.iter().all(|f| f.contains_key("span.trace_id")));
}

#[tokio::test]
async fn repeated_x_trace_id_is_replaced() {
    let mut req = request(&[]);
    req.headers_mut().append("x-trace-id", value("first"));
    req.headers_mut().append("x-trace-id", value("second"));
    let response = send(req).await;
    let ctx = assert_consistent(&response);
    assert_generated(ctx.trace_id());
}

#[tokio::test]
async fn valid_traceparent_gives_trace_and_parent_and_keeps_tracestate() {
    let response = send(request(&[
        ("traceparent", value(VALID_TP)),
        ("tracestate", value("congo=t61rcWkgMzE")),
    ]))
    .await;
    let ctx = assert_consistent(&response);
    assert_eq!(ctx.trace_id(), TRACE);
    assert_eq!(ctx.parent_span_id(), Some(PARENT));
    assert_ne!(ctx.span_id(), PARENT);
    assert_eq!(
        response.body().tracestate.as_ref().unwrap(),
        "congo=t61rcWkgMzE"
    );
}

#[tokio::test]
async fn invalid_x_trace_id_falls_back_to_traceparent() {
    let response = send(request(&[
        ("x-trace-id", value("not valid!")),
        ("traceparent", value(VALID_TP)),
    ]))
    .await;
    let ctx = assert_consistent(&response);
    assert_eq!(ctx.trace_id(), TRACE);
    assert_eq!(ctx.parent_span_id(), Some(PARENT));
}

fn invalid_traceparents() -> Vec<String> {
    let tp = |v: &str, t: &str, p: &str, f: &str| format!("{v}-{t}-{p}-{f}");
    vec![
        tp("00", &TRACE[1..], PARENT, "01"),
        tp("00", TRACE, &format!("{PARENT}0"), "01"),
        tp("00", &TRACE.to_uppercase(), PARENT, "01"),
        tp("00", TRACE, &PARENT.to_uppercase(), "01"),
        tp("00", &"0".repeat(32), PARENT, "01"),
        tp("00", TRACE, &"0".repeat(16), "01"),
        tp("ff", TRACE, PARENT, "01"),
        tp("00", TRACE, PARENT, "zz"),
        tp("00", TRACE, PARENT, "0A"),
        tp("00", TRACE, PARENT, "1"),
        format!("{VALID_TP}-extra"),
        format!("{}.future", tp("cc", TRACE, PARENT, "01")),
        String::new(),
    ]
}

#[tokio::test]
async fn invalid_traceparent_is_ignored_and_tracestate_dropped() {
    for bad in invalid_traceparents() {
        let response = send(request(&[
            ("traceparent", value(&bad)),
            ("tracestate", value("congo=t61rcWkgMzE")),
        ]))
        .await;
        let ctx = assert_consistent(&response);
        assert_generated(ctx.trace_id());
        assert_eq!(ctx.parent_span_id(), None, "{bad:?}");
        assert_eq!(response.body().tracestate, None, "{bad:?}");
    }
    // With a valid X-Trace-Id the id is kept, and the invalid trace context still dropped.
    let response = send(request(&[
        ("x-trace-id", value("keep-me")),
        ("traceparent", value("ff-bad")),
        ("tracestate", value("congo=t61rcWkgMzE")),
    ]))
    .await;
    assert_eq!(assert_consistent(&response).trace_id(), "keep-me");
    assert_eq!(response.body().tracestate, None);
}

#[tokio::test]
async fn two_traceparents_are_invalid() {
    let mut req = request(&[("tracestate", value("congo=t61rcWkgMzE"))]);
    req.headers_mut().append("traceparent", value(VALID_TP));
    req.headers_mut().append("traceparent", value(VALID_TP));
    let response = send(req).await;
    let ctx = assert_consistent(&response);
    assert_generated(ctx.trace_id());
    assert_eq!(response.body().tracestate, None);
}

#[tokio::test]
async fn tracestate_without_traceparent_is_dropped() {
    let response = send(request(&[("tracestate", value("congo=t61rcWkgMzE"))])).await;
    assert_eq!(response.body().tracestate, None);
}

#[tokio::test]
async fn x_trace_id_with_matching_traceparent_continues_the_parent_span() {
    // Our client layer sends X-Trace-Id plus a traceparent carrying its W3C form.
    let upstream = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    let response = send(request(&[
        ("x-trace-id", value(upstream.trace_id())),
        ("traceparent", value(&upstream.traceparent())),
    ]))
    .await;
    let ctx = assert_consistent(&response);
    assert_eq!(ctx.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
    assert_eq!(ctx.parent_span_id(), Some(upstream.span_id()));

    // A traceparent of another trace continues the W3C trace; X-Trace-Id stays the
    // correlation id (see tests::w3c for the whole table).
    let response = send(request(&[
        ("x-trace-id", value("mbx2k9q1-3f9a0c1e77d24b6a")),
        ("traceparent", value(VALID_TP)),
        ("tracestate", value("congo=t61rcWkgMzE")),
    ]))
    .await;
    let ctx = assert_consistent(&response);
    assert_eq!(ctx.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
    assert_eq!(ctx.w3c_trace_id(), TRACE);
    assert_eq!(ctx.parent_span_id(), Some(PARENT));
    assert!(
        response.body().tracestate.is_some(),
        "valid traceparent keeps tracestate"
    );
}

#[tokio::test]
async fn rejections_of_inner_layers_carry_the_trace_id() {
    // An inner layer that answers 429 problem+json without calling the handler.
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            let trace_id = TraceContext::from_extensions(request.extensions())
                .map(|ctx| ctx.trace_id().to_owned());
            Ok::<_, Infallible>(
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
                    .maybe_trace_id(trace_id)
                    .into_response(),
            )
        }));
    let response = service
        .clone()
        .oneshot(request(&[("x-trace-id", value("rejected-1"))]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response_id(&response), "rejected-1");

    let response = service.oneshot(request(&[])).await.unwrap();
    assert_generated(response_id(&response));
}

#[tokio::test]
async fn the_response_header_is_ours_even_if_the_inner_service_set_one() {
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(|_request: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::new()));
            response
                .headers_mut()
                .append("x-trace-id", value("spoofed"));
            response.headers_mut().append("x-trace-id", value("twice"));
            Ok::<_, Infallible>(response)
        }));
    let response = service
        .oneshot(request(&[("x-trace-id", value("real"))]))
        .await
        .unwrap();
    assert_eq!(response_id(&response), "real");
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(|_request: Request<()>| async {
            Err::<Response<()>, _>("boom")
        }));
    assert_eq!(service.oneshot(request(&[])).await.unwrap_err(), "boom");
}

#[tokio::test]
async fn header_names_are_configurable() {
    let service = ServiceBuilder::new()
        .layer(
            TraceIdLayer::new()
                .trace_id_header(HeaderName::from_static("x-request-id"))
                .traceparent_header(HeaderName::from_static("x-parent"))
                .tracestate_header(HeaderName::from_static("x-state")),
        )
        .service(service_fn(|request: Request<()>| async move {
            let ctx = TraceContext::from_extensions(request.extensions())
                .unwrap()
                .clone();
            let state = request.headers().get("x-state").cloned();
            Ok::<_, Infallible>(Response::new((ctx, state)))
        }));

    let response = service
        .clone()
        .oneshot(request(&[
            ("x-request-id", value("req-1")),
            ("x-trace-id", value("ignored")),
        ]))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-1");
    assert!(!response.headers().contains_key("x-trace-id"));
    assert_eq!(response.body().0.trace_id(), "req-1");

    let response = service
        .clone()
        .oneshot(request(&[
            ("x-parent", value(VALID_TP)),
            ("x-state", value("k=v")),
        ]))
        .await
        .unwrap();
    assert_eq!(response.body().0.trace_id(), TRACE);
    assert!(response.body().1.is_some());

    let response = service
        .oneshot(request(&[
            ("x-parent", value("ff-nope")),
            ("x-state", value("k=v")),
        ]))
        .await
        .unwrap();
    assert_generated(response.body().0.trace_id());
    assert!(response.body().1.is_none());
}

#[tokio::test]
async fn custom_policy_and_its_invalid_output() {
    let make = |id: &'static str| {
        ServiceBuilder::new()
            .layer(TraceIdLayer::new().make_trace_id(move || id.to_owned()))
            .service(service_fn(echo))
    };
    let response = make("custom-id").oneshot(request(&[])).await.unwrap();
    assert_eq!(assert_consistent(&response).trace_id(), "custom-id");

    // A policy producing an unsafe id cannot leak it.
    let (capture, _guard) = Capture::install();
    let response = make("bad id\u{7f}").oneshot(request(&[])).await.unwrap();
    assert_generated(assert_consistent(&response).trace_id());
    assert!(!capture.all_text().contains("bad id"));
}

/// A policy writing its own bytes is checked like one returning a `String`.
#[tokio::test]
async fn a_policy_s_own_bytes_are_checked_too() {
    struct Bytewise(&'static [u8]);
    impl crate::MakeTraceId for Bytewise {
        fn make_trace_id<B>(&self, _request: &Request<B>) -> String {
            unreachable!("the layer asks for the bytes")
        }
        fn make_trace_id_bytes<B>(&self, _request: &Request<B>) -> Bytes {
            Bytes::from_static(self.0)
        }
    }
    let make = |id: &'static [u8]| {
        ServiceBuilder::new()
            .layer(TraceIdLayer::new().make_trace_id(Bytewise(id)))
            .service(service_fn(echo))
    };
    let response = make(b"bytes-id").oneshot(request(&[])).await.unwrap();
    assert_eq!(assert_consistent(&response).trace_id(), "bytes-id");

    let (capture, _guard) = Capture::install();
    for bad in [&b"bad id"[..], b"", b"caf\xc3\xa9", &[b'x'; 129]] {
        let response = make(bad).oneshot(request(&[])).await.unwrap();
        assert_generated(assert_consistent(&response).trace_id());
    }
    assert!(!capture.all_text().contains("bad id"));
}

#[tokio::test]
async fn span_fields_are_recorded_and_handler_logs_carry_them() {
    let (capture, _guard) = Capture::install();
    let response = send(
        Request::builder()
            .method("POST")
            .uri("/api/mint-dream?secret=no")
            .header("traceparent", VALID_TP)
            .body(())
            .unwrap(),
    )
    .await;
    let ctx = assert_consistent(&response);

    let spans = capture.spans_named("request");
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span["method"], "POST");
    assert_eq!(span["path"], "/api/mint-dream");
    assert_eq!(span["trace_id"], TRACE);
    assert_eq!(span["span_id"], ctx.span_id());
    assert_eq!(span["parent_span_id"], PARENT);
    assert_eq!(span["trace_source"], "traceparent");

    // The handler logged after an await: the event is inside the request span.
    let events = capture.events_with_message("in handler");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["span.trace_id"], TRACE);
    assert_eq!(events[0]["span.span_id"], ctx.span_id());
}

#[tokio::test]
async fn span_source_field_for_header_and_generated() {
    let (capture, _guard) = Capture::install();
    send(request(&[("x-trace-id", value("given"))])).await;
    send(request(&[])).await;
    let spans = capture.spans_named("request");
    let sources: Vec<_> = spans.iter().map(|s| s["trace_source"].as_str()).collect();
    assert_eq!(sources, ["header", "generated"]);
    assert!(!spans[0].contains_key("parent_span_id"));
}

#[tokio::test]
async fn concurrent_requests_keep_their_own_context() {
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(echo));
    let (a, b) = tokio::join!(
        service
            .clone()
            .oneshot(request(&[("x-trace-id", value("first"))])),
        service
            .clone()
            .oneshot(request(&[("x-trace-id", value("second"))])),
    );
    assert_eq!(assert_consistent(&a.unwrap()).trace_id(), "first");
    assert_eq!(assert_consistent(&b.unwrap()).trace_id(), "second");
    assert!(
        TraceContext::current().is_none(),
        "the context does not leak out"
    );
}

#[tokio::test]
async fn poll_ready_is_forwarded() {
    use std::task::{Context, Poll};
    use tower::Service;

    #[derive(Clone)]
    struct NotReady;
    impl Service<Request<()>> for NotReady {
        type Response = Response<()>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Response<()>, &'static str>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err("overloaded"))
        }
        fn call(&mut self, _request: Request<()>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut service = TraceIdLayer::new().layer_service(NotReady);
    let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
    assert_eq!(ready, Err("overloaded"));
}

#[test]
fn service_and_future_are_send_and_sync_as_axum_requires() {
    use tower::Service;
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send + 'static>(_: &T) {}
    let mut service = TraceIdLayer::new().layer_service(service_fn(echo));
    send_sync(&service);
    send_sync(&TraceIdLayer::new());
    let future = service.call(request(&[]));
    send(&future);
}

#[test]
fn generated_ids_in_the_response_are_valid_header_and_trace_ids() {
    let id = crate::TimestampHex::new().generate();
    assert!(is_valid_trace_id(&id));
    assert!(HeaderValue::from_str(&id).is_ok());
    let ctx = TraceContext::new(Arc::<str>::from(id));
    assert!(Traceparent::parse(&ctx.traceparent()).is_some());
}

impl TraceIdLayer {
    fn layer_service<S>(&self, inner: S) -> crate::TraceId<S> {
        tower_layer::Layer::layer(self, inner)
    }
}

use proptest::strategy::Strategy as _;

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(64))]

    /// Whatever bytes a client sends as X-Trace-Id (and traceparent), the response carries a
    /// valid trace id, and it is the client's value exactly when that value is valid.
    #[test]
    fn any_incoming_header_gives_a_valid_response_id(
        raw in proptest::prop_oneof![
            proptest::collection::vec(0x20u8..=0xff, 0..300),
            "[A-Za-z0-9._-]{0,140}".prop_map(String::into_bytes),
            "[ -~]{0,140}".prop_map(String::into_bytes),
        ],
        tp in "\\PC{0,60}",
    ) {
        let Ok(incoming) = HeaderValue::from_bytes(&raw) else { return Ok(()) };
        let mut headers = vec![("x-trace-id", incoming.clone())];
        if let Ok(tp) = HeaderValue::from_str(&tp) {
            headers.push(("traceparent", tp));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let response = runtime.block_on(send(request(&headers)));
        let ctx = assert_consistent(&response);
        proptest::prop_assert!(is_valid_trace_id(ctx.trace_id()));
        proptest::prop_assert_eq!(crate::id::is_valid_trace_id_bytes(&raw), ctx.trace_id().as_bytes() == raw.as_slice());
    }
}
