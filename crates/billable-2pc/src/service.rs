//! [`Billable`]: the service that runs one request as a two-phase billable action.
//!
//! It composes the idempotency protocol ([`dreamnet_idempotency::protocol`]) around the
//! ledger, which is its own idempotent claim: prepare (key, body, scope, fingerprint) ->
//! reserve (a new pending action, or replay / 409 / 422 / 402) -> run -> settle (keep the
//! response with the action and post the charge in one step, or void the hold).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use dreamnet_common::{grpc::effective_status, Problem, ProblemFormat, ResponseBody};
use dreamnet_idempotency::{
    protocol::{self, problems as idem, Admission, Captured, Duplicate, Prepared, Ran},
    store::StoredResponse,
    RequestBody,
};
use dreamnet_trace_id::TraceContext;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::{
    heartbeat,
    layer::{ActualCost, BillableLayer, ReservedAction},
    ledger::{Action, ActionId, ActionState, Ledger, LedgerError, Reservation, ReserveRequest},
    problems,
};

/// The billable service: see [`BillableLayer`].
///
/// The request body (any `ReqB: Body<Data = Bytes>`: hyper's `Incoming`, `tonic::body::Body`,
/// axum's `Body`, ...) is buffered (up to the body limit) and handed to the inner service as
/// a [`RequestBody<ReqB>`] holding the buffered bytes, with a [`ReservedAction`] in its
/// extensions; an axum `Router` or tonic `Routes` inside takes that body as is.
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
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    L: Ledger + ?Sized,
    ReqB: Body<Data = Bytes> + Send + 'static,
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

/// A rejection in the request's format (problem+json, or gRPC trailers-only).
fn reject<B>(problem: Problem, format: ProblemFormat) -> Response<ResponseBody<B>> {
    ResponseBody::from_full_response(problem.render(format))
}

