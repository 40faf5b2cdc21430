//! The PostgreSQL store (feature `postgres`): durable idempotency records.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use crate::{
    store::{
        Claim, ClaimRequest, Completion, FencingToken, IdempotencyStore, StoreError, StoreFuture,
    },
    stored::CorruptRecord,
    Fingerprint, StoredResponse,
};

/// Expired rows are purged in the background after every this many claims.
const PURGE_EVERY: u64 = 1000;

/// A PostgreSQL [`IdempotencyStore`].
///
/// - One table (default `public.dreamnet_idempotency`, primary key `(scope, key)`), created
///   by the store on start (`CREATE TABLE IF NOT EXISTS`, under an advisory lock so replicas
///   starting together do not race).
/// - A claim is one statement: `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired` with the
///   existing row read in the same statement, so two replicas can never both proceed.
/// - Time is the database's `now()`; fencing tokens are a `bigint` that grows on every claim
///   (the microsecond clock, or the previous token + 1).
/// - Expired rows are deleted by [`purge_expired`](Self::purge_expired), which also runs in
///   the background every 1000 claims.
/// - Every operation has a deadline (default 5 s): an unreachable database answers 503.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    table: String,
    schema: String,
    op_timeout: Duration,
    migrated: OnceCell<()>,
    claims: AtomicU64,
    sql: Sql,
}

