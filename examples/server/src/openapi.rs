//! `GET /api/openapi.json`: the OpenAPI 3.1 document of every endpoint this server serves.
//!
//! The admin APIs' operations come from their crates (`dreamnet_control_core::api::ApiDoc`,
//! `dreamnet_billable::api::ApiDoc`, derived from the handlers), nested where the router nests
//! them and marked with the admin bearer scheme and its 401 / 429 answers. The public
//! endpoints are described here, beside the router that serves them, with the schemas of
//! their bodies derived from the handler types. The cluster ids of the `{cluster}` routes are
//! the ones this server is configured with.

use axum::{routing::get, Router};
use bytes::Bytes;
use dreamnet_admin::api::openapi::{BadRequest, NotFound, Throttled, TooLarge, Unauthorized};
use dreamnet_common::Problem;
use http::header;
use serde::Serialize;
use serde_json::Value;
use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        OpenApi as Document, RefOr, Response,
    },
    IntoParams, IntoResponses, OpenApi, ToSchema,
};

use crate::{
    handlers::{MintRequest, MintResponse},
    readiness::StoreStatus,
};

/// Where the admin APIs are nested (as in the router).
const CONTROL_MOUNT: &str = "/api/control";
const BILLABLE_MOUNT: &str = "/api/billable";
/// The name of the admin bearer scheme in `components.securitySchemes`.
const ADMIN_SCHEME: &str = "adminToken";

/// `GET /healthz`'s body.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok` while the process serves requests.
    status: String,
}

/// `GET /readyz`'s body when every store answered.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema: the handler answers it as a `json!` value
struct Ready {
    /// `ready`.
    status: String,
    /// Each configured store's probe.
    stores: Vec<StoreStatus>,
}

/// The echo's body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // a schema: the handler answers it as a `json!` value
struct Echo {
    /// The cluster of the path.
    cluster: String,
    /// The request method.
    method: String,
    /// The request's trace id.
    trace_id: Option<String>,
    /// The request body: `null` when empty, the parsed JSON, or the text.
    body: Value,
}

/// The 429 / 503 answers of a guarded route (rate limit, kill switch, cluster disabled,
/// breaker open, a store unreachable).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum Guarded {
    /// A rate-limit window is exhausted.
    #[response(
        status = 429,
        description = "Rate limited (see Retry-After and RateLimit)",
        content_type = "application/problem+json",
        headers(
            ("Retry-After" = u64, description = "Seconds until the window admits again"),
            ("RateLimit-Policy" = String, description = "The windows (IETF draft)"),
            ("RateLimit" = String, description = "The binding window's remaining quota"),
        )
    )]
    RateLimited(Problem),
    /// Kill switch, cluster disabled, breaker open, or a store unreachable.
    #[response(
        status = 503,
        description = "Blocked by the kill switch, a disabled cluster or an open breaker, or a store is unavailable",
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait, when known"))
    )]
    Unavailable(Problem),
}

/// The refusals of the idempotency layer on a keyed request.
#[derive(IntoResponses)]
#[allow(dead_code)]
enum Keyed {
    /// The same key is being processed by another request.
    #[response(
        status = 409,
        description = "A request with this Idempotency-Key is in flight; retry later",
        content_type = "application/problem+json"
    )]
    InFlight(Problem),
    /// The key was used with another request.
    #[response(
        status = 422,
        description = "This Idempotency-Key was used with a different request",
        content_type = "application/problem+json"
    )]
    Mismatch(Problem),
}

/// A 402 of a mint.
#[derive(IntoResponses)]
#[response(
    status = 402,
    description = "The account's credit does not cover the price; nothing was charged",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
struct PaymentRequired(Problem);

#[utoipa::path(
    get, path = "/healthz", tag = "public",
    summary = "Liveness: 200 while the process serves requests",
    responses((status = 200, description = "Alive", body = Health))
)]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(
    get, path = "/readyz", tag = "public",
    summary = "Readiness: every configured store answers within its deadline",
    responses(
        (status = 200, description = "Every store answered", body = Ready),
        (status = 503, description = "A store did not answer: a problem naming it, with the same `stores` list", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(
    get, path = "/metrics", tag = "public",
    summary = "Prometheus metrics (text exposition format)",
    responses((status = 200, description = "The metrics", body = String, content_type = "text/plain"))
)]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(
    get, path = "/api/{cluster}/echo", tag = "public",
    summary = "Echo, guarded by the cluster of the path",
    params(("cluster" = String, Path, description = "A configured cluster id")),
    responses((status = 200, description = "The echo", body = Echo), NotFound, Guarded)
)]
#[allow(dead_code)]
fn echo_get() {}

#[utoipa::path(
    post, path = "/api/{cluster}/echo", tag = "public",
    summary = "Echo a body, guarded; idempotent with an Idempotency-Key",
    params(
        ("cluster" = String, Path, description = "A configured cluster id"),
        ("Idempotency-Key" = Option<String>, Header, description = "RFC 8941 sf-string (a bare token is accepted)"),
    ),
    request_body(content = Value, description = "Any JSON (or text) body", content_type = "application/json"),
    responses(
        (status = 200, description = "The echo (a replay carries Idempotent-Replayed: true)", body = Echo),
        BadRequest, NotFound, Keyed, TooLarge, Guarded,
    )
)]
#[allow(dead_code)]
fn echo_post() {}

