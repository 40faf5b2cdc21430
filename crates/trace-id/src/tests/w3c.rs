//! The W3C Trace Context rules as the W3C test harness checks them: a request comes in with
//! some headers, the service calls out through the client layer, and the harness looks at
//! the `traceparent` / `tracestate` of the outbound calls. Cases derived from the
//! recommendation and the scenarios of its test suite (w3c/trace-context `test/`), plus our
//! `X-Trace-Id` rule.

use super::{
    capture::Capture,
    server::{request, send, value, PARENT, TRACE},
};
use crate::{PropagateTraceLayer, TraceIdLayer, Traceparent};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use std::{collections::HashSet, convert::Infallible};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The harness's trace id and parent id.
const HT: &str = "12345678901234567890123456789012";
const HP: &str = "1234567890123456";

/// What one outbound call carried.
#[derive(Debug)]
struct Out {
    trace_id: String,
    parent_id: String,
    flags: String,
    tracestate: Option<String>,
    x_trace_id: String,
}

impl Out {
    fn of(headers: &HeaderMap) -> Self {
        let all: Vec<_> = headers.get_all("traceparent").iter().collect();
        assert_eq!(all.len(), 1, "exactly one traceparent: {headers:?}");
        let value = all[0].to_str().unwrap();
        // The harness's format: ^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$
        assert_eq!(value.len(), 55, "{value}");
        assert!(value.starts_with("00-"), "outbound is version 00: {value}");
        let tp = Traceparent::parse(value).expect("valid traceparent");
        let states: Vec<_> = headers.get_all("tracestate").iter().collect();
        assert!(states.len() <= 1, "sent as one field");
        Self {
            trace_id: tp.trace_id().to_owned(),
            parent_id: tp.parent_id().to_owned(),
            flags: value[53..].to_owned(),
            tracestate: states.first().map(|v| v.to_str().unwrap().to_owned()),
            x_trace_id: headers["x-trace-id"].to_str().unwrap().to_owned(),
        }
    }

    /// The harness's parse of the tracestate it got (its own `Tracestate` keeps the first of
    /// a duplicated key).
    fn state(&self, key: &str) -> Option<&str> {
        let state = self.tracestate.as_deref()?;
        state
            .split(',')
            .filter_map(|member| member.trim().split_once('='))
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

/// Serves one request carrying `headers` (in order, repeats allowed); the handler makes
/// `calls` outbound calls through `PropagateTraceLayer`. Returns what each call carried.
async fn harness(headers: &[(&str, &str)], calls: usize) -> Vec<Out> {
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(move |_request: Request<()>| async move {
            let client = ServiceBuilder::new()
                .layer(PropagateTraceLayer::new())
                .service(service_fn(|call: Request<()>| async move {
                    Ok::<_, Infallible>(Response::new(call.headers().clone()))
                }));
            let mut sent = Vec::new();
            for _ in 0..calls {
                let call = client.clone().oneshot(Request::new(())).await?;
                sent.push(call.into_body());
            }
            Ok::<_, Infallible>(Response::new(sent))
        }));
    let mut request = Request::new(());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let value = HeaderValue::from_bytes(value.as_bytes()).unwrap();
        request.headers_mut().append(name, value);
    }
    let response = service.oneshot(request).await.unwrap();
    response.into_body().iter().map(Out::of).collect()
}

async fn one(headers: &[(&str, &str)]) -> Out {
    harness(headers, 1).await.pop().unwrap()
}

fn tp(value: &str) -> (&'static str, &str) {
    ("traceparent", value)
}

/// The harness's traceparent with flags `00`, and `tracestate` fields.
fn with_state<'a>(states: &[&'a str]) -> Vec<(&'static str, &'a str)> {
    let mut headers = vec![tp(
        "00-12345678901234567890123456789012-1234567890123456-00",
    )];
    headers.extend(states.iter().map(|s| ("tracestate", *s)));
    headers
}

