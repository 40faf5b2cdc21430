//! Shared test support: backends, a counting handler, request helpers.
#![allow(dead_code, unreachable_pub)]

pub mod suite;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use dreamnet_common::ManualClock;
use dreamnet_idempotency::{
    store::{
        Claim, ClaimRequest, Completion, FencingToken, StoreError, StoreFuture, StoredResponse,
    },
    IdempotencyLayer, IdempotencyStore, MemoryStore,
};
pub use dreamnet_test_support::{eventually, unique_prefix as unique};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use tokio::sync::Semaphore;

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Writes a foreign value under (scope, key); the `usize` picks the variant.
pub type CorruptFn = dyn Fn(String, String, usize) -> BoxFut + Send + Sync;

/// A store under test, plus what the suite needs around it.
pub struct Backend {
    pub name: &'static str,
    /// The store under test.
    pub store: Arc<dyn IdempotencyStore>,
    /// A second handle on the same state (another connection / pool): a second replica.
    pub replica: Arc<dyn IdempotencyStore>,
    /// A store of the same kind that cannot reach its server.
    pub unreachable: Arc<dyn IdempotencyStore>,
    /// The fake clock, for stores that take an injected clock.
    pub clock: Option<ManualClock>,
    /// Writes a foreign value (variant 0) or our record shape with an unreadable response
    /// (variant 1) under (scope, key), for stores where that is possible.
    pub corrupt: Option<Box<CorruptFn>>,
    pub cleanup: Option<BoxFut>,
}

impl Backend {
    pub async fn memory() -> Option<Self> {
        let clock = ManualClock::new(1_700_000_000_000);
        let store: Arc<dyn IdempotencyStore> = Arc::new(
            MemoryStore::builder()
                .clock(Arc::new(clock.clone()))
                .build(),
        );
        Some(Self {
            name: "memory",
            replica: Arc::clone(&store),
            store,
            unreachable: Arc::new(Unreachable),
            clock: Some(clock),
            corrupt: None,
            cleanup: None,
        })
    }

    #[cfg(feature = "redis")]
    pub async fn redis() -> Option<Self> {
        use dreamnet_common::redis_connection::RedisEndpoint;
        let (endpoint, raw) = redis_server().await?;
        let unreachable = RedisEndpoint::single("redis://127.0.0.1:1");
        Some(Self::redis_on("redis", endpoint, unreachable, raw).await)
    }

    /// The Redis store on the test binary's own 3-master Redis Cluster.
    #[cfg(feature = "redis")]
    pub async fn redis_cluster() -> Option<Self> {
        use dreamnet_common::redis_connection::RedisEndpoint;
        let (endpoint, raw) = redis_cluster()?;
        let unreachable = RedisEndpoint::cluster(["redis://127.0.0.1:1"]);
        Some(Self::redis_on("redis-cluster", endpoint, unreachable, raw).await)
    }

    /// The Redis store on `endpoint` (a second store on it is the replica); `raw` writes
    /// foreign values and cleans up.
    #[cfg(feature = "redis")]
    async fn redis_on(
        name: &'static str,
        endpoint: dreamnet_common::redis_connection::RedisEndpoint,
        unreachable: dreamnet_common::redis_connection::RedisEndpoint,
        raw: dreamnet_common::redis_connection::RedisConnection,
    ) -> Self {
        use dreamnet_idempotency::RedisStore;
        let prefix = unique("idem");
        let store = RedisStore::builder_for(endpoint.clone())
            .prefix(&prefix)
            .connect()
            .await
            .expect("redis answered the fixture");
        let replica = RedisStore::builder_for(endpoint)
            .prefix(&prefix)
            .connect()
            .await
            .expect("second connection");
        let unreachable = RedisStore::builder_for(unreachable)
            .prefix(&prefix)
            .connect_lazy()
            .expect("valid URL");
        let keys = store.clone();
        let corrupt_conn = raw.clone();
        let corrupt = move |scope: String, key: String, variant: usize| -> BoxFut {
            let record = keys.record_key(&scope, &key);
            let mut conn = corrupt_conn.clone();
            Box::pin(async move {
                // One key, so one slot: a pipeline works on a cluster too.
                let mut pipe = redis::pipe();
                if variant == 0 {
                    pipe.cmd("SET").arg(&record).arg("not ours");
                } else {
                    pipe.cmd("HSET")
                        .arg(&record)
                        .arg(&["v", "1", "state", "c", "fp", "x", "trace", "", "token", "1"])
                        .arg(&["until", "0", "resp", "DNIR\x01garbage"]);
                }
                pipe.cmd("PEXPIRE").arg(&record).arg(60_000);
                pipe.exec_async(&mut conn)
                    .await
                    .expect("write foreign value");
            })
        };
        let cleanup = Box::pin(delete_redis_keys(raw, prefix));
        Self::remote(
            name,
            [store, replica, unreachable],
            Box::new(corrupt),
            cleanup,
        )
    }

