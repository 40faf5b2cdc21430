//! [`forward_control_store!`](crate::forward_control_store): a wrapper store that states
//! only what it adds.

use super::Count;

/// One of the [`CounterStore`](super::CounterStore) and [`StateStore`](super::StateStore)
/// methods, as handed to the wrapping expression of
/// [`forward_control_store!`](crate::forward_control_store) (a metrics label, a fault to
/// inject for one method only). A count says whether it takes or peeks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// [`CounterStore::count`](super::CounterStore::count), in that mode.
    Count(Count),
    /// [`CounterStore::give_back`](super::CounterStore::give_back).
    GiveBack,
    /// [`StateStore::load`](super::StateStore::load).
    Load,
    /// [`StateStore::version`](super::StateStore::version).
    Version,
    /// [`StateStore::compare_and_swap`](super::StateStore::compare_and_swap).
    CompareAndSwap,
    /// [`StateStore::audit`](super::StateStore::audit).
    Audit,
    /// [`StateStore::notify`](super::StateStore::notify).
    Notify,
}

impl StoreOp {
    /// The method's name, a count with its mode: `count_take`, `count_peek`, `give_back`,
    /// `load`, `version`, `compare_and_swap`, `audit` or `notify`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Count(Count::Take) => "count_take",
            Self::Count(Count::Peek) => "count_peek",
            Self::GiveBack => "give_back",
            Self::Load => "load",
            Self::Version => "version",
            Self::CompareAndSwap => "compare_and_swap",
            Self::Audit => "audit",
            Self::Notify => "notify",
        }
    }
}

/// Implements [`CounterStore`](crate::CounterStore) and [`StateStore`](crate::StateStore)
/// for a wrapper by forwarding every method to the store it wraps, so a wrapper writes what
/// it adds once instead of repeating the seven signatures (and cannot forget `notify` or
/// `is_shared`, whose defaults would silently stop replicas hearing of a change).
///
/// `|this| inner` names the wrapped store from `this` (the wrapper, `&Self`). The optional
/// `|op, call| wrap` builds each method's [`StoreFuture`](crate::store::StoreFuture)
/// knowing which method it is (`op`, a [`StoreOp`]); `call()` makes the forwarded call. It
/// is a closure, not the inner future, because a store may do its work in the call itself
/// (the memory store answers at once): a wrapper that times a call starts its clock before
/// `call()`, and one that injects a fault need not call at all. Without `wrap` the inner
/// future is returned as is. `is_shared` is forwarded unwrapped. Generic parameters go in
/// brackets after `impl`.
///
/// ```
/// use dreamnet_control_core::{
///     forward_control_store, store::StoreOp, CounterStore, MemoryStore, StateStore,
/// };
///
/// /// Logs every store call's method.
/// #[derive(Debug)]
/// struct Logged<S>(S);
///
/// forward_control_store!(impl[S: CounterStore + StateStore] for Logged<S> => |this| this.0, |op, call| {
///     println!("store call: {}", op.as_str());
///     call()
/// });
///
/// let _store = Logged(MemoryStore::new());
/// ```
#[macro_export]
macro_rules! forward_control_store {
    (impl $([$($generics:tt)*])? for $ty:ty => |$this:ident| $inner:expr) => {
        $crate::forward_control_store!(
            impl $([$($generics)*])? for $ty => |$this| $inner, |_op, call| call()
        );
    };
    (
        impl $([$($generics:tt)*])? for $ty:ty => |$this:ident| $inner:expr,
        |$op:ident, $call:ident| $wrap:expr $(,)?
    ) => {
        impl $(<$($generics)*>)? $crate::CounterStore for $ty {
            fn count(
                &self,
                cluster: &::std::sync::Arc<str>,
                windows: &::std::sync::Arc<[$crate::WindowConfig]>,
                client: ::std::option::Option<&$crate::ClientQuota>,
                now_millis: u64,
                mode: $crate::store::Count,
            ) -> $crate::store::StoreFuture<
                'static,
                ::std::result::Result<$crate::store::Taken, $crate::StoreError>,
            > {
                let $this = self;
                let $op = $crate::store::StoreOp::Count(mode);
                let $call = move || $inner.count(cluster, windows, client, now_millis, mode);
                $wrap
            }

            fn give_back<'a>(
                &'a self,
                cluster: &'a str,
                windows: &'a [$crate::WindowConfig],
                client: ::std::option::Option<&'a $crate::ClientQuota>,
                taken: &'a $crate::store::Taken,
            ) -> $crate::store::StoreFuture<'a, ::std::result::Result<(), $crate::StoreError>> {
                let $this = self;
                let $op = $crate::store::StoreOp::GiveBack;
                let $call = move || $inner.give_back(cluster, windows, client, taken);
                $wrap
            }
        }

        impl $(<$($generics)*>)? $crate::StateStore for $ty {
            fn load(
                &self,
            ) -> $crate::store::StoreFuture<
                '_,
                ::std::result::Result<
                    ::std::option::Option<$crate::store::Versioned>,
                    $crate::StoreError,
                >,
            > {
                let $this = self;
                let $op = $crate::store::StoreOp::Load;
                let $call = move || $inner.load();
                $wrap
            }

            fn version(
                &self,
            ) -> $crate::store::StoreFuture<'_, ::std::result::Result<u64, $crate::StoreError>> {
                let $this = self;
                let $op = $crate::store::StoreOp::Version;
                let $call = move || $inner.version();
                $wrap
            }

            fn compare_and_swap<'a>(
                &'a self,
                expected: u64,
                state: &'a $crate::store::ControlState,
                audit: &'a $crate::store::AuditEntry,
            ) -> $crate::store::StoreFuture<
                'a,
                ::std::result::Result<::std::option::Option<u64>, $crate::StoreError>,
            > {
                let $this = self;
                let $op = $crate::store::StoreOp::CompareAndSwap;
                let $call = move || $inner.compare_and_swap(expected, state, audit);
                $wrap
            }

            fn audit(
                &self,
                limit: usize,
            ) -> $crate::store::StoreFuture<
                '_,
                ::std::result::Result<::std::vec::Vec<$crate::store::AuditEntry>, $crate::StoreError>,
            > {
                let $this = self;
                let $op = $crate::store::StoreOp::Audit;
                let $call = move || $inner.audit(limit);
                $wrap
            }

            fn notify<'a>(
                &'a self,
                clusters: &'a [::std::string::String],
            ) -> $crate::store::StoreFuture<'a, ::std::result::Result<(), $crate::StoreError>> {
                let $this = self;
                let $op = $crate::store::StoreOp::Notify;
                let $call = move || $inner.notify(clusters);
                $wrap
            }

            fn is_shared(&self) -> bool {
                let $this = self;
                $inner.is_shared()
            }
        }
    };
}
