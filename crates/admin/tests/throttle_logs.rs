//! The throttle's log lines: WARN once per window and address, never per attempt, never the
//! credential. Its own test binary: tracing's per-callsite interest cache makes a
//! thread-local capture racy beside other tests that log the same lines.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use dreamnet_admin::{AdminAuthLayer, AdminToken, AuthThrottle};
use dreamnet_common::ManualClock;
use dreamnet_test_support::logs::Capture;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tracing::Level;

#[tokio::test]
async fn a_brute_force_logs_two_warnings_per_window() {
    let (logs, _guard) = Capture::text(Level::DEBUG);
    let clock = ManualClock::new(0);
    let throttle = AuthThrottle::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    let svc = ServiceBuilder::new()
        .layer(
            AdminAuthLayer::new(AdminToken::new("correct-horse-battery-staple"))
                .with_throttle(throttle),
        )
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let attempt = || async {
        let mut request = Request::get("/api/control")
            .header(header::AUTHORIZATION, "Bearer guess")
            .body(Full::default())
            .unwrap();
        let addr: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(addr));
        svc.clone().oneshot(request).await.unwrap().status()
    };
    for round in 0..2 {
        for i in 0..30 {
            let expected = if i < 10 {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(attempt().await, expected, "round {round}, attempt {i}");
        }
        clock.advance(Duration::from_secs(60));
    }
    let warnings: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    // Per window: the first refusal and the throttling; two windows.
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(
        warnings[1].contains("throttled") && warnings[3].contains("throttled"),
        "{warnings:#?}"
    );
    assert!(!logs.output().contains("guess"), "never log the credential");
}
