//! The OpenAPI 3.1 description of the control API (feature `openapi`), derived from the
//! handlers' `#[utoipa::path]` attributes and the view types, so it cannot drift from what
//! [`router`](super::router) serves. Paths are relative to the mount point: nest it where the
//! router is nested (`utoipa::openapi::OpenApi::nest`).
//!
//! ```
//! use utoipa::OpenApi;
//!
//! let doc = dreamnet_control_core::api::ApiDoc::openapi();
//! assert!(doc.paths.paths.contains_key("/kill-switch/enable"));
//! ```

use super::handlers;

/// The control API's OpenAPI document (paths relative to where the router is mounted).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "DreamNet control API", description = "Kill switches, rate limits and circuit breakers."),
    paths(
        handlers::overview,
        handlers::kill_switch,
        handlers::engage_kill_switch,
        handlers::release_kill_switch,
        handlers::cluster,
        handlers::disable_cluster,
        handlers::enable_cluster,
        handlers::rate_limit,
        handlers::set_rate_limit,
        handlers::breaker,
        handlers::trip_breaker,
        handlers::reset_breaker,
        handlers::audit,
        handlers::metrics,
    ),
    components(schemas(dreamnet_common::Problem)),
    tags((name = "control", description = "Kill switches, cluster switches, rate limits, breakers, audit"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::ApiDoc;
    use crate::store::AUDIT_CAPACITY;

    #[test]
    fn every_route_is_documented_with_its_refusals() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 13, "{:?}", paths.keys().collect::<Vec<_>>());
        let set = &paths["/cluster/{id}/rate-limit"]["post"];
        for status in ["200", "400", "404", "413", "503"] {
            assert!(set["responses"][status].is_object(), "{status}: {set}");
        }
        let problem = &set["responses"]["400"]["content"]["application/problem+json"];
        assert_eq!(problem["schema"]["$ref"], "#/components/schemas/Problem");
        // Unknown fields are refused by the API, so the schema says so too.
        let body = &doc["components"]["schemas"]["RateLimitBody"];
        assert_eq!(body["additionalProperties"], false, "{body}");
        let limit = &paths["/audit"]["get"]["parameters"][0];
        assert_eq!(limit["schema"]["maximum"], AUDIT_CAPACITY as u64, "{limit}");
    }
}
