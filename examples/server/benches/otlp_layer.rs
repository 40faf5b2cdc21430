//! What OTLP export costs on the guarded echo: the whole `App` router (every layer of the
//! server, memory stores) in process, once without and once with `--otlp-endpoint` pointing
//! at a sink in the same process that reads and discards each export (so batching, protobuf
//! encoding and the HTTP post are in the figure, on the same thread as the requests).
//!
//! Run: `cargo bench -p dreamnet-server --features otlp --bench otlp_layer -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::convert::Infallible;

use axum::{body::Body, Router};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dreamnet_server::{App, Config, FileConfig};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

/// A cluster whose limits are never reached, so every iteration is admitted.
const CONFIG: &str = include_str!("../fixtures/unlimited-load.toml");

/// An OTLP/HTTP endpoint that reads each export and answers 200.
async fn sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<hyper::body::Incoming>| async {
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn router(otlp_endpoint: Option<String>) -> Router {
    let config = Config {
        file: FileConfig::from_toml(CONFIG).unwrap(),
        admin_token: Some("bench-admin-token-0123456789".to_owned()),
        otlp_endpoint,
        ..Config::default()
    };
    App::build(config).await.expect("app builds").router()
}

fn otlp_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (without, with) = runtime.block_on(async {
        let endpoint = sink().await;
        (router(None).await, router(Some(endpoint)).await)
    });
    let mut group = c.benchmark_group("app_guarded_echo");
    for (name, router) in [("without_otlp", without), ("with_otlp", with)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let request = Request::get("/api/load/echo").body(Body::empty()).unwrap();
                    let response = router.oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), StatusCode::OK);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, otlp_layer);
criterion_main!(benches);
