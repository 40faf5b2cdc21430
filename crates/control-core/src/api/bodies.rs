//! The request bodies and the audit query of the control API.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    config::WindowConfig,
    plane::{PerClientUpdate, RateLimitUpdate},
    store::AUDIT_CAPACITY,
};
use dreamnet_admin::api::ApiError;

/// Longest accepted `ttlSeconds` (one year).
const MAX_TTL_SECONDS: u64 = 366 * 86_400;

/// `{reason, disabledBy, ttlSeconds}`: engaging a switch.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SwitchBody {
    /// Why (required, not blank).
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, min_length = 1, pattern = r"\S")
    )]
    reason: Option<String>,
    /// Who (default `api`).
    disabled_by: Option<String>,
    /// Ends by itself after this many seconds (1 s to a year); none = until released.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31_622_400))]
    ttl_seconds: Option<u64>,
}

impl SwitchBody {
    pub(crate) fn reason(&self) -> Result<String, ApiError> {
        match self.reason.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => Ok(r.to_owned()),
            _ => Err(ApiError::bad_request("a non-empty \"reason\" is required")),
        }
    }

    pub(crate) fn actor(&self) -> &str {
        actor(self.disabled_by.as_deref())
    }

    pub(crate) fn ttl(&self) -> Result<Option<Duration>, ApiError> {
        match self.ttl_seconds {
            None => Ok(None),
            Some(s) if (1..=MAX_TTL_SECONDS).contains(&s) => Ok(Some(Duration::from_secs(s))),
            Some(_) => Err(ApiError::bad_request(format!(
                "\"ttlSeconds\" must be an integer in 1..={MAX_TTL_SECONDS}"
            ))),
        }
    }
}

/// `{reason?, disabledBy?}`: releasing a switch, breaker actions.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NoteBody {
    /// Why.
    pub(crate) reason: Option<String>,
    /// Who (default `api`).
    disabled_by: Option<String>,
}

impl NoteBody {
    pub(crate) fn actor(&self) -> &str {
        actor(self.disabled_by.as_deref())
    }
}

fn actor(given: Option<&str>) -> &str {
    given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("api")
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RateLimitBody {
    /// The `second` window's limit.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    requests_per_second: Option<u64>,
    /// The `minute` window's limit.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    requests_per_minute: Option<u64>,
    /// The `hour` window's limit.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    requests_per_hour: Option<u64>,
    /// The `day` window's limit.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    requests_per_day: Option<u64>,
    /// Whether the limit is enforced.
    enabled: Option<bool>,
    /// Every window at once (replaces them all; at most 16).
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    windows: Option<Vec<WindowConfig>>,
    /// Each client's own windows (partial: a limit sets its window, `null` removes it).
    per_client: Option<PerClientUpdate>,
    /// Why.
    reason: Option<String>,
    /// Who (default `api`).
    disabled_by: Option<String>,
}

impl RateLimitBody {
    pub(crate) fn into_update(self) -> Result<(RateLimitUpdate, Option<String>, String), ApiError> {
        let update = RateLimitUpdate {
            requests_per_second: self.requests_per_second,
            requests_per_minute: self.requests_per_minute,
            requests_per_hour: self.requests_per_hour,
            requests_per_day: self.requests_per_day,
            enabled: self.enabled,
            windows: self.windows,
            // `"perClient": {}` changes nothing either.
            per_client: self.per_client.filter(|p| *p != PerClientUpdate::default()),
        };
        if update == RateLimitUpdate::default() {
            return Err(ApiError::bad_request(
                "nothing to change: give requestsPerMinute, requestsPerHour, requestsPerDay, enabled, windows or perClient",
            ));
        }
        let actor = actor(self.disabled_by.as_deref()).to_owned();
        Ok((update, self.reason, actor))
    }
}

pub(crate) struct AuditQuery {
    pub(crate) limit: usize,
    pub(crate) cluster: Option<String>,
}

impl AuditQuery {
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut out = Self {
            limit: 100,
            cluster: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "limit" => {
                    out.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=AUDIT_CAPACITY).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "\"limit\" must be an integer in 1..={AUDIT_CAPACITY}"
                            ))
                        })?;
                }
                "cluster" => out.cluster = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(out)
    }
}
