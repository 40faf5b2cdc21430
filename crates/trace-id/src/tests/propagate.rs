//! The client layer, alone and behind the server layer.

use crate::{PropagateTraceLayer, TraceContext, TraceIdLayer, TraceState, Traceparent};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use std::convert::Infallible;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

/// A stand-in HTTP client: answers with the headers it was asked to send.
fn client() -> impl Service<Request<()>, Response = Response<HeaderMap>, Error = Infallible> + Clone
{
    ServiceBuilder::new()
        .layer(PropagateTraceLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(request.headers().clone()))
        }))
}

/// A stand-in HTTP client that also reports the call's context (the request extension).
fn spying_client() -> impl Service<
    Request<()>,
    Response = Response<(HeaderMap, Option<TraceContext>)>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(PropagateTraceLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            let call = TraceContext::from_extensions(request.extensions()).cloned();
            Ok::<_, Infallible>(Response::new((request.headers().clone(), call)))
        }))
}

/// The headers `client()` sends for a new request while `context` is the current trace.
async fn headers_sent_within(context: &TraceContext) -> HeaderMap {
    context
        .clone()
        .scope(client().oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body()
}

/// `(trace id, parent id, flags)` of the traceparent that was sent.
fn traceparent_of(headers: &HeaderMap) -> (String, String, u8) {
    let value = headers["traceparent"].to_str().unwrap();
    assert!(value.starts_with("00-"), "always sent as version 00");
    let tp = Traceparent::parse(value).expect("a valid traceparent");
    (
        tp.trace_id().to_owned(),
        tp.parent_id().to_owned(),
        tp.flags(),
    )
}

#[tokio::test]
async fn injects_the_headers_of_a_child_span_of_the_request_extension() {
    let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    let mut request = Request::new(());
    request.extensions_mut().insert(ctx.clone());
    let (sent, call) = spying_client().oneshot(request).await.unwrap().into_body();
    assert_eq!(sent["x-trace-id"], "mbx2k9q1-3f9a0c1e77d24b6a");
    let (trace, parent, flags) = traceparent_of(&sent);
    assert_eq!(
        trace, "dd7ac4dfda839867ebc15179a4f1e0ed",
        "sha256-derived, documented"
    );
    assert_eq!(flags, 1, "a trace this service started is sampled");
    // The call is a child span: its id is the parent-id sent, its parent the request's span.
    let call = call.expect("the call's context replaces the extension");
    assert_eq!(parent, call.span_id());
    assert_ne!(parent, ctx.span_id());
    assert_eq!(call.parent_span_id(), Some(ctx.span_id()));
    assert_eq!(call.trace_id(), ctx.trace_id());
    assert!(!sent.contains_key("tracestate"));
}

#[tokio::test]
async fn every_outbound_call_is_a_new_child_span() {
    let ctx = TraceContext::new("one-request");
    let mut parents = std::collections::HashSet::new();
    for _ in 0..3 {
        let (sent, call) = ctx
            .clone()
            .scope(spying_client().oneshot(Request::new(())))
            .await
            .unwrap()
            .into_body();
        let (trace, parent, _) = traceparent_of(&sent);
        assert_eq!(trace, ctx.w3c_trace_id());
        assert_eq!(call.unwrap().parent_span_id(), Some(ctx.span_id()));
        parents.insert(parent);
    }
    assert_eq!(parents.len(), 3, "three calls, three parent ids");
    assert!(!parents.contains(ctx.span_id()));
}

#[tokio::test]
async fn flags_and_tracestate_of_a_continued_trace_are_sent_on() {
    let tp = Traceparent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future")
        .unwrap();
    let state = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
    let ctx = TraceContext::from_traceparent("correlation-1", &tp, state);
    let sent = headers_sent_within(&ctx).await;
    assert_eq!(sent["x-trace-id"], "correlation-1");
    let (trace, parent, flags) = traceparent_of(&sent);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, 0, "not sampled stays not sampled");
    assert_ne!(parent, "00f067aa0ba902b7");
    assert_ne!(parent, ctx.span_id());
    assert_eq!(
        sent["tracestate"],
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    // Sent as stored, not rebuilt.
    assert_eq!(
        sent["tracestate"].as_bytes().as_ptr(),
        ctx.tracestate().unwrap().as_str().as_ptr()
    );
}

#[tokio::test]
async fn w3c_trace_ids_are_sent_unchanged() {
    let ctx =
        TraceContext::from_parts("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None);
    let sent = headers_sent_within(&ctx).await;
    assert_eq!(sent["x-trace-id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let (trace, parent, flags) = traceparent_of(&sent);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, 1);
    assert_ne!(parent, "00f067aa0ba902b7", "a child span of the given one");
    // inject_headers names the context itself as the parent.
    let mut headers = HeaderMap::new();
    ctx.inject_headers(&mut headers);
    assert_eq!(
        headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
}

#[tokio::test]
async fn without_context_the_request_is_unchanged() {
    let sent = client()
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body();
    assert!(sent.is_empty());
}

#[tokio::test]
async fn existing_headers_are_replaced_and_extension_wins_over_current() {
    let current = TraceContext::new("from-task");
    let explicit = TraceContext::new("from-extension");
    let mut request = Request::builder()
        .header("x-trace-id", "stale")
        .header("traceparent", "00-stale")
        .header("tracestate", "stale=1")
        .body(())
        .unwrap();
    request.extensions_mut().insert(explicit.clone());
    let (sent, call) = current
        .scope(spying_client().oneshot(request))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent.get_all("x-trace-id").iter().count(), 1);
    assert_eq!(sent["x-trace-id"], "from-extension");
    let call = call.unwrap();
    assert_eq!(call.parent_span_id(), Some(explicit.span_id()));
    assert_eq!(sent["traceparent"], call.traceparent().as_str());
    assert!(
        !sent.contains_key("tracestate"),
        "a stale tracestate would pair with another traceparent"
    );
}

#[tokio::test]
async fn unsafe_trace_ids_in_a_hand_made_context_are_not_sent() {
    let ctx = TraceContext::from_parts("bad id\r", "not-a-span-id", None);
    let sent = headers_sent_within(&ctx).await;
    let (trace, parent, _) = traceparent_of(&sent);
    assert_eq!(sent["x-trace-id"], trace.as_str(), "the W3C form instead");
    assert_eq!(parent.len(), 16);
}

#[tokio::test]
async fn header_names_are_configurable() {
    let client = ServiceBuilder::new()
        .layer(
            PropagateTraceLayer::new()
                .trace_id_header(HeaderName::from_static("x-request-id"))
                .traceparent_header(HeaderName::from_static("x-parent"))
                .tracestate_header(HeaderName::from_static("x-state")),
        )
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(request.headers().clone()))
        }));
    let state = TraceState::parse("k=v").unwrap();
    let sent = TraceContext::new("abc")
        .with_tracestate(state)
        .scope(client.oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent["x-request-id"], "abc");
    assert!(Traceparent::parse(sent["x-parent"].to_str().unwrap()).is_some());
    assert_eq!(sent["x-state"], "k=v");
    assert!(!sent.contains_key("x-trace-id"));
    assert!(!sent.contains_key("tracestate"));
}

