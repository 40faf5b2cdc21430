//! Configuration: clusters with their rate-limit windows, breaker settings, fail-open policy.
//!
//! [`ControlConfig::default`] is the seed's twelve clusters. A TOML document replaces them:
//!
//! ```toml
//! fail_open = true              # rate limiting when the shared store is unreachable
//!
//! [breaker]                     # defaults for every cluster
//! window = "count"              # or "time" (window_size is then in seconds)
//! window_size = 20
//! minimum_calls = 10
//! failure_rate_threshold = 50.0
//!
//! [clusters.wolf-pack]
//! requests_per_minute = 60
//! requests_per_hour = 1000
//! requests_per_day = 10000
//!
//! [clusters.wolf-pack.per_client]  # each client's own windows, beside the cluster's
//! requestsPerMinute = 5
//! requestsPerDay = 100
//!
//! [clusters.shield-core]
//! windows = [{ name = "second", limit = 50, seconds = 1 }, { name = "minute", limit = 1000, seconds = 60 }]
//! breaker = { minimum_calls = 50 }
//! ```
//!
//! When `[clusters]` is present it replaces the seed's set entirely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse or did not match the schema.
    #[error("invalid control configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range.
    #[error("invalid control configuration: {0}")]
    Invalid(String),
}

/// The seed's clusters with their requests per minute / hour / day.
pub const SEED_CLUSTERS: [(&str, u64, u64, u64); 12] = [
    ("wolf-pack", 60, 1000, 10_000),
    ("orca-pack", 30, 500, 5000),
    ("whale-pack", 30, 500, 5000),
    ("octopus-executor", 120, 5000, 50_000),
    ("spider-web", 100, 2000, 20_000),
    ("jaggy-core", 20, 200, 2000),
    ("webhook-nervous", 200, 5000, 50_000),
    ("shield-core", 1000, 50_000, 500_000),
    ("api-keeper", 100, 2000, 20_000),
    ("ai-seo", 50, 1000, 10_000),
    ("dream-state", 60, 1000, 10_000),
    ("star-bridge", 30, 500, 5000),
];

/// The whole control-plane configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawControlConfig")]
pub struct ControlConfig {
    /// The clusters, by id.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Breaker defaults (each cluster may override them).
    pub breaker: BreakerConfig,
    /// When the shared store is unreachable: admit (`true`, the default) or answer 503.
    pub fail_open: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        let clusters = SEED_CLUSTERS
            .iter()
            .map(|&(id, minute, hour, day)| {
                (
                    id.to_owned(),
                    ClusterConfig::per_minute_hour_day(minute, hour, day),
                )
            })
            .collect();
        Self {
            clusters,
            breaker: BreakerConfig::default(),
            fail_open: true,
        }
    }
}

impl ControlConfig {
    /// Parses and validates a TOML document.
    ///
    /// # Errors
    /// When the TOML is malformed, has unknown fields or out-of-range values.
    pub fn from_toml_str(toml_text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(toml_text)?)
    }

    /// The breaker settings of a cluster (its overrides applied to the defaults).
    pub fn breaker_for(&self, cluster: &str) -> BreakerConfig {
        self.clusters
            .get(cluster)
            .and_then(|c| c.breaker.as_ref())
            .map_or_else(|| self.breaker.clone(), |o| o.apply(&self.breaker))
    }

    /// Checks ids, windows and breaker values.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (id, cluster) in &self.clusters {
            if !valid_id(id) {
                return Err(ConfigError::Invalid(format!(
                    "cluster id {id:?} must be 1..=64 chars of [A-Za-z0-9._-]"
                )));
            }
            validate_windows(&cluster.windows)
                .and_then(|()| validate_client_windows(&cluster.per_client))
                .map_err(|e| ConfigError::Invalid(format!("cluster {id}: {e}")))?;
            self.breaker_for(id)
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("cluster {id}: {e}")))?;
        }
        self.breaker.validate().map_err(ConfigError::Invalid)
    }
}

