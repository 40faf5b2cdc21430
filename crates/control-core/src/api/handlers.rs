//! The handlers behind [`router`](super::router): extract, call the plane, answer JSON.

use axum::{
    extract::{FromRequest, FromRequestParts, RawQuery, Request, State},
    http::request::Parts,
    response::Response,
};
use dreamnet_admin::api::{json, ApiError, ApiPath, JsonObject};
use http::StatusCode;

use super::bodies::{AuditQuery, NoteBody, RateLimitBody, SwitchBody};
use crate::{plane::ControlError, store::AUDIT_CAPACITY, ControlPlane};
#[cfg(feature = "openapi")]
use crate::{
    store::AuditEntry,
    views::{
        BreakerView, ClusterView, ControlView, KillSwitchView, MetricsSnapshot, RateLimitView,
    },
};
#[cfg(feature = "openapi")]
use dreamnet_admin::api::openapi::{BadRequest, NotFound, TooLarge, Unavailable};
use dreamnet_common::Problem;
use serde::Serialize;

type Answer = Result<Response, ApiError>;

/// The optional note of a command (`reason`, `disabledBy`): an absent or empty body is no
/// note; a body that is there must be a valid JSON object.
pub(super) struct Note(NoteBody);

impl<S: Send + Sync> FromRequest<S> for Note {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = Option::<JsonObject<NoteBody>>::from_request(request, state).await?;
        Ok(Self(body.map(|JsonObject(b)| b).unwrap_or_default()))
    }
}

/// A command's view as JSON, or its problem.
fn answer<V: Serialize>(result: Result<V, ControlError>) -> Answer {
    result.map(|view| json(&view)).map_err(problem)
}

/// The `{id}` of a cluster the plane has; an unknown one is 404 before the body is read.
pub(super) struct Cluster(String);

