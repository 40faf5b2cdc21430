//! Store-specific behaviour the shared conformance suite does not cover.
#![allow(missing_docs)]
#![cfg(any(feature = "redis", feature = "postgres"))]

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_keys_carry_a_hash_tag_and_never_a_raw_unsafe_scope() {
    use dreamnet_idempotency::RedisStore;
    // Lazy: no server needed to compute keys.
    let store = RedisStore::builder("redis://127.0.0.1:1")
        .connect_lazy()
        .unwrap();
    assert_eq!(
        store.record_key("account:acct_1", "order-42"),
        "dreamnet:idem:{account:acct_1}:order-42"
    );
    let odd = store.record_key("tenant {a}", "k");
    assert!(odd.starts_with("dreamnet:idem:{sha256:"), "{odd}");
    assert!(!odd.contains("tenant"));
    // A scope that looks like a hashed one is hashed too, so the two can't collide.
    let forged = store.record_key("sha256:abc", "k");
    assert!(!forged.contains("{sha256:abc}"));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_refuses_unsafe_identifiers() {
    use dreamnet_idempotency::PostgresStore;
    let err = PostgresStore::builder("postgres://postgres@127.0.0.1:1/test")
        .table("x\"; DROP TABLE y; --")
        .connect_lazy()
        .unwrap_err();
    assert!(err.to_string().contains("invalid schema or table name"));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_purges_expired_rows() {
    use dreamnet_idempotency::{
        Claim, ClaimRequest, Fingerprint, IdempotencyStore, PostgresStore, StoredResponse,
    };
    use std::time::Duration;

    let url = dreamnet_common::backends::database_url();
    let (admin, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(err) => return dreamnet_common::backends::unavailable("postgresql", &err),
    };
    tokio::spawn(connection);
    let schema = format!(
        "t_idem_purge_{:x}",
        std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::process::id())
    );
    let store = PostgresStore::builder(&url)
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    let fingerprint = Fingerprint::from_hex("fp");
    for (key, ttl) in [("short", 1u64), ("long", 600_000)] {
        let Claim::Proceed(token) = store
            .claim(ClaimRequest {
                scope: "s",
                key,
                fingerprint: &fingerprint,
                trace_id: None,
                lease: Duration::from_secs(30),
            })
            .await
            .unwrap()
        else {
            panic!("fresh key not claimable");
        };
        let response = StoredResponse {
            status: 200,
            headers: vec![],
            body: bytes::Bytes::new(),
        };
        store
            .complete("s", key, token, &response, Duration::from_millis(ttl))
            .await
            .unwrap();
    }
    // The 1 ms row expires on the database clock; poll rather than sleep a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut purged = 0;
    while purged == 0 {
        purged += store.purge_expired().await.unwrap();
        assert!(std::time::Instant::now() < deadline, "nothing purged");
        tokio::task::yield_now().await;
    }
    assert_eq!(purged, 1);
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {}", store.table()), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the live row stays");
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
