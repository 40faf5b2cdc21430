//! Building the application: stores, layers and routes.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    middleware,
    response::Response,
    routing::{any, get, post},
    Router,
};
use dreamnet_billable::{
    api::BillableApi, ledger::postgres::pool_with_deadline, MemoryLedger, PostgresLedger, Sweeper,
};
use dreamnet_control_core::MemoryStore;
use dreamnet_control_core::{
    api as control_api, ControlConfig, ControlLayer, ControlPlane, PathSegment, RedisStore,
};
use dreamnet_idempotency::{DefaultScope, IdempotencyLayer, IdempotencyStore};
use dreamnet_trace_id::TraceIdLayer;
use http::{Extensions, HeaderMap};
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

use dreamnet_admin::{AdminAuthLayer, AdminToken, AuthThrottle, WeakToken};

use crate::{
    billing::{self, BillingState, SharedLedger},
    config::{redact_urls, Config},
    handlers::{self, MintKind},
    metrics::{
        stores::{TimedControl, TimedIdempotency, TimedLedger},
        HttpMetrics, LastStats, Scrape, StoreMetrics,
    },
    problem,
    readiness::{Probe, Readiness},
    telemetry,
};

/// Why the application could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The control plane could not be set up (bad config, Redis unreachable).
    #[error("control plane: {0}")]
    Control(String),
    /// The idempotency store could not be set up.
    #[error("idempotency store: {0}")]
    Idempotency(String),
    /// The billing ledger could not be set up (PostgreSQL unreachable, migration failed).
    #[error("billing ledger: {0}")]
    Ledger(String),
    /// `--otlp-endpoint` is not an `http://` URL.
    #[error("OTLP export: {0}")]
    Otlp(String),
    /// `DREAMNET_ADMIN_TOKEN` is too short to be safe (unset, one is generated instead).
    #[error("DREAMNET_ADMIN_TOKEN: {0}")]
    AdminToken(#[source] WeakToken),
}

/// The built application: the router plus the background tasks it owns.
pub struct App {
    router: Router,
    edge: crate::edge::EdgeMetrics,
    admin_token: String,
    token_generated: bool,
    tasks: Vec<JoinHandle<()>>,
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::Flush>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("token_generated", &self.token_generated)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Shared {
    http: HttpMetrics,
    stores: StoreMetrics,
    ledger: SharedLedger,
    plane: ControlPlane,
    admin_throttle: AuthThrottle,
    edge: crate::edge::EdgeMetrics,
    last_stats: LastStats,
}

impl App {
    /// Connects the stores, runs ledger recovery, spawns the sweeper and builds the router.
    ///
    /// # Errors
    /// When a store cannot be reached or the configuration is invalid.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let (admin_token, token_generated) = match config.admin_token.as_deref() {
            Some(token) if !token.is_empty() => (token.to_owned(), false),
            _ => (AdminToken::generate(), true),
        };
        let token = AdminToken::strong(&admin_token).map_err(BuildError::AdminToken)?;
        let admin_throttle = AuthThrottle::default();

        let stores = StoreMetrics::default();
        let (ledger, ledger_probe) = ledger(&config, &stores).await?;
        let billing = BillingState {
            ledger: ledger.clone(),
            config: Arc::new(config.file.billing.clone()),
        };
        billing::apply_credit_lines(&billing)
            .await
            .map_err(BuildError::Ledger)?;
        // A crash (or a shutdown past its grace period) may have left reservations behind:
        // void the expired pending ones, charge the confirmed ones, before serving.
        let report = dreamnet_billable::recover(&*ledger)
            .await
            .map_err(|e| BuildError::Ledger(format!("start-up recovery failed: {e}")))?;
        tracing::info!(
            voided = report.voided,
            charged = report.charged,
            skipped = report.skipped,
            "ledger recovery done"
        );
        let sweeper = Sweeper::new(ledger.clone())
            .interval(Duration::from_secs(billing.config.sweep_interval_seconds))
            .spawn();

        let idempotency_store = idempotency_store(&config, &stores).await?;
        let idempotency = IdempotencyLayer::builder()
            .shared_store(idempotency_store)
            .scope(DefaultScope)
            .max_request_body(handlers::MAX_BODY_BYTES)
            .build();

