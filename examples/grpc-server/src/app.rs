//! The application: the stores, every layer, and the two services behind them.
//!
//! ```text
//! TraceIdLayer                       X-Trace-Id / traceparent on every response
//!   RestoreTrailers                  buffered unary status fields back into trailers
//!     by service path:
//!       /grpc.health.v1.Health/*     ControlLayer(star-bridge) -> IdempotencyLayer -> Health
//!       /dreamnet.mint.v1.Mint/*     ControlLayer(dream-state) -> IdempotencyLayer
//!                                      -> BillableLayer -> KeepWhole -> Mint
//! ```
//!
//! Every layer answers a gRPC request's rejection as a gRPC status (trailers-only), through
//! `dreamnet_common::grpc`: nothing here maps statuses.

use std::{convert::Infallible, sync::Arc};

use dreamnet_billable::{BillableLayer, MemoryLedger};
use dreamnet_common::{clock, SharedClock};
use dreamnet_control_core::{ControlConfig, ControlPlane};
use dreamnet_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};
use dreamnet_trace_id::{TraceId, TraceIdLayer};
use http::{Request, Response};
use hyper::body::Incoming;
use tonic::body::Body as TonicBody;
use tonic_health::{server::HealthReporter, ServingStatus};
use tower::{util::BoxCloneService, Service, ServiceBuilder, ServiceExt};

use crate::{
    mint::{self, MintService},
    unary::{self, KeepWhole, RestoreTrailers},
};

/// The control cluster of the Health service (the seed's 30 requests per minute).
pub const HEALTH_CLUSTER: &str = "star-bridge";
/// The control cluster of the Mint service.
pub const MINT_CLUSTER: &str = "dream-state";
/// The billing action of a mint.
pub const MINT_ACTION: &str = "mint";
/// The price of a mint, in minor units of USD.
pub const MINT_PRICE: i64 = 10;

/// One branch of the dispatch, boxed so both share a type.
type Branch = BoxCloneService<Request<Incoming>, Response<TonicBody>, Infallible>;

/// The whole service: every layer, both services, over hyper's request body.
pub type GrpcService = RestoreTrailers<Dispatch>;

/// How the application is built: the clock of the control plane, the idempotency store and
/// the ledger (the tests move it by hand), and the credit line of new billing accounts.
#[derive(Clone)]
pub struct Settings {
    /// The clock of every store (default: the system clock).
    pub clock: SharedClock,
    /// The credit line of an account the first mint creates (`None`, the default: unlimited).
    pub default_credit: Option<i64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            clock: clock::system(),
            default_credit: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("default_credit", &self.default_credit)
            .finish_non_exhaustive()
    }
}

/// The built application: its stores (memory) and its services.
#[derive(Clone)]
pub struct App {
    plane: ControlPlane,
    ledger: Arc<MemoryLedger>,
    health: HealthReporter,
    mint: MintService,
    dispatch: Dispatch,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// The application with memory stores, the seed's control config and `settings`.
    pub async fn new(settings: Settings) -> Self {
        let plane = ControlPlane::builder()
            .config(ControlConfig::default())
            .clock(Arc::clone(&settings.clock))
            .build();
        let ledger = Arc::new(
            MemoryLedger::builder()
                .clock(Arc::clone(&settings.clock))
                .default_credit(settings.default_credit)
                .build(),
        );
        let store = MemoryStore::builder()
            .clock(Arc::clone(&settings.clock))
            .build();
        let idempotency = IdempotencyLayer::builder()
            .store(store)
            .replayed_headers(unary::replayed_headers())
            .build();
        let (health, health_server) = tonic_health::server::health_reporter();
        health
            .set_service_status(mint::SERVICE_NAME, ServingStatus::Serving)
            .await;
        let mint = MintService::new();
        let dispatch = Dispatch {
            health: health_branch(&plane, &idempotency, health_server),
            mint: mint_branch(&plane, &idempotency, &ledger, mint.clone()),
        };
        Self {
            plane,
            ledger,
            health,
            mint,
            dispatch,
        }
    }

    /// The control plane (kill switch, limits, breakers).
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// The billing ledger.
    pub fn ledger(&self) -> &Arc<MemoryLedger> {
        &self.ledger
    }

    /// The health reporter, to change a service's serving status.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// The Mint handler (its run count).
    pub fn mint(&self) -> &MintService {
        &self.mint
    }

    /// The whole service, every layer on it (see the [module docs](self)).
    pub fn service(&self) -> TraceId<GrpcService> {
        ServiceBuilder::new()
            .layer(TraceIdLayer::new())
            .layer_fn(RestoreTrailers::new)
            .service(self.dispatch.clone())
    }
}

/// Health: control (`star-bridge`), idempotency (for a call that sends a key).
fn health_branch<H>(plane: &ControlPlane, idempotency: &IdempotencyLayer, health: H) -> Branch
where
    H: Service<Request<RequestBody<Incoming>>, Response = Response<TonicBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        .layer(plane.layer(HEALTH_CLUSTER))
        .layer(idempotency.clone())
        .service(health);
    let service = ServiceExt::<Request<Incoming>>::map_response(service, |response| {
        response.map(TonicBody::new)
    });
    BoxCloneService::new(service)
}

/// Mint: control (`dream-state`), idempotency, billing (a required key, 10 USD minor
/// units per mint), the unary response kept whole.
fn mint_branch(
    plane: &ControlPlane,
    idempotency: &IdempotencyLayer,
    ledger: &Arc<MemoryLedger>,
    mint: MintService,
) -> Branch {
    let billing = BillableLayer::with_shared_ledger(Arc::clone(ledger), MINT_ACTION, MINT_PRICE)
        .replayed_headers(unary::replayed_headers());
    let service = ServiceBuilder::new()
        .layer(plane.layer(MINT_CLUSTER))
        .layer(idempotency.clone())
        .layer(billing)
        .layer_fn(KeepWhole::new)
        .service(mint);
    let service = ServiceExt::<Request<Incoming>>::map_response(service, |response| {
        response.map(TonicBody::new)
    });
    BoxCloneService::new(service)
}

/// Routes by gRPC service: Mint's path prefix, else Health (whose server answers
/// `UNIMPLEMENTED` for any other path).
#[derive(Clone)]
pub struct Dispatch {
    health: Branch,
    mint: Branch,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch").finish_non_exhaustive()
    }
}

impl Service<Request<Incoming>> for Dispatch {
    type Response = Response<TonicBody>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<Branch, Request<Incoming>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Each call drives a clone of its branch to readiness (Oneshot).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let prefix = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map(|(service, _)| service);
        let branch = if prefix == Some(mint::SERVICE_NAME) {
            &self.mint
        } else {
            &self.health
        };
        branch.clone().oneshot(request)
    }
}
