//! Group commit for rate-limit takes: the concurrent takes of one cluster share one run of
//! [`TAKE_SCRIPT`](super::TAKE_SCRIPT) (or, with per-client windows, of
//! [`TAKE_CLIENTS_SCRIPT`](super::TAKE_CLIENTS_SCRIPT): a client's counters sit under the
//! cluster's hash tag, so any clients' takes fit in one run), the way the PostgreSQL ledger
//! batches reserves.
//!
//! Each cluster gets a lane: a queue in front of one writer task. The writer sends whatever
//! has queued as one script run for `n` takes in a row, which admits exactly the first
//! `granted` of them (the room the fullest window has left), and hands each caller the
//! answer it would have had alone in that order ([`Granted::taken`](super::Granted)). So
//! the counts stay exact fleet-wide (the script is atomic, as for one take), and a lone
//! take never waits for company: the writer sends as soon as the queue is empty. Batches
//! form by themselves under load, from the takes that arrive while the previous run is on
//! the wire; with 32 concurrent requests on one cluster that is one round trip and one
//! script run for many requests instead of one each. The price, under load only: a take
//! that arrives while a run is on the wire waits for it before its own goes, up to two
//! round trips instead of one (the ledger's batches make the same trade).
//!
//! A caller that gives up (its request was cancelled, or the store's time limit passed)
//! before its batch is cut takes nothing; one that gives up later may have taken its unit,
//! as an unbatched take whose reply is lost has. A failed run fails every take in it.

use std::{collections::hash_map::Entry, fmt, sync::Arc};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use super::{Granted, RedisStore};
use crate::{
    config::WindowConfig,
    store::{BoxError, ClientQuota, StoreError},
    window::Taken,
};

/// The most takes one script run carries.
const MAX_BATCH: usize = 256;

struct Job {
    windows: Arc<[WindowConfig]>,
    client: Option<ClientQuota>,
    reply: oneshot::Sender<Result<Taken, StoreError>>,
}

/// Every cluster's lane. Dropping the last store clone that holds it closes the queues,
/// and each writer stops once its queue is drained.
#[derive(Default)]
pub(super) struct TakeLanes {
    lanes: Mutex<FxHashMap<Arc<str>, mpsc::UnboundedSender<Job>>>,
}

impl TakeLanes {
    /// Queues one take of `cluster` over `windows` (and the client's, if any); `store`
    /// runs the lane's writer when this is the cluster's first take (or its writer's
    /// runtime has gone).
    pub(super) fn take(
        &self,
        store: &RedisStore,
        cluster: &Arc<str>,
        windows: Arc<[WindowConfig]>,
        client: Option<ClientQuota>,
    ) -> oneshot::Receiver<Result<Taken, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            windows,
            client,
            reply,
        };
        loop {
            let lane = {
                let mut lanes = self.lanes.lock();
                match lanes.entry(Arc::clone(cluster)) {
                    Entry::Occupied(lane) => lane.get().clone(),
                    Entry::Vacant(vacant) => {
                        let (lane, queue) = mpsc::unbounded_channel();
                        // The writer holds a store without lanes: no cycle keeps it alive.
                        let writer = store.without_batching();
                        tokio::spawn(write(writer, Arc::clone(cluster), queue));
                        vacant.insert(lane).clone()
                    }
                }
            };
            match lane.send(job) {
                Ok(()) => return answer,
                // The writer is gone (its runtime shut down): a new one on this runtime.
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    let mut lanes = self.lanes.lock();
                    if lanes.get(cluster).is_some_and(|l| l.same_channel(&lane)) {
                        lanes.remove(cluster);
                    }
                }
            }
        }
    }
}

/// The lane's writer: sends what has queued as one run, answers each caller, again.
async fn write(store: RedisStore, cluster: Arc<str>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::new();
    while let Some(first) = queue.recv().await {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that is gone takes nothing.
        jobs.retain(|job| !job.reply.is_closed());
        while !jobs.is_empty() {
            // One run per window layout (a settings change between takes), in order.
            let same = jobs
                .iter()
                .position(|job| !same_layout(job, &jobs[0]))
                .unwrap_or(jobs.len());
            let batch: Vec<Job> = jobs.drain(..same).collect();
            match run(&store, &cluster, &batch).await {
                Ok(answers) => {
                    for (job, answer) in batch.into_iter().zip(answers.into_each()) {
                        // A caller that gave up meanwhile: nothing to tell.
                        let _ = job.reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for job in batch {
                        let _ = job.reply.send(Err(shared(&error)));
                    }
                }
            }
        }
    }
}

/// What one script run answered for a batch.
enum Answers {
    /// Takes without per-client windows: the first `granted` admitted.
    InARow(Granted),
    /// Takes with per-client windows: one answer each.
    Each(Vec<Taken>),
}

impl Answers {
    /// The answers of the batch's takes, in order.
    fn into_each(self) -> Box<dyn Iterator<Item = Taken>> {
        match self {
            Self::InARow(granted) => Box::new((0..).map(move |i| granted.taken(i))),
            Self::Each(taken) => Box::new(taken.into_iter()),
        }
    }
}

/// One script run for `batch` (takes of one layout).
async fn run(store: &RedisStore, cluster: &str, batch: &[Job]) -> Result<Answers, StoreError> {
    let windows = &batch[0].windows;
    match &batch[0].client {
        None => {
            let wanted = batch.len() as u64;
            let granted = store.run_take_many(cluster, windows, None, wanted, None);
            Ok(Answers::InARow(granted.await?))
        }
        Some(quota) => {
            let clients: Vec<Arc<str>> = batch
                .iter()
                .filter_map(|job| job.client.as_ref().map(|c| Arc::clone(&c.client)))
                .collect();
            let taken = store.run_take_clients(cluster, windows, &quota.windows, &clients, None);
            Ok(Answers::Each(taken.await?))
        }
    }
}

/// Whether two takes can share a run: the same cluster windows, and the same per-client
/// windows (or none for both).
fn same_layout(a: &Job, b: &Job) -> bool {
    same_windows(&a.windows, &b.windows)
        && match (&a.client, &b.client) {
            (None, None) => true,
            (Some(a), Some(b)) => same_windows(&a.windows, &b.windows),
            _ => false,
        }
}

fn same_windows(a: &Arc<[WindowConfig]>, b: &Arc<[WindowConfig]>) -> bool {
    Arc::ptr_eq(a, b) || a[..] == b[..]
}

/// The error of a failed run, for one of its callers (of the same kind, with the cause).
fn shared(error: &Arc<StoreError>) -> StoreError {
    let cause = Shared(Arc::clone(error));
    match **error {
        StoreError::Corrupt { .. } => StoreError::corrupt(cause),
        _ => StoreError::unavailable(cause),
    }
}

/// The cause of one failed run, shared by every caller in it.
#[derive(Debug)]
struct Shared(Arc<StoreError>);

impl Shared {
    fn cause(&self) -> &BoxError {
        match &*self.0 {
            StoreError::Unavailable { source } | StoreError::Corrupt { source } => source,
        }
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.cause(), f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().source()
    }
}
