//! A heartbeat beside a piece of work: while `work` runs, `beat` is called every `period`
//! (the idempotency layer extends its lease, the billable layer its reservation), so a
//! handler slower than its lease is neither taken over nor run a second time.
//!
//! The beats are polled inside the caller's own future, never spawned: they stop when the
//! work ends, when the future is dropped (client gone) and when the process dies, so a
//! crashed replica's lease still runs out and recovery works as before.
//!
//! ```
//! use std::{sync::atomic::{AtomicU32, Ordering}, time::Duration};
//! use dreamnet_common::heartbeat::{while_running, Beat};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let beats = AtomicU32::new(0);
//! let beat = || async { beats.fetch_add(1, Ordering::SeqCst); Beat::Kept };
//! let work = tokio::time::sleep(Duration::from_millis(350));
//! while_running(Duration::from_millis(100), beat, work).await;
//! assert_eq!(beats.load(Ordering::SeqCst), 3, "at 100, 200 and 300 ms");
//! # }
//! ```

use std::{future::Future, time::Duration};

/// What one beat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Extended: keep beating.
    Kept,
    /// The store did not answer: keep beating, the next beat may land (log it).
    Failed,
    /// Nothing left to keep alive (completed, released, lapsed): stop beating, let the work
    /// finish.
    Gone,
}

/// How often to beat for a lease of `lease`: a third of it, so two beats may be lost (a
/// slow store, a busy runtime) before it lapses.
#[must_use]
pub fn period_for(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// Runs `work`, calling `beat` every `period` (the first one a period after the start) until
/// `work` finishes or a beat answers [`Beat::Gone`].
pub async fn while_running<W, B, F>(period: Duration, mut beat: B, work: W) -> W::Output
where
    W: Future,
    B: FnMut() -> F,
    F: Future<Output = Beat>,
{
    // Polled only once `work` is pending (the select is biased), so work that is ready at
    // once never arms a timer; a plain sleep, not an interval, so arming one allocates
    // nothing. Each period starts when the last beat ended.
    let period = period.max(Duration::from_millis(1));
    let beats = async {
        loop {
            tokio::time::sleep(period).await;
            if beat().await == Beat::Gone {
                return std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        biased;
        output = work => output,
        () = beats => unreachable!("the heartbeat never ends by itself"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Runs `work` with a beat every 100 ms that answers `answer`: the work's output and
    /// how many beats there were.
    async fn beats_while<W: Future>(answer: Beat, work: W) -> (W::Output, u32) {
        let beats = AtomicU32::new(0);
        let beat = || async {
            beats.fetch_add(1, Ordering::SeqCst);
            answer
        };
        let output = while_running(Duration::from_millis(100), beat, work).await;
        (output, beats.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_beat_stops_the_beats_not_the_work() {
        let work = async {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            7
        };
        assert_eq!(beats_while(Beat::Gone, work).await, (7, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_beats_keep_beating_and_quick_work_never_beats() {
        let slow = tokio::time::sleep(Duration::from_millis(450));
        assert_eq!(beats_while(Beat::Failed, slow).await.1, 4);

        let ((), early) = beats_while(Beat::Kept, async {}).await;
        assert_eq!(early, 0, "no beat before the first period");
        assert_eq!(period_for(Duration::from_secs(30)), Duration::from_secs(10));
    }
}
