//! The client layer, alone and behind the server layer.

use crate::{PropagateTraceLayer, TraceContext, TraceIdLayer, Traceparent};
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

fn traceparent_of(headers: &HeaderMap) -> (String, String) {
    let value = headers["traceparent"].to_str().unwrap();
    let tp = Traceparent::parse(value).expect("a valid traceparent");
    assert_eq!(tp.flags(), 1);
    (tp.trace_id().to_owned(), tp.parent_id().to_owned())
}

#[tokio::test]
async fn injects_both_headers_from_the_request_extension() {
    let ctx = TraceContext::new("mbx2k9q1-3f9a0c1e77d24b6a");
    let mut request = Request::new(());
    request.extensions_mut().insert(ctx.clone());
    let sent = client().oneshot(request).await.unwrap().into_body();
    assert_eq!(sent["x-trace-id"], "mbx2k9q1-3f9a0c1e77d24b6a");
    let (trace, parent) = traceparent_of(&sent);
    assert_eq!(
        trace, "dd7ac4dfda839867ebc15179a4f1e0ed",
        "sha256-derived, documented"
    );
    assert_eq!(parent, ctx.span_id());
}

#[tokio::test]
async fn w3c_trace_ids_are_sent_unchanged() {
    let ctx =
        TraceContext::from_parts("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None);
    let sent = ctx
        .clone()
        .scope(client().oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent["x-trace-id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        sent["traceparent"],
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
        .body(())
        .unwrap();
    request.extensions_mut().insert(explicit.clone());
    let sent = current
        .scope(client().oneshot(request))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent.get_all("x-trace-id").iter().count(), 1);
    assert_eq!(sent["x-trace-id"], "from-extension");
    assert_eq!(sent["traceparent"], explicit.traceparent().as_str());
}

#[tokio::test]
async fn unsafe_trace_ids_in_a_hand_made_context_are_not_sent() {
    let ctx = TraceContext::from_parts("bad id\r", "not-a-span-id", None);
    let sent = ctx
        .clone()
        .scope(client().oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body();
    let (trace, parent) = traceparent_of(&sent);
    assert_eq!(sent["x-trace-id"], trace.as_str(), "the W3C form instead");
    assert_eq!(parent.len(), 16);
}

#[tokio::test]
async fn header_names_are_configurable() {
    let client = ServiceBuilder::new()
        .layer(
            PropagateTraceLayer::new()
                .trace_id_header(HeaderName::from_static("x-request-id"))
                .traceparent_header(HeaderName::from_static("x-parent")),
        )
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(request.headers().clone()))
        }));
    let sent = TraceContext::new("abc")
        .scope(client.oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body();
    assert_eq!(sent["x-request-id"], "abc");
    assert!(Traceparent::parse(sent["x-parent"].to_str().unwrap()).is_some());
    assert!(!sent.contains_key("x-trace-id"));
}

/// Service A receives a request, calls service B through the client layer; B continues
/// A's trace with A's span as parent.
#[tokio::test]
async fn a_trace_crosses_two_services() {
    // Service B: reports its context.
    let service_b = ServiceBuilder::new()
        .layer(TraceIdLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            let ctx = request.extensions().get::<TraceContext>().unwrap().clone();
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
                let a = request.extensions().get::<TraceContext>().unwrap().clone();
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
        assert_eq!(b.parent_span_id(), Some(a.span_id()));
        assert_ne!(b.span_id(), a.span_id());
    }
}
