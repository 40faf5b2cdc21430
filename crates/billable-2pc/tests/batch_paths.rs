//! The two paths of a PostgreSQL batch: the common case (a fresh key on an unlimited
//! account, a settle of a live hold) taken inside the batch function in a statement or two,
//! everything else handed to the single-request function. A batch mixing both answers each
//! request as an unbatched call would and keeps the account's sums exact; and the batch
//! functions never scan the actions table, even on the fresh, empty tables their plans are
//! first made on.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

use common::*;
use dreamnet_billable::ledger::{ActionId, ActionState, LedgerError, Reservation};
use futures_util::future::join_all;

mod common;

/// One reserve batch on an unlimited account: two fresh keys, a replay of a live key, a
/// retry of an expired attempt (voided, then reserved again), a currency mismatch and the
/// same fresh key twice. Each gets what it would unbatched; the pending sum is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_batch_mixes_fresh_keys_with_replays_retries_and_mismatches() {
    let Some(f) = batched_by_6().await else {
        return;
    };
    let ledger = &*f.ledger;
    let acct = account("mixed-reserves");
    let stale = reserved(ledger, &acct, "stale", PRICE).await;
    f.clock.advance(TIMEOUT);
    let live = reserved(ledger, &acct, "live", PRICE).await;
    let mut euro = reserve_request(&acct, "m", 5);
    euro.currency = "EUR".to_owned();
    let requests = vec![
        reserve_request(&acct, "a", 10),
        reserve_request(&acct, "live", PRICE),
        reserve_request(&acct, "stale", 20),
        euro,
        reserve_request(&acct, "b", 30),
        reserve_request(&acct, "a", 10),
    ];
    let outcomes = join_all(requests.into_iter().map(|r| ledger.reserve(r))).await;
    let reserved_id = |i: usize| match &outcomes[i] {
        Ok(Reservation::Reserved(action)) => action.id.clone(),
        other => panic!("request {i}: expected a reservation, got {other:?}"),
    };
    let (a, retried, b) = (reserved_id(0), reserved_id(2), reserved_id(4));
    assert!(
        matches!(&outcomes[1], Ok(Reservation::Existing(x)) if x.id == live),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[3], Err(LedgerError::CurrencyMismatch { account_currency, .. })
            if account_currency == "USD"),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[5], Ok(Reservation::Existing(x)) if x.id == a),
        "the key's first request in the batch holds it: {outcomes:?}"
    );
    assert_ne!(retried, stale);
    assert_eq!(state_of(ledger, &stale).await, ActionState::Failed);
    for id in [&a, &retried, &b, &live] {
        assert_eq!(state_of(ledger, id).await, ActionState::Pending);
    }
    assert_eq!(
        balance(ledger, &acct).await,
        (None, PRICE + 10 + 20 + 30, 0)
    );
    assert!(ledger.find(&scope_of(&acct), "m").await.unwrap().is_none());
    f.finish().await;
}

/// One settle batch: three live holds settled (one for less), one for more than its hold,
/// one already charged, one unknown id. Each gets what it would unbatched; the sums are
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_batch_mixes_charges_with_refusals() {
    let Some(f) = batched_by_6().await else {
        return;
    };
    let ledger = &*f.ledger;
    let acct = account("mixed-settles");
    let mut ids = Vec::new();
    for key in ["k0", "k1", "k2", "k3", "done"] {
        ids.push(reserved(ledger, &acct, key, PRICE).await);
    }
    let done = ids[4].clone();
    // Settled alone first (a batch of one, as the batch is cut by its wait).
    ledger
        .settle(&done, encoded_response("{}"), None)
        .await
        .unwrap();
    let missing = ActionId::random();
    let settles = [
        (&ids[0], None),
        (&ids[1], Some(40)),
        (&ids[2], Some(PRICE + 1)),
        (&done, None),
        (&missing, None),
        (&ids[3], None),
    ];
    let outcomes = join_all(
        settles
            .iter()
            .map(|(id, actual)| ledger.settle(id, encoded_response("{}"), *actual)),
    )
    .await;
    let charged = |i: usize| match &outcomes[i] {
        Ok(action) if action.state == ActionState::Charged => action.amount,
        other => panic!("settle {i}: expected a charge, got {other:?}"),
    };
    assert_eq!((charged(0), charged(1), charged(5)), (PRICE, 40, PRICE));
    assert!(
        matches!(&outcomes[2], Err(LedgerError::ExceedsReservation { reserved, actual })
            if *reserved == PRICE && *actual == PRICE + 1),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[3], Err(LedgerError::AlreadyCharged(id)) if *id == done),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[4], Err(LedgerError::NotFound(id)) if *id == missing),
        "{outcomes:?}"
    );
    assert_eq!(state_of(ledger, &ids[2]).await, ActionState::Pending);
    assert_eq!(
        balance(ledger, &acct).await,
        (None, PRICE, PRICE + PRICE + 40 + PRICE)
    );
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.pending, stats.charged), (1, 4));
    f.finish().await;
}