#[tokio::test]
async fn traceparent_continued_or_restarted() {
    let continued = [
        "00-12345678901234567890123456789012-1234567890123456-01",
        // test_traceparent_version_0xcc
        "cc-12345678901234567890123456789012-1234567890123456-01",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        // test_traceparent_ows_handling
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ];
    for value in continued {
        let out = one(&[tp(value)]).await;
        assert_eq!(out.trace_id, HT, "{value:?} continues the trace");
        assert_ne!(out.parent_id, HP, "{value:?}: our span is the new parent");
        assert_eq!(out.flags, "01", "{value:?}");
    }

    let restarted = [
        // version 00 with extra characters; future version with a bad 56th character
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        // versions
        "ff-12345678901234567890123456789012-1234567890123456-01",
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
        // trace-id
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        // parent-id
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        // trace-flags
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
        // casing
        "00-1234567890ABCDEF1234567890123456-1234567890123456-01",
    ];
    for value in restarted {
        let out = one(&[tp(value), ("tracestate", "foo=1")]).await;
        assert_ne!(out.trace_id, HT, "{value:?} restarts the trace");
        assert!(
            !out.trace_id.starts_with("1234567890123456789012345678901")
                && !out.trace_id.ends_with("2345678901234567890123456789012"),
            "{value:?}: not a piece of the invalid id"
        );
        assert_eq!(out.tracestate, None, "{value:?}: its tracestate goes too");
    }
}

#[tokio::test]
async fn traceparent_header_names() {
    // Names are case-insensitive ...
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let out = one(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )])
        .await;
        assert_eq!(out.trace_id, HT, "{name}");
    }
    // ... but other spellings are other headers.
    for name in ["trace-parent", "trace.parent"] {
        let out = one(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )])
        .await;
        assert_ne!(out.trace_id, HT, "{name}");
    }
    // Two traceparent fields: restart, use neither.
    let out = one(&[
        tp("00-12345678901234567890123456789011-1234567890123456-01"),
        tp("00-12345678901234567890123456789012-1234567890123456-01"),
    ])
    .await;
    assert!(!out.trace_id.starts_with("123456789012345678901234567890"));
}

#[tokio::test]
async fn flags_are_carried() {
    for (incoming, outgoing) in [("00", "00"), ("01", "01"), ("02", "02"), ("03", "03")] {
        let value = format!("00-{HT}-{HP}-{incoming}");
        assert_eq!(one(&[tp(&value)]).await.flags, outgoing, "{incoming}");
        let future = format!("fe-{HT}-{HP}-{incoming}-more");
        assert_eq!(one(&[tp(&future)]).await.flags, outgoing, "{incoming}");
    }
    // Reserved bits are cleared (the recommendation: vendors MUST set them to zero).
    assert_eq!(one(&[tp(&format!("00-{HT}-{HP}-ff"))]).await.flags, "03");
    assert_eq!(one(&[tp(&format!("00-{HT}-{HP}-08"))]).await.flags, "00");
    // A trace this service starts is sampled.
    assert_eq!(one(&[]).await.flags, "01");
}

#[tokio::test]
async fn several_calls_are_several_child_spans() {
    // AdvancedTest: with a valid, without, and with an invalid traceparent.
    for headers in [
        vec![tp(
            "00-12345678901234567890123456789012-1234567890123456-01",
        )],
        vec![],
        vec![tp(
            "00-00000000000000000000000000000000-1234567890123456-01",
        )],
    ] {
        let outs = harness(&headers, 3).await;
        let traces: HashSet<_> = outs.iter().map(|o| o.trace_id.as_str()).collect();
        let parents: HashSet<_> = outs.iter().map(|o| o.parent_id.as_str()).collect();
        assert_eq!(traces.len(), 1, "{headers:?}");
        assert_eq!(parents.len(), 3, "{headers:?}");
        assert!(!traces.contains("00000000000000000000000000000000"));
        if !headers.is_empty() && headers[0].1.starts_with("00-1") {
            assert!(traces.contains(HT));
        }
    }
}

