//! Group commit at the application level: calls of one kind (reserves, settles) queue up
//! for one writer task per ledger and kind, which sends whatever has queued as one function
//! call, i.e. one round trip and one commit for the whole batch (TigerBeetle's batching,
//! PostgreSQL's own group commit one level up). With combined batches one writer takes
//! both kinds ([`combined`](super::combined)); the rules below are the same.
//!
//! A lone call never waits for company: the writer flushes as soon as the queue is empty
//! (or the batch is full, or, with a `max_wait`, when that passes). Batches form by
//! themselves under load from the calls that arrive while the previous batch commits.
//! Each caller waits for its own batch's commit, so its reservation is durable before its
//! handler runs.
//!
//! Up to `writers` batches of a kind may be in flight at once (default
//! [`DEFAULT_WRITERS`]), each on its own connection, so one can execute while another's
//! commit is flushed. The next batch is cut only once a writer is free, so it carries
//! everything that queued meanwhile. A batch that would overlap one still in flight is
//! cut only once it is as full as the last batch started (or when nothing is in flight any
//! more): a second writer that took whatever was queued (one or two calls) would halve
//! the batches and pay a commit for each half (32 clients: 14 calls a batch -> 7, backend
//! CPU per mint 224-228 -> 250-261 us in interleaved `ledger_load` runs of that rule).
//! Even so, with 32 clients two writers measured worse than one (batches of 10, 0.37-0.41x
//! against 0.42-0.44x the spread ceiling; `crates/billable-2pc/README.md`), so one stays
//! the default. Concurrent batches lock as any two transactions of the functions do
//! (account rows first, in account order), so they never see each other half-applied. A
//! batch that fails gives every caller in it the error, and nothing of it is applied (one
//! transaction).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::{rows::backend, LedgerError, LedgerResult};

/// The most calls one batch carries by default.
pub const DEFAULT_MAX_BATCH: usize = 256;

/// How many batches of one kind may be in flight at once by default.
pub const DEFAULT_WRITERS: usize = 1;

/// How long the writer waits to fill a batch by default: not at all (flush when the queue
/// is empty).
pub const DEFAULT_MAX_WAIT: Duration = Duration::ZERO;

/// How batches are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BatchConfig {
    pub(super) max_batch: usize,
    pub(super) max_wait: Duration,
    pub(super) writers: usize,
}

struct Job<Req, Out> {
    request: Req,
    reply: oneshot::Sender<LedgerResult<Out>>,
}

/// The queue in front of one writer task. Dropping the last handle stops the task once the
/// queue is drained.
pub(super) struct Batcher<Req, Out> {
    queue: mpsc::Sender<Job<Req, Out>>,
    counts: Arc<Counts>,
}

/// How many batches one writer sent, carrying how many calls (whatever their outcome).
#[derive(Default)]
pub(super) struct Counts {
    batches: AtomicU64,
    calls: AtomicU64,
}

impl Counts {
    /// One more batch, of `calls` calls.
    pub(super) fn add(&self, calls: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(calls as u64, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> BatchCounts {
        BatchCounts {
            batches: self.batches.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
        }
    }
}

/// How many batches (transactions) a writer sent and how many calls they carried, since
/// the ledger was built: `calls / batches` is the mean batch size, the number of requests
/// that share one commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchCounts {
    /// Batches sent, i.e. transactions (each one commit, or one rollback).
    pub batches: u64,
    /// Calls those batches carried.
    pub calls: u64,
}

impl<Req: Send + 'static, Out: Send + 'static> Batcher<Req, Out> {
    /// Spawns the writer: `run` executes one batch as one transaction and answers each
    /// request, in order, or fails as a whole; up to `config.writers` runs at once.
    pub(super) fn spawn<F, Fut>(config: BatchConfig, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = LedgerResult<Vec<LedgerResult<Out>>>> + Send + 'static,
    {
        let max_batch = config.max_batch.max(1);
        let (queue, mut rx) = mpsc::channel::<Job<Req, Out>>(max_batch.saturating_mul(4));
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let run = Arc::new(run);
        let free = Arc::new(Semaphore::new(config.writers.max(1)));
        // Batches in flight, watched by the loop that cuts them.
        let (in_flight, mut running) = watch::channel(0usize);
        let in_flight = Arc::new(in_flight);
        tokio::spawn(async move {
            let mut last_size = 1;
            loop {
                // A free writer first, then the batch: it takes all that queued meanwhile.
                let Ok(writer) = free.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut jobs = vec![first];
                fill(&mut rx, &mut jobs, max_batch, config.max_wait).await;
                if jobs.len() < last_size {
                    overlap_when_full(&mut rx, &mut jobs, last_size, max_batch, &mut running).await;
                    // Whatever else queued meanwhile goes too.
                    fill(&mut rx, &mut jobs, max_batch, Duration::ZERO).await;
                }
                last_size = jobs.len();
                counted.add(jobs.len());
                let run = run.clone();
                let in_flight = in_flight.clone();
                in_flight.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    execute(&*run, jobs).await;
                    in_flight.send_modify(|n| *n -= 1);
                    drop(writer);
                });
            }
        });
        Self { queue, counts }
    }

    /// The batches this writer sent so far.
    pub(super) fn counts(&self) -> BatchCounts {
        self.counts.get()
    }

    /// Queues `request` and waits for its batch's outcome.
    pub(super) async fn call(&self, request: Req) -> LedgerResult<Out> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| backend("the ledger's batch writer stopped"))?;
        answer
            .await
            .map_err(|_| backend("the ledger's batch writer dropped the call"))?
    }
}