/// The batch functions, called a dozen times on fresh tables (plpgsql caches a plan after
/// its first calls, made while the tables are empty, when a scan looks cheapest): no scan
/// of the actions or accounts table, only index lookups. With the planner's default, the
/// cached plans scanned the whole actions table in every batch, so the cost of a mint grew
/// with the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_functions_never_scan_the_tables() {
    let Some(pool) = dreamnet_test_support::pg_pool().await else {
        return;
    };
    let Some((f, schema)) = postgres_in_schema(|b| b).await else {
        return;
    };
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let s = format!("\"{schema}\"");
    let reserve = format!(
        "SELECT count(*) FROM {s}.dreamnet_billable_reserve_batch($1, $2, $3, $4, $5, $6, $7,
             $8, $9, $10, $11, NULL) WHERE o_outcome = 'reserved'"
    );
    let settle = format!(
        "SELECT count(*) FROM {s}.dreamnet_billable_resolve_batch($1, $2, $3, $4, $5)
         WHERE o_outcome = 'done'"
    );
    let now: i64 = 1_800_000_000_000;
    for round in 0..12 {
        let ids: Vec<String> = (0..4).map(|i| format!("id-{round}-{i}")).collect();
        let keys: Vec<String> = (0..4).map(|i| format!("key-{round}-{i}")).collect();
        let texts = |v: &str| vec![v.to_owned(); 4];
        let accounts: Vec<String> = (0..4).map(|i| format!("acct-{}", i % 2)).collect();
        let reserved: i64 = tx
            .query_one(
                &reserve,
                &[
                    &ids,
                    &texts("scope"),
                    &keys,
                    &texts("f"),
                    &texts("mint-dream"),
                    &accounts,
                    &vec![PRICE; 4],
                    &texts("USD"),
                    &vec![None::<String>; 4],
                    &now,
                    &vec![now + 60_000; 4],
                ],
            )
            .await
            .unwrap()
            .get(0);
        let settled: i64 = tx
            .query_one(
                &settle,
                &[
                    &ids,
                    &texts("charged"),
                    &vec![None::<i64>; 4],
                    &vec![b"{}".to_vec(); 4],
                    &now,
                ],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!((reserved, settled), (4, 4), "round {round}");
    }
    for table in ["dreamnet_billable_actions", "dreamnet_billable_accounts"] {
        // This transaction's own counts: exact and immediate.
        let row = tx
            .query_one(
                "SELECT seq_scan, idx_scan, idx_tup_fetch FROM pg_stat_xact_user_tables
                 WHERE schemaname = $1 AND relname = $2",
                &[&schema, &table],
            )
            .await
            .unwrap();
        let (seq, idx, fetched): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(idx > 0, "{table}: looked up by index ({idx})");
        assert_eq!(seq, 0, "{table}: scanned {seq} times in 12 batches");
        // Keyed lookups fetch the batch's own rows (the actions settled, the accounts
        // locked and checked by each insert's foreign key), a few per request, not every
        // row of an index: a plan joining a whole index (made on the empty tables) would
        // fetch every live action in every batch, more as the table grows.
        let per_request = if table == "dreamnet_billable_actions" {
            2
        } else {
            3
        };
        assert!(
            fetched <= per_request * 12 * 4,
            "{table}: {fetched} rows fetched by index in 12 batches of 4"
        );
    }
    tx.rollback().await.unwrap();
    drop(client);
    f.finish().await;
}
