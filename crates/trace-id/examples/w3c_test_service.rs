//! A test service for the W3C Trace Context test harness (w3c/trace-context, `test/`), built
//! on this crate's layers: `TraceIdLayer` on the server, `PropagateTraceLayer` on the client.
//!
//! ```text
//! cargo run -p dreamnet-trace-id --example w3c_test_service -- --addr 127.0.0.1:7777
//! ```
//!
//! The harness POSTs a JSON array `[{"url": ..., "arguments": [...]}, ...]` to any path; for
//! each element, in order, the service POSTs `arguments` (as JSON) to `url` through the
//! propagating client, so every callback carries the `traceparent` (a new child span per
//! call, flags kept), `tracestate` and `X-Trace-Id` of the request being served. An `url`
//! that points back at this service makes it recurse. The answer is a JSON array of the
//! callbacks' status codes.
//!
//! The harness's own callback server also listens on 127.0.0.1:7777 by default, so give it
//! another port: `HARNESS_PORT=7778 python test.py http://127.0.0.1:7777/test` (or start this
//! service with another `--addr`).

use axum::{body::Bytes, extract::State, http::StatusCode, Json, Router};
use dreamnet_trace_id::{PropagateTrace, PropagateTraceLayer, TraceIdLayer};
use http::{header::CONTENT_TYPE, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;
use std::net::SocketAddr;
use tower::{Layer, ServiceExt};

/// The client every callback goes through.
type HttpClient = PropagateTrace<Client<HttpConnector, Full<Bytes>>>;

/// One instruction of the harness.
#[derive(Debug, Deserialize)]
struct Call {
    url: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The service: any path, any method, a JSON body of calls to make.
fn app() -> Router {
    let client =
        PropagateTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
    Router::new()
        .fallback(handle)
        .with_state(client)
        .layer(TraceIdLayer::new())
}

async fn handle(
    State(client): State<HttpClient>,
    body: Bytes,
) -> Result<Json<Vec<u16>>, (StatusCode, String)> {
    // The harness may send `null` or nothing when there is nothing to call.
    let calls: Option<Vec<Call>> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("expected [{{url, arguments}}]: {e}"),
            )
        })?
    };
    let mut statuses = Vec::new();
    for call in calls.unwrap_or_default() {
        let body = serde_json::to_vec(&call.arguments).expect("a JSON value serializes");
        let request = Request::post(&call.url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("bad url {:?}: {e}", call.url),
                )
            })?;
        // The trace context comes from the task: TraceIdLayer scopes it around this handler.
        let response = client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{}: {e}", call.url)))?;
        statuses.push(response.status().as_u16());
        // Read the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
    }
    Ok(Json(statuses))
}

