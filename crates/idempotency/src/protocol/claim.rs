//! Step 2: claim the key in a store, or answer the duplicate.

use std::time::Duration;

use bytes::Bytes;
use dreamnet_common::ProblemFormat;
use http::Response;
use http_body_util::Full;

use super::{problems, Prepared};
use crate::{
    store::{Claim, ClaimRequest, FencingToken, IdempotencyStore, StoreError},
    Fingerprint, IdempotencyKey, StoredResponse, LOG_TARGET,
};

/// The outcome of [`claim`].
#[derive(Debug)]
pub enum Claimed {
    /// The key is this attempt's: run the handler, then settle under the token.
    Proceed(FencingToken),
    /// The answer to send instead: a replay, or a problem (409, 422, 500, 503).
    Answered(Response<Full<Bytes>>),
}

/// A live record under the key, found by a claim that did not proceed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Duplicate {
    /// The first attempt is still running: 409 with `Retry-After`.
    InFlight {
        /// How long until the client should retry.
        retry_after: Duration,
    },
    /// The key was used with another method, path, query or body: 422.
    Mismatch,
    /// The key completed: replay its response (with `Idempotent-Replayed: true`).
    Replay(StoredResponse),
    /// The record under the key cannot be read: 500, the request is not processed.
    Unreadable,
}

impl Duplicate {
    /// The response for the duplicate; `trace_id` goes into a problem's `traceId`.
    pub fn into_response(self, trace_id: Option<&str>) -> Response<Full<Bytes>> {
        self.render(trace_id, ProblemFormat::ProblemJson)
    }

    /// The response for the duplicate, a problem rendered in the request's `format` (for a
    /// gRPC request: 409 -> `ABORTED`, 422 -> `FAILED_PRECONDITION`, 500 -> `INTERNAL`). A
    /// replay is the stored response as it was, whatever the format.
    pub fn render(self, trace_id: Option<&str>, format: ProblemFormat) -> Response<Full<Bytes>> {
        match self {
            Self::InFlight { retry_after } => problems::in_flight(retry_after, trace_id),
            Self::Mismatch => problems::fingerprint_mismatch(trace_id),
            Self::Replay(stored) => return stored.replay(),
            Self::Unreadable => problems::corrupt_record(trace_id),
        }
        .render(format)
    }
}

/// Claims `prepared`'s key in `store` for `lease`, writing the DeployKeeper line
/// (`Status: NEW` when it proceeds, `Duplicate detected` on a replay or 409, a warning on a
/// 422), and answers when the attempt may not proceed. A store that fails answers 503 (fail
/// closed: the handler does not run).
pub async fn claim<S>(store: &S, prepared: &Prepared, lease: Duration) -> Claimed
where
    S: IdempotencyStore + ?Sized,
{
    let trace = prepared.trace_id();
    let format = ProblemFormat::of(&prepared.parts.headers);
    let key = &prepared.key;
    let fingerprint = &prepared.fingerprint;
    let claim = store
        .claim(ClaimRequest {
            scope: &prepared.scope,
            key: key.as_str(),
            fingerprint,
            trace_id: trace,
            lease,
        })
        .await;
    // A replay and a 409 log the same "Duplicate detected" line, told apart by `outcome`.
    let logged = |original: Option<String>, outcome, answer: Duplicate| {
        log_duplicate(key, trace, fingerprint, original.as_deref(), outcome);
        answer
    };
    let duplicate = match claim {
        Ok(Claim::Proceed(token)) => {
            log_new(key, trace, fingerprint);
            return Claimed::Proceed(token);
        }
        Ok(Claim::Completed {
            response,
            original_trace_id,
        }) => logged(original_trace_id, "replayed", Duplicate::Replay(response)),
        Ok(Claim::InFlight {
            retry_after,
            original_trace_id,
        }) => logged(
            original_trace_id,
            "in_flight",
            Duplicate::InFlight { retry_after },
        ),
        Ok(Claim::Mismatch { original_trace_id }) => {
            log_mismatch(key, trace, fingerprint, original_trace_id.as_deref());
            Duplicate::Mismatch
        }
        Err(StoreError::Corrupt(err)) => {
            tracing::error!(target: LOG_TARGET, idempotency_key = key.as_str(), trace_id = trace.unwrap_or("-"), error = %err, "idempotency record unreadable");
            Duplicate::Unreadable
        }
        Err(err) => {
            tracing::warn!(target: LOG_TARGET, idempotency_key = key.as_str(), trace_id = trace.unwrap_or("-"), error = %err, "idempotency store unavailable; refusing the request");
            return Claimed::Answered(problems::store_unavailable(trace).render(format));
        }
    };
    Claimed::Answered(duplicate.render(trace, format))
}

fn log_new(key: &IdempotencyKey, trace: Option<&str>, fingerprint: &Fingerprint) {
    tracing::info!(
        target: LOG_TARGET,
        idempotency_key = key.as_str(),
        trace_id = trace.unwrap_or("-"),
        digest = fingerprint.as_str(),
        status = "NEW",
        "[DeployKeeper] Idempotency-Key: {}, Trace-ID: {}, Digest: {}, Status: NEW",
        key,
        trace.unwrap_or("-"),
        fingerprint,
    );
}

fn log_duplicate(
    key: &IdempotencyKey,
    trace: Option<&str>,
    fingerprint: &Fingerprint,
    original: Option<&str>,
    outcome: &'static str,
) {
    tracing::info!(
        target: LOG_TARGET,
        idempotency_key = key.as_str(),
        trace_id = trace.unwrap_or("-"),
        digest = fingerprint.as_str(),
        original_trace_id = original.unwrap_or("-"),
        outcome,
        "[Idempotency] Duplicate detected - Key: {}, Trace: {}, Digest: {}, Original: {}",
        key,
        trace.unwrap_or("-"),
        fingerprint,
        original.unwrap_or("-"),
    );
}

fn log_mismatch(
    key: &IdempotencyKey,
    trace: Option<&str>,
    fingerprint: &Fingerprint,
    original: Option<&str>,
) {
    tracing::warn!(
        target: LOG_TARGET,
        idempotency_key = key.as_str(),
        trace_id = trace.unwrap_or("-"),
        digest = fingerprint.as_str(),
        original_trace_id = original.unwrap_or("-"),
        outcome = "mismatch",
        "[Idempotency] Key reused with a different request - Key: {}, Trace: {}, Digest: {}, Original: {}",
        key,
        trace.unwrap_or("-"),
        fingerprint,
        original.unwrap_or("-"),
    );
}