    #[cfg(feature = "postgres")]
    pub async fn postgres() -> Option<Self> {
        use dreamnet_idempotency::PostgresStore;
        let pool = dreamnet_test_support::pg_pool().await?;
        let url = dreamnet_test_support::database_url();
        let admin = pool.get().await.expect("a pooled connection");
        let schema = dreamnet_test_support::unique_schema("idem");
        admin
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create schema");
        let store = PostgresStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .expect("store");
        let replica = PostgresStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .expect("replica store");
        let unreachable = PostgresStore::builder("postgres://postgres@127.0.0.1:1/test")
            .schema(&schema)
            .connect_lazy()
            .expect("valid URL");
        let admin = Arc::new(admin);
        let table = store.table().to_owned();
        let corrupt_admin = Arc::clone(&admin);
        let corrupt = move |scope: String, key: String, variant: usize| -> BoxFut {
            let admin = Arc::clone(&corrupt_admin);
            let response = if variant == 0 {
                "'\\x00ff'::bytea"
            } else {
                "NULL"
            };
            let sql = format!(
                "INSERT INTO {table} (scope, key, fingerprint, trace_id, state, token, expires_at, response)
                 VALUES ($1, $2, 'not-a-digest', NULL, 'completed', 1, now() + interval '1 minute', {response})"
            );
            Box::pin(async move {
                admin
                    .execute(&sql, &[&scope, &key])
                    .await
                    .expect("insert foreign row");
            })
        };
        let cleanup = Box::pin(async move {
            let _ = admin
                .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await;
        });
        let stores = [store, replica, unreachable];
        Some(Self::remote("postgres", stores, Box::new(corrupt), cleanup))
    }

    /// A backend on a server (Redis, PostgreSQL): its store, replica and unreachable store,
    /// real time (no fake clock), a way to write foreign values, and a cleanup.
    fn remote<S: IdempotencyStore>(
        name: &'static str,
        [store, replica, unreachable]: [S; 3],
        corrupt: Box<CorruptFn>,
        cleanup: BoxFut,
    ) -> Self {
        Self {
            name,
            store: Arc::new(store),
            replica: Arc::new(replica),
            unreachable: Arc::new(unreachable),
            clock: None,
            corrupt: Some(corrupt),
            cleanup: Some(cleanup),
        }
    }

    /// Lease used by tests that wait for a lease to end.
    pub fn short_lease(&self) -> Duration {
        if self.clock.is_some() {
            dreamnet_idempotency::DEFAULT_LEASE
        } else {
            Duration::from_millis(1500)
        }
    }

    /// TTL used by tests that wait for a TTL to end.
    pub fn short_ttl(&self) -> Duration {
        if self.clock.is_some() {
            dreamnet_idempotency::DEFAULT_TTL
        } else {
            Duration::from_millis(2000)
        }
    }

    /// Moves the fake clock forward; real-time backends just let time pass while polling.
    pub fn advance(&self, by: Duration) {
        if let Some(clock) = &self.clock {
            clock.advance(by);
        }
    }

    pub async fn cleanup(self) {
        if let Some(cleanup) = self.cleanup {
            cleanup.await;
        }
    }
}

/// The test Redis server: its endpoint, and a connection of its own (for foreign values and
/// the cleanup); `None` after a loud skip.
#[cfg(feature = "redis")]
pub async fn redis_server() -> Option<(
    dreamnet_common::redis_connection::RedisEndpoint,
    dreamnet_common::redis_connection::RedisConnection,
)> {
    use dreamnet_common::redis_connection::{RedisConnection, RedisEndpoint};
    let raw = dreamnet_test_support::redis_connection().await?;
    let endpoint = RedisEndpoint::single(dreamnet_test_support::redis_url());
    Some((endpoint, RedisConnection::Single(raw)))
}

