//! [`Billable`]: the service that runs one request as a two-phase billable action.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{
    body::{buffer_limited, exact_len_within, BufferError},
    Problem, ResponseBody,
};
use dreamnet_idempotency::{
    key_from_headers, problems as idem, trace_id_of, Fingerprint, StoredResponse,
};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use crate::{
    layer::{ActualCost, BillableLayer, ReservedAction},
    ledger::{Action, ActionId, ActionState, Ledger, LedgerError, Reservation, ReserveRequest},
    problems,
};

/// The billable service: see [`BillableLayer`].
///
/// The request body is buffered (up to the body limit) and handed to the inner service
/// rebuilt as the same body type (`From<Bytes>`: `Full<Bytes>`, axum's `Body`, ...), with a
/// [`ReservedAction`] in its extensions.
pub struct Billable<S, L: ?Sized> {
    inner: S,
    config: Arc<BillableLayer<L>>,
}

impl<S: Clone, L: ?Sized> Clone for Billable<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: std::fmt::Debug, L: ?Sized> std::fmt::Debug for Billable<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billable")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, L: ?Sized> Billable<S, L> {
    pub(crate) fn new(inner: S, config: Arc<BillableLayer<L>>) -> Self {
        Self { inner, config }
    }
}

/// The response future of [`Billable`] (boxed: ledger round trips dominate anyway).
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static>>;

impl<S, L, ReqB, ResB> Service<Request<ReqB>> for Billable<S, L>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    L: Ledger + ?Sized,
    ReqB: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqB::Error: std::fmt::Display + Send,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: std::fmt::Display + Send,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The instance polled ready goes into the future; `self` keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(handle(config, inner, request))
    }
}

fn reject<B>(problem: Problem) -> Response<ResponseBody<B>> {
    ResponseBody::from_full_response(problem.into_response())
}

