//! The decision core: [`ControlPlane`] holds the state, decides admissions and applies
//! changes. It speaks no HTTP: a decision is plain data ([`Decision`]: [`Permit`] or
//! [`Rejection`]) that the [`ControlLayer`](crate::ControlLayer) renders.
//!
//! - `builder`: the plane and [`ControlPlaneBuilder`];
//! - `runtime`: per-cluster atomics, the breaker mutexes and the metric counters;
//! - `fleet`: a cluster's fleet-wide breaker (its store and this replica's copy);
//! - `admission`: the checks in order (kill switch, cluster, breaker, rate limit);
//! - `decision`: what a check decides;
//! - `sync`: the refresher task, reloads and applying a loaded state;
//! - `commands`: the compare-and-swap loop and the operator's commands;
//! - `expiry`: recording switches that ended by their TTL;
//! - `read`: the [`views`](crate::views) of the state.

mod admission;
mod builder;
mod commands;
mod decision;
mod expiry;
mod fleet;
mod read;
mod runtime;
mod sync;

pub(crate) use admission::Admission;
pub use builder::{ControlPlane, ControlPlaneBuilder, DEFAULT_REFRESH_INTERVAL};
pub use commands::{ControlError, PerClientUpdate, RateLimitUpdate};
pub use decision::{Decision, Permit, RateLimitStatus, RejectReason, Rejection};
pub(crate) use expiry::ENDED_BY_TTL;
pub(crate) use runtime::{ClusterRuntime, Limits};
