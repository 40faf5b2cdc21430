//! The [`LedgerAdmin`] suite: balances, credit lines, stats and the recovery listing, in
//! step with the two-phase steps.

use std::time::Duration;

use dreamnet_common::AccountId;

use super::{
    account, race_one_key_on_two_accounts, reserve_request, reserved, response, Fixture, TIMEOUT,
};
use crate::ledger::{ActionId, ActionState, LedgerAdmin, LedgerError, Reservation};

async fn balance<L: LedgerAdmin + ?Sized>(ledger: &L, acct: &AccountId) -> (Option<i64>, i64, i64) {
    let a = ledger
        .account(acct)
        .await
        .unwrap()
        .expect("the account exists");
    assert_eq!(&a.account, acct);
    (a.credit, a.pending, a.charged)
}

async fn state_of<L: LedgerAdmin + ?Sized>(ledger: &L, id: &ActionId) -> ActionState {
    ledger
        .action(id)
        .await
        .unwrap()
        .expect("the action exists")
        .state
}

/// Holds count as pending on the account until charged (then as charged) or voided (then
/// released); a partial post releases the rest at confirm.
pub async fn balances_follow_every_transition<L: LedgerAdmin + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("balance");
    assert!(ledger.account(&acct).await.unwrap().is_none());
    let id = reserved(ledger, &acct, "k1", 70).await;
    assert_eq!(
        balance(ledger, &acct).await,
        (None, 70, 0),
        "created unlimited"
    );
    assert_eq!(
        ledger.account(&acct).await.unwrap().unwrap().currency,
        "USD"
    );
    assert_eq!(state_of(ledger, &id).await, ActionState::Pending);
    ledger.confirm(&id, response("{}"), None).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, 70, 0));
    assert_eq!(state_of(ledger, &id).await, ActionState::Confirmed);
    ledger.charge(&id).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, 0, 70));
    let stored = ledger.action(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.response.as_deref()),
        (ActionState::Charged, Some(&b"{}"[..]))
    );

    let voided = reserved(ledger, &acct, "k2", 30).await;
    assert_eq!(balance(ledger, &acct).await, (None, 30, 70));
    ledger.void(&voided).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, 0, 70));
    assert_eq!(state_of(ledger, &voided).await, ActionState::Failed);

    let partial = reserved(ledger, &acct, "k3", 100).await;
    ledger
        .confirm(&partial, response("{}"), Some(40))
        .await
        .unwrap();
    assert_eq!(
        balance(ledger, &acct).await,
        (None, 40, 70),
        "the rest is released"
    );
    ledger.charge(&partial).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (None, 0, 110));

    let late = reserved(ledger, &acct, "k4", 5).await;
    f.clock.advance(TIMEOUT);
    assert!(matches!(
        ledger.confirm(&late, response("{}"), None).await,
        Err(LedgerError::Expired(_))
    ));
    assert_eq!(state_of(ledger, &late).await, ActionState::Failed);
    assert_eq!(balance(ledger, &acct).await, (None, 0, 110));
    assert!(ledger
        .action(&ActionId::new("act_missing"))
        .await
        .unwrap()
        .is_none());
}

