//! Waiting for state without sleeping a fixed time.

use std::{future::Future, time::Duration};

/// How often [`eventually`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `check` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `deadline` passes first, naming `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::{sync::atomic::{AtomicU32, Ordering}, time::Duration};
///
/// let calls = AtomicU32::new(0);
/// let n = dreamnet_test_support::eventually("a third call", Duration::from_secs(5), || async {
///     let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
///     (n >= 3).then_some(n)
/// })
/// .await;
/// assert_eq!(n, 3);
/// # }
/// ```
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
