//! [`ResponseFuture`]: the hot path is a hand-written future (no box): a ready rejection, or
//! the inner future with the permit that records its outcome. Only a decision that waits on
//! a shared store (a network round trip) is boxed.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    breaker::Outcome,
    plane::{Decision, Permit, Rejection},
};
use dreamnet_common::{grpc::effective_status, ProblemFormat, ResponseBody, StoreFault};

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`Control`](crate::Control).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Rejected { rejection: Option<Rejection>, format: ProblemFormat },
        Inner { #[pin] future: F, permit: Option<Permit> },
        Pending { future: BoxedResponse<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// A rejection rendered in the request's `format` (problem+json, or gRPC trailers-only).
    pub(crate) fn rejected(rejection: Rejection, format: ProblemFormat) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
                format,
            },
        }
    }

    pub(crate) fn inner(future: F, permit: Option<Permit>) -> Self {
        Self {
            kind: Kind::Inner { future, permit },
        }
    }

    /// Waits for the decision, then calls `inner` (or answers the rejection).
    pub(crate) fn pending<S, ReqBody>(
        decision: Pin<Box<dyn Future<Output = Decision> + Send>>,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Self
    where
        S: Service<Request<ReqBody>, Response = Response<B>, Future = F, Error = E>
            + Send
            + 'static,
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        ReqBody: Send + 'static,
        B: Send + 'static,
        E: Send + 'static,
    {
        let format = ProblemFormat::of(req.headers());
        let future: BoxedResponse<B, E> = Box::pin(async move {
            match decision.await {
                Decision::Deny(rejection) => {
                    Ok(ResponseBody::from_full_response(rejection.render(format)))
                }
                Decision::Admit(permit) => finish(Some(permit), inner.call(req).await),
            }
        });
        Self {
            kind: Kind::Pending { future },
        }
    }
}

