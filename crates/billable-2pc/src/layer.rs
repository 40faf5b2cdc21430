//! [`BillableLayer`]: configuration and the small policies (pricing, account).

use std::{sync::Arc, time::Duration};

use dreamnet_common::{AccountId, Problem, ACCOUNT_ID_HEADER};
use dreamnet_idempotency::{protocol::Protocol, ScopeExtractor};
use http::{request::Parts, HeaderName};
use tower_layer::Layer;

use crate::{
    ledger::{ActionId, Amount},
    service::Billable,
    Ledger,
};

/// The default reservation timeout: a pending reservation older than this is voided by
/// recovery (5 minutes).
pub const DEFAULT_RESERVATION_TIMEOUT: Duration = Duration::from_secs(300);
/// The default request body limit (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The default limit of a response body the layer stores (1 MiB).
pub const DEFAULT_RESPONSE_LIMIT: usize = 1024 * 1024;

/// The price of one request, in minor units of the layer's currency.
///
/// Implemented for closures; [`FixedPrice`] is the constant one. A pricing function sees the
/// request head and the buffered body, and may refuse the request with a problem (e.g. 400
/// for an unknown plan).
// A problem is only built on the rejection path, so its size costs nothing on the hot path.
#[allow(clippy::result_large_err)]
pub trait Pricing: Send + Sync + 'static {
    /// The amount to reserve for this request.
    ///
    /// # Errors
    /// A problem response to send instead of running the request.
    fn price(&self, parts: &Parts, body: &[u8]) -> Result<Amount, Problem>;
}

#[allow(clippy::result_large_err)]
impl<F> Pricing for F
where
    F: Fn(&Parts, &[u8]) -> Result<Amount, Problem> + Send + Sync + 'static,
{
    fn price(&self, parts: &Parts, body: &[u8]) -> Result<Amount, Problem> {
        self(parts, body)
    }
}

/// A constant price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPrice(pub Amount);

#[allow(clippy::result_large_err)]
impl Pricing for FixedPrice {
    fn price(&self, _: &Parts, _: &[u8]) -> Result<Amount, Problem> {
        Ok(self.0)
    }
}

/// Which account pays for a request. `None` answers 400 (missing account).
///
/// Implemented for closures over the request head and the buffered body (so an account can
/// come from a JSON field such as a wallet).
pub trait AccountExtractor: Send + Sync + 'static {
    /// The account to charge.
    fn account(&self, parts: &Parts, body: &[u8]) -> Option<AccountId>;
}

impl<F> AccountExtractor for F
where
    F: Fn(&Parts, &[u8]) -> Option<AccountId> + Send + Sync + 'static,
{
    fn account(&self, parts: &Parts, body: &[u8]) -> Option<AccountId> {
        self(parts, body)
    }
}

/// The default account: a header (`X-Account-Id`,
/// [`dreamnet_common::ACCOUNT_ID_HEADER`], by default) holding an [`AccountId`]; a missing or
/// invalid one answers 400.
///
/// The header is trusted as sent: put the layer behind authentication that sets or checks
/// it, or supply an [`AccountExtractor`] that reads your verified identity.
#[derive(Debug, Clone)]
pub struct AccountHeader(pub HeaderName);

impl Default for AccountHeader {
    fn default() -> Self {
        Self(ACCOUNT_ID_HEADER)
    }
}

impl AccountExtractor for AccountHeader {
    fn account(&self, parts: &Parts, _: &[u8]) -> Option<AccountId> {
        AccountId::parse(parts.headers.get(&self.0)?.to_str().ok()?).ok()
    }
}

/// Reported by a handler in its response extensions when the work cost less than the
/// reservation: that amount is charged and the rest released (a partial post). A cost above
/// the reservation is refused: the reservation is voided and the client gets a 500 problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActualCost(pub Amount);

/// Put in the request extensions by the layer before the handler runs, so the handler can
/// name the action (e.g. `actionId` in a response body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedAction {
    /// The action id.
    pub id: ActionId,
    /// The account charged.
    pub account: AccountId,
    /// The amount held.
    pub amount: Amount,
    /// The currency.
    pub currency: String,
}

/// Makes every request through it a billable action: reserve, run, store, charge.
///
/// ```
/// use dreamnet_billable::{BillableLayer, MemoryLedger};
/// use std::time::Duration;
///
/// let ledger = MemoryLedger::new();
/// let layer = BillableLayer::new(ledger, "mint-dream", 250)
///     .currency("USD")
///     .reservation_timeout(Duration::from_secs(120));
/// # let _ = layer;
/// ```
pub struct BillableLayer<L: ?Sized> {
    pub(crate) ledger: Arc<L>,
    pub(crate) action: Arc<str>,
    pub(crate) pricing: Arc<dyn Pricing>,
    pub(crate) currency: Arc<str>,
    pub(crate) account: Arc<dyn AccountExtractor>,
    /// The idempotency rules: key headers, scope, fingerprinted and replayed headers, body
    /// limits (every method guarded, a key required).
    pub(crate) protocol: Protocol,
    pub(crate) timeout: Duration,
    pub(crate) in_flight_retry_after: Duration,
    pub(crate) void_on_drop: bool,
    pub(crate) heartbeat: bool,
}

impl<L: ?Sized> Clone for BillableLayer<L> {
    fn clone(&self) -> Self {
        Self {
            ledger: self.ledger.clone(),
            action: self.action.clone(),
            pricing: self.pricing.clone(),
            currency: self.currency.clone(),
            account: self.account.clone(),
            protocol: self.protocol.clone(),
            timeout: self.timeout,
            in_flight_retry_after: self.in_flight_retry_after,
            void_on_drop: self.void_on_drop,
            heartbeat: self.heartbeat,
        }
    }
}