        let plane = control_plane(&config, &stores).await?;
        let shared = Shared {
            http: HttpMetrics::default().with_routes(ROUTES.iter().copied()),
            stores,
            ledger: ledger.clone(),
            plane: plane.clone(),
            admin_throttle: admin_throttle.clone(),
            edge: crate::edge::EdgeMetrics::default(),
            last_stats: LastStats::default(),
        };
        // /api/{cluster}/...: the cluster comes from the path; an unknown one is 404.
        let by_path = ControlLayer::dynamic(plane.clone(), PathSegment::new(1));
        let dream_state = ControlLayer::try_new(plane.clone(), "dream-state").map_err(|e| {
            BuildError::Control(format!(
                "the mint routes are guarded by cluster dream-state, which the config lacks: {e}"
            ))
        })?;

        // The busy routes take the route tag inside their one layer stack (each extra
        // `layer` / `route_layer` of axum boxes the route and its future once more per
        // request); the other routes get it from `tag_routes` below.
        let tag = HttpMetrics::tag_layer();
        let cluster_routes = Router::new()
            .route(
                "/api/{cluster}/echo",
                any(handlers::echo).layer(
                    ServiceBuilder::new()
                        .layer(tag)
                        .layer(by_path.clone())
                        .layer(idempotency.clone()),
                ),
            )
            .route(
                "/api/{cluster}/status/{code}",
                any(handlers::status).layer(
                    ServiceBuilder::new()
                        .layer(tag)
                        .layer(by_path)
                        .layer(idempotency),
                ),
            );

        let mint_dream = billing::mint_layer(&billing, "mint-dream").map_err(BuildError::Ledger)?;
        let mint_token =
            billing::mint_layer(&billing, "mint-dream-token").map_err(BuildError::Ledger)?;
        let mint_routes = Router::new()
            .route(
                "/api/mint-dream",
                post(|request: Request| handlers::mint(MintKind::Dream, request)).route_layer(
                    ServiceBuilder::new()
                        .layer(tag)
                        .layer(dream_state.clone())
                        .layer(middleware::from_fn(handlers::validate_mint))
                        .layer(mint_dream),
                ),
            )
            .route(
                "/api/mint-dream-token",
                post(|request: Request| handlers::mint(MintKind::Token, request)).route_layer(
                    ServiceBuilder::new()
                        .layer(tag)
                        .layer(dream_state)
                        .layer(middleware::from_fn(handlers::validate_mint))
                        .layer(mint_token),
                ),
            );

        let billable_api = BillableApi::with_shared_ledger(ledger.clone())
            .currency(billing.config.currency.as_str())
            .into_router();
        let admin_routes = Router::new()
            .nest("/api/control", control_api::router(plane.clone()))
            .nest("/api/billable", billable_api)
            // `layer`, not `route_layer`: the nested APIs' own 404/405 fallbacks sit behind
            // the auth too, so an unauthenticated probe learns nothing about the routes.
            .layer(AdminAuthLayer::new(token).with_throttle(admin_throttle));

        let redis_probe = redis_probe(&config)?;
        let readiness = Readiness::default()
            .store("idempotency", redis_probe.clone())
            .store("control", redis_probe)
            .store("ledger", ledger_probe);

        let open_routes = Router::new()
            .route("/healthz", get(handlers::healthz))
            .route(
                "/readyz",
                get(crate::readiness::readyz).with_state(readiness),
            )
            .route("/metrics", get(render_metrics))
            .with_state(shared.clone());

        let quiet_routes = Router::new()
            .merge(open_routes)
            .merge(crate::console::routes())
            .merge(crate::openapi::routes(&crate::openapi::document(
                plane.cluster_ids().iter().map(String::as_str),
            )))
            .merge(admin_routes);
        // The matched template travels out to the metrics layer in the response (the busy
        // routes tag themselves, above); the fallbacks answer problem+json. `with_state(())` turns every handler into a ready
        // route once: a `Router` served without it (as hyper-util's builder serves it;
        // `axum::serve` does it itself) clones and converts the matched handler and each
        // fallback on every request.
        let routes = HttpMetrics::tag_routes(quiet_routes)
            .merge(mint_routes)
            .merge(cluster_routes)
            .fallback(problem::not_found)
            .method_not_allowed_fallback(problem::method_not_allowed)
            .with_state(());