#[tokio::test]
async fn tracestate_is_validated_and_propagated() {
    // test_tracestate_included_traceparent_missing
    assert_eq!(one(&[("tracestate", "foo=1")]).await.tracestate, None);
    assert_eq!(one(&[("tracestate", "foo=1,bar=2")]).await.tracestate, None);

    // (tracestate fields, what goes out): inherited cases
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let tenant_key = format!("{key}@a-z0-9_-*/");
    let all_values: String = (0x20u8..=0x7e)
        .filter(|&b| b != b',' && b != b'=')
        .map(char::from)
        .collect();
    let all_chars = format!("{key}={all_values}");
    let tenant_chars = format!("{tenant_key}={all_values}");
    let z256 = format!("{}=1", "z".repeat(256));
    let tv = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let chunk = |range: std::ops::Range<usize>| members[range].join(",");
    let (c1, c2, c3, c4_32, c4_33) = (
        chunk(0..10),
        chunk(10..20),
        chunk(20..30),
        chunk(30..32),
        chunk(30..33),
    );
    let inherited: Vec<(Vec<&str>, &str)> = vec![
        (vec!["foo=1,bar=2"], "foo=1,bar=2"),
        (vec![""], ""),
        (vec!["foo=1", ""], "foo=1"),
        (vec!["", "foo=1"], "foo=1"),
        (
            vec!["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            "foo=1,bar=2,rojo=1,congo=2,baz=3",
        ),
        // duplicated keys: the left-most (most recent) entry is kept
        (vec!["foo=1,foo=1"], "foo=1"),
        (vec!["foo=1,foo=2"], "foo=1"),
        (vec!["foo=1", "foo=1"], "foo=1"),
        (vec!["foo=1", "foo=2"], "foo=1"),
        (vec![&all_chars], &all_chars),
        (vec![&tenant_chars], &tenant_chars),
        (vec!["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
        (
            vec!["foo=1\t \t,\t \tbar=2,\t \tbaz=3"],
            "foo=1,bar=2,baz=3",
        ),
        (vec![" foo=1"], "foo=1"),
        (vec!["\tfoo=1"], "foo=1"),
        (vec!["foo=1 "], "foo=1"),
        (vec!["foo=1\t"], "foo=1"),
        (vec!["\t foo=1 \t"], "foo=1"),
        (vec!["foo=1", &z256], ""),
        (vec!["foo=1", &tv], ""),
        (vec![&c1, &c2, &c3, &c4_32], ""),
    ];
    for (states, expected) in &inherited {
        let out = one(&with_state(states)).await;
        assert_eq!(out.trace_id, HT);
        assert_eq!(out.flags, "00");
        match *expected {
            "" if states.iter().all(|s| s.is_empty()) => {
                assert_eq!(out.tracestate, None, "{states:?}: empty is not sent");
            }
            "" => {
                let sent = out.tracestate.as_deref().expect("inherited");
                assert!(sent.starts_with(&states[0][..5]), "{states:?}: {sent}");
            }
            expected => assert_eq!(out.tracestate.as_deref(), Some(expected), "{states:?}"),
        }
    }
    let all32 = one(&with_state(&[&c1, &c2, &c3, &c4_32])).await;
    assert_eq!(all32.tracestate.as_deref().unwrap().split(',').count(), 32);
    assert_eq!(all32.state("bar01"), Some("01"));

    // Discarded as a whole, with the traceparent still continued.
    let z257 = format!("{}=1", "z".repeat(257));
    let t242 = format!("{}@v=1", "t".repeat(242));
    let v15 = format!("t@{}=1", "v".repeat(15));
    let discarded: Vec<Vec<&str>> = vec![
        vec!["foo =1"],
        vec!["FOO=1"],
        vec!["foo.bar=1"],
        vec!["foo@=1,bar=2"],
        vec!["@foo=1,bar=2"],
        vec!["foo@@bar=1,bar=2"],
        vec!["foo@bar@baz=1,bar=2"],
        vec![&c1, &c2, &c3, &c4_33],
        vec!["foo=1", &z257],
        vec!["foo=1", &t242],
        vec!["foo=1", &v15],
        vec!["foo=bar=baz"],
        vec!["foo=,bar=3"],
    ];
    for states in &discarded {
        let out = one(&with_state(states)).await;
        assert_eq!(out.trace_id, HT, "{states:?}: traceparent is unaffected");
        assert_eq!(out.tracestate, None, "{states:?} is discarded");
    }

    // Header names: case-insensitive; other spellings are other headers.
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        let mut headers = with_state(&[]);
        headers.push((name, "foo=1"));
        assert_eq!(one(&headers).await.state("foo"), Some("1"), "{name}");
    }
    for name in ["trace-state", "trace.state"] {
        let mut headers = with_state(&[]);
        headers.push((name, "foo=1"));
        assert_eq!(one(&headers).await.state("foo"), None, "{name}");
    }
}

/// The resolution table of the crate docs, row by row.
#[tokio::test]
async fn x_trace_id_and_traceparent() {
    let valid_tp = format!("00-{HT}-{HP}-00");
    /// (request headers, correlation id out, continued W3C trace id)
    type Row<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<&'a str>);
    let rows: [Row<'_>; 6] = [
        // both valid, other traces: X-Trace-Id correlates, traceparent continues W3C
        (
            &[("x-trace-id", "checkout-42"), tp(&valid_tp)],
            "checkout-42",
            Some(HT),
        ),
        // both valid, same trace
        (&[("x-trace-id", HT), tp(&valid_tp)], HT, Some(HT)),
        // only X-Trace-Id: its W3C form
        (&[("x-trace-id", "checkout-42")], "checkout-42", None),
        // X-Trace-Id with an invalid traceparent: a new W3C trace from the id
        (
            &[("x-trace-id", "checkout-42"), tp("ff-bad")],
            "checkout-42",
            None,
        ),
        // invalid X-Trace-Id, valid traceparent: the traceparent's trace id for both
        (&[("x-trace-id", "bad id"), tp(&valid_tp)], HT, Some(HT)),
        (&[tp(&valid_tp)], HT, Some(HT)),
    ];
    for (headers, correlation, w3c) in rows {
        let mut headers = headers.to_vec();
        headers.push(("tracestate", "foo=1"));
        let out = one(&headers).await;
        assert_eq!(out.x_trace_id, correlation, "{headers:?}");
        match w3c {
            Some(trace) => {
                assert_eq!(out.trace_id, trace, "{headers:?}");
                assert_eq!(out.flags, "00", "{headers:?}");
                assert_eq!(out.tracestate.as_deref(), Some("foo=1"), "{headers:?}");
            }
            None => {
                assert_eq!(
                    out.trace_id,
                    crate::w3c_trace_id(correlation),
                    "{headers:?}"
                );
                assert_eq!(out.flags, "01", "{headers:?}");
                assert_eq!(out.tracestate, None, "{headers:?}");
            }
        }
    }
}

#[tokio::test]
async fn the_handler_sees_the_w3c_part_and_the_span_records_it() {
    let (capture, _guard) = Capture::install();
    let response = send(request(&[
        ("x-trace-id", value("checkout-42")),
        (
            "traceparent",
            value(&format!("01-{TRACE}-{PARENT}-00-next")),
        ),
        ("tracestate", value("congo=t61rcWkgMzE , rojo=1")),
    ]))
    .await;
    assert_eq!(response.headers()["x-trace-id"], "checkout-42");
    let seen = response.body();
    let ctx = &seen.context;
    assert_eq!(ctx.trace_id(), "checkout-42");
    assert_eq!(ctx.w3c_trace_id(), TRACE);
    assert_eq!(ctx.parent_span_id(), Some(PARENT));
    assert!(!ctx.trace_flags().sampled());
    assert_eq!(
        ctx.tracestate().map(crate::TraceState::as_str),
        Some("congo=t61rcWkgMzE,rojo=1")
    );
    // The request header is left as sent when valid.
    assert_eq!(
        seen.tracestate.as_ref().unwrap(),
        "congo=t61rcWkgMzE , rojo=1"
    );
    let span = &capture.spans_named("request")[0];
    assert_eq!(span["trace_id"], "checkout-42");
    assert_eq!(span["w3c_trace_id"], TRACE);
    assert_eq!(span["trace_source"], "header");

    // Without a distinct W3C trace id the field is absent.
    send(request(&[(
        "traceparent",
        value(&format!("00-{TRACE}-{PARENT}-01")),
    )]))
    .await;
    assert!(!capture.spans_named("request")[1].contains_key("w3c_trace_id"));
}

#[tokio::test]
async fn an_invalid_tracestate_is_removed_from_the_request_and_not_logged() {
    let (capture, _guard) = Capture::install();
    let response = send(request(&[
        ("traceparent", value(&format!("00-{TRACE}-{PARENT}-01"))),
        ("tracestate", value("secret-ok=1,SECRET=2")),
    ]))
    .await;
    let seen = response.body();
    assert_eq!(seen.context.trace_id(), TRACE, "traceparent unaffected");
    assert_eq!(seen.context.tracestate(), None);
    assert_eq!(seen.tracestate, None, "inner services do not see it");
    let events = capture.events_with_message("dropped an invalid tracestate");
    assert_eq!(events.len(), 1);
    assert!(events[0]["error"].contains("key grammar"));
    assert!(!capture.all_text().contains("SECRET"));
}

#[test]
fn layer_header_names_reach_the_tracestate() {
    // A renamed tracestate header is read by the server layer (see server.rs for the
    // traceparent and trace id names); checked here through the context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(TraceIdLayer::new().tracestate_header(HeaderName::from_static("x-state")))
        .service(service_fn(|request: Request<()>| async move {
            let ctx = crate::TraceContext::from_extensions(request.extensions()).cloned();
            Ok::<_, Infallible>(Response::new(ctx.unwrap()))
        }));
    let mut request = Request::new(());
    let headers = request.headers_mut();
    headers.insert("traceparent", value(&format!("00-{TRACE}-{PARENT}-01")));
    headers.insert("x-state", value("k=v"));
    headers.insert("tracestate", value("ignored=1"));
    let ctx = runtime
        .block_on(service.oneshot(request))
        .unwrap()
        .into_body();
    assert_eq!(ctx.tracestate().unwrap().as_str(), "k=v");
}
