//! OTLP export (feature `otlp`): a small OTLP/HTTP receiver in the test (hyper, decoding
//! `ExportTraceServiceRequest` with prost) sees one server span per request, with the W3C
//! trace id and parent span id of the request's `traceparent` and the DreamNet attributes.
#![cfg(feature = "otlp")]

mod common;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use common::TestServer;
use dreamnet_server::Config;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value, trace::v1::Span,
};
use parking_lot::Mutex;
use prost::Message;

/// What the receiver got: every span, and the paths / content types of the posts.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    posts: Vec<(String, String)>,
}

async fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).expect("protobuf");
                        let mut sink = sink.lock();
                        sink.posts.push((path, content_type));
                        for resource in export.resource_spans {
                            for scope in resource.scope_spans {
                                sink.spans.extend(scope.spans);
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

/// A server exporting its spans to a fresh [`receiver`], and what that receiver got.
async fn exporting_server() -> (TestServer, Arc<Mutex<Received>>) {
    let (addr, received) = receiver().await;
    let server = TestServer::start_with(Config {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..Config::default()
    })
    .await;
    (server, received)
}

/// Asserts each `(key, value)` is a string attribute of `span`.
#[track_caller]
fn assert_text_attributes(span: &Span, expected: &[(&str, &str)]) {
    for &(key, value) in expected {
        match attribute(span, key) {
            Some(Value::StringValue(s)) => assert_eq!(s, value, "attribute {key}"),
            other => panic!("attribute {key}: {other:?}, not the string {value:?}"),
        }
    }
}

async fn spans_of(received: &Arc<Mutex<Received>>, trace_id: &[u8]) -> Vec<Span> {
    dreamnet_test_support::eventually(
        "the span reaches the receiver",
        Duration::from_secs(10),
        || {
            let found: Vec<Span> = received
                .lock()
                .spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            async move { (!found.is_empty()).then_some(found) }
        },
    )
    .await
}

#[tokio::test]
async fn one_request_is_one_span_with_its_trace_id_and_attributes() {
    let (server, received) = exporting_server().await;
    let http = &server.http;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{parent}-01");
    let reply = http
        .post_json(
            "/api/wolf-pack/echo",
            &[("traceparent", &traceparent), ("idempotency-key", "otlp-1")],
            "{}",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A second request (another trace) proves the export kept going; after it arrived, the
    // first trace still has exactly one span.
    let second = "0af7651916cd43dd8448eb211c80319c";
    let reply = http
        .get_with_headers(
            "/api/wolf-pack/echo",
            &[("traceparent", &format!("00-{second}-b7ad6b7169203331-01"))],
        )
        .await;
    assert_eq!(reply.status, 200);
    spans_of(&received, &hex::decode(second).unwrap()).await;
    let spans = spans_of(&received, &hex::decode(trace).unwrap()).await;
    assert_eq!(spans.len(), 1, "one request, one span: {spans:?}");
    let span = &spans[0];
    assert_eq!(span.parent_span_id, hex::decode(parent).unwrap());
    assert_eq!(span.span_id.len(), 8);
    assert_ne!(
        span.span_id,
        hex::decode(parent).unwrap(),
        "a span of its own"
    );
    assert_eq!(span.name, "POST /api/{cluster}/echo");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(span.start_time_unix_nano > 0);
    assert_text_attributes(
        span,
        &[
            ("dreamnet.cluster", "wolf-pack"),
            ("dreamnet.decision", "admitted"),
            ("dreamnet.idempotency.outcome", "new"),
            ("http.route", "/api/{cluster}/echo"),
        ],
    );
    assert_eq!(
        attribute(span, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    {
        let received = received.lock();
        assert!(received
            .posts
            .iter()
            .all(|(path, ct)| path == "/v1/traces" && ct == "application/x-protobuf"));
    }

    // A refused request: the decision names the control plane's reason; a mint shows the
    // billing state. Both arrive before shutdown returns (the exporter flushes).
    http.kill_switch_on("otlp test").await;
    let killed = "11111111111111111111111111111111";
    http.get_with_headers(
        "/api/wolf-pack/echo",
        &[("traceparent", &format!("00-{killed}-2222222222222222-01"))],
    )
    .await
    .assert_problem(503);
    server.stop().await;
    let killed = spans_of(&received, &hex::decode(killed).unwrap()).await;
    assert_text_attributes(
        &killed[0],
        &[
            ("dreamnet.decision", "kill-switch"),
            ("dreamnet.problem.type", "urn:dreamnet:control:kill-switch"),
        ],
    );
}

#[tokio::test]
async fn a_mint_span_carries_the_billing_state_and_a_generated_id_is_mapped() {
    let (server, received) = exporting_server().await;
    let reply = server
        .http
        .post_json(
            "/api/mint-dream",
            &[
                ("x-idempotency-key", "otlp-mint-1"),
                ("x-trace-id", "otlp-mint-trace"),
            ],
            r#"{"dreamId": "dream-1", "wallet": "0xabc"}"#,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    // A non-W3C X-Trace-Id is mapped to its W3C form (the trace-id crate's mapping).
    let w3c = dreamnet_trace_id::w3c_trace_id("otlp-mint-trace");
    let spans = spans_of(&received, &hex::decode(w3c.as_ref()).unwrap()).await;
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_text_attributes(
        span,
        &[
            ("dreamnet.cluster", "dream-state"),
            ("dreamnet.billing.state", "charged"),
            ("dreamnet.trace_id", "otlp-mint-trace"),
        ],
    );
    assert!(
        span.parent_span_id.is_empty(),
        "no incoming traceparent: a root span"
    );
    server.stop().await;
}
