//! Forgetting resolved actions after their retention (issue 9 items 4 and 7): bounded
//! batches, nothing open touched, stats and balances unchanged, the key free
//! again; on PostgreSQL, rows someone holds locked are skipped, not waited for.
#![allow(missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dreamnet_billable::{ledger::Reservation, Ledger, LedgerAdmin};

mod common;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Seven resolved actions (five charged, two voided) and two open ones on one account.
async fn seven_resolved_two_open(
    f: &Fixture,
    acct: &dreamnet_common::AccountId,
) -> Vec<dreamnet_billable::ledger::ActionId> {
    let ledger = &*f.ledger;
    let mut resolved = Vec::new();
    for i in 0..7 {
        let id = reserved(ledger, acct, &format!("done-{i}"), PRICE).await;
        if i < 5 {
            ledger
                .settle(&id, encoded_response("{}"), None)
                .await
                .unwrap();
        } else {
            ledger.void(&id).await.unwrap();
        }
        resolved.push(id);
        // Resolved a millisecond apart, so "oldest first" is observable.
        f.clock.advance(Duration::from_millis(1));
    }
    reserved(ledger, acct, "pending", PRICE).await;
    let confirmed = reserved(ledger, acct, "confirmed", PRICE).await;
    ledger
        .confirm(&confirmed, Bytes::from_static(b"kept"), None)
        .await
        .unwrap();
    resolved
}

async fn resolved_actions_are_pruned_in_bounded_batches(f: &Fixture) {
    let ledger = &*f.ledger;
    let acct = account("prune");
    let resolved = seven_resolved_two_open(f, &acct).await;
    let stats = ledger.stats().await.unwrap();
    let before = balance(ledger, &acct).await;

    f.clock.advance(DAY - Duration::from_secs(1));
    assert_eq!(
        ledger.prune(3).await.unwrap(),
        0,
        "nothing before the retention"
    );
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(ledger.prune(3).await.unwrap(), 3);
    let mut left = 0;
    for id in &resolved {
        left += usize::from(ledger.action(id).await.unwrap().is_some());
    }
    assert_eq!(left, 4, "one batch forgot exactly its limit");
    assert_eq!(ledger.prune(3).await.unwrap(), 3);
    assert_eq!(ledger.prune(3).await.unwrap(), 1);
    assert_eq!(ledger.prune(3).await.unwrap(), 0);

    // Stats keep counting what was forgotten; balances are untouched; open actions stay.
    assert_eq!(ledger.stats().await.unwrap(), stats);
    assert_eq!(balance(ledger, &acct).await, before);
    for open in ["pending", "confirmed"] {
        assert!(ledger.find(&scope_of(&acct), open).await.unwrap().is_some());
    }
    // A forgotten key is new again.
    assert!(matches!(
        ledger
            .reserve(reserve_request(&acct, "done-0", PRICE))
            .await
            .unwrap(),
        Reservation::Reserved(_)
    ));
}

on_every_ledger!(resolved_actions_are_pruned_in_bounded_batches);

#[cfg(feature = "postgres")]
mod postgres_locks {
    use std::sync::Arc;

    use dreamnet_billable::{prune_resolved, PostgresLedger};
    use dreamnet_common::ManualClock;

    use super::*;

    /// A resolved row another transaction holds `FOR UPDATE` is skipped, not waited for; it
    /// goes in a later pass. The ledger counts what it pruned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_skips_locked_rows_and_counts() {
        let Some(pool) = dreamnet_test_support::pg_pool().await else {
            return;
        };
        let schema = dreamnet_test_support::unique_schema("bill_prune");
        let clock = ManualClock::new(1_800_000_000_000);
        let ledger = PostgresLedger::builder(pool.clone())
            .schema(schema.clone())
            .clock(Arc::new(clock.clone()))
            .retention(Some(Duration::from_secs(3600)))
            .deadline(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        let f = Fixture::new(Arc::new(ledger.clone()), clock.clone());
        let acct = account("locked");
        let resolved = seven_resolved_two_open(&f, &acct).await;
        clock.advance(Duration::from_secs(3600));
        let oldest = ledger
            .find(&scope_of(&acct), "done-0")
            .await
            .unwrap()
            .unwrap();

        let mut holder = pool.get().await.unwrap();
        let tx = holder.transaction().await.unwrap();
        tx.query(
            &format!(
                "SELECT id FROM \"{schema}\".dreamnet_billable_actions WHERE id = $1 FOR UPDATE"
            ),
            &[&oldest.id.as_str()],
        )
        .await
        .unwrap();
        // Within the 2 s deadline although a row it wants is locked: skipped.
        assert_eq!(ledger.prune(100).await.unwrap(), 6);
        assert!(ledger.action(&oldest.id).await.unwrap().is_some());
        for id in &resolved[1..] {
            // Every other resolved action is gone.
            assert!(ledger.action(id).await.unwrap().is_none());
        }
        tx.commit().await.unwrap();
        assert_eq!(prune_resolved(&ledger).await.unwrap(), 1);
        assert!(ledger.action(&oldest.id).await.unwrap().is_none());
        assert_eq!(ledger.pruned_total(), 7);
        let stats = ledger.stats().await.unwrap();
        assert_eq!(
            (stats.charged, stats.failed, stats.pending, stats.confirmed),
            (5, 2, 1, 1)
        );
        drop_schema(&pool, &schema).await;
    }
}
