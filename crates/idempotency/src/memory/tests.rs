//! The memory store's own behaviour: bounds, eviction, sweeping, and a model check.

use super::*;
use bytes::Bytes;
use dreamnet_common::ManualClock;

fn fp(s: &str) -> Fingerprint {
    Fingerprint::from_hex(s)
}

/// A store on a fake clock that starts at `start_ms`, and the clock.
fn store_on_clock(start_ms: u64) -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(start_ms);
    let store = MemoryStore::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    (store, clock)
}

fn claim(store: &MemoryStore, key: &str, fingerprint: &Fingerprint) -> Claim {
    store
        .claim_now(&ClaimRequest {
            scope: "s",
            key,
            fingerprint,
            trace_id: Some("t0"),
            lease: Duration::from_secs(30),
        })
        .unwrap()
}

fn response(body: &'static [u8]) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![],
        body: Bytes::from_static(body),
    }
}

fn token(claim: Claim) -> FencingToken {
    match claim {
        Claim::Proceed(token) => token,
        other => panic!("expected proceed, got {other:?}"),
    }
}

#[test]
fn claim_complete_replay_mismatch() {
    let (store, clock) = store_on_clock(1_000);
    let a = fp("a");
    let t = token(claim(&store, "k", &a));
    assert!(matches!(
        claim(&store, "k", &a),
        Claim::InFlight { retry_after, .. } if retry_after == Duration::from_secs(30)
    ));
    assert!(matches!(
        claim(&store, "k", &fp("b")),
        Claim::Mismatch { .. }
    ));
    let done = store.complete_now("s", "k", t, &response(b"x"), Duration::from_secs(600));
    assert_eq!(done.unwrap(), Completion::Stored);
    match claim(&store, "k", &a) {
        Claim::Completed {
            response,
            original_trace_id,
        } => {
            assert_eq!(response.body, "x");
            assert_eq!(original_trace_id.as_deref(), Some("t0"));
        }
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_secs(600));
    token(claim(&store, "k", &fp("b")));
}

#[test]
fn lease_end_supersedes_and_release_needs_the_token() {
    let (store, clock) = store_on_clock(0);
    let a = fp("a");
    let first = token(claim(&store, "k", &a));
    clock.advance(Duration::from_secs(30));
    let second = token(claim(&store, "k", &a));
    assert!(second > first);
    assert!(!store.release_now("s", "k", first));
    let late = store.complete_now("s", "k", first, &response(b"late"), Duration::from_secs(1));
    assert_eq!(late.unwrap(), Completion::Superseded);
    assert!(store.release_now("s", "k", second));
    token(claim(&store, "k", &a));
}

#[test]
fn bounded_by_entries_evicting_completed_never_in_flight() {
    let store = MemoryStore::builder().max_entries(2).shards(1).build();
    let a = fp("a");
    let t1 = token(claim(&store, "k1", &a));
    token(claim(&store, "k2", &a));
    // Full of in-flight claims: refuse rather than drop a lock.
    assert!(matches!(
        store.claim_now(&ClaimRequest {
            scope: "s",
            key: "k3",
            fingerprint: &a,
            trace_id: None,
            lease: Duration::from_secs(1),
        }),
        Err(StoreError::Full)
    ));
    store
        .complete_now("s", "k1", t1, &response(b"1"), Duration::from_secs(60))
        .unwrap();
    token(claim(&store, "k3", &a));
    assert_eq!(store.len(), 2);
    // k1 (completed) was evicted to make room; k2 is still locked.
    assert!(matches!(claim(&store, "k2", &a), Claim::InFlight { .. }));
}

#[test]
fn full_shard_evicts_a_batch_closest_to_expiry() {
    let store = MemoryStore::builder().max_entries(16).shards(1).build();
    let a = fp("a");
    for i in 0..16u64 {
        let key = format!("k{i}");
        let t = token(claim(&store, &key, &a));
        // k0 expires first, k15 last.
        let ttl = Duration::from_secs(100 + i);
        store
            .complete_now("s", &key, t, &response(b"r"), ttl)
            .unwrap();
    }
    token(claim(&store, "new", &a));
    assert_eq!(store.len(), 15, "16 / 8 = 2 evicted, 1 inserted");
    for kept in ["k2", "k15"] {
        assert!(
            matches!(claim(&store, kept, &a), Claim::Completed { .. }),
            "{kept} kept"
        );
    }
    assert!(
        matches!(claim(&store, "k1", &a), Claim::Proceed(_)),
        "k1 evicted"
    );
    assert_eq!(store.len(), 16);
}

#[test]
fn bounded_by_bytes() {
    let store = MemoryStore::builder().max_bytes(4096).shards(1).build();
    let a = fp("a");
    let t = token(claim(&store, "big", &a));
    let big = StoredResponse {
        status: 200,
        headers: vec![],
        body: Bytes::from(vec![0u8; 8192]),
    };
    let done = store.complete_now("s", "big", t, &big, Duration::from_secs(60));
    assert_eq!(done.unwrap(), Completion::Dropped);
    // The claim is gone: the key is free again.
    token(claim(&store, "big", &a));
    assert!(store.bytes() <= 4096);
}