/// Whether a cluster id is usable in URLs and Redis keys.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One rate-limit window: at most `limit` requests per `seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The name in `RateLimit` headers (`minute`, `hour`, ...): 1..=32 chars of `[a-z0-9_-]`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9_-]{1,32}$"))]
    pub name: String,
    /// Requests admitted per window.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    pub limit: u64,
    /// Window length in seconds (>= 1).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31_622_400))]
    pub seconds: u64,
}

impl WindowConfig {
    /// A window.
    pub fn new(name: impl Into<String>, limit: u64, seconds: u64) -> Self {
        Self {
            name: name.into(),
            limit,
            seconds,
        }
    }
}

/// The largest accepted window limit (counters stay exact in Redis' Lua numbers).
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

pub(crate) fn validate_windows(windows: &[WindowConfig]) -> Result<(), String> {
    for (i, w) in windows.iter().enumerate() {
        let name_ok = (1..=32).contains(&w.name.len())
            && w.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "window name {:?} must be 1..=32 chars of [a-z0-9_-]",
                w.name
            ));
        }
        if w.seconds == 0 || w.seconds > 366 * 86_400 {
            return Err(format!("window {} must last 1..=31622400 seconds", w.name));
        }
        if w.limit > MAX_LIMIT {
            return Err(format!(
                "window {} allows at most {MAX_LIMIT} requests",
                w.name
            ));
        }
        if windows[..i].iter().any(|o| o.name == w.name) {
            return Err(format!("window {} is listed twice", w.name));
        }
    }
    if windows.len() > 16 {
        return Err("at most 16 windows per cluster".to_owned());
    }
    Ok(())
}

/// The most per-client windows a cluster has (`second`, `minute`, `hour`, `day`): the memory
/// store keeps each client's counters in a fixed array of this size.
pub const MAX_CLIENT_WINDOWS: usize = 4;

/// The largest per-client window limit: the memory store counts a client in 32 bits, which
/// keeps a client's entry small with millions of clients.
pub const MAX_CLIENT_LIMIT: u64 = u32::MAX as u64;

/// The per-client windows by name, and their length in seconds.
const CLIENT_WINDOWS: [(&str, u64); MAX_CLIENT_WINDOWS] = [
    ("second", 1),
    ("minute", 60),
    ("hour", 3600),
    ("day", 86_400),
];

/// A cluster's per-client quotas: every client (see [`ClientKey`](crate::ClientKey)) gets
/// these windows of its own, checked together with the cluster's aggregate windows (a
/// request is admitted only if all of them admit it). TOML `[clusters.<id>.per_client]`
/// (camelCase as in the API, or snake_case as the cluster's own keys). In `RateLimit`
/// headers the windows are named `client-<name>` (`client-minute`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PerClientLimits {
    /// Each client's `second` window.
    #[serde(
        default,
        alias = "requests_per_second",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(maximum = 4_294_967_295_u64))]
    pub requests_per_second: Option<u64>,
    /// Each client's `minute` window.
    #[serde(
        default,
        alias = "requests_per_minute",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(maximum = 4_294_967_295_u64))]
    pub requests_per_minute: Option<u64>,
    /// Each client's `hour` window.
    #[serde(
        default,
        alias = "requests_per_hour",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(maximum = 4_294_967_295_u64))]
    pub requests_per_hour: Option<u64>,
    /// Each client's `day` window.
    #[serde(
        default,
        alias = "requests_per_day",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(maximum = 4_294_967_295_u64))]
    pub requests_per_day: Option<u64>,
}

impl PerClientLimits {
    fn limits(&self) -> [Option<u64>; MAX_CLIENT_WINDOWS] {
        [
            self.requests_per_second,
            self.requests_per_minute,
            self.requests_per_hour,
            self.requests_per_day,
        ]
    }

    /// The windows these limits describe, shortest first.
    pub fn windows(&self) -> Vec<WindowConfig> {
        CLIENT_WINDOWS
            .iter()
            .zip(self.limits())
            .filter_map(|(&(name, seconds), limit)| {
                limit.map(|limit| WindowConfig::new(name, limit, seconds))
            })
            .collect()
    }

