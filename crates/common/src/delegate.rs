//! [`delegate_through!`](crate::delegate_through): a wrapper's trait impl in which every
//! method forwards to the wrapped value through one function of the wrapper's.

/// Implements a trait for a wrapper whose methods all forward to the value it wraps, each
/// call passed through one function: a store wrapper (timing, metrics) states what it adds
/// once, not once per method, and the trait's methods are listed as bare signatures.
///
/// `impl Trait for Wrapper => wrap, self.inner, self.ops;` then one `fn ...;` signature per
/// method (each taking `&self`). Every method becomes
/// `wrap(&self.ops.method, move || self.inner.method(args..))`: `ops` holds one value per
/// method, named after it, and `wrap` gets the call as a closure so it can act before the
/// call is made (start a clock, refuse it) as well as after.
///
/// ```
/// use dreamnet_common::delegate_through;
///
/// trait Greeter {
///     fn greet(&self, name: &str) -> String;
/// }
///
/// struct Plain;
/// impl Greeter for Plain {
///     fn greet(&self, name: &str) -> String {
///         format!("hello {name}")
///     }
/// }
///
/// /// Marks every answer with the method's tag.
/// struct Tagged<G> {
///     inner: G,
///     tags: Tags,
/// }
/// struct Tags {
///     greet: &'static str,
/// }
///
/// fn tag(tag: &&'static str, call: impl FnOnce() -> String) -> String {
///     format!("{tag}: {}", call())
/// }
///
/// delegate_through! {
///     impl Greeter for Tagged<Plain> => tag, self.inner, self.tags;
///     fn greet(&self, name: &str) -> String;
/// }
///
/// let tagged = Tagged { inner: Plain, tags: Tags { greet: "greet" } };
/// assert_eq!(tagged.greet("you"), "greet: hello you");
/// ```
#[macro_export]
macro_rules! delegate_through {
    (
        impl $trait:ident for $ty:ty => $wrap:path, self.$inner:ident, self.$ops:ident;
        $(
            $(#[$attr:meta])*
            fn $name:ident $(<$lt:lifetime>)? (
                &$($self_lt:lifetime)? self $(, $arg:ident: $arg_ty:ty)* $(,)?
            ) -> $ret:ty;
        )*
    ) => {
        impl $trait for $ty {
            $(
                $(#[$attr])*
                fn $name $(<$lt>)? (&$($self_lt)? self $(, $arg: $arg_ty)*) -> $ret {
                    $wrap(&self.$ops.$name, move || self.$inner.$name($($arg),*))
                }
            )*
        }
    };
}