/// Runs one batch and answers each of its callers.
async fn execute<Req, Out, F, Fut>(run: &F, jobs: Vec<Job<Req, Out>>)
where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = LedgerResult<Vec<LedgerResult<Out>>>>,
{
    let (requests, replies): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
    let count = requests.len();
    match run(requests).await {
        Ok(outcomes) if outcomes.len() == count => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller gone (cancelled, timed out) leaves its outcome to recovery, as a
                // reply lost after any commit would.
                let _ = reply.send(outcome);
            }
        }
        Ok(outcomes) => {
            let err = Arc::new(backend(format!(
                "a batch of {count} answered {} outcomes",
                outcomes.len()
            )));
            answer_all(replies, &err);
        }
        Err(err) => answer_all(replies, &Arc::new(err)),
    }
}

/// Takes what is queued into `jobs`, up to `max_batch`; with a `max_wait`, waits that long
/// (from now) for more.
async fn fill<J>(
    rx: &mut mpsc::Receiver<J>,
    jobs: &mut Vec<J>,
    max_batch: usize,
    max_wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut yielded = false;
    while jobs.len() < max_batch {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                // Let callers woken by the last commit, already runnable, queue first: a
                // batch a scheduler tick later is much fuller, and costs no waiting.
                yielded = true;
                tokio::task::yield_now().await;
            }
            Err(mpsc::error::TryRecvError::Empty) if max_wait.is_zero() => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => return,
                }
            }
        }
    }
}

/// While another batch is in flight, waits until `jobs` holds `full` calls (the size of the
/// last batch started, at most `max_batch`) or nothing is in flight any more, whichever
/// comes first. With one writer nothing is ever in flight here, so this returns at once.
async fn overlap_when_full<J>(
    rx: &mut mpsc::Receiver<J>,
    jobs: &mut Vec<J>,
    full: usize,
    max_batch: usize,
    running: &mut watch::Receiver<usize>,
) {
    let full = full.min(max_batch);
    while jobs.len() < full && *running.borrow_and_update() > 0 {
        tokio::select! {
            biased;
            job = rx.recv() => match job {
                Some(job) => jobs.push(job),
                None => return,
            },
            changed = running.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Every caller of a failed batch gets the failure (a timeout stays a timeout).
fn answer_all<Out>(replies: Vec<oneshot::Sender<LedgerResult<Out>>>, err: &Arc<LedgerError>) {
    for reply in replies {
        let each = match **err {
            LedgerError::Timeout(after) => LedgerError::Timeout(after),
            _ => LedgerError::backend(err.clone()),
        };
        let _ = reply.send(Err(each));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The sizes of the batches a batcher started, in order.
    type Started = Arc<Mutex<Vec<usize>>>;

    /// A batcher with two writers whose batches each wait for one permit of `gate`, and the
    /// sizes of the batches it started.
    fn gated() -> (Batcher<u32, u32>, Arc<Semaphore>, Started) {
        let gate = Arc::new(Semaphore::new(0));
        let started = Arc::new(Mutex::new(Vec::new()));
        let config = BatchConfig {
            max_batch: 256,
            max_wait: Duration::ZERO,
            writers: 2,
        };
        let (g, s) = (gate.clone(), started.clone());
        let batcher = Batcher::spawn(config, move |batch: Vec<u32>| {
            let (gate, started) = (g.clone(), s.clone());
            async move {
                started.lock().unwrap().push(batch.len());
                gate.acquire().await.expect("gate").forget();
                Ok(batch.into_iter().map(Ok).collect())
            }
        });
        (batcher, gate, started)
    }

    /// Lets every runnable task run (a current-thread runtime: nothing runs meanwhile).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn calls(
        batcher: &Arc<Batcher<u32, u32>>,
        ids: std::ops::Range<u32>,
    ) -> Vec<tokio::task::JoinHandle<LedgerResult<u32>>> {
        ids.map(|id| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(id).await })
        })
        .collect()
    }

    async fn answers(calls: Vec<tokio::task::JoinHandle<LedgerResult<u32>>>) -> Vec<u32> {
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.expect("call task").expect("answered"));
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_second_writer_overlaps_only_a_full_batch() {
        let (batcher, gate, started) = gated();
        let batcher = Arc::new(batcher);
        let first = calls(&batcher, 0..3);
        settle().await;
        assert_eq!(*started.lock().unwrap(), vec![3], "one batch of the three");

        // A lone call while that batch is in flight waits for company...
        let lone = calls(&batcher, 3..4);
        settle().await;
        assert_eq!(
            *started.lock().unwrap(),
            vec![3],
            "a batch of one overlapped"
        );
        // ...and goes as soon as its batch is as full as the one in flight.
        let more = calls(&batcher, 4..6);
        settle().await;
        assert_eq!(*started.lock().unwrap(), vec![3, 3]);

        gate.add_permits(2);
        assert_eq!(answers(first).await, vec![0, 1, 2]);
        assert_eq!(answers(lone).await, vec![3]);
        assert_eq!(answers(more).await, vec![4, 5]);
        assert_eq!(batcher.counts().batches, 2);
        assert_eq!(batcher.counts().calls, 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_call_goes_when_nothing_is_in_flight() {
        let (batcher, gate, started) = gated();
        let batcher = Arc::new(batcher);
        let first = calls(&batcher, 0..3);
        settle().await;
        let lone = calls(&batcher, 3..4);
        settle().await;
        assert_eq!(*started.lock().unwrap(), vec![3]);

        // The batch in flight commits: the lone call no longer waits for company.
        gate.add_permits(1);
        assert_eq!(answers(first).await, vec![0, 1, 2]);
        settle().await;
        assert_eq!(*started.lock().unwrap(), vec![3, 1]);
        gate.add_permits(1);
        assert_eq!(answers(lone).await, vec![3]);
    }
}
