//! The [`Ledger`] suite: the two-phase steps a [`BillableLayer`](crate::BillableLayer)
//! relies on, observed through the core trait alone.

use std::time::Duration;

use super::{
    account, race_one_key_on_two_accounts, reserve_request, reserved, response, scope_of, Fixture,
    TIMEOUT,
};
use crate::ledger::{ActionId, ActionState, Ledger, LedgerError, Reservation};

/// `pending -> confirmed -> charged` and `pending -> failed`; every other move is its typed
/// error and changes nothing.
pub async fn transitions_are_exclusive<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("trans");
    let id = reserved(ledger, &acct, "k1", 70).await;
    assert!(matches!(
        ledger.charge(&id).await,
        Err(LedgerError::NotConfirmed(_))
    ));
    let confirmed = ledger.confirm(&id, response("{}"), None).await.unwrap();
    assert_eq!(
        (confirmed.state, confirmed.amount, confirmed.reserved),
        (ActionState::Confirmed, 70, 70)
    );
    assert_eq!(confirmed.response.as_deref(), Some(&b"{}"[..]));
    assert!(matches!(
        ledger.confirm(&id, response("{}"), None).await,
        Err(LedgerError::AlreadyConfirmed(_))
    ));
    assert!(matches!(
        ledger.void(&id).await,
        Err(LedgerError::AlreadyConfirmed(_))
    ));
    let charged = ledger.charge(&id).await.unwrap();
    assert_eq!((charged.state, charged.amount), (ActionState::Charged, 70));
    assert!(matches!(
        ledger.charge(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));
    assert!(matches!(
        ledger.void(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));

    let voided = reserved(ledger, &acct, "k2", 30).await;
    assert_eq!(
        ledger.void(&voided).await.unwrap().state,
        ActionState::Failed
    );
    assert!(matches!(
        ledger.void(&voided).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    assert!(matches!(
        ledger.charge(&voided).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    assert!(matches!(
        ledger.confirm(&voided, response("{}"), None).await,
        Err(LedgerError::AlreadyVoided(_))
    ));

    let missing = ActionId::new("act_missing");
    assert!(matches!(
        ledger.charge(&missing).await,
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        ledger.void(&missing).await,
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        ledger.confirm(&missing, response("{}"), None).await,
        Err(LedgerError::NotFound(_))
    ));
}

/// The same (scope, key) again returns its live action and holds nothing; a voided key gets
/// a new attempt with a new id; another scope's key is another key.
pub async fn a_key_has_one_live_action<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("keys");
    let scope = scope_of(&acct);
    let id = reserved(ledger, &acct, "k", 10).await;
    match ledger
        .reserve(reserve_request(&acct, "k", 10))
        .await
        .unwrap()
    {
        Reservation::Existing(existing) => {
            assert_eq!(existing.id, id);
            assert_eq!(existing.state, ActionState::Pending);
            assert_eq!(existing.fingerprint, "f".repeat(64));
            assert_eq!(existing.trace_id.as_deref(), Some("trace-1"));
        }
        other => panic!("expected the existing action, got {other:?}"),
    }
    assert_eq!(ledger.find(&scope, "k").await.unwrap().unwrap().id, id);
    assert!(ledger.find(&scope, "other").await.unwrap().is_none());

    ledger.void(&id).await.unwrap();
    assert!(
        ledger.find(&scope, "k").await.unwrap().is_none(),
        "a failed action frees its key"
    );
    let retry = reserved(ledger, &acct, "k", 10).await;
    assert_ne!(retry, id);
    assert_eq!(ledger.find(&scope, "k").await.unwrap().unwrap().id, retry);

    // A charged action stays the key's live one.
    ledger
        .confirm(&retry, response("kept"), None)
        .await
        .unwrap();
    ledger.charge(&retry).await.unwrap();
    let live = ledger.find(&scope, "k").await.unwrap().unwrap();
    assert_eq!((live.id, live.state), (retry, ActionState::Charged));
    assert_eq!(live.response.as_deref(), Some(&b"kept"[..]));

    let mut elsewhere = reserve_request(&acct, "k", 10);
    elsewhere.scope = format!("{scope}-other");
    assert!(matches!(
        ledger.reserve(elsewhere).await.unwrap(),
        Reservation::Reserved(_)
    ));
}

/// A negative amount, or a currency other than the account's, is refused and holds nothing.
pub async fn reserve_refuses_bad_amounts_and_currencies<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("refuse");
    assert!(matches!(
        ledger.reserve(reserve_request(&acct, "neg", -1)).await,
        Err(LedgerError::InvalidAmount(-1))
    ));
    reserved(ledger, &acct, "usd", 1).await;
    let mut eur = reserve_request(&acct, "eur", 1);
    eur.currency = "EUR".to_owned();
    match ledger.reserve(eur).await {
        Err(LedgerError::CurrencyMismatch {
            account,
            account_currency,
            requested,
        }) => assert_eq!(
            (account, account_currency.as_str(), requested.as_str()),
            (acct.clone(), "USD", "EUR")
        ),
        other => panic!("expected a currency mismatch, got {other:?}"),
    }
    let scope = scope_of(&acct);
    assert!(ledger.find(&scope, "neg").await.unwrap().is_none());
    assert!(ledger.find(&scope, "eur").await.unwrap().is_none());
}

/// `confirm` with an actual cost posts that amount; above the reservation or negative it is
/// refused and the action stays pending.
pub async fn partial_confirm_and_refused_amounts<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("partial");
    let id = reserved(ledger, &acct, "k", 100).await;
    match ledger.confirm(&id, response("{}"), Some(101)).await {
        Err(LedgerError::ExceedsReservation { reserved, actual }) => {
            assert_eq!((reserved, actual), (100, 101));
        }
        other => panic!("expected ExceedsReservation, got {other:?}"),
    }
    assert!(matches!(
        ledger.confirm(&id, response("{}"), Some(-1)).await,
        Err(LedgerError::InvalidAmount(-1))
    ));
    let scope = scope_of(&acct);
    assert_eq!(
        ledger.find(&scope, "k").await.unwrap().unwrap().state,
        ActionState::Pending,
        "a refused confirm changes nothing"
    );
    let confirmed = ledger.confirm(&id, response("{}"), Some(40)).await.unwrap();
    assert_eq!((confirmed.reserved, confirmed.amount), (100, 40));
    let charged = ledger.charge(&id).await.unwrap();
    assert_eq!((charged.state, charged.amount), (ActionState::Charged, 40));

    let free = reserved(ledger, &acct, "free", 5).await;
    let confirmed = ledger
        .confirm(&free, response("{}"), Some(0))
        .await
        .unwrap();
    assert_eq!(confirmed.amount, 0, "a zero cost is a valid post");
}

/// A pending reservation past its timeout cannot be confirmed (it is voided instead), and a
/// new reservation of its key voids it and starts a new attempt.
pub async fn expired_reservations_give_way<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("expiry");
    let scope = scope_of(&acct);
    let late = reserved(ledger, &acct, "late", 10).await;
    let stale = reserved(ledger, &acct, "stale", 10).await;
    let kept = reserved(ledger, &acct, "kept", 10).await;
    ledger.confirm(&kept, response("{}"), None).await.unwrap();

    f.clock.advance(TIMEOUT - Duration::from_millis(1));
    assert!(
        matches!(
            ledger.reserve(reserve_request(&acct, "stale", 10)).await.unwrap(),
            Reservation::Existing(existing) if existing.id == stale
        ),
        "not before the timeout"
    );
    f.clock.advance(Duration::from_millis(1));

    assert!(matches!(
        ledger.confirm(&late, response("{}"), None).await,
        Err(LedgerError::Expired(_))
    ));
    assert!(ledger.find(&scope, "late").await.unwrap().is_none());
    assert!(matches!(
        ledger.void(&late).await,
        Err(LedgerError::AlreadyVoided(_))
    ));

    let retry = reserved(ledger, &acct, "stale", 10).await;
    assert_ne!(retry, stale);
    assert!(matches!(
        ledger.confirm(&stale, response("{}"), None).await,
        Err(LedgerError::AlreadyVoided(_))
    ));

    // A confirmed action never expires: its response is kept, so it is charged.
    assert!(matches!(
        ledger.reserve(reserve_request(&acct, "kept", 10)).await.unwrap(),
        Reservation::Existing(existing) if existing.id == kept
    ));
    assert_eq!(
        ledger.charge(&kept).await.unwrap().state,
        ActionState::Charged
    );
}

/// The same key reserved at once for two accounts (locks on different account rows, so
/// only the key's uniqueness decides): exactly one reservation, the other call gets that
/// action.
pub async fn one_key_racing_on_two_accounts_reserves_once<L: Ledger + ?Sized>(f: &Fixture<L>) {
    race_one_key_on_two_accounts(&*f.ledger, 20).await;
}

/// `settle` stores the response and posts the charge in one step, `pending -> charged`,
/// with confirm's rules: a partial amount, refused amounts, expiry, exclusive transitions.
pub async fn settle_stores_and_charges_in_one_step<L: Ledger + ?Sized>(f: &Fixture<L>) {
    let ledger = &*f.ledger;
    let acct = account("settle");
    let scope = scope_of(&acct);
    let id = reserved(ledger, &acct, "k", 70).await;
    let charged = ledger.settle(&id, response("kept"), None).await.unwrap();
    assert_eq!(
        (charged.state, charged.amount, charged.reserved),
        (ActionState::Charged, 70, 70)
    );
    assert_eq!(charged.response.as_deref(), Some(&b"kept"[..]));
    let live = ledger.find(&scope, "k").await.unwrap().unwrap();
    assert_eq!(
        (live.state, live.response.as_deref()),
        (ActionState::Charged, Some(&b"kept"[..]))
    );
    assert!(matches!(
        ledger.settle(&id, response("again"), None).await,
        Err(LedgerError::AlreadyCharged(_))
    ));
    assert!(matches!(
        ledger.void(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));
    assert!(matches!(
        ledger.charge(&id).await,
        Err(LedgerError::AlreadyCharged(_))
    ));

    let partial = reserved(ledger, &acct, "partial", 100).await;
    assert!(matches!(
        ledger.settle(&partial, response("{}"), Some(101)).await,
        Err(LedgerError::ExceedsReservation {
            reserved: 100,
            actual: 101
        })
    ));
    assert!(matches!(
        ledger.settle(&partial, response("{}"), Some(-1)).await,
        Err(LedgerError::InvalidAmount(-1))
    ));
    let posted = ledger
        .settle(&partial, response("{}"), Some(40))
        .await
        .unwrap();
    assert_eq!(
        (posted.state, posted.amount, posted.reserved),
        (ActionState::Charged, 40, 100)
    );

    let voided = reserved(ledger, &acct, "voided", 5).await;
    ledger.void(&voided).await.unwrap();
    assert!(matches!(
        ledger.settle(&voided, response("{}"), None).await,
        Err(LedgerError::AlreadyVoided(_))
    ));
    let confirmed = reserved(ledger, &acct, "confirmed", 5).await;
    ledger
        .confirm(&confirmed, response("{}"), None)
        .await
        .unwrap();
    assert!(matches!(
        ledger.settle(&confirmed, response("{}"), None).await,
        Err(LedgerError::AlreadyConfirmed(_))
    ));
    assert!(matches!(
        ledger
            .settle(&ActionId::new("act_missing"), response("{}"), None)
            .await,
        Err(LedgerError::NotFound(_))
    ));

    let late = reserved(ledger, &acct, "late", 5).await;
    f.clock.advance(TIMEOUT);
    assert!(matches!(
        ledger.settle(&late, response("{}"), None).await,
        Err(LedgerError::Expired(_))
    ));
    assert!(
        ledger.find(&scope, "late").await.unwrap().is_none(),
        "voided, key freed"
    );
}
