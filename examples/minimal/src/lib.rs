//! All four DreamNet layers on one axum [`Router`], on memory stores.
//!
//! Layer order (DESIGN.md section 2): trace id outermost, then the cluster's control, then
//! idempotency or billing, then the handler; the admin APIs are mounted once, behind one
//! admin auth layer, and no guard ever blocks them. `cargo run -p dreamnet-minimal` serves
//! it on 127.0.0.1:5001; `tests/minimal.rs` drives every layer through it.

use std::sync::Arc;

use axum::{http::StatusCode, routing::post, Router};
use dreamnet_admin::{AdminAuthLayer, AdminToken};
use dreamnet_billable::{api::BillableApi, BillableLayer, MemoryLedger};
use dreamnet_control_core::{api as control_api, ControlPlane};
use dreamnet_idempotency::{IdempotencyLayer, MemoryStore};
use dreamnet_trace_id::TraceIdLayer;

/// The application: `POST /charges` (idempotent, cluster `wolf-pack`), `POST /mint` (billable,
/// 100 cents, cluster `dream-state`), `/api/control` and `/api/billable` (admin token).
pub fn app(admin_token: &str) -> Router {
    let plane = ControlPlane::builder().build(); // the seed's 12 clusters and their limits
    let ledger = Arc::new(MemoryLedger::new());
    let idempotency = IdempotencyLayer::new(MemoryStore::new());
    let billing = BillableLayer::with_shared_ledger(ledger.clone(), "mint", 100).currency("USD");

    let admin = Router::new()
        .nest("/api/control", control_api::router(plane.clone()))
        .nest(
            "/api/billable",
            BillableApi::with_shared_ledger(ledger).into_router(),
        )
        .layer(AdminAuthLayer::new(AdminToken::new(admin_token)));
    Router::new()
        .route(
            "/charges",
            post(|body: String| async { (StatusCode::CREATED, body) })
                .route_layer(idempotency)
                .route_layer(plane.layer("wolf-pack")),
        )
        .route(
            "/mint",
            post(|| async { (StatusCode::CREATED, "minted") })
                .route_layer(billing)
                .route_layer(plane.layer("dream-state")),
        )
        .merge(admin)
        .layer(TraceIdLayer::new())
}