#[allow(clippy::too_many_lines)] // one linear state machine reads best in one place
async fn handle<S, L, ReqB, ResB>(
    config: Arc<BillableLayer<L>>,
    inner: S,
    request: Request<ReqB>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    L: Ledger + ?Sized,
    ReqB: Body<Data = Bytes> + From<Bytes>,
    ReqB::Error: std::fmt::Display,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Display + Send,
{
    let (parts, body) = request.into_parts();
    let trace_id = trace_id_of(&parts.extensions).map(str::to_owned);
    let trace = trace_id.as_deref();

    let key = match key_from_headers(&parts.headers, &config.key_headers) {
        Ok(Some(key)) => key,
        Ok(None) => return Ok(reject(idem::missing_key(trace))),
        Err(err) => return Ok(reject(idem::invalid_key(&err, trace))),
    };
    let body = match buffer_limited(&parts.headers, body, config.body_limit).await {
        Ok(body) => body,
        Err(BufferError::TooLarge { limit }) => {
            return Ok(reject(idem::body_too_large(limit, trace)))
        }
        Err(BufferError::Body(err)) => {
            tracing::debug!(trace_id = trace, error = %err, "billable: request body unreadable");
            return Ok(reject(idem::unreadable_body(trace)));
        }
    };
    let Some(account) = config.account.account(&parts, &body) else {
        return Ok(reject(problems::missing_account(trace)));
    };
    let amount = match config.pricing.price(&parts, &body) {
        Ok(amount) if amount >= 0 => amount,
        Ok(amount) => return Ok(reject(problems::invalid_price(amount, trace))),
        Err(problem) => return Ok(reject(problem.maybe_trace_id(trace))),
    };
    let fingerprint = Fingerprint::compute(&parts, &config.fingerprint_headers, &body);
    let reserve = ReserveRequest {
        scope: config.scope.scope(&parts),
        idempotency_key: key.as_str().to_owned(),
        fingerprint: fingerprint.as_str().to_owned(),
        action: config.action.to_string(),
        account,
        amount,
        currency: config.currency.to_string(),
        trace_id: trace_id.clone(),
        timeout: config.timeout,
    };
    let ledger = &*config.ledger;
    let action = match ledger.reserve(reserve).await {
        Ok(Reservation::Reserved(action)) => action,
        Ok(Reservation::Existing(existing)) => {
            return Ok(existing_action(&config, &existing, &fingerprint, trace).await)
        }
        Ok(Reservation::InsufficientFunds {
            account,
            available,
            required,
            currency,
        }) => {
            tracing::info!(
                trace_id = trace,
                account,
                available,
                required,
                "billable: insufficient funds, handler not run"
            );
            return Ok(reject(problems::insufficient_funds(
                &account, available, required, &currency, trace,
            )));
        }
        Err(LedgerError::CurrencyMismatch {
            account,
            account_currency,
            requested,
        }) => {
            return Ok(reject(problems::currency_mismatch(
                &account,
                &account_currency,
                &requested,
                trace,
            )))
        }
        Err(err) => {
            tracing::warn!(trace_id = trace, error = %err, "billable: reserve failed; request refused");
            return Ok(reject(idem::store_unavailable(trace)));
        }
    };
    tracing::info!(
        trace_id = trace,
        action_id = %action.id,
        key = key.as_str(),
        account = action.account,
        amount = action.amount,
        "billable: reserved"
    );

    // Dropped before the outcome is settled (client gone, task cancelled): with
    // `void_on_drop` the hold is released at once, else recovery voids it after the timeout.
    let guard = VoidOnDrop {
        armed: config
            .void_on_drop
            .then(|| (config.ledger.clone(), action.id.clone())),
    };
    let result = run_reserved(&config, inner, parts, body, &action, trace).await;
    guard.disarm();
    result
}

/// Runs the handler for a reserved action and settles it: confirm + charge, or void.
#[allow(clippy::too_many_lines)]
async fn run_reserved<S, L, ReqB, ResB>(
    config: &BillableLayer<L>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: Bytes,
    action: &Action,
    trace: Option<&str>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    L: Ledger + ?Sized,
    ReqB: Body<Data = Bytes> + From<Bytes>,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Display,
{
    let ledger = &*config.ledger;
    let action = action.clone();
    parts.extensions.insert(ReservedAction {
        id: action.id.clone(),
        account: action.account.clone(),
        amount: action.amount,
        currency: action.currency.clone(),
    });
    let outcome = AssertUnwindSafe(inner.call(Request::from_parts(parts, ReqB::from(body))))
        .catch_unwind()
        .await;
    let response = match outcome {
        Err(_panic) => {
            void(ledger, &action, trace, "handler panicked").await;
            return Ok(reject(problems::handler_failed(
                "the handler panicked",
                trace,
            )));
        }
        Ok(Err(err)) => {
            void(ledger, &action, trace, "handler error").await;
            return Err(err);
        }
        Ok(Ok(response)) => response,
    };
    if !response.status().is_success() {
        void(ledger, &action, trace, "non-2xx response").await;
        return Ok(ResponseBody::from_inner_response(response));
    }

    let (mut head, body) = response.into_parts();
    let actual = head.extensions.remove::<ActualCost>().map(|cost| cost.0);
    if exact_len_within(&body, config.response_limit).is_none() {
        // A streaming or oversized response cannot be kept for replay, so it is not charged.
        void(
            ledger,
            &action,
            trace,
            "response too large or streaming to keep",
        )
        .await;
        return Ok(Response::from_parts(head, ResponseBody::inner(body)));
    }
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            tracing::warn!(trace_id = trace, error = %err, "billable: response body failed");
            void(ledger, &action, trace, "response body failed").await;
            return Ok(reject(problems::handler_failed(
                "the response body could not be read",
                trace,
            )));
        }
    };
    let stored = StoredResponse::capture(&head, bytes.clone(), &config.replayed_headers);
    match ledger
        .confirm(&action.id, Bytes::from(stored.encode()), actual)
        .await
    {
        Ok(_) => {}
        Err(LedgerError::ExceedsReservation { reserved, actual }) => {
            void(
                ledger,
                &action,
                trace,
                "actual cost exceeds the reservation",
            )
            .await;
            return Ok(reject(problems::cost_exceeds_reservation(
                reserved, actual, trace,
            )));
        }
        Err(LedgerError::InvalidAmount(actual)) => {
            void(ledger, &action, trace, "negative actual cost").await;
            return Ok(reject(problems::cost_exceeds_reservation(
                action.reserved,
                actual,
                trace,
            )));
        }
        Err(LedgerError::Expired(_) | LedgerError::AlreadyVoided(_)) => {
            tracing::warn!(trace_id = trace, action_id = %action.id,
                "billable: reservation expired before the response was kept; not charged");
            return Ok(reject(problems::reservation_expired(trace)));
        }
        Err(err) => {
            // Not kept (or unknown): the best we can do is release the hold now; if the
            // confirm did commit, this void fails and recovery charges it instead.
            tracing::warn!(trace_id = trace, action_id = %action.id, error = %err,
                "billable: confirm failed");
            void(ledger, &action, trace, "confirm failed").await;
            return Ok(reject(idem::store_unavailable(trace)));
        }
    }
    match ledger.charge(&action.id).await {
        Ok(charged) => tracing::info!(
            trace_id = trace,
            action_id = %action.id,
            amount = charged.amount,
            "billable: charged"
        ),
        Err(LedgerError::AlreadyCharged(_)) => {}
        Err(err) => tracing::warn!(
            trace_id = trace,
            action_id = %action.id,
            error = %err,
            "billable: charge not posted; recovery will post it"
        ),
    }
    Ok(Response::from_parts(head, ResponseBody::full(bytes)))
}

