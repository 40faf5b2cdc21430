//! [`WindowLayout`]: which windows a memory store's slots stand for, by position (the
//! cluster's counters and each client's entry are laid out the same way).

use std::sync::Arc;

use crate::config::WindowConfig;

/// The windows (name, seconds) slots are laid out for, and the `Arc` last lined up with.
/// The plane hands the same `Arc` on every request until its settings change, so the same
/// pointer means "already aligned" without comparing names; holding the `Arc` keeps its
/// address from being reused by other windows.
#[derive(Debug, Default)]
pub(crate) struct WindowLayout {
    keys: Vec<(String, u64)>,
    aligned: Option<Arc<[WindowConfig]>>,
}

impl WindowLayout {
    /// Makes the layout `windows`'. `None` when the slots already fit (every request but
    /// the first after a settings change); else, for each of `windows`, the position its
    /// slot had in the old layout (`None`: a new window, starting empty).
    #[inline]
    pub(crate) fn realign(&mut self, windows: &Arc<[WindowConfig]>) -> Option<Vec<Option<usize>>> {
        if self
            .aligned
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, windows))
        {
            return None;
        }
        self.relayout(windows)
    }

    #[cold]
    fn relayout(&mut self, windows: &Arc<[WindowConfig]>) -> Option<Vec<Option<usize>>> {
        self.aligned = Some(Arc::clone(windows));
        if self.fits(windows) {
            return None;
        }
        let from = windows.iter().map(|w| self.position(w)).collect();
        self.keys = windows
            .iter()
            .map(|w| (w.name.clone(), w.seconds))
            .collect();
        Some(from)
    }

    /// Whether the slots stand for exactly `windows`, in order.
    pub(crate) fn fits(&self, windows: &[WindowConfig]) -> bool {
        self.keys.len() == windows.len()
            && self
                .keys
                .iter()
                .zip(windows)
                .all(|((n, s), w)| *n == w.name && *s == w.seconds)
    }

    /// The position of `window`'s slot, if it has one.
    pub(crate) fn position(&self, window: &WindowConfig) -> Option<usize> {
        self.keys
            .iter()
            .position(|(n, s)| *n == window.name && *s == window.seconds)
    }
}