    /// The limits of `windows` (per-client windows, as [`windows`](Self::windows) makes).
    pub fn of_windows(windows: &[WindowConfig]) -> Self {
        let find = |name: &str| windows.iter().find(|w| w.name == name).map(|w| w.limit);
        Self {
            requests_per_second: find("second"),
            requests_per_minute: find("minute"),
            requests_per_hour: find("hour"),
            requests_per_day: find("day"),
        }
    }
}

/// Per-client windows: only the named ones of [`PerClientLimits`], each at most
/// [`MAX_CLIENT_LIMIT`].
pub(crate) fn validate_client_windows(windows: &[WindowConfig]) -> Result<(), String> {
    validate_windows(windows)?;
    for w in windows {
        if !CLIENT_WINDOWS.contains(&(w.name.as_str(), w.seconds)) {
            return Err(format!(
                "per-client window {} must be one of second, minute, hour, day",
                w.name
            ));
        }
        if w.limit > MAX_CLIENT_LIMIT {
            return Err(format!(
                "per-client window {} allows at most {MAX_CLIENT_LIMIT} requests",
                w.name
            ));
        }
    }
    Ok(())
}

/// One cluster's initial settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawClusterConfig", into = "RawClusterConfig")]
pub struct ClusterConfig {
    /// Rate-limit windows; a request is admitted only if every window admits it.
    pub windows: Vec<WindowConfig>,
    /// Each client's own windows inside the cluster (empty: none), checked together with
    /// `windows` (see [`PerClientLimits`]).
    pub per_client: Vec<WindowConfig>,
    /// Whether the rate limit is enforced.
    pub rate_limit_enabled: bool,
    /// Whether the cluster starts enabled (before any shared state is loaded).
    pub enabled: bool,
    /// Breaker settings that differ from the defaults.
    pub breaker: Option<BreakerOverrides>,
}

