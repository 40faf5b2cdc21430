//! Redis unreachable: rate limiting fails open with a `tracing` warning. Its own test
//! binary, because `tracing`'s per-thread capture must not race other tests' callsites.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use dreamnet_control_core::{ClusterConfig, ControlConfig, ControlPlane, RedisStore, WindowConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Captures `tracing` output so tests can check the warnings.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_warnings() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_redis_fails_open_by_default_with_a_warning() {
    let (logs, _guard) = capture_warnings();
    let store = RedisStore::lazy("redis://127.0.0.1:1").unwrap();
    let mut clusters = BTreeMap::new();
    let alpha = ClusterConfig {
        windows: vec![WindowConfig::new("year", 1, 365 * 86_400)],
        ..ClusterConfig::per_minute_hour_day(1, 1, 1)
    };
    clusters.insert("alpha".to_owned(), alpha);
    let config = ControlConfig {
        clusters,
        ..ControlConfig::default()
    };
    let plane = ControlPlane::builder().config(config).store(store).build();
    let alpha = ServiceBuilder::new()
        .layer(plane.layer("alpha"))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    let started = Instant::now();
    for _ in 0..3 {
        let response = alpha
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "fail open admits");
        assert!(response.headers().contains_key("ratelimit-policy"));
        assert!(
            !response.headers().contains_key("ratelimit"),
            "no usage is known"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let metrics = plane.metrics();
    assert_eq!(metrics.fail_open_admissions, 3);
    assert!(metrics.store_errors >= 3);
    assert!(
        logs.text().contains("control store unreachable"),
        "{}",
        logs.text()
    );
    assert!(logs.text().contains("WARN"));
    // Changes cannot be stored: refused, nothing changes locally either.
    assert!(plane.engage_kill_switch("x", "ops", None).await.is_err());
    assert!(!plane.kill_switch().enabled);
}