impl<L: ?Sized> std::fmt::Debug for BillableLayer<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillableLayer")
            .field("action", &self.action)
            .field("currency", &self.currency)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<L: Ledger + ?Sized> BillableLayer<L> {
    /// A layer for `action` at a fixed `price` (minor units, currency `USD` unless set),
    /// charging the account named by `X-Account-Id`, keys scoped by [`DefaultScope`](dreamnet_idempotency::DefaultScope).
    pub fn new(ledger: L, action: impl Into<Arc<str>>, price: Amount) -> Self
    where
        L: Sized,
    {
        Self::with_shared_ledger(Arc::new(ledger), action, price)
    }

    /// Like [`new`](Self::new), sharing a ledger the caller also uses (recovery, the API);
    /// `Arc<dyn Ledger>` works too, for a backend chosen at run time.
    pub fn with_shared_ledger(ledger: Arc<L>, action: impl Into<Arc<str>>, price: Amount) -> Self {
        Self {
            ledger,
            action: action.into(),
            pricing: Arc::new(FixedPrice(price)),
            currency: Arc::from("USD"),
            account: Arc::new(AccountHeader::default()),
            protocol: Protocol::new()
                .any_method()
                .required(true)
                .max_request_body(DEFAULT_BODY_LIMIT)
                .max_response_body(DEFAULT_RESPONSE_LIMIT),
            timeout: DEFAULT_RESERVATION_TIMEOUT,
            in_flight_retry_after: Duration::from_secs(1),
            void_on_drop: false,
            heartbeat: true,
        }
    }
}

impl<L: ?Sized> BillableLayer<L> {
    /// A fixed price in minor units.
    #[must_use]
    pub fn price(mut self, price: Amount) -> Self {
        self.pricing = Arc::new(FixedPrice(price));
        self
    }

    /// A pricing policy (a closure over the request head and body, or a [`Pricing`]).
    #[must_use]
    pub fn pricing(mut self, pricing: impl Pricing) -> Self {
        self.pricing = Arc::new(pricing);
        self
    }

    /// The currency charged (e.g. `USD`, `EUR`).
    #[must_use]
    pub fn currency(mut self, currency: impl Into<Arc<str>>) -> Self {
        self.currency = currency.into();
        self
    }

    /// Which account pays (default: [`AccountHeader`], `X-Account-Id`).
    #[must_use]
    pub fn account(mut self, account: impl AccountExtractor) -> Self {
        self.account = Arc::new(account);
        self
    }

    /// The idempotency scope of keys (default: [`DefaultScope`](dreamnet_idempotency::DefaultScope)).
    #[must_use]
    pub fn scope(mut self, scope: impl ScopeExtractor) -> Self {
        self.protocol = self.protocol.scope(scope);
        self
    }

    /// How long a reservation stays pending before recovery voids it (default 5 min).
    /// While the handler runs, its heartbeat extends the reservation by this every third of
    /// it ([`reservation_heartbeat`](Self::reservation_heartbeat)), so the timeout bounds
    /// how long a crashed replica's reservation blocks its key, not how long a handler may
    /// run.
    #[must_use]
    pub fn reservation_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The headers an idempotency key is read from, first present wins (default:
    /// `Idempotency-Key`, `X-Idempotency-Key`).
    #[must_use]
    pub fn key_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.key_headers(headers);
        self
    }

    /// Request headers included in the fingerprint (default: none).
    #[must_use]
    pub fn fingerprint_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.fingerprint_headers(headers);
        self
    }

    /// Response headers stored and replayed (default: [`DEFAULT_REPLAYED_HEADERS`](dreamnet_idempotency::protocol::DEFAULT_REPLAYED_HEADERS)).
    #[must_use]
    pub fn replayed_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.protocol = self.protocol.replayed_headers(headers);
        self
    }

    /// The largest request body buffered (default 1 MiB); larger is 413.
    #[must_use]
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.protocol = self.protocol.max_request_body(limit);
        self
    }

    /// The largest response body stored (default 1 MiB). A 2xx response that is larger or
    /// streaming cannot be kept, so it is passed through, the reservation voided and nothing
    /// charged.
    #[must_use]
    pub fn response_limit(mut self, limit: usize) -> Self {
        self.protocol = self.protocol.max_response_body(limit);
        self
    }

    /// The `Retry-After` of a 409 for a key whose first request is still running
    /// (default 1 s).
    #[must_use]
    pub fn in_flight_retry_after(mut self, retry_after: Duration) -> Self {
        self.in_flight_retry_after = retry_after;
        self
    }

    /// Voids the reservation at once (in a spawned task) when the request future is dropped
    /// before its outcome is settled: a client that disconnected mid-handler can retry
    /// without waiting for the reservation timeout. Off by default: then the reservation
    /// stays pending until recovery voids it after the timeout. Either way nothing is
    /// charged, since no response was kept.
    #[must_use]
    pub fn void_on_drop(mut self, enabled: bool) -> Self {
        self.void_on_drop = enabled;
        self
    }

    /// Whether a running handler's reservation is kept alive (default on): every third of
    /// the reservation timeout it is extended by the timeout ([`Ledger::extend`]), from
    /// inside the request's future, so the heartbeat stops when the request ends, is
    /// dropped, or its process dies, and recovery then voids it after the timeout as
    /// before. Off: a response that arrives after the timeout is not kept and not charged
    /// (500 `reservation-expired`).
    #[must_use]
    pub fn reservation_heartbeat(mut self, enabled: bool) -> Self {
        self.heartbeat = enabled;
        self
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<L> {
        &self.ledger
    }
}

impl<S, L: ?Sized> Layer<S> for BillableLayer<L> {
    type Service = Billable<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Billable::new(inner, Arc::new(self.clone()))
    }
}