impl ClusterConfig {
    /// The seed's shape: `minute`, `hour` and `day` windows.
    pub fn per_minute_hour_day(minute: u64, hour: u64, day: u64) -> Self {
        Self {
            windows: vec![
                WindowConfig::new("minute", minute, 60),
                WindowConfig::new("hour", hour, 3600),
                WindowConfig::new("day", day, 86_400),
            ],
            per_client: Vec::new(),
            rate_limit_enabled: true,
            enabled: true,
            breaker: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_per_day: Option<u64>,
    #[serde(default)]
    windows: Vec<WindowConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_client: Option<PerClientLimits>,
    #[serde(default = "yes")]
    rate_limit_enabled: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    breaker: Option<BreakerOverrides>,
}

fn yes() -> bool {
    true
}

impl TryFrom<RawClusterConfig> for ClusterConfig {
    type Error = String;

    fn try_from(raw: RawClusterConfig) -> Result<Self, String> {
        let mut windows = Vec::new();
        for (name, limit, seconds) in [
            ("second", raw.requests_per_second, 1),
            ("minute", raw.requests_per_minute, 60),
            ("hour", raw.requests_per_hour, 3600),
            ("day", raw.requests_per_day, 86_400),
        ] {
            if let Some(limit) = limit {
                windows.push(WindowConfig::new(name, limit, seconds));
            }
        }
        windows.extend(raw.windows);
        validate_windows(&windows)?;
        let per_client = raw.per_client.unwrap_or_default().windows();
        validate_client_windows(&per_client)?;
        Ok(Self {
            windows,
            per_client,
            rate_limit_enabled: raw.rate_limit_enabled,
            enabled: raw.enabled,
            breaker: raw.breaker,
        })
    }
}

impl From<ClusterConfig> for RawClusterConfig {
    fn from(c: ClusterConfig) -> Self {
        Self {
            windows: c.windows,
            per_client: (!c.per_client.is_empty())
                .then(|| PerClientLimits::of_windows(&c.per_client)),
            rate_limit_enabled: c.rate_limit_enabled,
            enabled: c.enabled,
            breaker: c.breaker,
            ..Self::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlConfig {
    #[serde(default)]
    clusters: Option<BTreeMap<String, ClusterConfig>>,
    #[serde(default)]
    breaker: Option<BreakerConfig>,
    #[serde(default = "yes")]
    fail_open: bool,
}

impl TryFrom<RawControlConfig> for ControlConfig {
    type Error = String;

    fn try_from(raw: RawControlConfig) -> Result<Self, String> {
        let defaults = Self::default();
        let config = Self {
            clusters: raw.clusters.unwrap_or(defaults.clusters),
            breaker: raw.breaker.unwrap_or_default(),
            fail_open: raw.fail_open,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// How the breaker's sliding window counts calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SlidingWindow {
    /// The last `window_size` calls.
    Count,
    /// The calls of the last `window_size` seconds.
    Time,
}

/// Circuit-breaker settings (resilience4j's model).
///
/// Defaults, chosen for an API server with modest traffic per cluster: count-based window of
/// 20 calls, at least 10 calls before the rates are evaluated, open at 50 % failures or 100 %
/// calls slower than 60 s, stay open 30 s, then let exactly 3 probe calls through (half-open):
/// all 3 succeeding closes the breaker, any failure reopens it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker trips by itself (a manual trip works either way).
    pub enabled: bool,
    /// Count- or time-based sliding window.
    pub window: SlidingWindow,
    /// Calls (count-based) or seconds (time-based) in the window.
    pub window_size: u32,
    /// Calls the window must hold before the rates are evaluated.
    pub minimum_calls: u32,
    /// Failure rate (percent) at or above which the breaker opens.
    pub failure_rate_threshold: f64,
    /// Slow-call rate (percent) at or above which the breaker opens.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long (milliseconds) is slow.
    pub slow_call_duration_ms: u64,
    /// How long the breaker stays open before letting probes through (milliseconds).
    pub wait_in_open_ms: u64,
    /// Probe calls admitted in half-open.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: SlidingWindow::Count,
            window_size: 20,
            minimum_calls: 10,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_ms: 60_000,
            wait_in_open_ms: 30_000,
            half_open_calls: 3,
        }
    }
}

impl BreakerConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// A description of the first bad value.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_size == 0 || self.window_size > 100_000 {
            return Err("breaker window_size must be 1..=100000".to_owned());
        }
        if self.window == SlidingWindow::Time && self.window_size > 3600 {
            return Err("a time-based breaker window is at most 3600 seconds".to_owned());
        }
        if self.half_open_calls == 0 {
            return Err("breaker half_open_calls must be at least 1".to_owned());
        }
        for (name, v) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("breaker {name} must be in (0, 100]"));
            }
        }
        Ok(())
    }
}

/// Per-cluster breaker settings that differ from [`BreakerConfig`]'s defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // each field overrides the same-named BreakerConfig field
pub struct BreakerOverrides {
    pub enabled: Option<bool>,
    pub window: Option<SlidingWindow>,
    pub window_size: Option<u32>,
    pub minimum_calls: Option<u32>,
    pub failure_rate_threshold: Option<f64>,
    pub slow_call_rate_threshold: Option<f64>,
    pub slow_call_duration_ms: Option<u64>,
    pub wait_in_open_ms: Option<u64>,
    pub half_open_calls: Option<u32>,
}