struct Sql {
    claim: String,
    complete: String,
    release: String,
    extend: String,
    purge: String,
    migrate: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PostgresStore`].
#[must_use]
pub struct PostgresStoreBuilder {
    source: Source,
    schema: String,
    table: String,
    op_timeout: Duration,
}

enum Source {
    Url(String),
    Pool(Pool),
}

impl std::fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// The schema (default `public`; created if missing). `[A-Za-z_][A-Za-z0-9_]*`, at most
    /// 63 characters.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table (default `dreamnet_idempotency`), same rules as the schema.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The deadline for one store operation, waiting for a connection included (default 5 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Builds the store and runs the migration now.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL or name, or an unreachable database.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let store = self.connect_lazy()?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the store without touching the database: the first operation connects and
    /// migrates (an unreachable database then answers 503). Must be called inside a tokio
    /// runtime when built from a URL.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL or schema / table name.
    pub fn connect_lazy(self) -> Result<PostgresStore, StoreError> {
        for name in [&self.schema, &self.table] {
            if !valid_identifier(name) {
                return Err(StoreError::unavailable(format!(
                    "postgres: invalid schema or table name {name:?}"
                )));
            }
        }
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => {
                let mut config =
                    tokio_postgres::Config::from_str(&url).map_err(StoreError::unavailable)?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(Duration::from_secs(2));
                }
                let manager = Manager::from_config(
                    config,
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                Pool::builder(manager)
                    .max_size(16)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(self.op_timeout))
                    .create_timeout(Some(self.op_timeout))
                    .build()
                    .map_err(StoreError::unavailable)?
            }
        };
        let table = format!("\"{}\".\"{}\"", self.schema, self.table);
        let sql = Sql::new(&self.schema, &self.table, &table);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                table,
                schema: self.schema,
                op_timeout: self.op_timeout,
                migrated: OnceCell::new(),
                claims: AtomicU64::new(0),
                sql,
            }),
        })
    }
}

fn valid_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 63
}

impl Sql {
    fn new(schema: &str, table_name: &str, table: &str) -> Self {
        Self {
            // The existing row is read in the same statement; if the conflicting row was
            // committed after this statement's snapshot, neither branch returns a row and the
            // claim is simply run again.
            claim: format!(
                "WITH claimed AS (
                    INSERT INTO {table} AS r
                        (scope, key, fingerprint, trace_id, state, token, expires_at, response)
                    VALUES ($1, $2, $3, $4, 'in_flight',
                        (extract(epoch FROM now()) * 1000000)::bigint,
                        now() + $5::bigint * interval '1 millisecond', NULL)
                    ON CONFLICT (scope, key) DO UPDATE SET
                        fingerprint = EXCLUDED.fingerprint,
                        trace_id = EXCLUDED.trace_id,
                        state = 'in_flight',
                        token = GREATEST(r.token + 1, EXCLUDED.token),
                        expires_at = EXCLUDED.expires_at,
                        response = NULL
                    WHERE r.expires_at <= now()
                    RETURNING r.token
                )
                SELECT true, token, NULL::text, NULL::text, NULL::text, NULL::bytea, NULL::bigint
                FROM claimed
                UNION ALL
                SELECT false, r.token, r.fingerprint, r.trace_id, r.state, r.response,
                    GREATEST(0, (extract(epoch FROM (r.expires_at - now())) * 1000)::bigint)
                FROM {table} r
                WHERE r.scope = $1 AND r.key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)"
            ),
            complete: format!(
                "UPDATE {table} SET state = 'completed', response = $4,
                    expires_at = now() + $5::bigint * interval '1 millisecond'
                 WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND token = $3"
            ),
            release: format!(
                "DELETE FROM {table} WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND token = $3"
            ),
            // A live lease of this token, pushed out but never shortened.
            extend: format!(
                "UPDATE {table} SET expires_at = GREATEST(expires_at,
                    now() + $4::bigint * interval '1 millisecond')
                 WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND token = $3
                   AND expires_at > now()"
            ),
            purge: format!("DELETE FROM {table} WHERE expires_at <= now()"),
            migrate: format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('dreamnet_idempotency_migrate'));
                 CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {table} (
                     scope text NOT NULL,
                     key text NOT NULL,
                     fingerprint text NOT NULL,
                     trace_id text,
                     state text NOT NULL CHECK (state IN ('in_flight', 'completed')),
                     token bigint NOT NULL,
                     expires_at timestamptz NOT NULL,
                     response bytea,
                     PRIMARY KEY (scope, key)
                 );
                 CREATE INDEX IF NOT EXISTS \"{table_name}_expires_at\" ON {table} (expires_at);
                 COMMIT;"
            ),
        }
    }
}

impl PostgresStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "dreamnet_idempotency";
    /// The default schema.
    pub const DEFAULT_SCHEMA: &'static str = "public";

    /// Connects to `url` (e.g. `postgres://postgres@127.0.0.1:5432/test`) with the defaults
    /// and runs the migration.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for an invalid URL or an unreachable database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for `url`.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        Self::builder_from(Source::Url(url.to_owned()))
    }

    /// A builder on an existing deadpool pool.
    pub fn builder_with_pool(pool: Pool) -> PostgresStoreBuilder {
        Self::builder_from(Source::Pool(pool))
    }

    fn builder_from(source: Source) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            source,
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            table: Self::DEFAULT_TABLE.to_owned(),
            op_timeout: Duration::from_secs(5),
        }
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Creates the schema, table and index if missing (idempotent; runs once per store).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached or refuses.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.inner
            .migrated
            .get_or_try_init(|| async {
                self.client()
                    .await?
                    .batch_execute(&self.inner.sql.migrate)
                    .await
                    .map_err(StoreError::unavailable)
            })
            .await?;
        Ok(())
    }

    /// Deletes expired rows; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.execute(&self.inner.sql.purge, &[]).await
    }

    async fn with_deadline<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.inner.op_timeout, op)
            .await
            .unwrap_or_else(|_| Err(StoreError::unavailable("postgres: operation timed out")))
    }

    /// A pooled connection (waiting for one is bounded by the pool's own timeouts).
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(StoreError::unavailable)
    }

    /// A pooled connection and the prepared (cached per connection) statement for `sql`.
    async fn prepared(
        &self,
        sql: &str,
    ) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(StoreError::unavailable)?;
        Ok((client, statement))
    }

    /// Runs the single-statement write `sql` within the deadline, after the migration: the
    /// number of rows it changed. Every write but the claim (which reads its row back) is
    /// one such call, so each states only its statement and parameters.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.with_deadline(async {
            self.migrate().await?;
            let (client, statement) = self.prepared(sql).await?;
            client
                .execute(&statement, params)
                .await
                .map_err(StoreError::unavailable)
        })
        .await
    }

    async fn claim_once(&self, request: &ClaimRequest<'_>) -> Result<Option<Claim>, StoreError> {
        let (client, statement) = self.prepared(&self.inner.sql.claim).await?;
        let lease = sql_millis(request.lease);
        let rows = client
            .query(
                &statement,
                &[
                    &request.scope,
                    &request.key,
                    &request.fingerprint.as_str(),
                    &request.trace_id,
                    &lease,
                ],
            )
            .await
            .map_err(StoreError::unavailable)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let get = |e: tokio_postgres::Error| StoreError::unavailable(e);
        let claimed: bool = row.try_get(0).map_err(get)?;
        let token: i64 = row.try_get(1).map_err(get)?;
        let token = u64::try_from(token).map_err(|_| CorruptRecord::new("negative token"))?;
        if claimed {
            return Ok(Some(Claim::Proceed(FencingToken(token))));
        }
        let fingerprint: Option<String> = row.try_get(2).map_err(get)?;
        let original_trace_id: Option<String> = row.try_get(3).map_err(get)?;
        let state: Option<String> = row.try_get(4).map_err(get)?;
        let response: Option<Vec<u8>> = row.try_get(5).map_err(get)?;
        let remaining: Option<i64> = row.try_get(6).map_err(get)?;
        // A completed row must carry a readable response, whatever the request.
        let response = match state.as_deref() {
            Some("completed") => {
                Some(StoredResponse::decode(response.as_deref().ok_or(
                    CorruptRecord::new("completed row without a response"),
                )?)?)
            }
            Some("in_flight") => None,
            _ => return Err(CorruptRecord::new("unknown state").into()),
        };
        if fingerprint.map(Fingerprint::from_hex).as_ref() != Some(request.fingerprint) {
            return Ok(Some(Claim::Mismatch { original_trace_id }));
        }
        Ok(Some(match response {
            Some(response) => Claim::Completed {
                response,
                original_trace_id,
            },
            None => Claim::InFlight {
                retry_after: Duration::from_millis(
                    remaining.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0),
                ),
                original_trace_id,
            },
        }))
    }

    fn maybe_purge(&self) {
        let n = self.inner.claims.fetch_add(1, Ordering::Relaxed) + 1;
        if n % PURGE_EVERY == 0 {
            let store = self.clone();
            tokio::spawn(async move {
                if let Err(err) = store.purge_expired().await {
                    tracing::warn!(target: crate::LOG_TARGET, error = %err, "purging expired idempotency rows failed");
                }
            });
        }
    }
}