/// Credit lines: added to (opening one on an unlimited account), set, refused below what is
/// held and charged; reservations beyond the available credit are refused and hold nothing.
pub async fn credit_lines_and_unlimited_accounts<L: LedgerAdmin + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("credit");
    assert!(matches!(
        ledger.add_credit(&acct, 0, "USD").await,
        Err(LedgerError::InvalidAmount(0))
    ));
    assert!(matches!(
        ledger.set_credit(&acct, Some(-1), "USD").await,
        Err(LedgerError::InvalidAmount(-1))
    ));
    assert!(
        ledger.account(&acct).await.unwrap().is_none(),
        "refused credit changes nothing"
    );
    let a = ledger.add_credit(&acct, 250, "USD").await.unwrap();
    assert_eq!((a.credit, a.available()), (Some(250), Some(250)));
    let a = ledger.add_credit(&acct, 50, "USD").await.unwrap();
    assert_eq!(a.available(), Some(300));
    assert!(matches!(
        ledger.add_credit(&acct, 5, "EUR").await,
        Err(LedgerError::CurrencyMismatch { .. })
    ));
    let id = reserved(ledger, &acct, "k", 200).await;
    match ledger
        .reserve(reserve_request(&acct, "k2", 101))
        .await
        .unwrap()
    {
        Reservation::InsufficientFunds {
            account,
            available,
            required,
            currency,
        } => assert_eq!(
            (account, available, required, currency.as_str()),
            (acct.clone(), 100, 101, "USD")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(ledger, &acct).await, (Some(300), 200, 0));
    assert!(matches!(
        ledger.set_credit(&acct, Some(199), "USD").await,
        Err(LedgerError::InvalidAmount(199))
    ));
    ledger.void(&id).await.unwrap();
    let a = ledger.set_credit(&acct, None, "USD").await.unwrap();
    assert_eq!(a.available(), None);
    reserved(ledger, &acct, "big", 1_000_000_000).await;

    // Unlimited by default: an account first seen by a reservation has no credit line.
    let free = account("unlimited");
    reserved(ledger, &free, "k", i64::MAX / 4).await;
    assert_eq!(balance(ledger, &free).await, (None, i64::MAX / 4, 0));
    // A credit line set on a new account creates it, in that currency.
    let eur = account("eur");
    let a = ledger.set_credit(&eur, Some(0), "EUR").await.unwrap();
    assert_eq!((a.currency.as_str(), a.available()), ("EUR", Some(0)));
}

/// Counts per state and amounts per currency and state, kept in step with every transition.
pub async fn stats_count_and_sum_per_state_and_currency<L: LedgerAdmin + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    assert_eq!(
        ledger.stats().await.unwrap(),
        Default::default(),
        "a fresh ledger"
    );
    let acct = account("stats");
    let pending = reserved(ledger, &acct, "p", 1).await;
    let confirmed = reserved(ledger, &acct, "c", 20).await;
    ledger
        .confirm(&confirmed, response("{}"), None)
        .await
        .unwrap();
    let charged = reserved(ledger, &acct, "ch", 300).await;
    ledger
        .confirm(&charged, response("{}"), Some(250))
        .await
        .unwrap();
    ledger.charge(&charged).await.unwrap();
    let failed = reserved(ledger, &acct, "f", 4000).await;
    ledger.void(&failed).await.unwrap();
    let euro = account("stats-eur");
    let mut eur = reserve_request(&euro, "e", 7);
    eur.currency = "EUR".to_owned();
    assert!(matches!(
        ledger.reserve(eur).await.unwrap(),
        Reservation::Reserved(_)
    ));

    let stats = ledger.stats().await.unwrap();
    let counts = ActionState::ALL.map(|s| stats.count(s));
    assert_eq!(counts, [2, 1, 1, 1], "pending, confirmed, charged, failed");
    let usd = stats.amounts["USD"];
    assert_eq!(
        ActionState::ALL.map(|s| usd.get(s)),
        [1, 20, 250, 4000],
        "amounts are the actions' amounts (the final one once posted)"
    );
    assert_eq!(stats.amounts["EUR"].pending, 7);
    assert_eq!(stats.amounts.len(), 2);

    ledger.void(&pending).await.unwrap();
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.pending, stats.failed), (1, 2));
    assert_eq!(
        (stats.amounts["USD"].pending, stats.amounts["USD"].failed),
        (0, 4001)
    );
}

