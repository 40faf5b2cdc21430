//! Per-request HTTP metrics: responses by code, latency by route template and status class,
//! and error responses by route, status, problem type and store fault.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::after::{After, AfterLayer, Then};
use axum::{body::Body, extract::MatchedPath, response::Response, Router};
use dreamnet_common::{problem::PROBLEM_JSON, StoreFault};
use http::header;
use http_body::Body as _;
use http_body_util::BodyExt;
use parking_lot::RwLock;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// The route label of a request no route matched (404 fallback, 405 before routing).
pub(crate) const UNMATCHED: &str = "unmatched";

/// Latency buckets in seconds: 0.5 ms (a memory-store echo) to 30 s (the request timeout).
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Problem bodies longer than this are not read for their `type` (none of ours is).
const MAX_PROBLEM_PEEK: u64 = 4096;

/// The status classes the route cache holds (and pre-registers); the rare 1xx / 3xx go
/// through the family's own map.
const CACHED_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClass {
    route: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejection {
    route: String,
    code: u16,
    problem_type: String,
    store_fault: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Route template -> its histograms, one per [`CACHED_CLASSES`].
type RouteCache = HashMap<Box<str>, Arc<[Histogram; 3]>>;

type LatencyFamily = Family<RouteClass, Histogram, fn() -> Histogram>;

/// The HTTP metrics of one server (cheap to clone: clones count into the same figures).
#[derive(Clone)]
pub struct HttpMetrics {
    /// Responses by status code: an array indexed by code keeps the hot path lock-free.
    by_status: Arc<[AtomicU64; 600]>,
    latency: LatencyFamily,
    /// The histograms of each route template, one per [`CACHED_CLASSES`], looked up by
    /// `&str` without allocating (the family itself needs an owned label set).
    routes: Arc<RwLock<RouteCache>>,
    rejections: Family<Rejection, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            by_status: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            latency: Family::new_with_constructor(latency_histogram),
            routes: Arc::default(),
            rejections: Family::default(),
        }
    }
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// Creates the latency series of `routes` (every status class) up front, so they are
    /// exported at 0 from the start and the first request of a route takes no write lock.
    #[must_use]
    pub fn with_routes<'a>(self, routes: impl IntoIterator<Item = &'a str>) -> Self {
        for route in routes {
            let _ = self.route(route);
        }
        self
    }

    fn route(&self, route: &str) -> Arc<[Histogram; 3]> {
        if let Some(histograms) = self.routes.read().get(route) {
            return histograms.clone();
        }
        let mut routes = self.routes.write();
        routes
            .entry(route.into())
            .or_insert_with(|| {
                Arc::new(CACHED_CLASSES.map(|status_class| {
                    self.latency
                        .get_or_create(&RouteClass {
                            route: route.to_owned(),
                            status_class,
                        })
                        .clone()
                }))
            })
            .clone()
    }

    /// Counts one response of `route` (a template such as `/api/{cluster}/echo`).
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        if let Some(counter) = self.by_status.get(usize::from(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        match status / 100 {
            2 => self.route(route)[0].observe(seconds),
            4 => self.route(route)[1].observe(seconds),
            5 => self.route(route)[2].observe(seconds),
            class @ (1 | 3) => self
                .latency
                .get_or_create(&RouteClass {
                    route: route.to_owned(),
                    status_class: if class == 1 { "1xx" } else { "3xx" },
                })
                .observe(seconds),
            _ => {}
        }
    }

    /// Tags every route of `router` with its template (call it after the last `route`,
    /// `merge` and `nest`: it is a `route_layer`). [`HttpMetrics::observe`] reads the tag.
    pub fn tag_routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
        router.route_layer(AfterLayer::new(TagRoute))
    }

    /// The middleware of [`HttpMetrics::tag_routes`] as a layer, for a route's own layer
    /// stack (cheaper than one more `route_layer` on a busy route).
    pub(crate) fn tag_layer() -> AfterLayer<TagRoute> {
        AfterLayer::new(TagRoute)
    }

    /// Wraps `router` in the middleware that counts and times every response (put it outside
    /// every layer whose work should be in the latency, and inside the trace-id layer).
    pub fn observe<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(self.observe_layer())
    }

    /// The middleware of [`HttpMetrics::observe`] as a layer, for a stack around a whole
    /// router.
    pub(crate) fn observe_layer(&self) -> AfterLayer<Observe> {
        AfterLayer::new(Observe(self.clone()))
    }

    fn reject(&self, route: &str, status: u16, problem_type: String, fault: Option<&StoreFault>) {
        self.rejections
            .get_or_create(&Rejection {
                route: route.to_owned(),
                code: status,
                problem_type,
                store_fault: fault.map_or("none", StoreFault::store),
            })
            .inc();
    }

    /// Adds the families to a scrape's registry (clones share the live values).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let responses = Family::<[(&'static str, u16); 1], Counter>::default();
        for (code, counter) in self.by_status.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let code = u16::try_from(code).unwrap_or(u16::MAX);
                responses.get_or_create(&[("code", code)]).inc_by(n);
            }
        }
        registry.register(
            "dreamnet_http_responses",
            "HTTP responses sent, by status code",
            responses,
        );
        registry.register(
            "dreamnet_http_request_duration_seconds",
            "Time to the response head, by route template (unmatched: no route) and status class",
            self.latency.clone(),
        );
        registry.register(
            "dreamnet_http_rejections",
            "Error responses (all problem+json), by route template, status code, problem type and, when our own store failed, that store (StoreFault)",
            self.rejections.clone(),
        );
    }
}