impl IdempotencyStore for PostgresStore {
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        Box::pin(self.with_deadline(async move {
            self.migrate().await?;
            self.maybe_purge();
            // A row committed by a concurrent claim after this statement's snapshot makes
            // the statement return nothing; the next attempt sees it.
            for _ in 0..5 {
                if let Some(claim) = self.claim_once(&request).await? {
                    return Ok(claim);
                }
            }
            Err(StoreError::unavailable(
                "postgres: claim kept racing with concurrent writers",
            ))
        }))
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async move {
            let (token, ttl, encoded) = (sql_token(token), sql_millis(ttl), response.encode());
            let sql = &self.inner.sql.complete;
            let updated = self
                .execute(sql, &[&scope, &key, &token, &encoded, &ttl])
                .await?;
            Ok(if updated == 1 {
                Completion::Stored
            } else {
                Completion::Superseded
            })
        })
    }

    fn release<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let token = sql_token(token);
            let deleted = self
                .execute(&self.inner.sql.release, &[&scope, &key, &token])
                .await?;
            Ok(deleted == 1)
        })
    }

    fn extend<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (token, lease) = (sql_token(token), sql_millis(lease));
            let sql = &self.inner.sql.extend;
            let updated = self.execute(sql, &[&scope, &key, &token, &lease]).await?;
            Ok(updated == 1)
        })
    }
}

/// A fencing token as the table's `bigint` (tokens are microsecond clock readings, far
/// below `i64::MAX`; a larger one saturates rather than wraps).
fn sql_token(token: FencingToken) -> i64 {
    i64::try_from(token.0).unwrap_or(i64::MAX)
}

/// A lease or TTL in whole milliseconds, the statements' `$n::bigint` interval.
fn sql_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated() {
        assert!(valid_identifier("dreamnet_idempotency"));
        assert!(valid_identifier("_t1"));
        assert!(!valid_identifier("1t"));
        assert!(!valid_identifier("a\"b"));
        assert!(!valid_identifier(""));
        assert!(!valid_identifier(&"a".repeat(64)));
    }
}