/// Same key again: replay, 409 while in flight, or 422 when the payload changed.
async fn existing_action<L: Ledger + ?Sized, B>(
    config: &BillableLayer<L>,
    existing: &Action,
    fingerprint: &Fingerprint,
    trace: Option<&str>,
) -> Response<ResponseBody<B>> {
    if existing.fingerprint != fingerprint.as_str() {
        return reject(idem::fingerprint_mismatch(trace));
    }
    match existing.state {
        ActionState::Pending => reject(idem::in_flight(config.in_flight_retry_after, trace)),
        ActionState::Confirmed | ActionState::Charged => {
            if existing.state == ActionState::Confirmed {
                // The first request stored its response but its charge is not posted (yet, or
                // it crashed): post it now. Exclusive, so racing the first request is harmless.
                match config.ledger.charge(&existing.id).await {
                    Ok(_) | Err(LedgerError::AlreadyCharged(_)) => {}
                    Err(err) => tracing::warn!(trace_id = trace, action_id = %existing.id,
                        error = %err, "billable: charge on replay failed; recovery will post it"),
                }
            }
            let Some(stored) = existing
                .response
                .as_deref()
                .and_then(|bytes| StoredResponse::decode(bytes).ok())
            else {
                return reject(idem::corrupt_record(trace));
            };
            tracing::info!(
                trace_id = trace,
                action_id = %existing.id,
                key = existing.idempotency_key,
                original_trace_id = existing.trace_id.as_deref(),
                "billable: replayed, nothing charged"
            );
            ResponseBody::from_full_response(stored.replay())
        }
        // A ledger never returns a failed action as a key's live one.
        ActionState::Failed => reject(idem::in_flight(config.in_flight_retry_after, trace)),
    }
}

/// Voids the reservation in a spawned task if dropped while armed.
struct VoidOnDrop<L: Ledger + ?Sized> {
    armed: Option<(Arc<L>, ActionId)>,
}

impl<L: Ledger + ?Sized> VoidOnDrop<L> {
    fn disarm(mut self) {
        self.armed = None;
    }
}

impl<L: Ledger + ?Sized> Drop for VoidOnDrop<L> {
    fn drop(&mut self) {
        let Some((ledger, id)) = self.armed.take() else {
            return;
        };
        // Without a runtime there is nothing to spawn on; recovery voids it after the timeout.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                match ledger.void(&id).await {
                    Ok(_) => tracing::info!(action_id = %id,
                        "billable: request dropped; reservation voided, nothing charged"),
                    // Confirmed meanwhile (the drop raced the confirm): recovery charges it.
                    Err(err) => tracing::debug!(action_id = %id, error = %err,
                        "billable: request dropped; nothing to void"),
                }
            });
        }
    }
}

async fn void<L: Ledger + ?Sized>(ledger: &L, action: &Action, trace: Option<&str>, why: &str) {
    match ledger.void(&action.id).await {
        Ok(_) => tracing::info!(
            trace_id = trace,
            action_id = %action.id,
            reason = why,
            "billable: reservation voided, nothing charged"
        ),
        Err(err) => tracing::warn!(
            trace_id = trace,
            action_id = %action.id,
            reason = why,
            error = %err,
            "billable: void failed; recovery voids it after the timeout"
        ),
    }
}
