//! `GET /readyz`: does every store this replica was configured with answer right now?
//!
//! `/healthz` is liveness (the process serves HTTP); `/readyz` is readiness (a load balancer
//! should send traffic here). Each configured store is probed concurrently with a short
//! deadline: a memory store is always ready, Redis must answer `PING`, PostgreSQL `SELECT 1`.
//! A hung backend therefore costs the probe at most [`PROBE_DEADLINE`], never a stuck check.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    Json,
};
use deadpool_postgres::Pool;
use dreamnet_common::{problem::PROBLEM_JSON, Problem};
use futures_util::future::join_all;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::json;

/// How long one store may take to answer its probe before it counts as not ready.
pub(crate) const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// How one store is probed.
#[derive(Clone)]
pub(crate) enum Probe {
    /// In-process: always ready.
    Memory,
    /// `PING` on a fresh connection (so a dead server is seen, not a cached connection).
    Redis(redis::Client),
    /// `PING` through a fresh cluster connection (the seed nodes answer the slot map, a node
    /// the PING). A master that is down fails the requests on its slots, not readiness: every
    /// replica shares the cluster, so taking them all out would turn a partial outage into a
    /// whole one.
    RedisCluster(Box<redis::cluster::ClusterClient>),
    /// `SELECT 1` on a pooled connection.
    Postgres(Pool),
}

impl Probe {
    fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
            Self::RedisCluster(_) => "redis-cluster",
            Self::Postgres(_) => "postgres",
        }
    }

    async fn check(&self) -> Result<(), String> {
        let probe = async {
            match self {
                Self::Memory => Ok(()),
                Self::Redis(client) => ping(client.get_multiplexed_async_connection().await).await,
                Self::RedisCluster(client) => ping(client.get_async_connection().await).await,
                Self::Postgres(pool) => {
                    let conn = pool.get().await.map_err(|e| e.to_string())?;
                    conn.simple_query("SELECT 1")
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            }
        };
        match tokio::time::timeout(PROBE_DEADLINE, probe).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {} ms",
                PROBE_DEADLINE.as_millis()
            )),
        }
    }
}

/// `PING` on a freshly opened connection (single server or cluster).
async fn ping<C: redis::aio::ConnectionLike>(
    connection: redis::RedisResult<C>,
) -> Result<(), String> {
    let mut connection = connection.map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The stores of this replica, each with its probe.
#[derive(Clone, Default)]
pub(crate) struct Readiness {
    stores: Vec<(&'static str, Probe)>,
}

impl Readiness {
    /// Adds the store named `store` (as it appears in the answer), probed by `probe`.
    pub(crate) fn store(mut self, store: &'static str, probe: Probe) -> Self {
        self.stores.push((store, probe));
        self
    }

    /// Probes every store concurrently.
    pub(crate) async fn check(&self) -> Vec<StoreStatus> {
        join_all(self.stores.iter().map(|(store, probe)| async move {
            let started = Instant::now();
            let result = probe.check().await;
            StoreStatus {
                store,
                backend: probe.backend(),
                ok: result.is_ok(),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                error: result.err(),
            }
        }))
        .await
    }
}

/// One store's probe result, as the `/readyz` body lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StoreStatus {
    store: &'static str,
    backend: &'static str,
    ok: bool,
    #[serde(rename = "latencyMs")]
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /readyz`: 200 `{"status":"ready","stores":[...]}` when every store answered, else 503
/// problem+json naming the failing stores (with the same `stores` list as an extension member).
pub(crate) async fn readyz(State(readiness): State<Readiness>, request: Request) -> Response {
    let stores = readiness.check().await;
    let failing: Vec<String> = stores
        .iter()
        .filter(|s| !s.ok)
        .map(|s| {
            format!(
                "{} ({}: {})",
                s.store,
                s.backend,
                s.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    if failing.is_empty() {
        return (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(json!({ "status": "ready", "stores": stores })),
        )
            .into_response();
    }
    tracing::warn!(failing = %failing.join(", "), "not ready");
    let problem = Problem::from_status(StatusCode::SERVICE_UNAVAILABLE)
        .type_uri("urn:dreamnet:server:not-ready")
        .detail(format!("not ready: {}", failing.join(", ")))
        .maybe_trace_id(crate::problem::trace_id(request.extensions()));
    let mut body = serde_json::to_value(&problem).unwrap_or_else(|_| json!({}));
    body["stores"] = json!(stores);
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, PROBLEM_JSON)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| StatusCode::SERVICE_UNAVAILABLE.into_response())
}
