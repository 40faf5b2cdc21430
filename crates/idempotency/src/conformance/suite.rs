//! The behaviours, one public async fn each (the macro calls them; a backend may too).

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;

use super::Harness;
use crate::store::{
    Claim, ClaimRequest, Completion, FencingToken, Fingerprint, IdempotencyStore, StoredResponse,
};

const LONG: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(10);

/// A key no other run of the suite uses, even on a shared store.
fn fresh(tag: &str) -> String {
    let n = RandomState::new().hash_one((tag, std::process::id()));
    format!("conformance-{tag}-{n:016x}")
}

fn fp(tag: &str) -> Fingerprint {
    let mut hex = String::new();
    for byte in tag.bytes().cycle().take(32) {
        hex.push_str(&format!("{byte:02x}"));
    }
    Fingerprint::from_hex(hex)
}

fn response(body: &'static str) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".to_owned(), b"application/json".to_vec()),
            ("etag".to_owned(), b"\"v1\"".to_vec()),
        ],
        body: Bytes::from_static(body.as_bytes()),
    }
}

async fn claim(
    store: &dyn IdempotencyStore,
    scope: &str,
    key: &str,
    fingerprint: &Fingerprint,
    trace: &str,
    lease: Duration,
) -> Claim {
    store
        .claim(ClaimRequest {
            scope,
            key,
            fingerprint,
            trace_id: Some(trace),
            lease,
        })
        .await
        .expect("the store answers a claim")
}

fn proceeded(claim: Claim) -> FencingToken {
    match claim {
        Claim::Proceed(token) => token,
        other => panic!("expected the claim to proceed, got {other:?}"),
    }
}

async fn complete(
    store: &dyn IdempotencyStore,
    scope: &str,
    key: &str,
    token: FencingToken,
    stored: &StoredResponse,
    ttl: Duration,
) -> Completion {
    store
        .complete(scope, key, token, stored, ttl)
        .await
        .expect("the store answers a completion")
}

async fn release(
    store: &dyn IdempotencyStore,
    scope: &str,
    key: &str,
    token: FencingToken,
) -> bool {
    store
        .release(scope, key, token)
        .await
        .expect("the store answers a release")
}

