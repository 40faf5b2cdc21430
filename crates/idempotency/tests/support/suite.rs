//! The conformance tests, one async fn per behaviour, each run against every backend.

use std::{panic::AssertUnwindSafe, time::Duration};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header::RETRY_AFTER, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use tower::ServiceExt;

use dreamnet_idempotency::{IdempotencyLayer, RequestBody};

use tokio::task::JoinHandle;

use super::{eventually, post, send, service, unique, Backend, Body, Handler, HandlerError};

const DEADLINE: Duration = Duration::from_secs(10);

fn layer(backend: &Backend) -> dreamnet_idempotency::IdempotencyLayerBuilder {
    IdempotencyLayer::builder().shared_store(backend.store.clone())
}

/// `request` with `x-block: 1`: the handler waits for a permit from its gate.
fn blocked(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert("x-block", HeaderValue::from_static("1"));
    request
}

/// Sends `request` blocked, in the background, and returns once the handler has been
/// entered `calls` times in all: the attempt then holds its key until the gate lets it on.
async fn send_blocked<S>(
    svc: &S,
    request: Request<Full<Bytes>>,
    handler: &Handler,
    calls: usize,
) -> JoinHandle<(StatusCode, HeaderMap, String)>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = http::Response<dreamnet_common::ResponseBody<Body>>,
            Error = HandlerError,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    let request = blocked(request);
    let running = tokio::spawn(async move { send(&svc, request).await });
    eventually("the blocked attempt in the handler", DEADLINE, || async {
        (handler.calls() == calls).then_some(())
    })
    .await;
    running
}

/// Behaviour 1: New key: runs once; a retry replays status, body and allow-listed headers with
/// `Idempotent-Replayed: true`, and the handler count stays 1.
pub async fn t01_new_key_runs_once_and_replays(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let key = unique("k1");
    let account = unique("acct");

    let (status, headers, body) = send(&svc, post("/ok", Some(&key), &account, "{\"a\":1}")).await;
    assert_eq!(status, StatusCode::CREATED, "{}: {body}", backend.name);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(
        headers["set-cookie"], "session=secret",
        "the first response is untouched"
    );
    assert_eq!(handler.calls(), 1);

    for _ in 0..3 {
        let (again, replay_headers, replay_body) =
            send(&svc, post("/ok", Some(&key), &account, "{\"a\":1}")).await;
        assert_eq!(again, StatusCode::CREATED);
        assert_eq!(replay_body, body);
        assert_eq!(replay_headers["idempotent-replayed"], "true");
        assert_eq!(replay_headers["content-type"], "application/json");
        assert_eq!(replay_headers["location"], headers["location"]);
        assert!(
            replay_headers.get("set-cookie").is_none(),
            "set-cookie is never replayed"
        );
        assert!(replay_headers.get("x-call").is_none(), "not allow-listed");
    }
    assert_eq!(
        handler.calls(),
        1,
        "{}: the handler ran again",
        backend.name
    );

    // The quoted sf-string form and the alias header name the same key.
    let quoted = Request::post("/ok")
        .header("x-account-id", &account)
        .header("x-idempotency-key", format!("\"{key}\""))
        .body(Full::new(bytes::Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let (_, h, _) = send(&svc, quoted).await;
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(handler.calls(), 1);
}

/// Behaviour 1b: a handler's 4xx is a result like any other: stored and replayed.
pub async fn t01b_client_errors_are_stored(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let key = unique("k1b");
    let account = unique("acct");
    let (status, _, body) = send(&svc, post("/invalid", Some(&key), &account, "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (again, headers, replayed) = send(&svc, post("/invalid", Some(&key), &account, "x")).await;
    assert_eq!(again, StatusCode::BAD_REQUEST);
    assert_eq!(headers["idempotent-replayed"], "true", "{}", backend.name);
    assert_eq!(replayed, body);
    assert_eq!(handler.calls(), 1);
}

/// Behaviour 2: 100 concurrent requests with one key: the handler runs exactly once; the others get
/// 409 with `Retry-After` (or the replay).
pub async fn t02_concurrent_duplicates_run_once(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let key = unique("k2");
    let account = unique("acct");

    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let svc = svc.clone();
        let request = blocked(post("/ok", Some(&key), &account, "same"));
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let answer = send(&svc, request).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            answer
        }));
    }
    // Every duplicate is answered while the winner is still blocked in the handler; only
    // then is the winner let through.
    eventually("99 duplicates answered", DEADLINE, || async {
        (answered.load(std::sync::atomic::Ordering::SeqCst) == 99).then_some(())
    })
    .await;
    assert_eq!(
        handler.calls(),
        1,
        "{}: the handler ran more than once",
        backend.name
    );
    handler.gate.add_permits(1000);
    let mut conflicts = 0;
    let mut created = 0;
    for task in tasks {
        let (status, headers, _) = task.await.unwrap();
        match status {
            StatusCode::CONFLICT => {
                assert!(headers.contains_key(RETRY_AFTER));
                conflicts += 1;
            }
            StatusCode::CREATED => {
                assert!(headers.get("idempotent-replayed").is_none());
                created += 1;
            }
            other => panic!("{}: unexpected {other}", backend.name),
        }
    }
    assert_eq!(
        handler.calls(),
        1,
        "{}: the handler ran more than once",
        backend.name
    );
    assert_eq!(created, 1);
    assert_eq!(conflicts, 99);
}

