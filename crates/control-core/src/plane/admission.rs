//! The admission check: kill switch, cluster, breaker, rate limit, in that order, decided
//! synchronously when the counter store answers at once (memory) and in one future
//! otherwise (a shared store: one round trip, and a reload when its epoch moved). The
//! checks before the limiter never touch the counter store.

use std::{
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use super::{
    decision::{BreakerTicket, Decision, Permit, RateLimitStatus, RejectReason, Rejection},
    fleet::{Check, FleetBreaker},
    runtime::{ClusterRuntime, Inner, Limits},
    ControlPlane,
};
use crate::{
    store::{BreakerOp, ClientQuota, Count, StoreError, Taken},
    window::Verdict,
};

/// A decision, or the future that makes it.
pub(crate) enum Admission {
    Ready(Decision),
    Pending(Pin<Box<dyn Future<Output = Decision> + Send>>),
}

/// What the breaker says about one admission.
enum Gate {
    /// The call may go on to the rate limit, with this ticket.
    Pass(BreakerTicket),
    /// The breaker refuses (with the time left, when known).
    Refuse(Option<u64>),
    /// Only the fleet-wide breaker's store can say.
    Ask(Arc<FleetBreaker>),
}

impl Inner {
    /// Counts and logs a rejection. Outside the rate limiter (whose caller sets the figures
    /// itself), the rejection carries the cluster's policy when its limit is enforced, but
    /// no counts: a 503 that is not about the quota reports `RateLimit-Policy` only, since
    /// `RateLimit: r=59` beside a refusal reads as "59 more may go now" (README, "Honest
    /// 503s"). That also keeps these rejections off the store: no round trip.
    fn reject(
        &self,
        rt: &ClusterRuntime,
        reason: RejectReason,
        detail: String,
        retry_after_millis: Option<u64>,
        trace_id: Option<&str>,
    ) -> Rejection {
        rt.counters.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.totals.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(cluster = %rt.id, reason = reason.as_str(), trace_id, "request rejected by control plane");
        let limits = rt.limits();
        let rate_limit = (reason != RejectReason::RateLimited && limits.enforced())
            .then(|| RateLimitStatus::new(limits, None));
        Rejection {
            reason: Some(reason),
            detail,
            retry_after_millis,
            rate_limit,
            trace_id: trace_id.map(str::to_owned),
        }
    }

    /// The global kill switch or the cluster's disable, if either blocks at `now`.
    pub(crate) fn switched_off(
        &self,
        rt: &ClusterRuntime,
        now: u64,
        trace_id: Option<&str>,
    ) -> Option<Rejection> {
        let until = |blocked: u64| (blocked != u64::MAX).then(|| blocked - now);
        let kill = self.kill_until.load(Ordering::Acquire);
        if now < kill {
            let detail = self.switch_detail("the global kill switch is engaged", None);
            return Some(self.reject(rt, RejectReason::KillSwitch, detail, until(kill), trace_id));
        }
        let disabled = rt.disabled_until.load(Ordering::Acquire);
        if now < disabled {
            let what = format!("cluster {} is disabled", rt.id);
            let detail = self.switch_detail(&what, Some(&rt.id));
            let reason = RejectReason::ClusterDisabled;
            return Some(self.reject(rt, reason, detail, until(disabled), trace_id));
        }
        None
    }

    /// Returns the unit an admitted take spent, for a request refused after it (a kill
    /// switch or disable noticed through the epoch), so the refusal consumes nothing like
    /// every other rejection. One more round trip, only on this rare path; until it lands,
    /// a concurrent request may see that unit as used. If it fails the unit stays spent
    /// (counted in `store_errors`).
    async fn give_back(
        &self,
        rt: &ClusterRuntime,
        limits: &Limits,
        client: Option<&ClientQuota>,
        taken: &Taken,
    ) {
        if !taken.admitted {
            return;
        }
        if let Err(error) = self
            .counter_store
            .give_back(&rt.id, &limits.windows, client, taken)
            .await
        {
            self.store_failed(&error);
        }
    }

    /// `client` names the caller; it is asked only when the cluster has per-client windows.
    pub(crate) fn admit(
        self: &Arc<Self>,
        rt: &Arc<ClusterRuntime>,
        trace_id: Option<&str>,
        client: impl FnOnce() -> Arc<str>,
    ) -> Admission {
        let now = self.clock.now_millis();
        if let Some(rejection) = self.switched_off(rt, now, trace_id) {
            return Admission::Ready(Decision::Deny(rejection));
        }
        match self.breaker_gate(rt, now) {
            Gate::Pass(ticket) => self.count(rt, ticket, now, trace_id, client),
            Gate::Refuse(retry_after) => {
                Admission::Ready(Decision::Deny(self.circuit_open(rt, retry_after, trace_id)))
            }
            Gate::Ask(fleet) => {
                // Only the fleet's store can say (half-open permits, an open breaker's wait
                // over): one round trip before the rate limit's.
                let limits = rt.limits();
                let client = (!limits.per_client.is_empty()).then(client);
                let (plane, rt) = (Arc::clone(self), Arc::clone(rt));
                let trace_id = trace_id.map(str::to_owned);
                Admission::Pending(Box::pin(async move {
                    let trace_id = trace_id.as_deref();
                    let ticket = match plane.ask_fleet(&rt, &fleet).await {
                        Ok(ticket) => ticket,
                        Err(retry_after) => {
                            return Decision::Deny(plane.circuit_open(&rt, retry_after, trace_id))
                        }
                    };
                    let client = || client.unwrap_or_else(|| Arc::from(crate::ANONYMOUS_CLIENT));
                    let now = plane.clock.now_millis();
                    match plane.count(&rt, ticket, now, trace_id, client) {
                        Admission::Ready(decision) => decision,
                        Admission::Pending(decision) => decision.await,
                    }
                }))
            }
        }
    }

    /// The breaker's part of an admission: a manual trip (from the state document) refuses
    /// on every replica; then the fleet-wide breaker's copy decides when it can; else this
    /// replica's own breaker.
    fn breaker_gate(&self, rt: &ClusterRuntime, now: u64) -> Gate {
        let mut local = rt.breaker.lock();
        if local.is_forced_open() {
            return Gate::Refuse(None);
        }
        if let Some(fleet) = &rt.fleet {
            match fleet.check(now) {
                Check::Admit(ticket) => return Gate::Pass(BreakerTicket::Fleet(ticket)),
                Check::Refuse(retry_after) => return Gate::Refuse(retry_after),
                Check::Ask => return Gate::Ask(Arc::clone(fleet)),
                Check::Local => {}
            }
        }
        match local.try_acquire(now) {
            Ok(ticket) => Gate::Pass(BreakerTicket::Local(ticket)),
            Err(retry_after) => Gate::Refuse(retry_after),
        }
    }

    /// Asks the fleet's store for a permit; if the store fails, this replica's own breaker
    /// decides (and does for a while, see `fleet`).
    async fn ask_fleet(
        &self,
        rt: &ClusterRuntime,
        fleet: &FleetBreaker,
    ) -> Result<BreakerTicket, Option<u64>> {
        match fleet.run(&rt.id, BreakerOp::Acquire).await {
            Ok(reply) => {
                self.learned(rt, fleet, &reply);
                reply
                    .ticket
                    .map(BreakerTicket::Fleet)
                    .ok_or(reply.retry_after_ms)
            }
            Err(error) => {
                self.store_failed(&error);
                let now = self.clock.now_millis();
                fleet.failed(now);
                let acquired = rt.breaker.lock().try_acquire(now);
                acquired.map(BreakerTicket::Local)
            }
        }
    }

    fn circuit_open(
        &self,
        rt: &ClusterRuntime,
        retry_after: Option<u64>,
        trace_id: Option<&str>,
    ) -> Rejection {
        let detail = format!("the circuit breaker of cluster {} is open", rt.id);
        self.reject(rt, RejectReason::CircuitOpen, detail, retry_after, trace_id)
    }

    /// The rate limit's part of an admission, for a call the breaker let through.
    fn count(
        self: &Arc<Self>,
        rt: &Arc<ClusterRuntime>,
        ticket: BreakerTicket,
        now: u64,
        trace_id: Option<&str>,
        client: impl FnOnce() -> Arc<str>,
    ) -> Admission {
        let permit = Permit {
            plane: Arc::clone(self),
            cluster: Arc::clone(rt),
            ticket: Some(ticket),
            started: now,
            rate_limit: None,
        };
        let limits = rt.limits();
        if !limits.enforced() {
            return Admission::Ready(Decision::Admit(self.admitted(permit)));
        }
        let client = (!limits.per_client.is_empty()).then(|| ClientQuota {
            client: client(),
            windows: Arc::clone(&limits.per_client),
        });
        let take =
            self.counter_store
                .count(&rt.id, &limits.windows, client.as_ref(), now, Count::Take);
        match take.into_ready() {
            Ok(taken) => Admission::Ready(self.rate_limited(permit, limits, taken, trace_id)),
            Err(pending) => {
                let plane = Arc::clone(self);
                let trace_id = trace_id.map(str::to_owned);
                Admission::Pending(Box::pin(async move {
                    let taken = pending.await;
                    plane
                        .after_shared_take(permit, limits, client, taken, trace_id)
                        .await
                }))
            }
        }
    }

    /// A shared store reports its epoch with the counts: when it moved, someone changed the
    /// shared state, so reload before answering. A kill switch or disable found this way
    /// stops this very request (and gives its unit back).
    async fn after_shared_take(
        self: Arc<Self>,
        permit: Permit,
        limits: Arc<Limits>,
        client: Option<ClientQuota>,
        taken: Result<Taken, StoreError>,
        trace_id: Option<String>,
    ) -> Decision {
        if let Ok(
            spent @ Taken {
                epoch: Some(epoch), ..
            },
        ) = &taken
        {
            let seen = permit.cluster.epoch_seen.swap(*epoch, Ordering::AcqRel);
            if seen != *epoch {
                let _ = self.refresh(true).await;
                let now = self.clock.now_millis();
                let cluster = Arc::clone(&permit.cluster);
                if let Some(rejection) = self.switched_off(&cluster, now, trace_id.as_deref()) {
                    drop(permit); // a refused request keeps no half-open probe permit
                    self.give_back(&cluster, &limits, client.as_ref(), spent)
                        .await;
                    return Decision::Deny(rejection);
                }
            }
        }
        self.rate_limited(permit, limits, taken, trace_id.as_deref())
    }

    fn admitted(&self, permit: Permit) -> Permit {
        permit
            .cluster
            .counters
            .admitted
            .fetch_add(1, Ordering::Relaxed);
        self.totals.admitted.fetch_add(1, Ordering::Relaxed);
        permit
    }

    /// Reads the counter store's answer for an admitted-so-far call.
    fn rate_limited(
        &self,
        mut permit: Permit,
        limits: Arc<Limits>,
        taken: Result<Taken, StoreError>,
        trace_id: Option<&str>,
    ) -> Decision {
        let taken = match taken {
            Ok(taken) => taken,
            Err(error) => {
                self.store_failed(&error);
                if self.fail_open {
                    self.fail_open_admissions.fetch_add(1, Ordering::Relaxed);
                    permit.rate_limit = Some(RateLimitStatus::new(limits, None));
                    return Decision::Admit(self.admitted(permit));
                }
                let cluster = Arc::clone(&permit.cluster);
                drop(permit);
                let detail = "the rate limiter is unavailable".to_owned();
                let reason = RejectReason::StoreUnavailable;
                return Decision::Deny(self.reject(&cluster, reason, detail, Some(1000), trace_id));
            }
        };
        let verdict = Verdict::read(&taken, &limits.reported);
        let admitted = verdict.is_none_or(|v| v.admitted);
        if admitted {
            permit.rate_limit = Some(RateLimitStatus::new(limits, verdict));
            return Decision::Admit(self.admitted(permit));
        }
        let verdict = verdict.expect("a rejection has a verdict");
        let window = &limits.reported[verdict.reported];
        let whose = if verdict.reported < limits.windows.len() {
            "its"
        } else {
            "this client's"
        };
        let detail = format!(
            "cluster {} is over {whose} rate limit ({} requests per {} s)",
            permit.cluster.id, window.limit, window.seconds
        );
        let cluster = Arc::clone(&permit.cluster);
        drop(permit); // a rejected request keeps no half-open probe permit
        let retry_after = Some(verdict.retry_after_millis);
        let mut rejection = self.reject(
            &cluster,
            RejectReason::RateLimited,
            detail,
            retry_after,
            trace_id,
        );
        rejection.rate_limit = Some(RateLimitStatus::new(limits, Some(verdict)));
        Decision::Deny(rejection)
    }
}

impl ControlPlane {
    pub(crate) fn admit(
        &self,
        rt: &Arc<ClusterRuntime>,
        trace_id: Option<&str>,
        client: impl FnOnce() -> Arc<str>,
    ) -> Admission {
        self.inner.admit(rt, trace_id, client)
    }

    /// Runs the admission checks for one call: kill switch, cluster, breaker, rate limit,
    /// in that order. `trace_id` is logged with a rejection and kept in it. Per-client
    /// windows count this call as [`ANONYMOUS_CLIENT`](crate::ANONYMOUS_CLIENT)'s; see
    /// [`decide_for`](Self::decide_for).
    ///
    /// On the memory store this future is ready at once (no allocation for the future).
    pub async fn decide(&self, cluster: &str, trace_id: Option<&str>) -> Decision {
        self.decide_for(cluster, crate::ANONYMOUS_CLIENT, trace_id)
            .await
    }

    /// [`decide`](Self::decide) for a call of `client` (its per-client windows, when the
    /// cluster has them): for code outside the layer that knows who is calling.
    pub async fn decide_for(
        &self,
        cluster: &str,
        client: &str,
        trace_id: Option<&str>,
    ) -> Decision {
        let Some(rt) = self.runtime(cluster) else {
            return Decision::Deny(Rejection::unknown_cluster(cluster, trace_id));
        };
        match self.admit(rt, trace_id, || Arc::from(client)) {
            Admission::Ready(decision) => decision,
            Admission::Pending(decision) => decision.await,
        }
    }

    /// [`decide`](ControlPlane::decide) as a `Result`, for code outside the layer (a job, a
    /// queue consumer, a benchmark).
    ///
    /// # Errors
    /// The [`Rejection`] when the call must not run
    /// ([`Rejection::into_response`] renders it as problem+json).
    pub async fn acquire(
        &self,
        cluster: &str,
        trace_id: Option<&str>,
    ) -> Result<Permit, Rejection> {
        match self.decide(cluster, trace_id).await {
            Decision::Admit(permit) => Ok(permit),
            Decision::Deny(rejection) => Err(rejection),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[tokio::test]
    async fn acquire_runs_the_same_checks_outside_the_layer() {
        let (plane, _clock) = plane(2);
        let mut first = plane.acquire("alpha", None).await.unwrap();
        let mut headers = http::HeaderMap::new();
        first.decorate(&mut headers);
        assert_eq!(headers["ratelimit"], "\"minute\";r=1;t=60");
        first.finish(Outcome::Status(StatusCode::OK));
        drop(plane.acquire("alpha", None).await.unwrap()); // unfinished: records nothing
        let refused = plane.acquire("alpha", Some("t-1")).await.unwrap_err();
        assert_eq!(refused.reason(), Some(crate::RejectReason::RateLimited));
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let unknown = plane.acquire("gamma", None).await.unwrap_err();
        assert_eq!(
            (unknown.reason(), unknown.status()),
            (None, StatusCode::NOT_FOUND)
        );
        assert_eq!(plane.breaker("alpha").unwrap().calls, 1);
    }
}
