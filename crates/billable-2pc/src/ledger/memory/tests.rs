//! The memory ledger's own bounds: retention, dropped accounts, the cap, and holds under
//! real thread concurrency. (The shared behaviour is the conformance suite's.)

use std::{sync::Arc, thread};

use dreamnet_common::ManualClock;
use futures_util::FutureExt;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn request(key: &str, account: &str) -> ReserveRequest {
    ReserveRequest {
        scope: "s".into(),
        idempotency_key: key.into(),
        fingerprint: "f".into(),
        action: "a".into(),
        account: account.parse().unwrap(),
        amount: 10,
        currency: "USD".into(),
        trace_id: None,
        timeout: Duration::from_secs(60),
    }
}

/// The memory ledger's futures are ready at once: no runtime needed.
fn now<T>(future: BoxFuture<'_, T>) -> T {
    future
        .now_or_never()
        .expect("the memory ledger never waits")
}

fn reserve(ledger: &MemoryLedger, key: &str, account: &str) -> Reservation {
    now(ledger.reserve(request(key, account))).unwrap()
}

fn reserved(ledger: &MemoryLedger, key: &str, account: &str) -> Action {
    match reserve(ledger, key, account) {
        Reservation::Reserved(action) => action,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn ledger_on(clock: &ManualClock) -> MemoryLedgerBuilder {
    MemoryLedger::builder()
        .clock(Arc::new(clock.clone()))
        .retention(Some(HOUR))
}

#[test]
fn resolved_actions_are_forgotten_after_the_retention() {
    let clock = ManualClock::new(1_000_000);
    let ledger = ledger_on(&clock).build();
    let charged = reserved(&ledger, "charged", "acct");
    now(ledger.settle(&charged.id, Bytes::new(), None)).unwrap();
    let open = reserved(&ledger, "open", "acct");
    now(ledger.confirm(&open.id, Bytes::new(), None)).unwrap();

    clock.advance(HOUR - Duration::from_secs(1));
    assert!(matches!(
        reserve(&ledger, "charged", "acct"),
        Reservation::Existing(_)
    ));
    assert_eq!(ledger.pruned_total(), 0);
    clock.advance(Duration::from_secs(1));
    // The charged action is forgotten: its key is new again; the confirmed one is kept.
    assert!(matches!(
        reserve(&ledger, "charged", "acct"),
        Reservation::Reserved(_)
    ));
    assert_eq!(ledger.pruned_total(), 1);
    assert!(now(ledger.action(&charged.id)).unwrap().is_none());
    assert!(matches!(
        reserve(&ledger, "open", "acct"),
        Reservation::Existing(_)
    ));
    // Stats and the balance keep counting what was forgotten.
    let stats = now(ledger.stats()).unwrap();
    assert_eq!((stats.charged, stats.confirmed, stats.pending), (1, 1, 1));
    assert_eq!(stats.amounts["USD"].charged, 10);
    let acct = "acct".parse().unwrap();
    assert_eq!(now(ledger.account(&acct)).unwrap().unwrap().charged, 10);
}

#[test]
fn prune_forgets_every_shard_at_once_and_nothing_open() {
    let clock = ManualClock::new(1_000_000);
    let ledger = ledger_on(&clock).build();
    for i in 0..500 {
        let action = reserved(&ledger, &format!("k{i}"), "acct");
        if i % 2 == 0 {
            now(ledger.settle(&action.id, Bytes::new(), None)).unwrap();
        } else if i % 3 == 0 {
            now(ledger.void(&action.id)).unwrap();
        }
    }
    // 500 actions + 1 account.
    assert_eq!(ledger.entries(), 501);
    clock.advance(HOUR);
    let resolved = 250 + (1..500).filter(|i| i % 2 == 1 && i % 3 == 0).count();
    assert_eq!(ledger.prune_all(), resolved);
    assert_eq!(ledger.entries(), 501 - resolved);
    assert_eq!(ledger.prune_all(), 0);
    // Pending ones are all still there and still due when they expire.
    let due = now(ledger.due_for_recovery(1000)).unwrap();
    assert_eq!(due.len(), 500 - resolved);
    assert!(due
        .windows(2)
        .all(|w| w[0].created_at_ms <= w[1].created_at_ms));
}

#[test]
fn unlimited_accounts_without_actions_are_dropped_and_credit_lines_are_kept() {
    let clock = ManualClock::new(1_000_000);
    let ledger = ledger_on(&clock).build();
    let limited: AccountId = "limited".parse().unwrap();
    now(ledger.add_credit(&limited, 100, "USD")).unwrap();
    for (key, account) in [("a", "unlimited"), ("b", "limited"), ("c", "busy")] {
        let action = reserved(&ledger, key, account);
        now(ledger.settle(&action.id, Bytes::new(), None)).unwrap();
    }
    // "busy" still holds a reservation: it has activity and money held.
    reserved(&ledger, "d", "busy");
    assert_eq!(ledger.entries(), 3 + 4);

    clock.advance(HOUR);
    assert_eq!(ledger.prune_all(), 3);
    let account = |name: &str| now(ledger.account(&name.parse().unwrap())).unwrap();
    assert!(
        account("unlimited").is_none(),
        "no credit line, no activity: dropped"
    );
    assert_eq!(ledger.dropped_accounts_total(), 1);
    // A credit line keeps what it has spent, so it stays: dropping it would refill it.
    let limited = account("limited").expect("a credit line is kept");
    assert_eq!((limited.charged, limited.available()), (10, Some(90)));
    assert_eq!(account("busy").unwrap().pending, 10);
    // Two accounts and the one reservation still pending.
    assert_eq!(ledger.entries(), 2 + 1);
}

#[test]
fn a_refused_reserve_stores_no_account() {
    let ledger = MemoryLedger::builder().default_credit(Some(0)).build();
    for i in 0..100 {
        assert!(matches!(
            reserve(&ledger, &format!("k{i}"), &format!("stranger-{i}")),
            Reservation::InsufficientFunds { available: 0, .. }
        ));
    }
    // 100 unknown accounts asking with no credit leave nothing behind.
    assert_eq!(ledger.entries(), 0);
}

#[test]
fn a_full_ledger_refuses_with_ledger_full_and_changes_nothing() {
    let clock = ManualClock::new(1_000_000);
    let ledger = ledger_on(&clock).max_entries(3).build();
    let first = reserved(&ledger, "k1", "acct");
    reserved(&ledger, "k2", "acct");
    assert_eq!(ledger.entries(), 3);
    let stats_before = now(ledger.stats()).unwrap();
    let account_before = now(ledger.account(&"acct".parse().unwrap())).unwrap();

    let refused = now(ledger.reserve(request("k3", "acct")));
    assert!(
        matches!(refused, Err(LedgerError::Full { limit: 3 })),
        "{refused:?}"
    );
    let new_account = now(ledger.add_credit(&"other".parse().unwrap(), 5, "USD"));
    assert!(matches!(new_account, Err(LedgerError::Full { limit: 3 })));
    // Nothing changed: no action, no account, same holds, same counts.
    assert_eq!(ledger.entries(), 3);
    assert!(now(ledger.find("s", "k3")).unwrap().is_none());
    assert!(now(ledger.account(&"other".parse().unwrap()))
        .unwrap()
        .is_none());
    assert_eq!(now(ledger.stats()).unwrap(), stats_before);
    assert_eq!(
        now(ledger.account(&"acct".parse().unwrap())).unwrap(),
        account_before
    );
    // A replay needs no room: the existing action is still answered.
    assert!(matches!(
        reserve(&ledger, "k1", "acct"),
        Reservation::Existing(_)
    ));

    // Once a resolved action passes its retention, the full ledger forgets it and admits.
    now(ledger.settle(&first.id, Bytes::new(), None)).unwrap();
    clock.advance(HOUR);
    reserved(&ledger, "k3", "acct");
    assert_eq!(ledger.entries(), 3);
}

#[test]
fn debits_never_exceed_credits_under_thread_concurrency() {
    let ledger = MemoryLedger::new();
    let acct: AccountId = "shared".parse().unwrap();
    now(ledger.add_credit(&acct, 1_000, "USD")).unwrap();
    // 8 threads race 50 reserves each (400 x 10 against a line of 1,000), settling or
    // voiding as they go, while the balance is checked between steps.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ledger = ledger.clone();
            let acct = acct.clone();
            thread::spawn(move || {
                let mut charged = 0;
                for i in 0..50 {
                    let key = format!("t{t}-{i}");
                    if let Reservation::Reserved(action) = reserve(&ledger, &key, "shared") {
                        if i % 4 == 0 {
                            now(ledger.void(&action.id)).unwrap();
                        } else {
                            now(ledger.settle(&action.id, Bytes::new(), None)).unwrap();
                            charged += 10;
                        }
                    }
                    let account = now(ledger.account(&acct)).unwrap().unwrap();
                    assert!(account.pending + account.charged <= 1_000, "{account:?}");
                }
                charged
            })
        })
        .collect();
    let charged: Amount = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let account = now(ledger.account(&acct)).unwrap().unwrap();
    assert_eq!(account.pending, 0);
    assert_eq!(account.charged, charged);
    // Voids give the line back, so the racers spend all of it and not a cent more.
    assert_eq!(charged, 1_000);
    let stats = now(ledger.stats()).unwrap();
    assert_eq!(stats.charged, 100);
    assert_eq!(stats.amounts["USD"].charged, 1_000);
}