        #[cfg(feature = "otlp")]
        let (otlp_layer, otlp) = match config.otlp_endpoint.as_deref() {
            Some(endpoint) => {
                let (exporter, flush) =
                    crate::otlp::Exporter::spawn(endpoint).map_err(BuildError::Otlp)?;
                let record = middleware::from_fn_with_state(exporter, crate::otlp::record);
                (tower::util::option_layer(Some(record)), Some(flush))
            }
            None => (tower::util::option_layer(None), None),
        };
        // Not an error: OTEL_EXPORTER_OTLP_ENDPOINT is often set for a whole deployment,
        // and a replica built without export must still start.
        #[cfg(not(feature = "otlp"))]
        let otlp_layer = {
            if config.otlp_endpoint.is_some() {
                tracing::warn!(
                    "an OTLP endpoint is set, but this server was built without the `otlp` feature: no spans are exported"
                );
            }
            tower::layer::util::Identity::new()
        };

        // The server-wide layers, outermost first, around the whole router as one service
        // (not `Router::layer` once each: that boxes every route once more per layer, and
        // each request then clones the nested boxes, quadratic in the depth).
        let stack = ServiceBuilder::new()
            .layer(TraceIdLayer::new())
            .layer(otlp_layer)
            .layer(shared.http.observe_layer())
            .layer(telemetry::access_log())
            .layer(problem::problem_errors())
            .layer(crate::edge::request_limits(&config.edge))
            .service(routes);
        let router = Router::new().fallback_service(stack);

