//! [`StoreFuture`]: what every store method returns.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// The answer of a store call: either already there (a store that never waits, like
/// [`MemoryStore`](crate::MemoryStore)) or a boxed future (a store behind a network).
///
/// One concrete type rather than `impl Future` keeps the store traits usable as
/// `Arc<dyn CounterStore>` / `Arc<dyn StateStore>`, and the ready case lets the plane decide
/// without allocating a future or polling (governor's memory state store is lock-free
/// for the same reason: the hot path must not pay for the network case).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dreamnet_control_core::store::StoreFuture;
///
/// let ready = StoreFuture::ready(7);
/// assert_eq!(ready.into_ready().ok(), Some(7));
/// let later = StoreFuture::new(async { 7 });
/// assert_eq!(later.await, 7);
/// # }
/// ```
pub struct StoreFuture<'a, T> {
    kind: Kind<'a, T>,
}

enum Kind<'a, T> {
    Ready(Option<T>),
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

// Nothing is ever pinned structurally: the value is moved out, the boxed future is pinned
// by its box.
impl<T> Unpin for StoreFuture<'_, T> {}

impl<'a, T> StoreFuture<'a, T> {
    /// An answer that is already known (no allocation).
    #[inline]
    pub fn ready(value: T) -> Self {
        Self {
            kind: Kind::Ready(Some(value)),
        }
    }

    /// An answer that needs waiting for (boxed).
    pub fn new(future: impl Future<Output = T> + Send + 'a) -> Self {
        Self {
            kind: Kind::Boxed(Box::pin(future)),
        }
    }

    /// The answer when it is already there, else the future itself.
    ///
    /// # Errors
    /// `Err(self)` when the answer must be awaited.
    #[inline]
    pub fn into_ready(self) -> Result<T, Self> {
        match self.kind {
            Kind::Ready(Some(value)) => Ok(value),
            kind => Err(Self { kind }),
        }
    }
}

impl<T> Future for StoreFuture<'_, T> {
    type Output = T;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.kind {
            Kind::Ready(value) => {
                Poll::Ready(value.take().expect("StoreFuture polled after completion"))
            }
            Kind::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Ready(_) => "ready",
            Kind::Boxed(_) => "pending",
        };
        f.debug_tuple("StoreFuture").field(&kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_and_boxed_answers() {
        assert_eq!(StoreFuture::ready(1).await, 1);
        assert_eq!(StoreFuture::new(async { 2 }).await, 2);
        let pending = StoreFuture::new(async { 3 });
        let pending = pending
            .into_ready()
            .expect_err("a boxed future is not ready");
        assert_eq!(pending.await, 3);
    }
}
