//! [`Ids`]: the ids of a [`TraceContext`](crate::TraceContext), in one allocation made at
//! most once.
//!
//! A request used to allocate an `Arc<str>` for its trace id and another for its span id,
//! and every clone of its context bumped both counts. Now the trace id, span id, parent
//! span id and continued W3C trace id sit back to back in one `Arc<str>`: one allocation
//! per context, one count per clone, and reading an id is a slice (no UTF-8 check per read).
//!
//! The root context the layer makes for a request with a valid `X-Trace-Id` or a generated
//! id goes further: it keeps the validated header value (shared with the response header)
//! and the span id's 64 bits, and makes the text when an id is first read. A request nobody
//! reads an id of (no subscriber sees its span, no layer logs it) never makes it.

use http::HeaderValue;
use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{Arc, OnceLock},
};

/// Ids up to this many bytes together are assembled on the stack (a valid `X-Trace-Id` of
/// 128 bytes plus a 32-digit W3C trace id and two 16-digit span ids fit).
const STACK: usize = 192;

/// Digits of a span id.
const SPAN_LEN: usize = 16;

/// The ids of a context.
#[derive(Clone)]
pub(crate) struct Ids(Repr);

#[derive(Clone)]
enum Repr {
    /// Every id in one shared text.
    Text(Text),
    /// A root context's trace id (a valid trace id: allow-listed ASCII) and span id bits;
    /// the text (trace id, then the span id's 16 digits) is made on the first read.
    Root {
        trace: HeaderValue,
        span: u64,
        text: OnceLock<Arc<str>>,
    },
}

/// Ids back to back in one shared text.
#[derive(Clone)]
struct Text {
    text: Arc<str>,
    /// Where the trace id, span id, parent span id and W3C trace id end in `text`.
    ends: [u32; 4],
    has_parent: bool,
    has_w3c: bool,
}

/// The ids of a context, borrowed.
#[derive(Clone, Copy)]
struct View<'a> {
    text: &'a str,
    ends: [u32; 4],
    has_parent: bool,
    has_w3c: bool,
}

impl Ids {
    /// The ids from their bytes, which must be UTF-8 each (they are `&str`s, ASCII header
    /// values or hex digits): checked once, over the whole text.
    pub(crate) fn new(
        trace: &[u8],
        span: &[u8],
        parent: Option<&[u8]>,
        w3c: Option<&[u8]>,
    ) -> Self {
        let parts = [
            trace,
            span,
            parent.unwrap_or_default(),
            w3c.unwrap_or_default(),
        ];
        let mut ends = [0; 4];
        let mut end = 0;
        for (part, slot) in parts.iter().zip(&mut ends) {
            end += part.len();
            // Ids over 4 GiB are not ids: their ends saturate (reads then give "").
            *slot = u32::try_from(end).unwrap_or(u32::MAX);
        }
        Self(Repr::Text(Text {
            text: concat(&parts, end),
            ends,
            has_parent: parent.is_some(),
            has_w3c: w3c.is_some(),
        }))
    }

    /// The ids of a root context: `trace`, a valid trace id (see
    /// [`is_valid_trace_id`](crate::is_valid_trace_id)), and the span id of `span`'s 16
    /// lowercase hex digits. Nothing is allocated until an id is read.
    pub(crate) fn root(trace: HeaderValue, span: u64) -> Self {
        debug_assert!(crate::id::is_valid_trace_id_bytes(trace.as_bytes()));
        Self(Repr::Root {
            trace,
            span,
            text: OnceLock::new(),
        })
    }

    fn view(&self) -> View<'_> {
        match &self.0 {
            Repr::Text(text) => View {
                text: &text.text,
                ends: text.ends,
                has_parent: text.has_parent,
                has_w3c: text.has_w3c,
            },
            Repr::Root { trace, span, text } => {
                let text = text.get_or_init(|| {
                    let trace = trace.as_bytes();
                    let span = span_hex(*span);
                    concat(&[trace, &span], trace.len() + SPAN_LEN)
                });
                // A valid trace id is at most 128 bytes.
                let trace_end = u32::try_from(trace.len()).unwrap_or(u32::MAX);
                let span_end = trace_end.saturating_add(SPAN_LEN as u32);
                View {
                    text,
                    ends: [trace_end, span_end, span_end, span_end],
                    has_parent: false,
                    has_w3c: false,
                }
            }
        }
    }

    pub(crate) fn trace_id(&self) -> &str {
        self.view().part(0)
    }

    pub(crate) fn span_id(&self) -> &str {
        self.view().part(1)
    }

    pub(crate) fn parent_span_id(&self) -> Option<&str> {
        let view = self.view();
        view.has_parent.then(|| view.part(2))
    }

    pub(crate) fn w3c_trace_id(&self) -> Option<&str> {
        let view = self.view();
        view.has_w3c.then(|| view.part(3))
    }

    /// Every id, as [`PartialEq`] and [`Hash`] see them.
    fn all(&self) -> (&str, &str, Option<&str>, Option<&str>) {
        let view = self.view();
        (
            view.part(0),
            view.part(1),
            view.has_parent.then(|| view.part(2)),
            view.has_w3c.then(|| view.part(3)),
        )
    }
}

impl<'a> View<'a> {
    fn part(self, i: usize) -> &'a str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Each part was UTF-8 on its own, so its ends are char boundaries.
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }
}

/// Two contexts' ids are equal when every id is, however each is stored.
impl PartialEq for Ids {
    fn eq(&self, other: &Self) -> bool {
        self.all() == other.all()
    }
}

impl Eq for Ids {}

impl Hash for Ids {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.all().hash(state);
    }
}

