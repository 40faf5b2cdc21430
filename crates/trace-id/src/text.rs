//! The texts a [`TraceContext`](crate::TraceContext) holds, stored without a heap allocation
//! of their own on the server's hot path.
//!
//! Every request used to allocate an `Arc<str>` for its trace id and another for its span id.
//! Now a span id or a continued W3C id is a fixed array of hex digits inside the context, and
//! the trace id is the validated `HeaderValue` the request brought (or the one generated for
//! it), shared with the response header: cloning it is a reference count (or nothing for a
//! static value), never a copy. Texts given through the public constructors, which may have
//! any shape, stay an `Arc<str>`.

use http::HeaderValue;
use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
};

/// An id of exactly `N` ASCII bytes inline (span ids: 16 hex digits, W3C trace ids: 32),
/// or any other text shared.
#[derive(Clone)]
pub(crate) enum Short<const N: usize> {
    /// `N` ASCII bytes (checked when made, so reading it back cannot fail).
    Inline([u8; N]),
    /// Text of another length or with non-ASCII bytes.
    Shared(Arc<str>),
}

impl<const N: usize> Short<N> {
    /// `text` inline when it has `N` ASCII bytes, else shared.
    pub(crate) fn new(text: &str) -> Self {
        match <[u8; N]>::try_from(text.as_bytes()) {
            Ok(bytes) if bytes.is_ascii() => Self::Inline(bytes),
            _ => Self::Shared(Arc::from(text)),
        }
    }

    /// `text` inline when it has `N` ASCII bytes, else the given `Arc` itself.
    pub(crate) fn from_arc(text: Arc<str>) -> Self {
        match <[u8; N]>::try_from(text.as_bytes()) {
            Ok(bytes) if bytes.is_ascii() => Self::Inline(bytes),
            _ => Self::Shared(text),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // ASCII by construction: the fallback is never taken.
            Self::Inline(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Self::Shared(text) => text,
        }
    }
}

/// The correlation id: a validated header value (no copy of the request's bytes) or any
/// text given through the public constructors.
#[derive(Clone)]
pub(crate) enum TraceIdText {
    /// A header value whose bytes were checked to be UTF-8 when it was stored.
    Header(HeaderValue),
    /// Text given by a caller.
    Shared(Arc<str>),
}

impl TraceIdText {
    /// `value` as a trace id text, if its bytes are UTF-8 (a valid trace id's always are).
    pub(crate) fn header(value: HeaderValue) -> Option<Self> {
        std::str::from_utf8(value.as_bytes())
            .is_ok()
            .then_some(Self::Header(value))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Checked to be UTF-8 in `header`: the fallback is never taken.
            Self::Header(value) => std::str::from_utf8(value.as_bytes()).unwrap_or_default(),
            Self::Shared(text) => text,
        }
    }
}

/// Equality, hashing and `Debug` are the text's, whatever the storage.
macro_rules! text_traits {
    ($ty:ty $(, $n:ident)?) => {
        impl<$(const $n: usize)?> PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }
        impl<$(const $n: usize)?> Eq for $ty {}
        impl<$(const $n: usize)?> Hash for $ty {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }
        impl<$(const $n: usize)?> fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
    };
}
text_traits!(Short<N>, N);
text_traits!(TraceIdText);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_of_the_right_length_are_inline_others_shared() {
        assert!(matches!(
            Short::<16>::new("00f067aa0ba902b7"),
            Short::Inline(_)
        ));
        assert!(matches!(Short::<16>::new("span-1"), Short::Shared(_)));
        // Sixteen bytes that are not ASCII are not stored inline.
        assert!(matches!(Short::<16>::new("ééééééé11"), Short::Shared(_)));
        assert_eq!(Short::<16>::new("ééééééé11").as_str(), "ééééééé11");
        assert!(matches!(
            Short::<4>::from_arc(Arc::from("abcd")),
            Short::Inline(_)
        ));
        assert_eq!(Short::<4>::from_arc(Arc::from("abcde")).as_str(), "abcde");
    }

    #[test]
    fn equality_and_hash_ignore_the_storage() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |t: &TraceIdText| {
            let mut h = DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        };
        let header = TraceIdText::header(HeaderValue::from_static("abc")).unwrap();
        let shared = TraceIdText::Shared(Arc::from("abc"));
        assert_eq!(header, shared);
        assert_eq!(hash(&header), hash(&shared));
        assert_eq!(format!("{header:?}"), "\"abc\"");
        let inline = Short::<3>::new("abc");
        assert_eq!(inline, Short::Shared(Arc::from("abc")));
    }

    #[test]
    fn non_utf8_header_values_are_not_trace_id_texts() {
        let value = HeaderValue::from_bytes(b"abc\xff").unwrap();
        assert!(TraceIdText::header(value).is_none());
    }
}