/// Behaviour 3: Same key with a different body, method, path or query: 422, handler not run.
pub async fn t03_different_payload_is_422(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let key = unique("k3");
    let account = unique("acct");
    let (status, _, _) = send(&svc, post("/ok?x=1", Some(&key), &account, "body")).await;
    assert_eq!(status, StatusCode::CREATED);

    let mut patch = post("/ok?x=1", Some(&key), &account, "body");
    *patch.method_mut() = Method::PATCH;
    for request in [
        post("/ok?x=1", Some(&key), &account, "other body"),
        post("/other?x=1", Some(&key), &account, "body"),
        post("/ok?x=2", Some(&key), &account, "body"),
        post("/ok", Some(&key), &account, "body"),
        patch,
    ] {
        let (status, headers, body) = send(&svc, request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", backend.name);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(body.contains("\"status\":422"));
    }
    assert_eq!(handler.calls(), 1);

    // Also while the first is still in flight.
    let key = unique("k3b");
    let first = post("/ok", Some(&key), &account, "a");
    let running = send_blocked(&svc, first, &handler, 2).await;
    let (status, _, _) = send(&svc, post("/ok", Some(&key), &account, "b")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    handler.gate.add_permits(1);
    assert_eq!(running.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(handler.calls(), 2);
}

/// Behaviour 4: Missing key on a required route, a key over 255 chars or not printable ASCII: 400.
pub async fn t04_missing_or_invalid_key_is_400(backend: &Backend) {
    let handler = Handler::new();
    let required = service(&layer(backend).required(true).build(), &handler);
    let optional = service(&layer(backend).build(), &handler);
    let account = unique("acct");

    let (status, headers, body) = send(&required, post("/ok", None, &account, "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("requires an Idempotency-Key"));

    let too_long = "k".repeat(256);
    let (status, _, _) = send(&required, post("/ok", Some(&too_long), &account, "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&optional, post("/ok", Some(&too_long), &account, "x")).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an invalid key is refused even when optional"
    );

    let mut non_ascii = post("/ok", None, &account, "x");
    non_ascii.headers_mut().insert(
        "idempotency-key",
        http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    );
    let (status, _, _) = send(&required, non_ascii).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&required, post("/ok", Some("\"\""), &account, "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(handler.calls(), 0);

    // 255 characters is fine; an optional route without a key just runs.
    let max = format!("{}-{}", unique("k4"), "k".repeat(300));
    let max = &max[..255];
    let (status, _, _) = send(&required, post("/ok", Some(max), &account, "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = send(&optional, post("/ok", None, &account, "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = send(&optional, post("/ok", None, &account, "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(handler.calls(), 3);
}

/// Behaviour 5: The same key from two scopes runs twice and neither sees the other's response.
pub async fn t05_scopes_are_isolated(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let key = unique("k5");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (_, _, a) = send(&svc, post("/ok", Some(&key), &alice, "same")).await;
    let (_, _, b) = send(&svc, post("/ok", Some(&key), &bob, "same")).await;
    assert_eq!(handler.calls(), 2);
    assert_ne!(a, b);
    assert_eq!(
        send(&svc, post("/ok", Some(&key), &alice, "same")).await.2,
        a
    );
    assert_eq!(send(&svc, post("/ok", Some(&key), &bob, "same")).await.2, b);
    // A different payload in one scope does not affect the other.
    let (status, _, _) = send(&svc, post("/ok", Some(&key), &alice, "different")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Credentials scope too (hashed Authorization), and differ from each other.
    let with_auth = |token: &str| {
        Request::post("/ok")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", &key)
            .body(Full::new(bytes::Bytes::from_static(b"same")))
            .unwrap()
    };
    send(&svc, with_auth("t1")).await;
    send(&svc, with_auth("t2")).await;
    assert_eq!(handler.calls(), 4);
    send(&svc, with_auth("t1")).await;
    assert_eq!(handler.calls(), 4);
}

/// Behaviour 6: A 5xx, a handler error and a panic release the key; a retry runs again.
pub async fn t06_failures_release_the_key(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let account = unique("acct");

    let key = unique("k6-5xx");
    for expected_calls in 1..=2 {
        let (status, headers, _) = send(&svc, post("/fail", Some(&key), &account, "x")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(headers.get("idempotent-replayed").is_none());
        assert_eq!(
            handler.calls(),
            expected_calls,
            "{}: 5xx must not be replayed",
            backend.name
        );
    }

    let key = unique("k6-err");
    for expected_calls in 3..=4 {
        let result = svc
            .clone()
            .oneshot(post("/error", Some(&key), &account, "x"))
            .await;
        assert!(result.is_err(), "the handler's error is passed on");
        assert_eq!(handler.calls(), expected_calls);
    }

    let key = unique("k6-panic");
    for expected_calls in 5..=6 {
        let caught =
            AssertUnwindSafe(
                svc.clone()
                    .oneshot(post("/panic", Some(&key), &account, "x")),
            )
            .catch_unwind()
            .await;
        assert!(
            caught.is_err(),
            "the panic is resumed, as without the layer"
        );
        assert_eq!(handler.calls(), expected_calls);
    }
}

/// Behaviour 6b: A request dropped mid-handler (client gone) releases its key.
pub async fn t06b_dropped_request_releases_the_key(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let account = unique("acct");
    let key = unique("k6-drop");
    let request = post("/ok", Some(&key), &account, "x");
    let running = send_blocked(&svc, request, &handler, 1).await;
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    // The release is spawned by the drop guard: poll until the key is free (no clock moves).
    let (status, _, _) = eventually("the key to be released", DEADLINE, || async {
        let answer = send(&svc, post("/ok", Some(&key), &account, "x")).await;
        (answer.0 != StatusCode::CONFLICT).then_some(answer)
    })
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(handler.calls(), 2);
}

/// Behaviour 7b: a handler that runs three times its lease keeps the key (the lease
/// heartbeat): every retry meanwhile gets 409, the handler runs once, and its response is
/// the one replayed.
pub async fn t07b_a_handler_slower_than_its_lease_runs_once(backend: &Backend) {
    // The heartbeat beats on the runtime's timer: on the memory backend (a fake clock) the
    // test uses a memory store on the system clock.
    let store: std::sync::Arc<dyn dreamnet_idempotency::IdempotencyStore> =
        if backend.clock.is_some() {
            std::sync::Arc::new(dreamnet_idempotency::MemoryStore::new())
        } else {
            backend.store.clone()
        };
    let lease = Duration::from_millis(600);
    let handler = Handler::new();
    let layer = IdempotencyLayer::builder().shared_store(store).lease(lease);
    let svc = service(&layer.build(), &handler);
    let account = unique("acct");
    let key = unique("k7b");
    let slow = post("/ok", Some(&key), &account, "x");
    let slow = send_blocked(&svc, slow, &handler, 1).await;

    let until = std::time::Instant::now() + lease * 3;
    let mut retries = 0;
    while std::time::Instant::now() < until {
        let (status, _, _) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{}: retry {retries} while the slow attempt runs",
            backend.name
        );
        retries += 1;
        tokio::time::sleep(lease / 4).await;
    }
    assert!(retries >= 8, "{retries} retries");

    handler.gate.add_permits(1);
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, replay) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true", "{}", backend.name);
    assert_eq!(
        replay, body,
        "{}: the slow attempt's response is kept",
        backend.name
    );
    assert_eq!(handler.calls(), 1, "{}: run once", backend.name);
}

/// Behaviour 7: An attempt that never completes blocks retries only until its lease ends; its late
/// completion is rejected (fencing token), so the retry's response is the one kept.
pub async fn t07_lease_end_unblocks_and_late_completion_is_rejected(backend: &Backend) {
    let handler = Handler::new();
    let lease = backend.short_lease();
    // No heartbeat: the attempt is stuck as a crashed replica's would be, so its lease ends.
    let svc = service(
        &layer(backend).lease(lease).lease_heartbeat(false).build(),
        &handler,
    );
    let account = unique("acct");
    let key = unique("k7");
    let stuck = post("/ok", Some(&key), &account, "x");
    let stuck = send_blocked(&svc, stuck, &handler, 1).await;

    let (status, headers, _) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}: blocked while the lease runs",
        backend.name
    );
    let retry_after: u64 = headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1 && u128::from(retry_after) <= lease.as_millis().div_ceil(1000));

    backend.advance(lease);
    let (status, headers, retry_body) = eventually("the lease to end", DEADLINE, || async {
        let answer = send(&svc, post("/ok", Some(&key), &account, "x")).await;
        (answer.0 != StatusCode::CONFLICT).then_some(answer)
    })
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(handler.calls(), 2);

    // The stuck attempt finishes late: its client still gets its response, but it is not
    // stored over the retry's.
    handler.gate.add_permits(1);
    let (late_status, _, late_body) = stuck.await.unwrap();
    assert_eq!(late_status, StatusCode::CREATED);
    assert_ne!(late_body, retry_body);
    let (_, headers, body) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(
        body, retry_body,
        "{}: the late completion overwrote the retry",
        backend.name
    );
    assert_eq!(handler.calls(), 2);
}

/// Behaviour 8: After the TTL the key is new again.
pub async fn t08_key_is_new_after_ttl(backend: &Backend) {
    let handler = Handler::new();
    let ttl = backend.short_ttl();
    let svc = service(&layer(backend).ttl(ttl).build(), &handler);
    let account = unique("acct");
    let key = unique("k8");
    send(&svc, post("/ok", Some(&key), &account, "x")).await;
    let (_, headers, _) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(handler.calls(), 1);
    if backend.clock.is_some() {
        backend.advance(ttl - Duration::from_millis(1));
        let (_, headers, _) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
        assert_eq!(
            headers["idempotent-replayed"], "true",
            "still stored just before the TTL"
        );
    }
    backend.advance(ttl);
    // Once expired, even a different payload is accepted under the key.
    let (status, headers, _) = eventually("the TTL to end", DEADLINE, || async {
        let answer = send(&svc, post("/ok", Some(&key), &account, "new payload")).await;
        (answer.0 != StatusCode::UNPROCESSABLE_ENTITY).then_some(answer)
    })
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(handler.calls(), 2);
}

/// Behaviour 9: A request body over the limit is 413; a streaming or too-large response passes through
/// unstored and releases the key.
pub async fn t09_body_limits(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(
        &layer(backend)
            .max_request_body(1024)
            .max_response_body(1024)
            .build(),
        &handler,
    );
    let account = unique("acct");
    let key = unique("k9");
    let big = "y".repeat(2048);
    let (status, _, body) = send(&svc, post("/ok", Some(&key), &account, &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("1024"));
    // Chunked (no Content-Length, no exact size) is counted too; axum's Body streams.
    let chunks = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![b'z'; 512]))),
    );
    let streamed = Request::post("/ok")
        .header("idempotency-key", &key)
        .header("x-account-id", &account)
        .body(axum::body::Body::from_stream(chunks))
        .unwrap();
    let axum_handler = handler.clone();
    let limited = tower::ServiceBuilder::new()
        .layer(layer(backend).max_request_body(1024).build())
        .service(tower::service_fn(
            move |_r: Request<RequestBody<axum::body::Body>>| {
                axum_handler
                    .calls
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::new(),
                    )))
                }
            },
        ));
    let response = limited.oneshot(streamed).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(handler.calls(), 0);

    let (status, _, body) = send(&svc, post("/stream", Some(&key), &account, "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "chunk-1,call-1");
    let (_, headers, body) = send(&svc, post("/stream", Some(&key), &account, "x")).await;
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(body, "chunk-1,call-2", "a streaming response is not stored");

    let key = unique("k9-big");
    for expected in 3..=4 {
        let (status, headers, body) = send(&svc, post("/big", Some(&key), &account, "x")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 4096);
        assert!(headers.get("idempotent-replayed").is_none());
        assert_eq!(handler.calls(), expected);
    }
}

/// Behaviour 10: GET and HEAD pass through untouched (even with a key).
pub async fn t10_safe_methods_pass_through(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(&layer(backend).required(true).build(), &handler);
    let key = unique("k10");
    for method in [Method::GET, Method::HEAD, Method::GET] {
        let request = Request::builder()
            .method(method)
            .uri("/ok")
            .header("idempotency-key", &key)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let (status, headers, _) = send(&svc, request).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.get("idempotent-replayed").is_none());
        assert_eq!(headers["set-cookie"], "session=secret");
    }
    let no_key = Request::get("/ok")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&svc, no_key).await.0,
        StatusCode::CREATED,
        "a required key is not required on GET"
    );
    assert_eq!(handler.calls(), 4);
}