impl FromRequestParts<ControlPlane> for Cluster {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, plane: &ControlPlane) -> Result<Self, ApiError> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, plane).await?;
        if plane.has_cluster(&id) {
            Ok(Self(id))
        } else {
            Err(unknown(&id))
        }
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("unknown cluster {id:?}"))
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(problem)`
fn problem(error: ControlError) -> ApiError {
    match &error {
        ControlError::UnknownCluster(id) => unknown(id),
        ControlError::Invalid(detail) => ApiError::bad_request(detail.clone()),
        ControlError::Store(_) | ControlError::Contended => ApiError::new(
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .detail(format!("{error}; nothing was changed"))
                .retry_after_millis(1000),
        ),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/", tag = "control",
    summary = "The kill switch and every cluster",
    responses((status = 200, description = "The whole control state", body = ControlView))
))]
pub(super) async fn overview(State(plane): State<ControlPlane>) -> Response {
    json(&plane.overview().await)
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/kill-switch", tag = "control",
    summary = "The global kill switch",
    responses((status = 200, description = "The kill switch", body = KillSwitchView))
))]
pub(super) async fn kill_switch(State(plane): State<ControlPlane>) -> Response {
    json(&plane.kill_switch())
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/kill-switch/enable", tag = "control",
    summary = "Engage the global kill switch (every guarded route answers 503)",
    request_body = SwitchBody,
    responses((status = 200, description = "The engaged kill switch", body = KillSwitchView), BadRequest, TooLarge, Unavailable)
))]
pub(super) async fn engage_kill_switch(
    State(plane): State<ControlPlane>,
    JsonObject(body): JsonObject<SwitchBody>,
) -> Answer {
    answer(
        plane
            .engage_kill_switch(&body.reason()?, body.actor(), body.ttl()?)
            .await,
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/kill-switch/disable", tag = "control",
    summary = "Release the global kill switch",
    request_body(content = Option<NoteBody>, description = "An optional note; the body may be empty"),
    responses((status = 200, description = "The released kill switch", body = KillSwitchView), BadRequest, TooLarge, Unavailable)
))]
pub(super) async fn release_kill_switch(
    State(plane): State<ControlPlane>,
    Note(note): Note,
) -> Answer {
    answer(
        plane
            .release_kill_switch(note.reason.as_deref(), note.actor())
            .await,
    )
}

/// A cluster with its usage windows (the shape of `GET /cluster/{id}` and of the answers
/// to disable and enable).
async fn cluster_with_usage(plane: &ControlPlane, id: &str) -> Answer {
    let mut view = plane.cluster(id).ok_or_else(|| unknown(id))?;
    view.usage.windows = plane.usage(id).await.unwrap_or_default();
    Ok(json(&view))
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/cluster/{id}", tag = "control",
    summary = "One cluster with its usage",
    params(("id" = String, Path, description = "The cluster id")),
    responses((status = 200, description = "The cluster", body = ClusterView), NotFound)
))]
pub(super) async fn cluster(State(plane): State<ControlPlane>, Cluster(id): Cluster) -> Answer {
    cluster_with_usage(&plane, &id).await
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/cluster/{id}/disable", tag = "control",
    summary = "Disable a cluster (its routes answer 503)",
    params(("id" = String, Path, description = "The cluster id")),
    request_body = SwitchBody,
    responses((status = 200, description = "The disabled cluster", body = ClusterView), BadRequest, NotFound, TooLarge, Unavailable)
))]
pub(super) async fn disable_cluster(
    State(plane): State<ControlPlane>,
    Cluster(id): Cluster,
    JsonObject(body): JsonObject<SwitchBody>,
) -> Answer {
    plane
        .disable_cluster(&id, &body.reason()?, body.actor(), body.ttl()?)
        .await
        .map_err(problem)?;
    cluster_with_usage(&plane, &id).await
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/cluster/{id}/enable", tag = "control",
    summary = "Enable a cluster",
    params(("id" = String, Path, description = "The cluster id")),
    request_body(content = Option<NoteBody>, description = "An optional note; the body may be empty"),
    responses((status = 200, description = "The enabled cluster", body = ClusterView), BadRequest, NotFound, TooLarge, Unavailable)
))]
pub(super) async fn enable_cluster(
    State(plane): State<ControlPlane>,
    Cluster(id): Cluster,
    Note(note): Note,
) -> Answer {
    plane
        .enable_cluster(&id, note.reason.as_deref(), note.actor())
        .await
        .map_err(problem)?;
    cluster_with_usage(&plane, &id).await
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/cluster/{id}/rate-limit", tag = "control",
    summary = "A cluster's rate-limit settings",
    params(("id" = String, Path, description = "The cluster id")),
    responses((status = 200, description = "The rate limit", body = RateLimitView), NotFound)
))]
pub(super) async fn rate_limit(State(plane): State<ControlPlane>, Cluster(id): Cluster) -> Answer {
    Ok(json(&plane.rate_limit(&id).ok_or_else(|| unknown(&id))?))
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/cluster/{id}/rate-limit", tag = "control",
    summary = "Change a cluster's rate limit (partial: only the fields given change)",
    params(("id" = String, Path, description = "The cluster id")),
    request_body = RateLimitBody,
    responses((status = 200, description = "The new rate limit", body = RateLimitView), BadRequest, NotFound, TooLarge, Unavailable)
))]
pub(super) async fn set_rate_limit(
    State(plane): State<ControlPlane>,
    Cluster(id): Cluster,
    JsonObject(body): JsonObject<RateLimitBody>,
) -> Answer {
    let (update, reason, actor) = body.into_update()?;
    answer(
        plane
            .set_rate_limit(&id, &update, &actor, reason.as_deref())
            .await,
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/cluster/{id}/circuit-breaker", tag = "control",
    summary = "A cluster's circuit breaker",
    params(("id" = String, Path, description = "The cluster id")),
    responses((status = 200, description = "The breaker", body = BreakerView), NotFound)
))]
pub(super) async fn breaker(State(plane): State<ControlPlane>, Cluster(id): Cluster) -> Answer {
    Ok(json(&plane.breaker(&id).ok_or_else(|| unknown(&id))?))
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/cluster/{id}/circuit-breaker/trip", tag = "control",
    summary = "Force a cluster's breaker open until a reset",
    params(("id" = String, Path, description = "The cluster id")),
    request_body(content = Option<NoteBody>, description = "An optional note; the body may be empty"),
    responses((status = 200, description = "The tripped breaker", body = BreakerView), BadRequest, NotFound, TooLarge, Unavailable)
))]
pub(super) async fn trip_breaker(
    State(plane): State<ControlPlane>,
    Cluster(id): Cluster,
    Note(note): Note,
) -> Answer {
    answer(
        plane
            .trip_breaker(&id, note.reason.as_deref(), note.actor())
            .await,
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/cluster/{id}/circuit-breaker/reset", tag = "control",
    summary = "Close a cluster's breaker and clear its window",
    params(("id" = String, Path, description = "The cluster id")),
    request_body(content = Option<NoteBody>, description = "An optional note; the body may be empty"),
    responses((status = 200, description = "The reset breaker", body = BreakerView), BadRequest, NotFound, TooLarge, Unavailable)
))]
pub(super) async fn reset_breaker(
    State(plane): State<ControlPlane>,
    Cluster(id): Cluster,
    Note(note): Note,
) -> Answer {
    answer(
        plane
            .reset_breaker(&id, note.reason.as_deref(), note.actor())
            .await,
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/audit", tag = "control",
    summary = "The audit trail, newest first",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "At most this many entries (default 100)"),
        ("cluster" = Option<String>, Query, description = "Only this cluster's entries"),
    ),
    responses((status = 200, description = "The entries, newest first", body = Vec<AuditEntry>), BadRequest, Unavailable)
))]
pub(super) async fn audit(State(plane): State<ControlPlane>, RawQuery(query): RawQuery) -> Answer {
    let query = AuditQuery::parse(query.as_deref())?;
    // A cluster filter reads the whole trail, then keeps `limit` of that cluster's entries.
    let read = if query.cluster.is_some() {
        AUDIT_CAPACITY
    } else {
        query.limit
    };
    let mut entries = plane.audit(read).await.map_err(problem)?;
    if let Some(cluster) = &query.cluster {
        entries.retain(|e| e.cluster.as_deref() == Some(cluster.as_str()));
        entries.truncate(query.limit);
    }
    Ok(json(&entries))
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/metrics", tag = "control",
    summary = "This replica's counters",
    responses((status = 200, description = "Counters since start", body = MetricsSnapshot))
))]
pub(super) async fn metrics(State(plane): State<ControlPlane>) -> Response {
    json(&plane.metrics())
}
