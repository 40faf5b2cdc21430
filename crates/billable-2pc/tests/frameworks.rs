//! The billable layer composes with each framework unchanged, whatever its body type: axum
//! (as `route_layer` and as `layer`), a plain hyper service taking `Incoming` behind
//! `TowerToHyperService` over TCP, and tonic's `Routes`. Each sends the same billable request
//! twice and checks that the retry is replayed, the handler ran once and one charge was posted.
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
use dreamnet_billable::{BillableLayer, LedgerAdmin, MemoryLedger};
use dreamnet_common::AccountId;
use dreamnet_idempotency::RequestBody;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};

const PRICE: i64 = 250;

struct Books {
    ledger: Arc<MemoryLedger>,
    account: AccountId,
    calls: Arc<AtomicUsize>,
}

impl Books {
    async fn new() -> Self {
        let ledger = Arc::new(MemoryLedger::new());
        let account: AccountId = "acct-frameworks".parse().unwrap();
        ledger.add_credit(&account, 1_000, "USD").await.unwrap();
        Self {
            ledger,
            account,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn layer(&self) -> BillableLayer<MemoryLedger> {
        BillableLayer::with_shared_ledger(Arc::clone(&self.ledger), "mint-dream", PRICE)
    }

    /// Two answers, the second a replay; the handler ran once and one charge was posted.
    async fn assert_charged_once(&self, answers: [(StatusCode, Option<String>, Bytes); 2]) {
        let [first, retry] = answers;
        assert!(first.0.is_success(), "first: {first:?}");
        assert_eq!(first.1, None);
        assert_eq!(retry.0, first.0);
        assert_eq!(retry.1.as_deref(), Some("true"), "the retry is a replay");
        assert_eq!(retry.2, first.2, "the replay carries the first body");
        assert_eq!(self.calls.load(Ordering::SeqCst), 1, "the handler ran once");
        let account = self.ledger.account(&self.account).await.unwrap().unwrap();
        assert_eq!(account.charged, PRICE, "charged once");
    }
}

fn answer<B>(response: Response<B>) -> (StatusCode, Option<String>, Response<B>) {
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), replayed, response)
}

/// Sends `request()` twice through `svc`.
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
        let (status, replayed, response) =
            answer(svc.clone().oneshot(request()).await.expect("response"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        out.push((status, replayed, body));
    }
    out.try_into().unwrap()
}

fn mint_request<B>(body: B) -> Request<B> {
    Request::post("/api/mint-dream")
        .header("host", "localhost")
        .header("x-account-id", "acct-frameworks")
        .header("idempotency-key", "\"mint-42\"")
        .body(body)
        .unwrap()
}

mod axum_router {
    use super::*;
    use axum::{body::Body, routing::post, Router};

    fn router(books: &Books) -> Router {
        let calls = Arc::clone(&books.calls);
        Router::new().route(
            "/api/mint-dream",
            post(move |body: String| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!("mint {n}: {body}"))
            }),
        )
    }

    #[tokio::test]
    async fn as_route_layer() {
        let books = Books::new().await;
        let app = router(&books).route_layer(books.layer());
        let answers = twice(app, || mint_request(Body::from("{\"dreamId\":\"d1\"}"))).await;
        assert_eq!(answers[0].2, "mint 1: {\"dreamId\":\"d1\"}");
        books.assert_charged_once(answers).await;
    }

    #[tokio::test]
    async fn as_layer() {
        let books = Books::new().await;
        let app = router(&books).layer(books.layer());
        let answers = twice(app, || mint_request(Body::from("{\"dreamId\":\"d2\"}"))).await;
        assert_eq!(answers[0].2, "mint 1: {\"dreamId\":\"d2\"}");
        books.assert_charged_once(answers).await;
    }
}

mod hyper_incoming {
    use super::*;
    use hyper::body::Incoming;
    use hyper_util::{rt::TokioIo, service::TowerToHyperService};
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn tower_to_hyper_service_over_tcp() {
        let books = Books::new().await;
        let calls = Arc::clone(&books.calls);
        let svc = ServiceBuilder::new()
            .layer(books.layer())
            .service(tower::service_fn(
                move |request: Request<RequestBody<Incoming>>| {
                    let calls = Arc::clone(&calls);
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        let text = format!("mint {n}: {}", String::from_utf8_lossy(&body));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
                    }
                },
            ));
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

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let request = mint_request(Full::new(Bytes::from_static(b"{\"dreamId\":\"d3\"}")));
            client.ready().await.unwrap();
            let (status, replayed, response) = answer(client.send_request(request).await.unwrap());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, replayed, body));
        }
        assert_eq!(answers[0].2, "mint 1: {\"dreamId\":\"d3\"}");
        books.assert_charged_once(answers.try_into().unwrap()).await;
    }
}

mod tonic_routes {
    use super::*;
    use tonic::{body::Body, server::NamedService, service::Routes};

    /// A unary gRPC method by hand (no codegen): it echoes the request's message frame.
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

    #[tokio::test]
    async fn routes_with_tonic_bodies() {
        let books = Books::new().await;
        let routes = Routes::new(Mint {
            calls: Arc::clone(&books.calls),
        });
        let svc = ServiceBuilder::new().layer(books.layer()).service(routes);
        // One uncompressed length-prefixed message.
        let message = Bytes::from_static(b"\0\0\0\0\x07dream-7");
        let request = || {
            let mut request = mint_request(Body::new(Full::new(message.clone())));
            *request.uri_mut() = "/dreamnet.test.Mint/Mint".parse().unwrap();
            request
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            request
        };
        let answers = twice(svc, request).await;
        assert_eq!(answers[0].2, message);
        books.assert_charged_once(answers).await;
    }
}