/// Behaviour 11: The store unreachable: 503 with `Retry-After`, handler not run.
pub async fn t11_store_unreachable_is_503(backend: &Backend) {
    let handler = Handler::new();
    let svc = service(
        &IdempotencyLayer::builder()
            .shared_store(backend.unreachable.clone())
            .build(),
        &handler,
    );
    let started = std::time::Instant::now();
    let (status, headers, body) = send(&svc, post("/ok", Some(&unique("k11")), "acct", "x")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}: {body}",
        backend.name
    );
    assert_eq!(headers[RETRY_AFTER], "1");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(handler.calls(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing took {:?}",
        started.elapsed()
    );
}

/// Behaviour 12: Two layer instances ("replicas") sharing one store behave as one.
pub async fn t12_two_replicas_behave_as_one(backend: &Backend) {
    let handler = Handler::new();
    let a = service(
        &IdempotencyLayer::builder()
            .shared_store(backend.store.clone())
            .build(),
        &handler,
    );
    let b = service(
        &IdempotencyLayer::builder()
            .shared_store(backend.replica.clone())
            .build(),
        &handler,
    );
    let account = unique("acct");
    let key = unique("k12");
    let (_, _, first) = send(&a, post("/ok", Some(&key), &account, "x")).await;
    let (_, headers, replay) = send(&b, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(headers["idempotent-replayed"], "true", "{}", backend.name);
    assert_eq!(replay, first);
    let (status, _, _) = send(&b, post("/ok", Some(&key), &account, "y")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let key = unique("k12-busy");
    let request = post("/ok", Some(&key), &account, "x");
    let running = send_blocked(&a, request, &handler, 2).await;
    let (status, _, _) = send(&b, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    handler.gate.add_permits(1);
    running.await.unwrap();
    let (_, headers, _) = send(&b, post("/ok", Some(&key), &account, "x")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(handler.calls(), 2);
}

/// Behaviour 13: A corrupt or foreign value under our key is a 500 problem, not a panic.
pub async fn t13_corrupt_record_is_500(backend: &Backend) {
    let Some(corrupt) = &backend.corrupt else {
        // The memory store holds typed records: nothing foreign can be written under a key.
        return;
    };
    let handler = Handler::new();
    let svc = service(&layer(backend).build(), &handler);
    let account = unique("acct");
    for variant in 0..2 {
        let key = unique("k13");
        corrupt(format!("account:{account}"), key.clone(), variant).await;
        let (status, headers, body) = send(&svc, post("/ok", Some(&key), &account, "x")).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{} variant {variant}: {body}",
            backend.name
        );
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    assert_eq!(handler.calls(), 0);
}