/// Recovery's listing: confirmed actions at once, pending ones once past their timeout,
/// oldest first, at most `limit`; resolved ones never.
pub async fn due_for_recovery_lists_expired_and_confirmed_oldest_first<L: LedgerAdmin + ?Sized>(
    f: &Fixture<L>,
) {
    let ledger = &*f.ledger;
    let acct = account("due");
    let tick = || f.clock.advance(Duration::from_millis(1));
    let pending = reserved(ledger, &acct, "p", 1).await;
    tick();
    let confirmed = reserved(ledger, &acct, "c", 1).await;
    ledger
        .confirm(&confirmed, response("{}"), None)
        .await
        .unwrap();
    tick();
    let charged = reserved(ledger, &acct, "ch", 1).await;
    ledger
        .confirm(&charged, response("{}"), None)
        .await
        .unwrap();
    ledger.charge(&charged).await.unwrap();
    tick();
    let voided = reserved(ledger, &acct, "v", 1).await;
    ledger.void(&voided).await.unwrap();
    tick();
    let young = reserved(ledger, &acct, "y", 1).await;

    let ids = |due: Vec<crate::ledger::Action>| due.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ledger.due_for_recovery(10).await.unwrap()),
        std::slice::from_ref(&confirmed)
    );

    // `pending` times out; `young` (reserved 4 ms later) not yet.
    f.clock.advance(TIMEOUT - Duration::from_millis(4));
    let due = ledger.due_for_recovery(10).await.unwrap();
    assert_eq!(ids(due.clone()), [pending.clone(), confirmed.clone()]);
    assert_eq!(
        due.iter().map(|a| a.state).collect::<Vec<_>>(),
        [ActionState::Pending, ActionState::Confirmed]
    );
    assert_eq!(
        ids(ledger.due_for_recovery(1).await.unwrap()),
        std::slice::from_ref(&pending)
    );
    f.clock.advance(Duration::from_millis(4));
    assert_eq!(
        ids(ledger.due_for_recovery(10).await.unwrap()),
        [pending.clone(), confirmed.clone(), young]
    );
    ledger.void(&pending).await.unwrap();
    ledger.charge(&confirmed).await.unwrap();
    assert_eq!(ledger.due_for_recovery(10).await.unwrap().len(), 1);
}

/// [`core::one_key_racing_on_two_accounts_reserves_once`](super::core::one_key_racing_on_two_accounts_reserves_once),
/// seen on the balances: only the winner's account ever held the amount, and every hold is
/// released by the void.
pub async fn a_key_racing_on_two_accounts_holds_once<L: LedgerAdmin + ?Sized>(f: &Fixture<L>) {
    let (a, b) = race_one_key_on_two_accounts(&*f.ledger, 10).await;
    for acct in [&a, &b] {
        if let Some(account) = f.ledger.account(acct).await.unwrap() {
            assert_eq!(account.pending, 0, "{acct}: every hold released");
            assert_eq!(account.charged, 0, "{acct}: nothing charged");
        }
    }
    let stats = f.ledger.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.failed),
        (0, 10),
        "one action per round"
    );
}

/// A settle moves the hold to charged in one step (a partial one releases the rest), and
/// stats count it as charged.
pub async fn settle_moves_the_hold_to_charged<L: LedgerAdmin + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("settle-bal");
    ledger.add_credit(&acct, 100, "USD").await.unwrap();
    let id = reserved(ledger, &acct, "k1", 70).await;
    assert_eq!(balance(ledger, &acct).await, (Some(100), 70, 0));
    ledger.settle(&id, response("{}"), Some(60)).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (Some(100), 0, 60));
    assert_eq!(state_of(ledger, &id).await, ActionState::Charged);
    let last = reserved(ledger, &acct, "k2", 40).await;
    ledger.settle(&last, response("{}"), None).await.unwrap();
    assert_eq!(balance(ledger, &acct).await, (Some(100), 0, 100));
    assert!(matches!(
        ledger
            .reserve(reserve_request(&acct, "k3", 1))
            .await
            .unwrap(),
        Reservation::InsufficientFunds { available: 0, .. }
    ));
    let stats = ledger.stats().await.unwrap();
    assert_eq!((stats.pending, stats.confirmed, stats.charged), (0, 0, 2));
    assert_eq!(stats.amounts["USD"].charged, 100);
}