/// Claims until the claim proceeds (the lease or TTL ended), or panics at the deadline.
async fn claim_when_free(
    store: &dyn IdempotencyStore,
    key: &str,
    fingerprint: &Fingerprint,
    what: &str,
) -> FencingToken {
    let start = tokio::time::Instant::now();
    loop {
        if let Claim::Proceed(token) = claim(store, "s", key, fingerprint, "t-retry", LONG).await {
            return token;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free key proceeds; the same request again is in flight, with the time left on the lease
/// and the first attempt's trace id.
pub async fn a_new_key_proceeds_then_is_in_flight(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("new");
    let a = fp("a");
    proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
    match claim(store, "s", &key, &a, "t-second", LONG).await {
        Claim::InFlight {
            retry_after,
            original_trace_id,
        } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= LONG,
                "{retry_after:?}"
            );
            assert_eq!(original_trace_id.as_deref(), Some("t-first"));
        }
        other => panic!("expected in flight, got {other:?}"),
    }
}

/// Another fingerprint under a live key is a mismatch, in flight and once completed.
pub async fn another_fingerprint_is_a_mismatch(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("mismatch");
    let token = proceeded(claim(store, "s", &key, &fp("a"), "t-first", LONG).await);
    let expected = Claim::Mismatch {
        original_trace_id: Some("t-first".to_owned()),
    };
    assert_eq!(
        claim(store, "s", &key, &fp("b"), "t-other", LONG).await,
        expected
    );
    let stored = response("{}");
    assert_eq!(
        complete(store, "s", &key, token, &stored, LONG).await,
        Completion::Stored
    );
    assert_eq!(
        claim(store, "s", &key, &fp("b"), "t-other", LONG).await,
        expected
    );
}

/// A completed key replays exactly what was stored (status, headers in order, body), with
/// the trace id of the request that produced it; an empty response round trips too.
pub async fn a_completed_key_replays_its_response(harness: &Harness) {
    let store = &*harness.store;
    let empty = StoredResponse {
        status: 204,
        headers: vec![],
        body: Bytes::new(),
    };
    for stored in [response("{\"id\":1}"), empty] {
        let key = fresh("replay");
        let a = fp("a");
        let token = proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
        assert_eq!(
            complete(store, "s", &key, token, &stored, LONG).await,
            Completion::Stored
        );
        for _ in 0..2 {
            let replay = claim(store, "s", &key, &a, "t-retry", LONG).await;
            assert_eq!(
                replay,
                Claim::Completed {
                    response: stored.clone(),
                    original_trace_id: Some("t-first".to_owned()),
                }
            );
        }
    }
}

/// (scope, key) pairs that join to the same text, or differ in characters a backend might
/// escape or hash, are distinct records.
pub async fn scopes_and_keys_never_collide(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("collide");
    let pairs = [
        ("a".to_owned(), format!("b:{key}")),
        ("a:b".to_owned(), key.clone()),
        ("tenant {a}".to_owned(), key.clone()),
        ("tenant {b}".to_owned(), key.clone()),
        ("sha256:abc".to_owned(), key.clone()),
        ("x".repeat(300), key.clone()),
        (format!("{}y", "x".repeat(299)), key.clone()),
        ("account:acct_1".to_owned(), format!("{key} ")),
        ("account:acct_1".to_owned(), key.clone()),
    ];
    let a = fp("a");
    let mut tokens = Vec::new();
    for (scope, key) in &pairs {
        let token = proceeded(claim(store, scope, key, &a, "t-first", LONG).await);
        tokens.push(token);
    }
    let (scope, key) = &pairs[0];
    let stored = response("first pair");
    assert_eq!(
        complete(store, scope, key, tokens[0], &stored, LONG).await,
        Completion::Stored
    );
    for (scope, key) in &pairs[1..] {
        let again = claim(store, scope, key, &a, "t-retry", LONG).await;
        assert!(
            matches!(again, Claim::InFlight { .. }),
            "({scope:?}, {key:?}): {again:?}"
        );
    }
}

/// Only the token that holds a key releases it; a stale token does nothing afterwards.
pub async fn release_needs_the_holding_token(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("release");
    let a = fp("a");
    let first = proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
    let wrong = FencingToken(first.0.wrapping_add(1));
    assert!(
        !release(store, "s", &key, wrong).await,
        "a wrong token released the key"
    );
    assert!(matches!(
        claim(store, "s", &key, &a, "t", LONG).await,
        Claim::InFlight { .. }
    ));
    assert!(release(store, "s", &key, first).await);
    let second = proceeded(claim(store, "s", &key, &a, "t-second", LONG).await);
    assert!(second > first, "tokens grow: {first:?} then {second:?}");
    assert!(!release(store, "s", &key, first).await);
    let late = complete(store, "s", &key, first, &response("late"), LONG).await;
    assert_eq!(late, Completion::Superseded);
    assert!(matches!(
        claim(store, "s", &key, &a, "t", LONG).await,
        Claim::InFlight { .. }
    ));
}

/// `extend` pushes out only the live lease of the token holding it, and never shortens it:
/// a wrong token, a released or a completed key are left as they are.
pub async fn extend_pushes_out_only_the_holders_live_lease(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("extend");
    let a = fp("a");
    // Shorter than LONG, so an extension shows in the next claim's `retry_after`.
    let lease = Duration::from_secs(2);
    let token = proceeded(claim(store, "s", &key, &a, "t-slow", lease).await);
    let left = |claimed: Claim| match claimed {
        Claim::InFlight { retry_after, .. } => retry_after,
        other => panic!("expected in flight, got {other:?}"),
    };
    let wrong = FencingToken(token.0.wrapping_add(1));
    assert!(
        !extend(store, &key, wrong, LONG).await,
        "a wrong token extended"
    );
    assert!(left(claim(store, "s", &key, &a, "t", LONG).await) <= lease);

    assert!(extend(store, &key, token, LONG).await, "the holder extends");
    let extended = left(claim(store, "s", &key, &a, "t", LONG).await);
    assert!(extended > lease && extended <= LONG, "{extended:?}");
    assert!(extend(store, &key, token, Duration::from_millis(1)).await);
    let kept = left(claim(store, "s", &key, &a, "t", LONG).await);
    assert!(kept > lease, "never shortened: {kept:?}");

    assert_eq!(
        complete(store, "s", &key, token, &response("done"), LONG).await,
        Completion::Stored
    );
    assert!(
        !extend(store, &key, token, LONG).await,
        "a completed key has no lease"
    );
    let other = fresh("extend-released");
    let released = proceeded(claim(store, "s", &other, &a, "t", lease).await);
    assert!(release(store, "s", &other, released).await);
    assert!(
        !extend(store, &other, released, LONG).await,
        "a released key has no lease"
    );
}

async fn extend(
    store: &dyn IdempotencyStore,
    key: &str,
    token: FencingToken,
    lease: Duration,
) -> bool {
    store
        .extend("s", key, token, lease)
        .await
        .expect("the store answers")
}

/// A released key cannot be completed by its former holder.
pub async fn a_released_key_cannot_be_completed(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("released");
    let a = fp("a");
    let token = proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
    assert!(release(store, "s", &key, token).await);
    let late = complete(store, "s", &key, token, &response("late"), LONG).await;
    assert_eq!(late, Completion::Superseded);
    proceeded(claim(store, "s", &key, &a, "t-retry", LONG).await);
}

/// Completing or releasing a key nobody claimed writes nothing.
pub async fn unknown_keys_cannot_be_completed_or_released(harness: &Harness) {
    let store = &*harness.store;
    let key = fresh("unknown");
    let token = FencingToken(42);
    let done = complete(store, "s", &key, token, &response("x"), LONG).await;
    assert_eq!(done, Completion::Superseded);
    assert!(!release(store, "s", &key, token).await);
    proceeded(claim(store, "s", &key, &fp("a"), "t-first", LONG).await);
}

/// When a lease ends the key can be claimed again, with a larger token; the superseded
/// attempt can then neither complete nor release it, and the retry's response is kept.
pub async fn a_lease_end_lets_a_retry_take_over_and_fences_the_late_attempt(harness: &Harness) {
    let store = &*harness.store;
    let lease = harness.short_lease();
    let key = fresh("lease");
    let a = fp("a");
    let stuck = proceeded(claim(store, "s", &key, &a, "t-stuck", lease).await);
    harness.advance(lease);
    let retry = claim_when_free(store, &key, &a, "the lease to end").await;
    assert!(
        retry > stuck,
        "tokens grow across take-overs: {stuck:?} then {retry:?}"
    );
    let late = complete(store, "s", &key, stuck, &response("late"), LONG).await;
    assert_eq!(late, Completion::Superseded);
    assert!(!release(store, "s", &key, stuck).await);
    let kept = response("retry");
    assert_eq!(
        complete(store, "s", &key, retry, &kept, LONG).await,
        Completion::Stored
    );
    match claim(store, "s", &key, &a, "t-next", LONG).await {
        Claim::Completed { response, .. } => assert_eq!(response, kept),
        other => panic!("expected the retry's response, got {other:?}"),
    }
}

/// A completed key replays until its TTL ends; after it the key is free again, even for
/// another fingerprint.
pub async fn a_completed_key_is_new_after_its_ttl(harness: &Harness) {
    let store = &*harness.store;
    let ttl = harness.short_ttl();
    let key = fresh("ttl");
    let a = fp("a");
    let token = proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
    assert_eq!(
        complete(store, "s", &key, token, &response("x"), ttl).await,
        Completion::Stored
    );
    if harness.clock.is_some() {
        harness.advance(ttl - Duration::from_millis(1));
    }
    let before = claim(store, "s", &key, &a, "t-retry", LONG).await;
    assert!(matches!(before, Claim::Completed { .. }), "{before:?}");
    harness.advance(Duration::from_millis(1));
    claim_when_free(store, &key, &fp("b"), "the TTL to end").await;
}

/// Concurrent claims of one free key: exactly one proceeds, every other is in flight.
pub async fn concurrent_claims_let_exactly_one_proceed(harness: &Harness) {
    let key = Arc::new(fresh("race"));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = Arc::clone(&harness.store);
        let key = Arc::clone(&key);
        tasks.push(tokio::spawn(async move {
            claim(&*store, "s", &key, &fp("a"), &format!("t-{i}"), LONG).await
        }));
    }
    let (mut proceeded, mut in_flight) = (0, 0);
    for task in tasks {
        match task.await.expect("claim task") {
            Claim::Proceed(_) => proceeded += 1,
            Claim::InFlight { .. } => in_flight += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((proceeded, in_flight), (1, 31));
}

/// Two handles on the same state (two replicas) see one key space: a claim on one blocks
/// the other, and either may complete under the token.
pub async fn replicas_share_one_key_space(harness: &Harness) {
    let Some(replica) = harness.replica.as_deref() else {
        return;
    };
    let store = &*harness.store;
    let key = fresh("replica");
    let a = fp("a");
    let token = proceeded(claim(store, "s", &key, &a, "t-first", LONG).await);
    let busy = claim(replica, "s", &key, &a, "t-other", LONG).await;
    assert!(matches!(busy, Claim::InFlight { .. }), "{busy:?}");
    let stored = response("shared");
    assert_eq!(
        complete(replica, "s", &key, token, &stored, LONG).await,
        Completion::Stored
    );
    match claim(store, "s", &key, &a, "t-retry", LONG).await {
        Claim::Completed { response, .. } => assert_eq!(response, stored),
        other => panic!("expected the replica's completion, got {other:?}"),
    }
}
