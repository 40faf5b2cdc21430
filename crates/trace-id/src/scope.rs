//! The current [`TraceContext`] of the task being polled: a thread-local slot that a scope
//! fills while it runs, the way `tokio::task_local!` works, but with one context per request
//! for both the inner service's `call` and its future.
//!
//! With `tokio::task_local!` the layer needed two scopes (`sync_scope` around `call`, then
//! `scope` around the future), each owning a clone of the context. Here a [`Scoped`] future
//! owns the one context and lends it to the thread for `call` and for every poll.

use crate::context::TraceContext;
use pin_project_lite::pin_project;
use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tracing::Span;

thread_local! {
    /// The context of the scope running on this thread, if any. A `Cell`, not a `RefCell`:
    /// it is only ever swapped whole or taken and put back, so no borrow flag is needed.
    static CURRENT: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// Swaps `slot` with the thread's current context; `Err` only while the thread's locals
/// are being destroyed.
fn swap_current(slot: &mut Option<TraceContext>) -> Result<(), std::thread::AccessError> {
    CURRENT.try_with(|current| *slot = current.replace(slot.take()))
}

/// Runs `f` with `slot`'s context as the current one; the previous one (if any) is back
/// afterwards, also when `f` panics, and `slot` gets its context back.
pub(crate) fn in_scope<R>(slot: &mut Option<TraceContext>, f: impl FnOnce() -> R) -> R {
    /// Swaps the contexts back on the way out.
    struct Restore<'a>(&'a mut Option<TraceContext>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            // Fails only while the thread's locals are being destroyed: then there is
            // nothing to restore into.
            let _ = swap_current(self.0);
        }
    }
    if swap_current(slot).is_err() {
        // Thread teardown: run without a current context rather than panic.
        return f();
    }
    let _restore = Restore(slot);
    f()
}

/// `f` applied to the current context, if there is one.
pub(crate) fn with_current<R>(f: impl FnOnce(&TraceContext) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| {
            /// Puts the context back, also when `f` panics.
            struct PutBack<'a>(&'a Cell<Option<TraceContext>>, Option<TraceContext>);
            impl Drop for PutBack<'_> {
                fn drop(&mut self) {
                    self.0.set(self.1.take());
                }
            }
            // Taken out for `f` and put back; `f` (a clone, a child) never reads the slot.
            let taken = PutBack(current, current.take());
            taken.1.as_ref().map(f)
        })
        .ok()
        .flatten()
}

pin_project! {
    /// A future polled (and dropped) inside its `tracing` span and with its context as the
    /// current one.
    ///
    /// It enters the span itself rather than through `tracing::Instrumented`, so a
    /// completed future is dropped in the poll that completed it, inside the span already
    /// entered, instead of entering the span once more in `Instrumented`'s drop.
    pub(crate) struct Scoped<F> {
        slot: Option<TraceContext>,
        span: Span,
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut future = this.future;
            if future.is_some() {
                // A cancelled request's future drops inside its span and scope, as it ran.
                let _entered = this.span.enter();
                in_scope(this.slot, || future.set(None));
            }
        }
    }
}

impl<F> Scoped<F> {
    /// `future` scoped with `context`, in no span.
    pub(crate) fn new(context: TraceContext, future: F) -> Self {
        Self {
            slot: Some(context),
            span: Span::none(),
            future: Some(future),
        }
    }

    /// The future `make` returns, made inside `span` with `context` current, and scoped with
    /// both (the context moves in: no clone).
    pub(crate) fn make(context: TraceContext, span: Span, make: impl FnOnce() -> F) -> Self {
        let mut slot = Some(context);
        let future = {
            let _entered = span.enter();
            in_scope(&mut slot, make)
        };
        Self {
            slot,
            span,
            future: Some(future),
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut future = this.future;
        let _entered = this.span.enter();
        in_scope(this.slot, || {
            let Some(inner) = future.as_mut().as_pin_mut() else {
                panic!("a Scoped future polled after it completed");
            };
            let output = inner.poll(cx);
            if output.is_ready() {
                // Dropped inside the span and the scope, as tokio's task-locals do.
                future.set(None);
            }
            output
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        let outer = TraceContext::new("outer");
        let inner = TraceContext::new("inner");
        assert!(TraceContext::current().is_none());
        outer.clone().sync_scope(|| {
            assert_eq!(TraceContext::current().unwrap().trace_id(), "outer");
            inner.clone().sync_scope(|| {
                assert_eq!(TraceContext::current().unwrap().trace_id(), "inner");
            });
            assert_eq!(TraceContext::current().unwrap().trace_id(), "outer");
        });
        assert!(TraceContext::current().is_none());
    }

    #[test]
    fn a_panic_inside_a_scope_restores_the_previous_context() {
        let result = std::panic::catch_unwind(|| {
            TraceContext::new("doomed").sync_scope(|| panic!("boom"));
        });
        assert!(result.is_err());
        assert!(TraceContext::current().is_none());
    }

    #[test]
    fn a_panic_while_reading_the_current_context_puts_it_back() {
        TraceContext::new("kept").sync_scope(|| {
            let read = std::panic::catch_unwind(|| with_current(|_| panic!("boom")));
            assert!(read.is_err());
            assert_eq!(TraceContext::current().unwrap().trace_id(), "kept");
        });
        assert!(TraceContext::current().is_none());
    }

    #[test]
    fn the_slot_gets_its_context_back() {
        let mut slot = Some(TraceContext::new("kept"));
        in_scope(&mut slot, || {
            assert_eq!(with_current(|c| c.trace_id().to_owned()).unwrap(), "kept");
        });
        assert_eq!(slot.unwrap().trace_id(), "kept");
    }

    /// Drops with the context current.
    struct SeesContextOnDrop(std::sync::Arc<parking_lot::Mutex<Option<String>>>);
    impl Drop for SeesContextOnDrop {
        fn drop(&mut self) {
            *self.0.lock() = with_current(|c| c.trace_id().to_owned());
        }
    }
    impl Future for SeesContextOnDrop {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    #[test]
    fn a_cancelled_future_drops_inside_its_scope() {
        let seen = std::sync::Arc::default();
        let scoped = Scoped::new(
            TraceContext::new("cancelled"),
            SeesContextOnDrop(std::sync::Arc::clone(&seen)),
        );
        drop(scoped);
        assert_eq!(seen.lock().as_deref(), Some("cancelled"));
        assert!(TraceContext::current().is_none());
    }
}
