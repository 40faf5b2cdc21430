//! Store-specific behaviour the shared conformance suite does not cover.
#![allow(missing_docs)]
#![cfg(any(feature = "redis", feature = "postgres"))]

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_keys_carry_a_per_record_hash_tag_and_never_a_raw_unsafe_scope() {
    use dreamnet_idempotency::RedisStore;
    // Lazy: no server needed to compute keys.
    let store = RedisStore::builder("redis://127.0.0.1:1")
        .connect_lazy()
        .unwrap();
    let tag = |key: &str| key[key.find('{').unwrap()..=key.find('}').unwrap()].to_owned();
    let key = store.record_key("account:acct_1", "order-42");
    assert!(key.starts_with("dreamnet:idem:{"), "{key}");
    assert!(key.ends_with("}:account:acct_1/order-42"), "{key}");
    assert_eq!(tag(&key).len(), 2 + 16, "16 hex digits: {key}");
    // The tag depends on (scope, key): one scope's records spread over the slots (every
    // anonymous client used to share one `{anonymous}` slot) ...
    let anonymous: std::collections::BTreeSet<String> = (0..50)
        .map(|i| tag(&store.record_key("anonymous", &format!("k{i}"))))
        .collect();
    assert_eq!(anonymous.len(), 50);
    // ... and is stable, so every replica finds the same record.
    assert_eq!(key, store.record_key("account:acct_1", "order-42"));
    // Scope and key cannot trade characters: the scope holds no `/`.
    assert_ne!(store.record_key("a:b", "c"), store.record_key("a", "b:c"),);
    // A `{` in the key never becomes the tag: ours comes first.
    let braced = store.record_key("s", "{x}");
    assert!(braced.find('{').unwrap() < braced.find("/{x}").unwrap());
    let odd = store.record_key("tenant {a}", "k");
    assert!(odd.contains("}:sha256:"), "{odd}");
    assert!(!odd.contains("tenant"));
    // A scope that looks like a hashed one is hashed too, so the two can't collide.
    let forged = store.record_key("sha256:abc", "k");
    assert!(!forged.contains(":sha256:abc/"), "{forged}");
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
        store::{Claim, ClaimRequest, Fingerprint, StoredResponse},
        IdempotencyStore, PostgresStore,
    };
    use std::time::Duration;

    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let admin = pool.get().await.expect("a pooled connection");
    let schema = dreamnet_test_support::unique_schema("idem_purge");
    let store = PostgresStore::builder_with_pool(pool.clone())
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
    let purged = dreamnet_test_support::eventually(
        "the expired row purged",
        Duration::from_secs(10),
        || async { Some(store.purge_expired().await.unwrap()).filter(|n| *n > 0) },
    )
    .await;
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