/// The test binary's own 3-master Redis Cluster (`OwnRedisCluster::shared`): its endpoint,
/// and a connection of its own; `None` after a loud skip.
#[cfg(feature = "redis")]
pub fn redis_cluster() -> Option<(
    dreamnet_common::redis_connection::RedisEndpoint,
    dreamnet_common::redis_connection::RedisConnection,
)> {
    use dreamnet_common::redis_connection::{RedisConnection, RedisEndpoint, RedisTimeouts};
    let cluster = dreamnet_test_support::redis_cluster::OwnRedisCluster::shared()?;
    let endpoint = RedisEndpoint::cluster(cluster.urls());
    let timeouts = RedisTimeouts {
        connection: Duration::from_secs(1),
        response: Duration::from_secs(1),
    };
    let raw = RedisConnection::lazy(&endpoint, timeouts).expect("valid seed URLs");
    Some((endpoint, raw))
}

/// Deletes every Redis key under `prefix` (a test's cleanup), one DEL per key: on a cluster
/// the keys live in different slots.
#[cfg(feature = "redis")]
pub async fn delete_redis_keys(
    mut conn: dreamnet_common::redis_connection::RedisConnection,
    prefix: String,
) {
    let keys = conn
        .keys_matching(&format!("{prefix}*"))
        .await
        .unwrap_or_default();
    for key in keys {
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
}

/// A store that cannot be reached (for the memory backend, which always can).
struct Unreachable;

impl IdempotencyStore for Unreachable {
    fn claim<'a>(&'a self, _: ClaimRequest<'a>) -> StoreFuture<'a, Claim> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: FencingToken,
        _: &'a StoredResponse,
        _: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn release<'a>(&'a self, _: &'a str, _: &'a str, _: FencingToken) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
}

pub type Body = BoxBody<Bytes, Infallible>;

/// The handler's error type (a handler error must release the key).
#[derive(Debug)]
pub struct HandlerError;

/// A counting handler with behaviour picked by path:
/// `/ok` 201 JSON with `Location` and `Set-Cookie`; `/fail` 500; `/error` an inner error;
/// `/invalid` 400; `/panic` panics; `/stream` a streaming body; `/big` a 4 KiB body.
/// With `x-block: 1` it waits for a permit from `gate` first.
#[derive(Clone)]
pub struct Handler {
    pub calls: Arc<AtomicUsize>,
    pub gate: Arc<Semaphore>,
}

impl Handler {
    pub fn new() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub async fn handle<B>(self, request: Request<B>) -> Result<Response<Body>, HandlerError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if request.headers().get("x-block").is_some() {
            self.gate.acquire().await.expect("gate open").forget();
        }
        let path = request.uri().path().to_owned();
        let body = request
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        let echo = String::from_utf8_lossy(&body).into_owned();
        let json = Bytes::from(format!("{{\"call\":{n},\"echo\":{echo:?}}}"));
        let response = match path.as_str() {
            "/fail" => Response::builder()
                .status(500)
                .body(Full::new(json).boxed()),
            "/invalid" => Response::builder()
                .status(400)
                .body(Full::new(json).boxed()),
            "/error" => return Err(HandlerError),
            "/panic" => panic!("handler panicked on purpose"),
            "/stream" => {
                let frames = futures_util::stream::iter(vec![
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"chunk-1,"))),
                    Ok(http_body::Frame::data(Bytes::from(format!("call-{n}")))),
                ]);
                Response::builder()
                    .status(200)
                    .body(StreamBody::new(frames).boxed())
            }
            "/big" => Response::builder()
                .status(200)
                .body(Full::new(Bytes::from(vec![b'x'; 4096])).boxed()),
            _ => Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/json")
                .header("location", format!("/things/{n}"))
                .header("set-cookie", "session=secret")
                .header("x-call", n.to_string())
                .body(Full::new(json).boxed()),
        };
        Ok(response.expect("valid response"))
    }
}

/// Builds a service: `layer` around the counting handler.
pub fn service(
    layer: &IdempotencyLayer,
    handler: &Handler,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<dreamnet_common::ResponseBody<Body>>,
    Error = HandlerError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let handler = handler.clone();
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(move |r| handler.clone().handle(r)))
}

/// A request builder with a key and an account.
pub fn post(path: &str, key: Option<&str>, account: &str, body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::post(path).header("x-account-id", account);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request")
}

/// Sends one request and reads the whole response.
pub async fn send<S>(
    service: &S,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String)
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<dreamnet_common::ResponseBody<Body>>,
            Error = HandlerError,
        > + Clone,
{
    use tower::ServiceExt;
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("no handler error");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