/// Prepare, reserve, run, settle.
async fn handle<S, L, ReqB, ResB>(
    config: Arc<BillableLayer<L>>,
    inner: S,
    request: Request<ReqB>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    L: Ledger + ?Sized,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: std::fmt::Display,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Display + Send,
{
    let format = ProblemFormat::of(request.headers());
    let key = match config.protocol.admit(&request) {
        Admission::Guard(key) => key,
        Admission::Reject(problem) => return Ok(reject(problem, format)),
        // The rules require a key on every method, so this is the missing key's 400 too.
        Admission::Skip => {
            let trace = TraceContext::from_extensions(request.extensions());
            let problem = idem::missing_key(trace.map(TraceContext::trace_id));
            return Ok(reject(problem, format));
        }
    };
    let mut prepared = match config.protocol.prepare(key, request).await {
        Ok(prepared) => prepared,
        Err(problem) => return Ok(reject(problem, format)),
    };
    let action = match reserve(&config, &mut prepared).await {
        Ok(action) => action,
        Err(answer) => return Ok(ResponseBody::from_full_response(answer)),
    };
    // Dropped before the outcome is settled (client gone, task cancelled): with
    // `void_on_drop` the hold is released at once, else recovery voids it after the timeout.
    let guard = VoidOnDrop {
        armed: config
            .void_on_drop
            .then(|| (config.ledger.clone(), action.id.clone())),
    };
    let result = run_reserved(&config, inner, prepared, &action).await;
    guard.disarm();
    result
}

/// Phase 1, the ledger's own idempotent claim: a new pending action holding the price, or
/// the answer to send instead (replay, 409, 422, 402, 400 without an account, 503).
async fn reserve<L: Ledger + ?Sized>(
    config: &BillableLayer<L>,
    prepared: &mut Prepared,
) -> Result<Action, Response<Full<Bytes>>> {
    let trace = prepared.trace_id.clone();
    let trace = trace.as_deref();
    let format = ProblemFormat::of(&prepared.parts.headers);
    let refuse = |problem: Problem| problem.render(format);
    let Some(account) = config.account.account(&prepared.parts, &prepared.body) else {
        return Err(refuse(problems::missing_account(trace)));
    };
    let amount = match config.pricing.price(&prepared.parts, &prepared.body) {
        Ok(amount) if amount >= 0 => amount,
        Ok(amount) => return Err(refuse(problems::invalid_price(amount, trace))),
        Err(problem) => return Err(refuse(problem.maybe_trace_id(trace))),
    };
    let request = ReserveRequest {
        // Not needed after the reservation: moved, not copied.
        scope: std::mem::take(&mut prepared.scope),
        idempotency_key: prepared.key.as_str().to_owned(),
        fingerprint: prepared.fingerprint.as_str().to_owned(),
        action: config.action.to_string(),
        account,
        amount,
        currency: config.currency.to_string(),
        trace_id: prepared.trace_id.clone(),
        timeout: config.timeout,
    };
    match config.ledger.reserve(request).await {
        Ok(Reservation::Reserved(action)) => {
            tracing::info!(trace_id = trace, action_id = %action.id, key = action.idempotency_key,
                account = action.account.as_str(), amount = action.amount, "billable: reserved");
            Ok(action)
        }
        Ok(Reservation::Existing(existing)) => {
            let same = existing.fingerprint == prepared.fingerprint.as_str();
            Err(duplicate(config, &existing, same, trace)
                .await
                .render(trace, format))
        }
        Ok(Reservation::InsufficientFunds {
            account,
            available,
            required,
            currency,
        }) => {
            tracing::info!(
                trace_id = trace,
                account = account.as_str(),
                available,
                required,
                "billable: insufficient funds, handler not run"
            );
            let problem =
                problems::insufficient_funds(&account, available, required, &currency, trace);
            Err(refuse(problem))
        }
        Err(LedgerError::CurrencyMismatch {
            account,
            account_currency,
            requested,
        }) => Err(refuse(problems::currency_mismatch(
            &account,
            &account_currency,
            &requested,
            trace,
        ))),
        Err(LedgerError::Full { limit }) => {
            tracing::warn!(
                trace_id = trace,
                limit,
                "billable: ledger full; request refused"
            );
            Err(refuse(problems::ledger_full(limit, trace)))
        }
        Err(err) => {
            tracing::warn!(trace_id = trace, error = %err, "billable: reserve failed; request refused");
            Err(refuse(
                idem::store_unavailable(trace).store_fault("billing"),
            ))
        }
    }
}

/// The key already has a live action: 422 for another payload, 409 while it runs, else the
/// replay of its stored response (posting its charge first if that was never done).
async fn duplicate<L: Ledger + ?Sized>(
    config: &BillableLayer<L>,
    existing: &Action,
    same_fingerprint: bool,
    trace: Option<&str>,
) -> Duplicate {
    if !same_fingerprint {
        return Duplicate::Mismatch;
    }
    match existing.state {
        ActionState::Confirmed | ActionState::Charged => {}
        // A ledger never returns a failed action as a key's live one.
        ActionState::Pending | ActionState::Failed => {
            return Duplicate::InFlight {
                retry_after: config.in_flight_retry_after,
            }
        }
    }
    if existing.state == ActionState::Confirmed {
        // The first request stored its response but its charge is not posted (yet, or it
        // crashed): post it now. Exclusive, so racing the first request is harmless.
        match config.ledger.charge(&existing.id).await {
            Ok(_) | Err(LedgerError::AlreadyCharged(_)) => {}
            Err(err) => tracing::warn!(trace_id = trace, action_id = %existing.id,
                error = %err, "billable: charge on replay failed; recovery will post it"),
        }
    }
    let stored = existing.response.as_deref().map(StoredResponse::decode);
    let Some(Ok(stored)) = stored else {
        return Duplicate::Unreadable;
    };
    tracing::info!(trace_id = trace, action_id = %existing.id, key = existing.idempotency_key,
        original_trace_id = existing.trace_id.as_deref(), "billable: replayed, nothing charged");
    Duplicate::Replay(stored)
}

/// Runs the handler for a reserved action and settles it (response kept and charged), or
/// voids it.
async fn run_reserved<S, L, ReqB, ResB>(
    config: &BillableLayer<L>,
    inner: S,
    prepared: Prepared,
    action: &Action,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    L: Ledger + ?Sized,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Display,
{
    let ledger = &*config.ledger;
    let Prepared {
        mut parts,
        body,
        trace_id,
        ..
    } = prepared;
    let trace = trace_id.as_deref();
    let format = ProblemFormat::of(&parts.headers);
    parts.extensions.insert(ReservedAction {
        id: action.id.clone(),
        account: action.account.clone(),
        amount: action.amount,
        currency: action.currency.clone(),
    });
    let (timeout, beat) = (config.timeout, config.heartbeat);
    let handled = protocol::run(inner, Request::from_parts(parts, RequestBody::full(body)));
    let mut response = match heartbeat::beating(ledger, action, timeout, beat, handled).await {
        Ran::Response(response) => response,
        Ran::Error(err) => {
            void(ledger, action, trace, "handler error").await;
            return Err(err);
        }
        Ran::Panic(_) => {
            void(ledger, action, trace, "handler panicked").await;
            let problem = problems::handler_failed("the handler panicked", trace);
            return Ok(reject(problem, format));
        }
    };
    // A gRPC error is HTTP 200 with its grpc-status in the headers: it is not a success.
    if !effective_status(response.status(), response.headers()).is_success() {
        void(ledger, action, trace, "non-2xx response").await;
        return Ok(ResponseBody::from_inner_response(response));
    }
    let actual = response
        .extensions_mut()
        .remove::<ActualCost>()
        .map(|cost| cost.0);
    let captured = config.protocol.capture(response);
    match heartbeat::beating(ledger, action, timeout, beat, captured).await {
        Captured::Kept { head, body, stored } => {
            match settle(ledger, action, &stored, actual, trace).await {
                Ok(()) => Ok(Response::from_parts(head, ResponseBody::full(body))),
                Err(problem) => Ok(reject(problem, format)),
            }
        }
        Captured::Unstorable(response) => {
            // A streaming or oversized response cannot be kept for replay, so it is not charged.
            void(
                ledger,
                action,
                trace,
                "response too large or streaming to keep",
            )
            .await;
            Ok(ResponseBody::from_inner_response(response))
        }
        Captured::Failed(err) => {
            tracing::warn!(trace_id = trace, error = %err, "billable: response body failed");
            void(ledger, action, trace, "response body failed").await;
            let what = "the response body could not be read";
            Ok(reject(problems::handler_failed(what, trace), format))
        }
    }
}

/// Phase 2: keeps the response with the action and posts the charge, one atomic step
/// (`pending -> charged`). A response that cannot be kept voids the hold and is answered
/// with the problem instead.
async fn settle<L: Ledger + ?Sized>(
    ledger: &L,
    action: &Action,
    stored: &StoredResponse,
    actual: Option<crate::ledger::Amount>,
    trace: Option<&str>,
) -> Result<(), Problem> {
    match ledger
        .settle(&action.id, Bytes::from(stored.encode()), actual)
        .await
    {
        Ok(charged) => {
            tracing::info!(trace_id = trace, action_id = %action.id,
                amount = charged.amount, "billable: charged");
            Ok(())
        }
        Err(LedgerError::ExceedsReservation { reserved, actual }) => {
            void(ledger, action, trace, "actual cost exceeds the reservation").await;
            Err(problems::cost_exceeds_reservation(reserved, actual, trace))
        }
        Err(LedgerError::InvalidAmount(actual)) => {
            void(ledger, action, trace, "negative actual cost").await;
            Err(problems::cost_exceeds_reservation(
                action.reserved,
                actual,
                trace,
            ))
        }
        Err(LedgerError::Expired(_) | LedgerError::AlreadyVoided(_)) => {
            tracing::warn!(trace_id = trace, action_id = %action.id,
                "billable: reservation expired before the response was kept; not charged");
            Err(problems::reservation_expired(trace))
        }
        Err(err) => {
            // Not kept, or kept with its reply lost (connection dropped after the commit
            // was sent, deadline passed): release the hold if it is still held. A void
            // that succeeds proves nothing was charged (a retry runs); one that fails
            // leaves the outcome unknown here, and the key decides it on retry: a replay
            // if the settle committed, a run once recovery voids the hold if not.
            tracing::warn!(trace_id = trace, action_id = %action.id, error = %err,
                "billable: settle failed");
            if void(ledger, action, trace, "settle failed").await {
                Err(idem::store_unavailable(trace).store_fault("billing"))
            } else {
                tracing::warn!(trace_id = trace, action_id = %action.id,
                    "billable: settle outcome unknown; the client is told to retry with its key");
                Err(problems::outcome_unknown(trace))
            }
        }
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

/// Voids the reservation; whether it did (so nothing is charged).
async fn void<L: Ledger + ?Sized>(
    ledger: &L,
    action: &Action,
    trace: Option<&str>,
    why: &str,
) -> bool {
    match ledger.void(&action.id).await {
        Ok(_) => {
            tracing::info!(
                trace_id = trace,
                action_id = %action.id,
                reason = why,
                "billable: reservation voided, nothing charged"
            );
            true
        }
        Err(err) => {
            tracing::warn!(
                trace_id = trace,
                action_id = %action.id,
                reason = why,
                error = %err,
                "billable: void failed; recovery voids it after the timeout"
            );
            false
        }
    }
}
