//! The layer composes with each framework unchanged, whatever its body type: axum (as
//! `route_layer` and as `layer`), a plain hyper service taking `Incoming` behind
//! `TowerToHyperService` over TCP, and tonic's `Routes`. Each sends real requests through and
//! checks that the retry is replayed and the handler ran once.
#![allow(missing_docs)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_idempotency::{IdempotencyLayer, RequestBody};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};

const REPLAYED: &str = "idempotent-replayed";

/// Sends `request()` twice through `svc`; returns both (status, replayed header, body).
async fn twice<S, B, ResBody>(
    svc: S,
    request: impl Fn() -> Request<B>,
) -> [(StatusCode, Option<String>, Bytes); 2]
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: std::fmt::Debug,
    ResBody: http_body::Body,
    ResBody::Error: std::fmt::Debug,
{
    let mut out = Vec::new();
    for _ in 0..2 {
        let response = svc.clone().oneshot(request()).await.expect("response");
        out.push(read(response).await);
    }
    out.try_into().unwrap()
}

/// What the tests compare of a response: its status, replayed header and whole body.
async fn read<ResBody>(response: Response<ResBody>) -> (StatusCode, Option<String>, Bytes)
where
    ResBody: http_body::Body,
    ResBody::Error: std::fmt::Debug,
{
    let status = response.status();
    let replayed = response
        .headers()
        .get(REPLAYED)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, replayed, body)
}

fn assert_replayed(
    [first, retry]: [(StatusCode, Option<String>, Bytes); 2],
    calls: &AtomicUsize,
    expected: (StatusCode, &str),
) {
    assert_eq!((first.0, first.1.as_deref()), (expected.0, None));
    assert_eq!(first.2, expected.1);
    assert_eq!(retry.0, expected.0);
    assert_eq!(retry.1.as_deref(), Some("true"), "the retry is a replay");
    assert_eq!(retry.2, first.2, "the replay carries the first body");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
}

mod axum_router {
    use super::*;
    use axum::{
        body::Body,
        routing::{get, post},
        Router,
    };

    fn router(calls: &Arc<AtomicUsize>) -> Router {
        let calls = Arc::clone(calls);
        Router::new()
            .route(
                "/charges",
                post(move |body: String| async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    (StatusCode::CREATED, format!("charge {n}: {body}"))
                }),
            )
            .route("/echo", get(|body: String| async move { body }))
    }

    fn charge() -> Request<Body> {
        Request::post("/charges")
            .header("idempotency-key", "\"order-42\";v=1")
            .body(Body::from("{\"amount\":100}"))
            .unwrap()
    }

    #[tokio::test]
    async fn as_route_layer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = router(&calls).route_layer(IdempotencyLayer::builder().required(true).build());
        let expected = (StatusCode::CREATED, "charge 1: {\"amount\":100}");
        assert_replayed(twice(app, charge).await, &calls, expected);
    }

    #[tokio::test]
    async fn as_layer_with_unguarded_requests_streamed_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = router(&calls).layer(IdempotencyLayer::default());
        let expected = (StatusCode::CREATED, "charge 1: {\"amount\":100}");
        assert_replayed(twice(app.clone(), charge).await, &calls, expected);
        // A GET is not guarded: its body reaches the handler as the inner variant.
        let get = Request::get("/echo").body(Body::from("untouched")).unwrap();
        let response = app.oneshot(get).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "untouched");
    }
}

mod hyper_incoming {
    use super::*;
    use hyper::body::Incoming;
    use hyper_util::{rt::TokioIo, service::TowerToHyperService};
    use tokio::net::{TcpListener, TcpStream};

    /// A handler generic over nothing: it takes what the layer hands it for `Incoming`.
    async fn handle(
        calls: Arc<AtomicUsize>,
        request: Request<RequestBody<Incoming>>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let body = request.into_body().collect().await?.to_bytes();
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let text = format!("call {n}: {}", String::from_utf8_lossy(&body));
        Ok(Response::builder()
            .status(StatusCode::CREATED)
            .body(Full::new(Bytes::from(text)))
            .unwrap())
    }

    /// Serves `svc` on a loopback port (one connection at a time is enough here).
    async fn serve<S, ResBody>(svc: S) -> std::net::SocketAddr
    where
        S: Service<Request<Incoming>, Response = Response<ResBody>, Error = hyper::Error>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tower_to_hyper_service_over_tcp() {
        let calls = Arc::new(AtomicUsize::new(0));
        let handler_calls = Arc::clone(&calls);
        let svc = ServiceBuilder::new()
            .layer(IdempotencyLayer::builder().required(true).build())
            .service(tower::service_fn(move |r| {
                handle(Arc::clone(&handler_calls), r)
            }));
        let addr = serve(svc).await;

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut results = Vec::new();
        for _ in 0..2 {
            let request = Request::post("/charges")
                .header("host", "localhost")
                .header("idempotency-key", "order-42")
                .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
                .unwrap();
            client.ready().await.unwrap();
            let response = client.send_request(request).await.unwrap();
            results.push(read(response).await);
        }
        let expected = (StatusCode::CREATED, "call 1: {\"amount\":100}");
        assert_replayed(results.try_into().unwrap(), &calls, expected);
    }
}

mod tonic_routes {
    use super::*;
    use tonic::{body::Body, server::NamedService, service::Routes};

    /// A unary gRPC method by hand (no codegen): it answers one length-prefixed message
    /// echoing the request's, with `grpc-status: 0`.
    #[derive(Clone)]
    struct Mint {
        calls: Arc<AtomicUsize>,
    }

    impl NamedService for Mint {
        const NAME: &'static str = "dreamnet.test.Mint";
    }

    impl Service<Request<Body>> for Mint {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let calls = Arc::clone(&self.calls);
            Box::pin(async move {
                let frame = request.into_body().collect().await.unwrap().to_bytes();
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "0")
                    .body(Body::new(Full::new(frame)))
                    .unwrap())
            })
        }
    }

    fn grpc_frame(message: &[u8]) -> Bytes {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        Bytes::from(frame)
    }

    /// What `tonic::transport::Server::layer` asks of a layered `Routes`.
    fn assert_server_layer_bounds<S, ResBody>(svc: S) -> S
    where
        S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        svc
    }

    #[tokio::test]
    async fn routes_with_tonic_bodies() {
        let calls = Arc::new(AtomicUsize::new(0));
        let routes = Routes::new(Mint {
            calls: Arc::clone(&calls),
        });
        let svc = assert_server_layer_bounds(
            ServiceBuilder::new()
                .layer(IdempotencyLayer::builder().required(true).build())
                .service(routes),
        );
        let message = grpc_frame(b"dream-7");
        let request = || {
            Request::post("/dreamnet.test.Mint/Mint")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("idempotency-key", "mint-7")
                .body(Body::new(Full::new(message.clone())))
                .unwrap()
        };
        let results = twice(svc, request).await;
        assert_eq!(results[1].2, message);
        let expected = std::str::from_utf8(&message).unwrap().to_owned();
        assert_replayed(results, &calls, (StatusCode::OK, &expected));
    }
}
