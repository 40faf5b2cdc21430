//! Building the application: stores, layers and routes.

use axum::{
    extract::{Request, State},
    middleware,
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use dreamnet_trace_id::TraceIdLayer;
use http::{header, Extensions, HeaderValue};
use tokio::task::JoinHandle;

use crate::{
    auth::{self, AdminToken},
    config::Config,
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
}

/// The built application: the router plus the background tasks it owns.
pub struct App {
    router: Router,
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
        let shared = Shared {
            http: HttpMetrics::default(),
        };
        let token = AdminToken::new(&admin_token);

        let cluster_routes = Router::new()
            .route("/api/{cluster}/echo", any(handlers::echo))
            .route("/api/{cluster}/status/{code}", any(handlers::status));

        let mint_routes = Router::new()
            .route(
                "/api/mint-dream",
                post(|request: Request| handlers::mint(MintKind::Dream, request))
                    .route_layer(middleware::from_fn(handlers::validate_mint)),
            )
            .route(
                "/api/mint-dream-token",
                post(|request: Request| handlers::mint(MintKind::Token, request))
                    .route_layer(middleware::from_fn(handlers::validate_mint)),
            );

        let admin_routes = Router::new()
            .route("/api/control", get(|| async { "control api pending" }))
            .route_layer(middleware::from_fn_with_state(
                token.clone(),
                auth::require_admin,
            ));

        let open_routes = Router::new()
            .route("/healthz", get(handlers::healthz))
            .route("/metrics", get(render_metrics))
            .with_state(shared.clone());

        let router = Router::new()
            .merge(open_routes)
            .merge(admin_routes)
            .merge(mint_routes)
            .merge(cluster_routes)
            .fallback(problem::not_found)
            .method_not_allowed_fallback(problem::method_not_allowed)
            .layer(middleware::from_fn(problem::problem_errors))
            .layer(middleware::from_fn(telemetry::access_log))
            .layer(middleware::from_fn_with_state(
                shared.http.clone(),
                metrics::count,
            ))
            .layer(TraceIdLayer::new());

        let _ = config;
        Ok(Self {
            router,
            admin_token,
            token_generated,
            tasks: Vec::new(),
        })
    }

    /// The router to serve (cheap to clone).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Whether the token was generated (no `DREAMNET_ADMIN_TOKEN`), so it must be shown once.
    pub fn token_generated(&self) -> bool {
        self.token_generated
    }

    /// Stops the background tasks (the sweeper).
    pub async fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The action id the billable layer attached to the request, if any.
pub(crate) fn action_id(_extensions: &Extensions) -> Option<String> {
    None
}

async fn render_metrics(State(shared): State<Shared>) -> Response {
    let mut out = String::with_capacity(4096);
    shared.http.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
