//! Building the application: stores, layers and routes.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    middleware,
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use dreamnet_billable::{
    api::BillableApi, ledger::postgres::pool_for, MemoryLedger, PostgresLedger, Sweeper,
};
use dreamnet_control_core::{
    api as control_api, ControlConfig, ControlLayer, ControlPlane, PathSegment, RedisStore,
};
use dreamnet_idempotency::{DefaultScope, IdempotencyLayer, IdempotencyStore, MemoryStore};
use dreamnet_trace_id::TraceIdLayer;
use http::{header, Extensions, HeaderValue};
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

use dreamnet_admin::{AdminAuthLayer, AdminToken, AuthThrottle, WeakToken};

use crate::{
    billing::{self, BillingState, SharedLedger},
    config::{redact_urls, Config},
    handlers::{self, MintKind},
    metrics::{self, HttpMetrics},
    problem, telemetry,
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
    ledger: SharedLedger,
    plane: ControlPlane,
    admin_throttle: AuthThrottle,
    edge: crate::edge::EdgeMetrics,
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

        let ledger = ledger(&config).await?;
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

        let idempotency_store = idempotency_store(&config).await?;
        let idempotency = IdempotencyLayer::builder()
            .shared_store(idempotency_store)
            .scope(DefaultScope)
            .max_request_body(handlers::MAX_BODY_BYTES)
            .build();

        let plane = control_plane(&config).await?;
        let shared = Shared {
            http: HttpMetrics::default(),
            ledger: ledger.clone(),
            plane: plane.clone(),
            admin_throttle: admin_throttle.clone(),
            edge: crate::edge::EdgeMetrics::default(),
        };
        // /api/{cluster}/...: the cluster comes from the path; an unknown one is 404.
        let by_path = ControlLayer::dynamic(plane.clone(), PathSegment::new(1));
        let dream_state = ControlLayer::try_new(plane.clone(), "dream-state").map_err(|e| {
            BuildError::Control(format!(
                "the mint routes are guarded by cluster dream-state, which the config lacks: {e}"
            ))
        })?;

        let cluster_routes = Router::new()
            .route(
                "/api/{cluster}/echo",
                any(handlers::echo).layer(
                    ServiceBuilder::new()
                        .layer(by_path.clone())
                        .layer(idempotency.clone()),
                ),
            )
            .route(
                "/api/{cluster}/status/{code}",
                any(handlers::status)
                    .layer(ServiceBuilder::new().layer(by_path).layer(idempotency)),
            );

        let mint_dream = billing::mint_layer(&billing, "mint-dream").map_err(BuildError::Ledger)?;
        let mint_token =
            billing::mint_layer(&billing, "mint-dream-token").map_err(BuildError::Ledger)?;
        let mint_routes = Router::new()
            .route(
                "/api/mint-dream",
                post(|request: Request| handlers::mint(MintKind::Dream, request))
                    .route_layer(mint_dream)
                    .route_layer(middleware::from_fn(handlers::validate_mint))
                    .route_layer(dream_state.clone()),
            )
            .route(
                "/api/mint-dream-token",
                post(|request: Request| handlers::mint(MintKind::Token, request))
                    .route_layer(mint_token)
                    .route_layer(middleware::from_fn(handlers::validate_mint))
                    .route_layer(dream_state),
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

        let open_routes = Router::new()
            .route("/healthz", get(handlers::healthz))
            .route("/metrics", get(render_metrics))
            .with_state(shared.clone());

        let router = Router::new()
            .merge(open_routes)
            .merge(crate::console::routes())
            .merge(admin_routes)
            .merge(mint_routes)
            .merge(cluster_routes)
            .fallback(problem::not_found)
            .method_not_allowed_fallback(problem::method_not_allowed)
            .layer(crate::edge::request_limits(&config.edge))
            .layer(middleware::from_fn(problem::problem_errors))
            .layer(middleware::from_fn(telemetry::access_log))
            .layer(middleware::from_fn_with_state(
                shared.http.clone(),
                metrics::count,
            ))
            .layer(TraceIdLayer::new());

        Ok(Self {
            router,
            edge: shared.edge.clone(),
            admin_token,
            token_generated,
            tasks: vec![sweeper],
        })
    }

    /// The router to serve (cheap to clone).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The connection counters the edge ([`crate::serve_with`]) updates and `/metrics`
    /// renders: pass them in [`crate::EdgeConfig::metrics`].
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
    pub async fn shutdown(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn ledger(config: &Config) -> Result<SharedLedger, BuildError> {
    let Some(url) = config.database_url.as_deref() else {
        tracing::info!("billing ledger: memory (not shared between replicas, lost on exit)");
        return Ok(Arc::new(MemoryLedger::new()));
    };
    let pool = pool_for(url).map_err(|e| BuildError::Ledger(e.to_string()))?;
    let mut builder = PostgresLedger::builder(pool);
    if let Some(schema) = &config.database_schema {
        builder = builder.schema(schema.clone());
    }
    let ledger = builder
        .build()
        .await
        .map_err(|e| BuildError::Ledger(e.to_string()))?;
    tracing::info!(schema = ledger.schema(), "billing ledger: PostgreSQL");
    Ok(Arc::new(ledger))
}

async fn control_plane(config: &Config) -> Result<ControlPlane, BuildError> {
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
        return Ok(builder.build());
    };
    let store = RedisStore::connect_to(&endpoint)
        .await
        .map_err(|e| BuildError::Control(format!("Redis at {}: {e}", redis_at(config))))?
        .prefix(&config.redis_prefix);
    let plane = builder.store(store).build();
    // Load the shared state (kill switches, limits set by other replicas) before serving.
    plane
        .sync()
        .await
        .map_err(|e| BuildError::Control(format!("loading the shared control state: {e}")))?;
    tracing::info!(prefix = %config.redis_prefix, cluster = endpoint.is_cluster(), "control plane: Redis");
    Ok(plane)
}

async fn idempotency_store(config: &Config) -> Result<Arc<dyn IdempotencyStore>, BuildError> {
    let Some(endpoint) = config.redis_endpoint().map_err(BuildError::Idempotency)? else {
        tracing::info!("idempotency records: memory (not shared between replicas)");
        return Ok(Arc::new(MemoryStore::new()));
    };
    let cluster = endpoint.is_cluster();
    let store = dreamnet_idempotency::RedisStore::builder_for(endpoint)
        .prefix(config.redis_prefix.clone())
        .connect()
        .await
        .map_err(|e| BuildError::Idempotency(format!("Redis at {}: {e}", redis_at(config))))?;
    tracing::info!(prefix = %config.redis_prefix, cluster, "idempotency records: Redis");
    Ok(Arc::new(store))
}

/// The Redis URL(s) for an error message, passwords redacted.
fn redis_at(config: &Config) -> String {
    redact_urls(config.redis_url.as_deref().unwrap_or_default())
}

/// The action id the billable layer attached to the request, if any.
pub(crate) fn action_id(extensions: &Extensions) -> Option<String> {
    billing::action_id(extensions)
}

async fn render_metrics(State(shared): State<Shared>) -> Response {
    let mut out = String::with_capacity(4096);
    shared.http.render(&mut out);
    metrics::render_control(&mut out, &shared.plane.metrics());
    metrics::render_admin(&mut out, &shared.admin_throttle);
    shared.edge.render(&mut out);
    metrics::render_billing(&mut out, shared.ledger.as_ref()).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