/// Service A receives a request, calls service B through the client layer; B continues
/// A's trace with A's call span (a child of A's span) as parent.
#[tokio::test]
async fn a_trace_crosses_two_services() {
    // Service B: reports its context.
    let service_b = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            let ctx = TraceContext::from_extensions(request.extensions())
                .unwrap()
                .clone();
            Ok::<_, BoxError>(Response::new(ctx))
        }));
    // Service A: calls B with the client layer, no explicit plumbing.
    let service_a = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(move |request: Request<()>| {
            let outbound = ServiceBuilder::new()
                .layer(PropagateTraceLayer::new())
                .service(service_b.clone());
            async move {
                let a = TraceContext::from_extensions(request.extensions())
                    .unwrap()
                    .clone();
                // Not the inbound request: a fresh one, the context comes from the task.
                let b = outbound.oneshot(Request::new(())).await?.into_body();
                Ok::<_, BoxError>(Response::new((a, b)))
            }
        }));

    for inbound in [
        None,
        Some("given-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        let mut request = Request::new(());
        if let Some(id) = inbound {
            request
                .headers_mut()
                .insert("x-trace-id", HeaderValue::from_static(id));
        }
        let response = service_a.clone().oneshot(request).await.unwrap();
        let (a, b) = response.into_body();
        if let Some(id) = inbound {
            assert_eq!(a.trace_id(), id);
        }
        assert_eq!(b.trace_id(), a.trace_id());
        assert_eq!(b.w3c_trace_id(), a.w3c_trace_id());
        let parent = b.parent_span_id().expect("B continues A's W3C trace");
        assert_ne!(parent, a.span_id(), "the parent is A's call span");
        assert_ne!(b.span_id(), a.span_id());
    }
}