        Ok(Self {
            router,
            edge: shared.edge.clone(),
            admin_token,
            token_generated,
            tasks: vec![sweeper],
            #[cfg(feature = "otlp")]
            otlp,
        })
    }

    /// The router to serve (cheap to clone).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The connection counters the edge ([`crate::serve_with`]) updates and `/metrics`
    /// renders: pass them as `serve_with`'s last argument.
    pub fn edge_metrics(&self) -> crate::edge::EdgeMetrics {
        self.edge.clone()
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Whether the token was generated (no `DREAMNET_ADMIN_TOKEN`), so it must be shown once.
    pub fn token_generated(&self) -> bool {
        self.token_generated
    }

    /// Stops the background tasks (the sweeper). A sweep cut short is harmless: every
    /// ledger transition it makes is atomic and the next sweep (here or on another
    /// replica) picks up what is left.
    ///
    /// With OTLP export on, the spans still queued are sent first (for at most 2 s).
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(flush) = self.otlp {
            flush.flush(Duration::from_secs(2)).await;
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The ledger and how `/readyz` probes it.
async fn ledger(
    config: &Config,
    stores: &StoreMetrics,
) -> Result<(SharedLedger, Probe), BuildError> {
    let Some(url) = config.database_url.as_deref() else {
        tracing::info!("billing ledger: memory (not shared between replicas, lost on exit)");
        let ledger = TimedLedger::new(Arc::new(MemoryLedger::new()), "memory", stores);
        return Ok((Arc::new(ledger), Probe::Memory));
    };
    let pool = pool_with_deadline(url, config.database_timeout)
        .map_err(|e| BuildError::Ledger(e.to_string()))?;
    let mut builder = PostgresLedger::builder(pool).deadline(config.database_timeout);
    if let Some(schema) = &config.database_schema {
        builder = builder.schema(schema.clone());
    }
    let ledger = builder
        .build()
        .await
        .map_err(|e| BuildError::Ledger(e.to_string()))?;
    tracing::info!(schema = ledger.schema(), "billing ledger: PostgreSQL");
    let probe = Probe::Postgres(ledger.pool().clone());
    let ledger = TimedLedger::new(Arc::new(ledger), "postgres", stores);
    Ok((Arc::new(ledger), probe))
}

async fn control_plane(config: &Config, stores: &StoreMetrics) -> Result<ControlPlane, BuildError> {
    let control = match &config.file.control {
        Some(value) => value
            .clone()
            .try_into::<ControlConfig>()
            .map_err(|e| BuildError::Control(format!("[control] in the config file: {e}")))?,
        None => ControlConfig::default(),
    };
    control
        .validate()
        .map_err(|e| BuildError::Control(e.to_string()))?;
    let builder = ControlPlane::builder().config(control);
    let Some(endpoint) = config.redis_endpoint().map_err(BuildError::Control)? else {
        tracing::info!("control plane: memory (not shared between replicas)");
        let store = TimedControl::new(MemoryStore::new(), "memory", stores);
        return Ok(builder.store(store).build());
    };
    let store = RedisStore::connect_to(&endpoint)
        .await
        .map_err(|e| BuildError::Control(format!("Redis at {}: {e}", redis_at(config))))?
        .prefix(&config.redis_prefix);
    let store = match config.redis_timeout {
        Some(timeout) => store.timeout(timeout),
        None => store,
    };
    // Breakers are fleet-wide on Redis: every replica's calls in one window.
    let plane = builder
        .breaker_store(Arc::new(store.clone()))
        .store(TimedControl::new(store, "redis", stores))
        .build();
    // Load the shared state (kill switches, limits set by other replicas) before serving.
    plane
        .sync()
        .await
        .map_err(|e| BuildError::Control(format!("loading the shared control state: {e}")))?;
    tracing::info!(prefix = %config.redis_prefix, cluster = endpoint.is_cluster(), "control plane: Redis");
    Ok(plane)
}

async fn idempotency_store(
    config: &Config,
    stores: &StoreMetrics,
) -> Result<Arc<dyn IdempotencyStore>, BuildError> {
    let Some(endpoint) = config.redis_endpoint().map_err(BuildError::Idempotency)? else {
        tracing::info!("idempotency records: memory (not shared between replicas)");
        let store = Arc::new(dreamnet_idempotency::MemoryStore::new());
        return Ok(Arc::new(TimedIdempotency::new(store, "memory", stores)));
    };
    let cluster = endpoint.is_cluster();
    let mut builder =
        dreamnet_idempotency::RedisStore::builder_for(endpoint).prefix(config.redis_prefix.clone());
    if let Some(timeout) = config.redis_timeout {
        builder = builder.op_timeout(timeout);
    }
    let store = builder
        .connect()
        .await
        .map_err(|e| BuildError::Idempotency(format!("Redis at {}: {e}", redis_at(config))))?;
    tracing::info!(prefix = %config.redis_prefix, cluster, "idempotency records: Redis");
    Ok(Arc::new(TimedIdempotency::new(
        Arc::new(store),
        "redis",
        stores,
    )))
}

/// How `/readyz` probes the Redis the stores use (a single node or a cluster).
fn redis_probe(config: &Config) -> Result<Probe, BuildError> {
    let Some(endpoint) = config.redis_endpoint().map_err(BuildError::Control)? else {
        return Ok(Probe::Memory);
    };
    let invalid =
        |e: redis::RedisError| BuildError::Control(format!("Redis at {}: {e}", redis_at(config)));
    Ok(if endpoint.is_cluster() {
        Probe::RedisCluster(Box::new(
            redis::cluster::ClusterClient::new(endpoint.nodes().to_vec()).map_err(invalid)?,
        ))
    } else {
        Probe::Redis(redis::Client::open(endpoint.nodes()[0].as_str()).map_err(invalid)?)
    })
}

/// The Redis URL(s) for an error message, passwords redacted.
fn redis_at(config: &Config) -> String {
    redact_urls(config.redis_url.as_deref().unwrap_or_default())
}

/// The action id the billable layer attached to the request, if any.
pub(crate) fn action_id(extensions: &Extensions) -> Option<String> {
    billing::action_id(extensions)
}

/// The route templates whose latency series exist from the start (the rest appear on their
/// first request): the ones a dashboard of this server plots.
const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/{cluster}/echo",
    "/api/{cluster}/status/{code}",
    "/api/mint-dream",
    "/api/mint-dream-token",
    crate::metrics::UNMATCHED,
];

async fn render_metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    Scrape {
        http: &shared.http,
        stores: &shared.stores,
        plane: &shared.plane,
        admin: &shared.admin_throttle,
        edge: &shared.edge,
        ledger: shared.ledger.as_ref(),
        last_stats: &shared.last_stats,
    }
    .respond(&headers)
    .await
}
