//! Run-time configuration: the command line / environment part ([`Config`]) and the TOML
//! file part ([`FileConfig`]).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// The default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
/// The account charged when a mint request carries no `X-Account-Id`.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The price of `POST /api/mint-dream` in minor units when the config names none.
pub const DEFAULT_MINT_DREAM_PRICE: u64 = 100;
/// The price of `POST /api/mint-dream-token` in minor units when the config names none.
pub const DEFAULT_MINT_TOKEN_PRICE: u64 = 25;
/// The currency of the default prices.
pub const DEFAULT_CURRENCY: &str = "USD";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, with the request span's fields (`trace_id`, `span_id`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// Everything the server needs to start.
///
/// `Debug` redacts the admin token and any credentials in the store URLs.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (`--addr`, `DREAMNET_ADDR`).
    pub addr: SocketAddr,
    /// Redis for control state, rate-limit counters and idempotency records; memory when `None`.
    /// With [`redis_cluster`](Self::redis_cluster), a comma-separated list of seed nodes.
    pub redis_url: Option<String>,
    /// Whether `redis_url` names the seed nodes of a Redis Cluster (`--redis-cluster`).
    pub redis_cluster: bool,
    /// Key prefix in Redis (lets several deployments, or tests, share one Redis).
    pub redis_prefix: String,
    /// PostgreSQL for the billing ledger; memory when `None`.
    pub database_url: Option<String>,
    /// PostgreSQL schema for the ledger tables.
    pub database_schema: Option<String>,
    /// The longest one Redis call may take (`--redis-timeout-ms`); past it the call is a
    /// store fault (idempotency 503, rate limits fail open). `None`: each store's own
    /// default (idempotency 2 s, control 500 ms, the admission path fails open quickly).
    pub redis_timeout: Option<Duration>,
    /// The longest one ledger call may take, pool waits and `statement_timeout` included
    /// (`--database-timeout-ms`, default 5 s); past it a mint is 503 with `Retry-After`.
    pub database_timeout: Duration,
    /// The admin bearer token; generated when `None`.
    pub admin_token: Option<String>,
    /// The parsed `--config` file (defaults when no file is given).
    pub file: FileConfig,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Connection and request limits at the edge.
    pub edge: crate::EdgeConfig,
    /// Where to export a span of every request over OTLP/HTTP (`--otlp-endpoint`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; the base URL, `/v1/traces` is appended). Needs the
    /// `otlp` feature; `None`: no export.
    pub otlp_endpoint: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("redis_url", &self.redis_url.as_deref().map(redact_urls))
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_prefix", &self.redis_prefix)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("database_schema", &self.database_schema)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("file", &self.file)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("edge", &self.edge)
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redact_url),
            )
            .finish()
    }
}

/// A URL fit for logs: the password of `scheme://user:password@host/...` replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// [`redact_url`] for each URL of a comma-separated list (a seed-node list).
pub(crate) fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| redact_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

impl Config {
    /// Where Redis is: `None` for the memory stores, one server, or (with `redis_cluster`)
    /// the seed nodes of a Redis Cluster.
    ///
    /// # Errors
    /// `--redis-cluster` without `--redis-url`, a bad URL, or several URLs without
    /// `--redis-cluster` (the message carries no password).
    pub fn redis_endpoint(
        &self,
    ) -> Result<Option<dreamnet_common::redis_connection::RedisEndpoint>, String> {
        match self.redis_url.as_deref() {
            None if self.redis_cluster => {
                Err("--redis-cluster needs --redis-url with the seed nodes".to_owned())
            }
            None => Ok(None),
            Some(urls) => {
                dreamnet_common::redis_connection::RedisEndpoint::parse(urls, self.redis_cluster)
                    .map(Some)
                    .map_err(|e| format!("--redis-url {}: {e}", redact_urls(urls)))
            }
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.parse().expect("valid default address"),
            redis_url: None,
            redis_cluster: false,
            redis_prefix: "dreamnet:".to_owned(),
            database_url: None,
            database_schema: None,
            redis_timeout: None,
            database_timeout: dreamnet_billable::ledger::postgres::DEFAULT_DEADLINE,
            admin_token: None,
            file: FileConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            edge: crate::EdgeConfig::default(),
            otlp_endpoint: None,
        }
    }
}

/// The `--config` TOML file.
///
/// ```toml
/// [control]                 # clusters, limits and breaker settings (dreamnet-control-core)
///
/// [billing]
/// currency = "USD"
/// default_account = "default"
/// reservation_timeout_seconds = 300
/// sweep_interval_seconds = 30
///
/// [billing.prices]          # minor units (cents) per billable action
/// mint-dream = 100
/// mint-dream-token = 25
///
/// [billing.accounts.acme]   # credit lines; accounts not listed are unlimited
/// credit = 10000
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// The control plane's configuration, handed to `dreamnet-control-core` as is.
    pub control: Option<toml::Value>,
    /// Prices, accounts and the sweeper.
    pub billing: BillingConfig,
}