#[test]
fn expired_records_are_swept() {
    let (store, clock) = store_on_clock(0);
    for i in 0..10 {
        claim(&store, &format!("k{i}"), &fp("a"));
    }
    assert_eq!(store.len(), 10);
    clock.advance(Duration::from_secs(31));
    store.purge_expired();
    assert_eq!(store.len(), 0);
    assert_eq!(store.bytes(), 0);
}

mod model {
    use super::*;
    use dreamnet_common::Clock;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const LEASE: u64 = 1_000;
    const TTL: u64 = 5_000;

    #[derive(Clone, Debug)]
    enum Op {
        Claim {
            key: u8,
            fp: u8,
        },
        /// Complete with the key's newest token (`stale: false`) or an older one.
        Complete {
            key: u8,
            stale: bool,
        },
        Release {
            key: u8,
            stale: bool,
        },
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, 0..2u8).prop_map(|(key, fp)| Op::Claim { key, fp }),
            (0..3u8, any::<bool>()).prop_map(|(key, stale)| Op::Complete { key, stale }),
            (0..3u8, any::<bool>()).prop_map(|(key, stale)| Op::Release { key, stale }),
            (0..3_000u64).prop_map(Op::Advance),
        ]
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Held {
        InFlight(FencingToken),
        Completed,
    }

    proptest! {
        /// The store behaves like a plain map of (fingerprint, state, expiry) per key:
        /// at most one live holder per key, stale tokens never complete or release.
        #[test]
        fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let (store, clock) = store_on_clock(0);
            let mut model: HashMap<u8, (u8, Held, u64)> = HashMap::new();
            let mut tokens: HashMap<u8, Vec<FencingToken>> = HashMap::new();
            for op in ops {
                let now = clock.now_millis();
                match op {
                    Op::Claim { key, fp } => {
                        let fingerprint = Fingerprint::from_hex(format!("fp{fp}"));
                        let got = store.claim_now(&ClaimRequest {
                            scope: "s",
                            key: &key.to_string(),
                            fingerprint: &fingerprint,
                            trace_id: None,
                            lease: Duration::from_millis(LEASE),
                        }).unwrap();
                        match model.get(&key).filter(|(_, _, until)| *until > now) {
                            Some((held_fp, _, _)) if *held_fp != fp => {
                                prop_assert!(matches!(got, Claim::Mismatch { .. }), "{got:?}");
                            }
                            Some((_, Held::InFlight(_), until)) => {
                                prop_assert_eq!(got, Claim::InFlight {
                                    retry_after: Duration::from_millis(until - now),
                                    original_trace_id: None,
                                });
                            }
                            Some((_, Held::Completed, _)) => {
                                prop_assert!(matches!(got, Claim::Completed { .. }), "{got:?}");
                            }
                            None => {
                                let Claim::Proceed(token) = got else {
                                    return Err(TestCaseError::fail(format!("expected proceed, got {got:?}")));
                                };
                                let issued = tokens.entry(key).or_default();
                                prop_assert!(issued.last().is_none_or(|last| token > *last));
                                issued.push(token);
                                model.insert(key, (fp, Held::InFlight(token), now + LEASE));
                            }
                        }
                    }
                    Op::Complete { key, stale } | Op::Release { key, stale } => {
                        let issued = tokens.get(&key).cloned().unwrap_or_default();
                        let token = if stale {
                            issued.first().copied().unwrap_or(FencingToken(0))
                        } else {
                            issued.last().copied().unwrap_or(FencingToken(0))
                        };
                        let owns = matches!(model.get(&key), Some((_, Held::InFlight(t), _)) if *t == token);
                        if matches!(op, Op::Complete { .. }) {
                            let got = store.complete_now(
                                "s", &key.to_string(), token, &response(b"r"), Duration::from_millis(TTL),
                            ).unwrap();
                            prop_assert_eq!(got, if owns { Completion::Stored } else { Completion::Superseded });
                            if owns {
                                let fp = model[&key].0;
                                model.insert(key, (fp, Held::Completed, now + TTL));
                            }
                        } else {
                            prop_assert_eq!(store.release_now("s", &key.to_string(), token), owns);
                            if owns {
                                model.remove(&key);
                            }
                        }
                    }
                    Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                }
            }
        }
    }
}

#[test]
fn record_ids_are_unambiguous() {
    assert_ne!(record_id("a", "bc"), record_id("ab", "c"));
    assert_ne!(record_id("c", "a\0b"), record_id("b\0c", "a"));
    assert_ne!(record_id("\0x", ""), record_id("x", "\0"));
}