#[utoipa::path(
    get, path = "/api/{cluster}/status/{code}", tag = "public",
    summary = "Answer the status asked for (to exercise breakers), guarded by the cluster",
    params(
        ("cluster" = String, Path, description = "A configured cluster id"),
        ("code" = u16, Path, minimum = 200, maximum = 599, description = "The status to answer"),
    ),
    responses(
        (status = 200, description = "`{cluster, status, traceId}`, or no body for 204, 205, 304"),
        (status = "default", description = "The status asked for; an error status as problem+json", body = Problem, content_type = "application/problem+json"),
        BadRequest, NotFound, Guarded,
    )
)]
#[allow(dead_code)]
fn status() {}

/// The request headers of both mints.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a parameter list: the layers read these headers themselves
struct MintHeaders {
    /// RFC 8941 sf-string (a bare token is accepted); required.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: String,
    /// The account charged (default: the configured one).
    #[param(rename = "X-Account-Id")]
    account: Option<String>,
}

#[utoipa::path(
    post, path = "/api/mint-dream", tag = "public",
    summary = "Mint a dream: billable (charged once per Idempotency-Key), guarded by dream-state",
    params(MintHeaders),
    request_body = MintRequest,
    responses(
        (status = 201, description = "Minted and charged (a replay carries Idempotent-Replayed: true)", body = MintResponse),
        BadRequest, PaymentRequired, Keyed, TooLarge, Guarded,
    )
)]
#[allow(dead_code)]
fn mint_dream() {}

#[utoipa::path(
    post, path = "/api/mint-dream-token", tag = "public",
    summary = "Mint a dream token: billable, guarded by dream-state",
    params(MintHeaders),
    request_body = MintRequest,
    responses(
        (status = 201, description = "Minted and charged", body = MintResponse),
        BadRequest, PaymentRequired, Keyed, TooLarge, Guarded,
    )
)]
#[allow(dead_code)]
fn mint_dream_token() {}

/// The public endpoints.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "DreamNet example server",
        description = "Every DreamNet layer on real endpoints: trace ids, Idempotency-Key, kill switches, rate limits, circuit breakers and two-phase billing."
    ),
    paths(healthz, readyz, metrics, echo_get, echo_post, status, mint_dream, mint_dream_token),
    components(schemas(Problem)),
    tags((name = "public", description = "The guarded and billable endpoints"))
)]
struct PublicApi;

/// The whole document, for a server whose clusters are `clusters`.
pub(crate) fn document<'a>(clusters: impl IntoIterator<Item = &'a str>) -> Document {
    let mut doc = PublicApi::openapi()
        .nest(
            CONTROL_MOUNT,
            admin(dreamnet_control_core::api::ApiDoc::openapi()),
        )
        .nest(
            BILLABLE_MOUNT,
            admin(dreamnet_billable::api::ApiDoc::openapi()),
        );
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // The control API's `/` is served at the mount point itself (axum's `nest`), not below it.
    if let Some(root) = doc.paths.paths.remove(&format!("{CONTROL_MOUNT}/")) {
        doc.paths.paths.insert(CONTROL_MOUNT.to_owned(), root);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        ADMIN_SCHEME,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let clusters: Vec<Value> = clusters.into_iter().map(Value::from).collect();
    for (path, item) in &mut doc.paths.paths {
        let names_a_cluster = |name: &str| {
            name == "cluster"
                || (name == "id" && path.starts_with(&format!("{CONTROL_MOUNT}/cluster/")))
        };
        for operation in operations(item) {
            for param in operation.parameters.iter_mut().flatten() {
                if names_a_cluster(&param.name) {
                    let schema = serde_json::json!({ "type": "string", "enum": clusters });
                    param.schema = serde_json::from_value(schema).ok();
                }
            }
        }
    }
    doc
}

/// An admin API's document with every operation behind the admin bearer token.
fn admin(mut doc: Document) -> Document {
    let refusals = [Unauthorized::responses(), Throttled::responses()];
    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            operation.security = Some(vec![SecurityRequirement::new(
                ADMIN_SCHEME,
                Vec::<String>::new(),
            )]);
            for (status, response) in refusals.iter().flatten() {
                let response: RefOr<Response> = response.clone();
                operation
                    .responses
                    .responses
                    .insert(status.clone(), response);
            }
        }
    }
    doc
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The route `GET /api/openapi.json`, answering the document rendered once at build.
pub(crate) fn routes(document: &Document) -> Router {
    let json = Bytes::from(document.to_json().expect("the OpenAPI document serializes"));
    Router::new().route(
        "/api/openapi.json",
        get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}