fn parse_addr(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut addr = "127.0.0.1:7777".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            other if other.starts_with("--addr=") => addr = other["--addr=".len()..].to_owned(),
            _ => {
                return Err(format!(
                    "usage: w3c_test_service [--addr HOST:PORT], not {arg:?}"
                ))
            }
        }
    }
    addr.parse().map_err(|e| format!("--addr {addr:?}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = parse_addr(std::env::args().skip(1))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "W3C Trace Context test service on http://{}/test",
        listener.local_addr()?
    );
    axum::serve(listener, app()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamnet_trace_id::Traceparent;
    use http::HeaderMap;
    use std::{
        collections::HashSet,
        sync::{Arc, Mutex},
    };

    const TRACE: &str = "12345678901234567890123456789012";
    const PARENT: &str = "1234567890123456";

    /// A local echo server that records the headers of every request; its address.
    async fn echo_server() -> (String, Arc<Mutex<Vec<(String, HeaderMap)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let app = Router::new().fallback(move |request: Request<axum::body::Body>| {
            let record = Arc::clone(&record);
            async move {
                let path = request.uri().path().to_owned();
                record
                    .lock()
                    .unwrap()
                    .push((path, request.headers().clone()));
                "ok"
            }
        });
        (serve(app).await, seen)
    }

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// POSTs `calls` to the service as the harness does, with `headers`.
    async fn drive(service: &str, headers: &[(&str, &str)], calls: &serde_json::Value) -> u16 {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request =
            Request::post(format!("{service}/test")).header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(calls.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        response.status().as_u16()
    }

    fn traceparent(headers: &HeaderMap) -> (String, String, String) {
        let value = headers["traceparent"].to_str().unwrap();
        assert!(value.len() == 55 && value.starts_with("00-"), "{value}");
        let tp = Traceparent::parse(value).unwrap();
        let flags = value[53..].to_owned();
        (tp.trace_id().to_owned(), tp.parent_id().to_owned(), flags)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callbacks_carry_the_propagated_headers() {
        let (echo, seen) = echo_server().await;
        let service = serve(app()).await;
        let calls = serde_json::json!([
            {"url": format!("{echo}/0"), "arguments": []},
            {"url": format!("{echo}/1"), "arguments": []},
            {"url": format!("{echo}/2"), "arguments": []},
            // Through the service again: it recurses and calls the echo server itself.
            {"url": format!("{service}/test"), "arguments": [{"url": format!("{echo}/nested"), "arguments": []}]},
        ]);
        let status = drive(
            &service,
            &[
                ("traceparent", &format!("cc-{TRACE}-{PARENT}-00-future")),
                ("tracestate", " foo=1 , bar=2,,"),
                ("tracestate", "foo=3"),
            ],
            &calls,
        )
        .await;
        assert_eq!(status, 200);

        let seen = seen.lock().unwrap();
        let paths: Vec<_> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/0", "/1", "/2", "/nested"], "in order, all made");
        let mut parents = HashSet::new();
        for (path, headers) in seen.iter() {
            let (trace, parent, flags) = traceparent(headers);
            assert_eq!(trace, TRACE, "{path}: the W3C trace continues");
            assert_eq!(flags, "00", "{path}: not sampled stays not sampled");
            assert_ne!(parent, PARENT, "{path}");
            assert!(parents.insert(parent), "{path}: a new parent id per call");
            assert_eq!(headers["tracestate"], "foo=1,bar=2", "{path}");
            assert_eq!(headers["x-trace-id"], TRACE, "{path}");
            assert_eq!(headers.get_all("traceparent").iter().count(), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn x_trace_id_correlates_while_traceparent_continues() {
        let (echo, seen) = echo_server().await;
        let service = serve(app()).await;
        let calls = serde_json::json!([{"url": format!("{echo}/0"), "arguments": []}]);
        let headers = [
            ("x-trace-id", "checkout-42"),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01") as &str),
        ];
        assert_eq!(drive(&service, &headers, &calls).await, 200);
        let seen = seen.lock().unwrap();
        let (_, headers) = &seen[0];
        assert_eq!(headers["x-trace-id"], "checkout-42");
        let (trace, _, flags) = traceparent(headers);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
        assert!(!headers.contains_key("tracestate"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_instructions_and_arguments() {
        let service = serve(app()).await;
        assert_eq!(drive(&service, &[], &serde_json::json!(null)).await, 200);
        assert_eq!(
            drive(&service, &[], &serde_json::json!({"url": 1})).await,
            400
        );
        assert_eq!(
            parse_addr(std::iter::empty()),
            Ok("127.0.0.1:7777".parse().unwrap())
        );
        let args = ["--addr", "0.0.0.0:80"].map(String::from);
        assert_eq!(
            parse_addr(args.into_iter()),
            Ok("0.0.0.0:80".parse().unwrap())
        );
        let args = ["--addr=[::1]:1".to_owned()];
        assert_eq!(parse_addr(args.into_iter()), Ok("[::1]:1".parse().unwrap()));
        assert!(parse_addr(["--port".to_owned()].into_iter()).is_err());
    }
}