/// The problem `type` of an error response, left in its extensions for the layers outside
/// (the OTLP span reads it) so the body is parsed once.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) struct ProblemType(pub(crate) String);

/// Route middleware: copies the matched template into the response, where
/// [`Observe`] (outside the router) finds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TagRoute;

impl After for TagRoute {
    type Seed = Option<MatchedPath>;

    fn seed<B>(&self, request: &http::Request<B>) -> Self::Seed {
        request.extensions().get::<MatchedPath>().cloned()
    }

    fn after(&self, path: Self::Seed, mut response: Response) -> Then {
        if let Some(path) = path {
            response.extensions_mut().insert(path);
        }
        Then::Done(response)
    }
}

/// Middleware around the whole router: counts and times every response; reads the problem
/// `type` of error responses (small, already-built bodies) for the rejection counter.
#[derive(Clone)]
pub(crate) struct Observe(HttpMetrics);

impl After for Observe {
    type Seed = Instant;

    fn seed<B>(&self, _: &http::Request<B>) -> Instant {
        Instant::now()
    }

    fn after(&self, started: Instant, response: Response) -> Then {
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        // A clone of the template (an `Arc<str>` inside), not a copy of the text.
        let matched = response.extensions().get::<MatchedPath>().cloned();
        let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        self.0.record(route, status, elapsed);
        if status < 400 {
            return Then::Done(response);
        }
        let metrics = self.0.clone();
        Then::Later(Box::pin(async move {
            let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            let fault = StoreFault::of(&response).copied();
            let (mut response, problem_type) = problem_type(response).await;
            metrics.reject(route, status, problem_type.clone(), fault.as_ref());
            response.extensions_mut().insert(ProblemType(problem_type));
            response
        }))
    }
}

/// The `type` of a problem+json response (the body is read and put back), `unknown` when
/// the body is not a small problem document.
async fn problem_type(response: Response) -> (Response, String) {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_PROBLEM_PEEK);
    if !is_problem || !small {
        return (response, "unknown".to_owned());
    }
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return (
            Response::from_parts(parts, Body::empty()),
            "unknown".to_owned(),
        );
    };
    let bytes = collected.to_bytes();
    let problem_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .filter(|t| t.len() <= 128)
        .unwrap_or_else(|| "unknown".to_owned());
    (Response::from_parts(parts, Body::from(bytes)), problem_type)
}