/// Records the outcome and moves the rate-limit headers onto the response.
fn finish<B, E>(
    permit: Option<Permit>,
    result: Result<Response<B>, E>,
) -> Result<Response<ResponseBody<B>>, E> {
    match result {
        Ok(mut response) => {
            if let Some(mut permit) = permit {
                permit.decorate(response.headers_mut());
                // A gRPC error is HTTP 200 with its grpc-status in the headers: classify by that.
                let status = effective_status(response.status(), response.headers());
                let outcome = if StoreFault::of(&response).is_some() {
                    Outcome::StoreFault(status)
                } else {
                    Outcome::Status(status)
                };
                permit.finish(outcome);
            }
            Ok(ResponseBody::from_inner_response(response))
        }
        Err(error) => {
            if let Some(permit) = permit {
                permit.finish(Outcome::Error);
            }
            Err(error)
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { rejection, format } => {
                let rejection = rejection
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(ResponseBody::from_full_response(
                    rejection.render(*format),
                )))
            }
            KindProj::Inner { future, permit } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(finish(permit.take(), result))
            }
            KindProj::Pending { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn breaker_opens_on_5xx_and_errors_then_probes_and_closes() {
        let (plane, clock) = plane(10_000);
        let status = Arc::new(AtomicU16::new(500));
        let svc = guarded(&plane, "alpha", Arc::clone(&status));
        for i in 0..10 {
            if i % 2 == 0 {
                status.store(0, Ordering::SeqCst); // inner error
                assert!(svc
                    .clone()
                    .oneshot(Request::new(Full::default()))
                    .await
                    .is_err());
                status.store(500, Ordering::SeqCst);
            } else {
                assert_eq!(send(&svc).await.status(), 500);
            }
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
        let response = send(&svc).await;
        assert_eq!(response.status(), 503);
        assert_eq!(header(&response, "retry-after"), "30");
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::HalfOpen
        );
        status.store(200, Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(send(&svc).await.status(), 200);
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_admits_exactly_the_permitted_probes_under_concurrency() {
        let (plane, clock) = plane(10_000);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let service = {
            let gate = Arc::clone(&gate);
            ServiceBuilder::new()
                .layer(plane.layer("alpha"))
                .service(service_fn(move |_req: Request<Full<Bytes>>| {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                }))
        };
        plane.trip_breaker("alpha", None, "ops").await.unwrap();
        // Open by failures instead of by hand: reset, then feed 10 failures through the plane.
        plane.reset_breaker("alpha", None, "ops").await.unwrap();
        let failing = guarded(&plane, "alpha", Arc::new(AtomicU16::new(503)));
        for _ in 0..10 {
            send(&failing).await;
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
        clock.advance(Duration::from_secs(30));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let svc = service.clone();
                tokio::spawn(async move {
                    svc.oneshot(Request::new(Full::default()))
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        // Exactly 3 probes are admitted (the other 61 are rejected at once); let them finish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while plane.metrics().rejected.circuit_open < 61 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rejections did not arrive"
            );
            tokio::task::yield_now().await;
        }
        gate.add_permits(64);
        let statuses = futures_util::future::join_all(tasks).await;
        let ok = statuses
            .iter()
            .filter(|s| *s.as_ref().unwrap() == 200)
            .count();
        assert_eq!(ok, 3);
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    }

    #[tokio::test]
    async fn rate_limited_and_cancelled_probes_give_their_permit_back() {
        let (plane, clock) = plane(10_000);
        let failing = guarded(&plane, "alpha", Arc::new(AtomicU16::new(500)));
        for _ in 0..10 {
            send(&failing).await;
        }
        clock.advance(Duration::from_secs(30));
        // Exhaust the rate limit: the 429s must not consume the 3 probe permits.
        set_limit(
            &plane,
            "alpha",
            RateLimitUpdate {
                requests_per_minute: Some(0),
                ..RateLimitUpdate::default()
            },
        )
        .await;
        let ok = guarded(&plane, "alpha", ok_status());
        for _ in 0..5 {
            assert_eq!(send(&ok).await.status(), 429);
        }
        // A cancelled probe (future dropped before completion) gives its permit back too.
        set_limit(
            &plane,
            "alpha",
            RateLimitUpdate {
                enabled: Some(false),
                ..RateLimitUpdate::default()
            },
        )
        .await;
        for _ in 0..4 {
            let future = ok.clone().oneshot(Request::new(Full::default()));
            drop(future);
        }
        let pending = {
            let mut svc = ok.clone();
            tower::Service::call(&mut svc, Request::new(Full::default()))
        };
        drop(pending);
        for _ in 0..3 {
            assert_eq!(send(&ok).await.status(), 200);
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    }

    #[tokio::test]
    async fn classifier_decides_what_fails() {
        let clock = ManualClock::new(T0);
        let plane = ControlPlane::builder()
            .config(config(10_000))
            .clock(Arc::new(clock))
            .classifier(|o: Outcome| match o {
                Outcome::Status(StatusCode::CONFLICT) => Classification::Failure,
                _ => Classification::Success,
            })
            .build();
        let server_errors = guarded(&plane, "alpha", Arc::new(AtomicU16::new(500)));
        for _ in 0..20 {
            send(&server_errors).await;
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
        let conflicts = guarded(&plane, "alpha", Arc::new(AtomicU16::new(409)));
        for _ in 0..20 {
            send(&conflicts).await;
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
    }

    /// A handler answering `status`, marked as our own store's fault when `marked`.
    fn store_fault(plane: &ControlPlane, status: Arc<AtomicU16>, marked: bool) -> Svc {
        let service = ServiceBuilder::new()
            .layer(plane.layer("alpha"))
            .service(service_fn(move |_req: Request<Full<Bytes>>| {
                let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"down")));
                    *response.status_mut() = status;
                    if marked {
                        dreamnet_common::StoreFault::new("idempotency").mark(&mut response);
                    }
                    Ok::<_, std::io::Error>(response)
                }
            }));
        BoxCloneService::new(service)
    }

    #[tokio::test]
    async fn a_burst_of_store_fault_503s_never_trips_and_counts_nothing() {
        let (plane, _clock) = plane(10_000);
        let marked = store_fault(&plane, Arc::new(AtomicU16::new(503)), true);
        for _ in 0..200 {
            assert_eq!(send(&marked).await.status(), 503);
        }
        let breaker = plane.breaker("alpha").unwrap();
        assert_eq!(breaker.state, BreakerState::Closed);
        assert_eq!(
            (breaker.calls, breaker.failures),
            (0, 0),
            "neither failure nor success"
        );
        // The same 503s unmarked are the upstream failing: they trip it.
        let unmarked = store_fault(&plane, Arc::new(AtomicU16::new(503)), false);
        for _ in 0..10 {
            send(&unmarked).await;
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
    }

    #[tokio::test]
    async fn inner_409_422_429_are_neither_failures_nor_successes() {
        let (plane, clock) = plane(10_000);
        for code in [409, 422, 429] {
            let svc = guarded(&plane, "alpha", Arc::new(AtomicU16::new(code)));
            for _ in 0..5 {
                assert_eq!(send(&svc).await.status(), code);
            }
        }
        assert_eq!(plane.breaker("alpha").unwrap().calls, 0);
        // Nor do they close a half-open breaker: a 409 probe gives its permit back.
        let failing = guarded(&plane, "alpha", Arc::new(AtomicU16::new(500)));
        for _ in 0..10 {
            send(&failing).await;
        }
        clock.advance(Duration::from_secs(30));
        let conflict = guarded(&plane, "alpha", Arc::new(AtomicU16::new(409)));
        for _ in 0..10 {
            assert_eq!(send(&conflict).await.status(), 409);
        }
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::HalfOpen
        );
    }

    #[tokio::test]
    async fn a_half_open_probe_is_not_spent_on_a_store_fault() {
        let (plane, clock) = plane(10_000);
        let failing = guarded(&plane, "alpha", Arc::new(AtomicU16::new(500)));
        for _ in 0..10 {
            send(&failing).await;
        }
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::HalfOpen
        );
        // More marked 503s than there are probe permits (3): each one gives its permit
        // back, so none is refused as "circuit open" and the breaker stays half-open.
        let marked = store_fault(&plane, Arc::new(AtomicU16::new(503)), true);
        for _ in 0..10 {
            let response = send(&marked).await;
            assert_eq!(response.status(), 503);
            assert!(
                response.headers().get("retry-after").is_none(),
                "the handler's 503"
            );
        }
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::HalfOpen
        );
        assert_eq!(plane.metrics().rejected.circuit_open, 0);
        // The permits are all there: 3 healthy probes close it.
        let ok = guarded(&plane, "alpha", ok_status());
        for _ in 0..3 {
            assert_eq!(send(&ok).await.status(), 200);
        }
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Closed);
    }

    #[tokio::test]
    async fn forced_open_until_reset_without_retry_after() {
        let (plane, clock) = plane(100);
        let svc = guarded(&plane, "alpha", ok_status());
        plane
            .trip_breaker("alpha", Some("upstream"), "ops")
            .await
            .unwrap();
        clock.advance(Duration::from_secs(3600));
        let response = send(&svc).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("retry-after").is_none());
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::ForcedOpen
        );
        plane.reset_breaker("alpha", None, "ops").await.unwrap();
        assert_eq!(send(&svc).await.status(), 200);
    }

    #[tokio::test]
    async fn slow_calls_open_the_breaker_measured_with_the_plane_clock() {
        let clock = ManualClock::new(T0);
        let mut config = config(10_000);
        config.breaker.slow_call_rate_threshold = 50.0;
        config.breaker.slow_call_duration_ms = 2_000;
        let plane = ControlPlane::builder()
            .config(config)
            .clock(Arc::new(clock.clone()))
            .build();
        let handler_clock = clock.clone();
        let svc = ServiceBuilder::new()
            .layer(plane.layer("alpha"))
            .service(service_fn(move |_req: Request<Full<Bytes>>| {
                // Each call takes 2 s of plane time and succeeds.
                handler_clock.advance(Duration::from_secs(2));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
            }));
        for _ in 0..9 {
            assert_eq!(
                svc.clone()
                    .oneshot(Request::new(Full::default()))
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        assert_eq!(
            plane.breaker("alpha").unwrap().state,
            BreakerState::Closed,
            "9 < minimum"
        );
        svc.clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        // Opening starts a new generation with an empty window view of the open state.
        assert_eq!(plane.breaker("alpha").unwrap().state, BreakerState::Open);
    }
}
