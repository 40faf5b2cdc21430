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

/// Polls `check` until it holds, for at most `deadline`; whether it came to hold. For
/// tests that assert with a message of their own.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
///
/// assert!(dreamnet_test_support::holds_within(Duration::from_secs(1), || async { true }).await);
/// assert!(!dreamnet_test_support::holds_within(Duration::from_millis(30), || async { false }).await);
/// # }
/// ```
pub async fn holds_within<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