/// The `[billing]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// The currency of every price and credit line.
    pub currency: String,
    /// The account charged when a request carries no `X-Account-Id`.
    pub default_account: String,
    /// Minor units per billable action (`mint-dream`, `mint-dream-token`).
    pub prices: BTreeMap<String, u64>,
    /// Credit lines per account; accounts not listed are unlimited.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// A `pending` reservation older than this is voided by the sweeper.
    pub reservation_timeout_seconds: u64,
    /// How often the sweeper looks for stuck reservations.
    pub sweep_interval_seconds: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            currency: DEFAULT_CURRENCY.to_owned(),
            default_account: DEFAULT_ACCOUNT.to_owned(),
            prices: BTreeMap::new(),
            accounts: BTreeMap::new(),
            reservation_timeout_seconds: 300,
            sweep_interval_seconds: 30,
        }
    }
}

impl BillingConfig {
    /// The price of `action` in minor units.
    pub fn price(&self, action: &str) -> u64 {
        self.prices.get(action).copied().unwrap_or(match action {
            "mint-dream-token" => DEFAULT_MINT_TOKEN_PRICE,
            _ => DEFAULT_MINT_DREAM_PRICE,
        })
    }
}

/// One `[billing.accounts.<id>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The credit line in minor units.
    pub credit: u64,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this server.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The path given.
        path: String,
        /// The parse error.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl FileConfig {
    /// Parses TOML text.
    ///
    /// # Errors
    /// When the text is not valid TOML for this server.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<inline>".to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// When the file cannot be read or is not valid TOML for this server.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let billing = &self.billing;
        if billing.currency.len() != 3 || !billing.currency.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(ConfigError::Invalid(format!(
                "billing.currency must be an ISO 4217 code such as \"USD\", got {:?}",
                billing.currency
            )));
        }
        if billing.default_account.is_empty() {
            return Err(ConfigError::Invalid(
                "billing.default_account must not be empty".to_owned(),
            ));
        }
        if billing.reservation_timeout_seconds == 0 || billing.sweep_interval_seconds == 0 {
            return Err(ConfigError::Invalid(
                "billing.reservation_timeout_seconds and sweep_interval_seconds must be > 0"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_endpoint_is_one_url_or_a_cluster_seed_list() {
        let with = |url: Option<&str>, cluster: bool| Config {
            redis_url: url.map(str::to_owned),
            redis_cluster: cluster,
            ..Config::default()
        };
        assert_eq!(with(None, false).redis_endpoint(), Ok(None));
        let one = with(Some("redis://127.0.0.1:6379"), false).redis_endpoint();
        assert!(!one.unwrap().unwrap().is_cluster());
        let seeds = with(Some("redis://a:7001,redis://b:7002"), true)
            .redis_endpoint()
            .unwrap()
            .unwrap();
        assert!(seeds.is_cluster());
        assert_eq!(seeds.nodes(), ["redis://a:7001", "redis://b:7002"]);
        let err = with(Some("redis://:pw@a:1,redis://:pw@b:2"), false)
            .redis_endpoint()
            .unwrap_err();
        assert!(
            err.contains("--redis-cluster") && !err.contains("pw"),
            "{err}"
        );
        let err = with(None, true).redis_endpoint().unwrap_err();
        assert!(err.contains("needs --redis-url"), "{err}");
    }

    #[test]
    fn urls_and_tokens_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/test"),
            "postgres://app:***@db:5432/test"
        );
        assert_eq!(
            redact_url("redis://:pw@cache:6379"),
            "redis://:***@cache:6379"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_urls("redis://:pw@a:1, redis://:pw@b:2"),
            "redis://:***@a:1,redis://:***@b:2",
            "every seed node's password"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        let config = Config {
            admin_token: Some("tok-123".to_owned()),
            database_url: Some("postgres://a:pw@h/db".to_owned()),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("tok-123") && !debug.contains("pw@"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_without_a_file() {
        let config = FileConfig::from_toml("").unwrap();
        assert_eq!(config.billing.currency, "USD");
        assert_eq!(config.billing.price("mint-dream"), DEFAULT_MINT_DREAM_PRICE);
        assert_eq!(
            config.billing.price("mint-dream-token"),
            DEFAULT_MINT_TOKEN_PRICE
        );
        assert!(config.billing.accounts.is_empty());
    }

    #[test]
    fn prices_and_accounts_from_toml() {
        let config = FileConfig::from_toml(
            r#"
            [billing]
            currency = "EUR"
            [billing.prices]
            mint-dream = 7
            [billing.accounts.acme]
            credit = 500
            "#,
        )
        .unwrap();
        assert_eq!(config.billing.currency, "EUR");
        assert_eq!(config.billing.price("mint-dream"), 7);
        assert_eq!(config.billing.accounts["acme"].credit, 500);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(FileConfig::from_toml("[billing]\ncurency = \"USD\"").is_err());
        assert!(FileConfig::from_toml("[billing]\ncurrency = \"dollars\"").is_err());
        assert!(FileConfig::from_toml("[billing.prices]\nmint-dream = -1").is_err());
        assert!(FileConfig::from_toml("[billing.accounts.a]\ncredit = 1.5").is_err());
    }
}