/// `parts` (`len` bytes together) back to back in one shared text.
fn concat(parts: &[&[u8]], len: usize) -> Arc<str> {
    if len <= STACK {
        let mut buf = [0u8; STACK];
        let mut at = 0;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Arc::from(utf8(&buf[..len]).as_ref())
    } else {
        Arc::from(utf8(&parts.concat()).as_ref())
    }
}

/// The 16 lowercase hex digits of a span id's bits, most significant first.
pub(crate) fn span_hex(bits: u64) -> [u8; SPAN_LEN] {
    let mut digits = [0u8; SPAN_LEN];
    // Two digits per table load, eight loads.
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bits.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    digits
}

/// `HEX_PAIRS[b]`: the two lowercase hex digits of byte `b`.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = [crate::id::HEX[b >> 4], crate::id::HEX[b & 0xf]];
        b += 1;
    }
    table
};

/// `bytes` as text. Never lossy in practice: every part is UTF-8 (see [`Ids::new`]).
fn utf8(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

impl fmt::Debug for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ids")
            .field("trace_id", &self.trace_id())
            .field("span_id", &self.span_id())
            .field("parent_span_id", &self.parent_span_id())
            .field("w3c_trace_id", &self.w3c_trace_id())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_reads_back() {
        let ids = Ids::new(b"trace-1", b"00f067aa0ba902b7", Some(b"span-p"), None);
        assert_eq!(ids.trace_id(), "trace-1");
        assert_eq!(ids.span_id(), "00f067aa0ba902b7");
        assert_eq!(ids.parent_span_id(), Some("span-p"));
        assert_eq!(ids.w3c_trace_id(), None);
        let ids = Ids::new(b"t", b"s", None, Some(b"w"));
        assert_eq!(ids.parent_span_id(), None);
        assert_eq!(ids.w3c_trace_id(), Some("w"));
    }

    #[test]
    fn an_empty_parent_is_not_no_parent() {
        let ids = Ids::new(b"t", b"s", Some(b""), None);
        assert_eq!(ids.parent_span_id(), Some(""));
        assert_ne!(ids, Ids::new(b"t", b"s", None, None));
    }

    #[test]
    fn long_and_non_ascii_ids_survive() {
        let long = "x".repeat(1000);
        let ids = Ids::new(
            long.as_bytes(),
            "spän".as_bytes(),
            Some("é".as_bytes()),
            None,
        );
        assert_eq!(ids.trace_id(), long);
        assert_eq!(ids.span_id(), "spän");
        assert_eq!(ids.parent_span_id(), Some("é"));
        let ids = Ids::new("ü".as_bytes(), b"", None, Some("ß".as_bytes()));
        assert_eq!(ids.trace_id(), "ü");
        assert_eq!(ids.span_id(), "");
        assert_eq!(ids.w3c_trace_id(), Some("ß"));
    }

    fn hash_of(ids: &Ids) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ids.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn span_digits_are_the_bits_most_significant_first() {
        assert_eq!(&span_hex(0x00f0_67aa_0ba9_02b7), b"00f067aa0ba902b7");
        assert_eq!(&span_hex(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&span_hex(1), b"0000000000000001");
    }

    #[test]
    fn a_root_reads_its_header_and_span_digits() {
        let ids = Ids::root(HeaderValue::from_static("mbx2k9q1-3f9a0c1e77d24b6a"), 0xab);
        assert_eq!(ids.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
        assert_eq!(ids.span_id(), "00000000000000ab");
        assert_eq!(ids.parent_span_id(), None);
        assert_eq!(ids.w3c_trace_id(), None);
        // Reading again reads the same text.
        assert_eq!(ids.trace_id(), "mbx2k9q1-3f9a0c1e77d24b6a");
        let long = "x".repeat(crate::MAX_TRACE_ID_LEN);
        let ids = Ids::root(HeaderValue::from_str(&long).unwrap(), u64::MAX);
        assert_eq!(ids.trace_id(), long);
        assert_eq!(ids.span_id(), "ffffffffffffffff");
    }

    /// A root and the same ids made as text are equal and hash alike, read or not, and so
    /// are clones taken before and after the first read.
    #[test]
    fn a_root_equals_the_same_ids_as_text() {
        let text = Ids::new(b"checkout-42", b"00f067aa0ba902b7", None, None);
        let root = || {
            Ids::root(
                HeaderValue::from_static("checkout-42"),
                0x00f0_67aa_0ba9_02b7,
            )
        };
        let unread = root();
        let cloned_unread = unread.clone();
        assert!(unread == text);
        assert!(text == unread);
        assert_eq!(hash_of(&root()), hash_of(&text));
        let read = root();
        assert_eq!(read.span_id(), "00f067aa0ba902b7");
        let cloned_read = read.clone();
        for ids in [&unread, &cloned_unread, &read, &cloned_read] {
            assert!(*ids == text);
            assert_eq!(hash_of(ids), hash_of(&text));
            assert_eq!(ids.trace_id(), "checkout-42");
        }
        assert!(root() != Ids::root(HeaderValue::from_static("checkout-42"), 1));
        assert!(root() != Ids::new(b"checkout-42", b"00f067aa0ba902b7", Some(b"p"), None));
        assert!(root() != Ids::new(b"checkout-42", b"00f067aa0ba902b7", None, Some(b"w")));
    }

    #[test]
    fn ids_are_send_and_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Ids>();
    }

    #[test]
    fn the_split_is_part_of_equality() {
        assert_ne!(
            Ids::new(b"ab", b"c", None, None),
            Ids::new(b"a", b"bc", None, None)
        );
        assert_eq!(
            Ids::new(b"ab", b"c", None, None),
            Ids::new(b"ab", b"c", None, None)
        );
    }
}