impl BreakerOverrides {
    /// The defaults with these overrides applied.
    pub fn apply(&self, base: &BreakerConfig) -> BreakerConfig {
        BreakerConfig {
            enabled: self.enabled.unwrap_or(base.enabled),
            window: self.window.unwrap_or(base.window),
            window_size: self.window_size.unwrap_or(base.window_size),
            minimum_calls: self.minimum_calls.unwrap_or(base.minimum_calls),
            failure_rate_threshold: self
                .failure_rate_threshold
                .unwrap_or(base.failure_rate_threshold),
            slow_call_rate_threshold: self
                .slow_call_rate_threshold
                .unwrap_or(base.slow_call_rate_threshold),
            slow_call_duration_ms: self
                .slow_call_duration_ms
                .unwrap_or(base.slow_call_duration_ms),
            wait_in_open_ms: self.wait_in_open_ms.unwrap_or(base.wait_in_open_ms),
            half_open_calls: self.half_open_calls.unwrap_or(base.half_open_calls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_seed() {
        let config = ControlConfig::default();
        assert_eq!(config.clusters.len(), 12);
        let wolf = &config.clusters["wolf-pack"];
        assert_eq!(
            wolf.windows,
            vec![
                WindowConfig::new("minute", 60, 60),
                WindowConfig::new("hour", 1000, 3600),
                WindowConfig::new("day", 10_000, 86_400)
            ]
        );
        assert_eq!(config.clusters["shield-core"].windows[2].limit, 500_000);
        assert!(config.fail_open);
        config.validate().unwrap();
    }

    #[test]
    fn toml_replaces_clusters_and_overrides_breaker() {
        let config = ControlConfig::from_toml_str(
            r#"
            fail_open = false
            [breaker]
            window = "time"
            window_size = 30
            [clusters.wolf-pack]
            requests_per_minute = 5
            [clusters.fast]
            windows = [{ name = "second", limit = 2, seconds = 1 }]
            rate_limit_enabled = false
            breaker = { minimum_calls = 2, half_open_calls = 1 }
            "#,
        )
        .unwrap();
        assert!(!config.fail_open);
        assert_eq!(config.clusters.len(), 2);
        assert_eq!(
            config.clusters["wolf-pack"].windows,
            vec![WindowConfig::new("minute", 5, 60)]
        );
        assert!(!config.clusters["fast"].rate_limit_enabled);
        let fast = config.breaker_for("fast");
        assert_eq!(fast.window, SlidingWindow::Time);
        assert_eq!(fast.window_size, 30);
        assert_eq!(fast.minimum_calls, 2);
        assert_eq!(fast.half_open_calls, 1);
        assert_eq!(config.breaker_for("wolf-pack").minimum_calls, 10);
    }

    #[test]
    fn per_client_windows_come_from_their_own_table() {
        let config = ControlConfig::from_toml_str(
            r#"
            [clusters.wolf-pack]
            requests_per_day = 100
            [clusters.wolf-pack.per_client]
            requestsPerMinute = 5
            requests_per_day = 20
            "#,
        )
        .unwrap();
        let wolf = &config.clusters["wolf-pack"];
        assert_eq!(wolf.windows, vec![WindowConfig::new("day", 100, 86_400)]);
        assert_eq!(
            wolf.per_client,
            vec![
                WindowConfig::new("minute", 5, 60),
                WindowConfig::new("day", 20, 86_400)
            ]
        );
        // It survives a round trip through TOML (the server prints its effective config).
        let again: ControlConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn empty_toml_is_the_default() {
        assert_eq!(
            ControlConfig::from_toml_str("").unwrap(),
            ControlConfig::default()
        );
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "[clusters.a]\nrequests_per_minute = -1",
            "[clusters.a]\nrequests_per_minute = 1.5",
            "[clusters.a]\nwindows = [{ name = \"m\", limit = 1, seconds = 0 }]",
            "[clusters.a]\nwindows = [{ name = \"Bad Name\", limit = 1, seconds = 1 }]",
            "[clusters.a]\nrequests_per_minute = 1\nwindows = [{ name = \"minute\", limit = 1, seconds = 60 }]",
            "[clusters.\"a b\"]\nrequests_per_minute = 1",
            "[breaker]\nhalf_open_calls = 0",
            "[clusters.a.per_client]\nrequestsPerWeek = 1",
            "[clusters.a.per_client]\nrequestsPerMinute = 4294967296",
            "[breaker]\nfailure_rate_threshold = 0.0",
            "[breaker]\nunknown = 1",
            "nonsense = 1",
        ] {
            assert!(ControlConfig::from_toml_str(bad).is_err(), "accepted {bad:?}");
        }
    }
}
