//! [`Ids`]: the ids of a [`TraceContext`](crate::TraceContext) in one allocation.
//!
//! A request used to allocate an `Arc<str>` for its trace id and another for its span id,
//! and every clone of its context bumped both counts. Now the trace id, span id, parent
//! span id and continued W3C trace id sit back to back in one `Arc<str>`: one allocation
//! per context, one count per clone, and reading an id is a slice (no UTF-8 check per read).

use std::{fmt, sync::Arc};

/// Ids up to this many bytes together are assembled on the stack (a valid `X-Trace-Id` of
/// 128 bytes plus a 32-digit W3C trace id and two 16-digit span ids fit).
const STACK: usize = 192;

/// The ids of a context, back to back in one shared text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Ids {
    text: Arc<str>,
    /// Where the trace id, span id, parent span id and W3C trace id end in `text`.
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
        let text: Arc<str> = if end <= STACK {
            let mut buf = [0u8; STACK];
            let mut at = 0;
            for part in parts {
                buf[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            Arc::from(utf8(&buf[..end]).as_ref())
        } else {
            Arc::from(utf8(&parts.concat()).as_ref())
        };
        Self {
            text,
            ends,
            has_parent: parent.is_some(),
            has_w3c: w3c.is_some(),
        }
    }

    pub(crate) fn trace_id(&self) -> &str {
        self.part(0)
    }

    pub(crate) fn span_id(&self) -> &str {
        self.part(1)
    }

    pub(crate) fn parent_span_id(&self) -> Option<&str> {
        self.has_parent.then(|| self.part(2))
    }

    pub(crate) fn w3c_trace_id(&self) -> Option<&str> {
        self.has_w3c.then(|| self.part(3))
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Each part was UTF-8 on its own, so its ends are char boundaries.
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }
}

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
