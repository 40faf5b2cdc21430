//! The builder of [`MemoryLedger`]: its clock, default credit line, retention and cap.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize},
        Arc,
    },
    time::Duration,
};

use dreamnet_common::SharedClock;
use parking_lot::Mutex;

use super::{
    shards::{Picker, SHARDS},
    Amount, Inner, MemoryLedger,
};

/// Builds a [`MemoryLedger`].
#[derive(Debug)]
#[must_use]
pub struct MemoryLedgerBuilder {
    pub(super) clock: SharedClock,
    pub(super) default_credit: Option<Amount>,
    pub(super) retention: Option<Duration>,
    pub(super) max_entries: usize,
}

impl MemoryLedgerBuilder {
    /// The clock used for timestamps, reservation timeouts and retention (default: system
    /// clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The credit line of accounts created by a reservation (`None`, the default, is
    /// unlimited; `Some(0)` means "no spending until credit is added").
    pub fn default_credit(mut self, credit: Option<Amount>) -> Self {
        self.default_credit = credit;
        self
    }

    /// How long a charged or failed action is kept after it was resolved (default 24 h;
    /// `None` keeps them until the cap refuses new work).
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// The most entries (actions plus accounts) held at once (default
    /// [`DEFAULT_MAX_ENTRIES`](super::DEFAULT_MAX_ENTRIES)); past it new work is [`LedgerError::Full`](super::LedgerError::Full).
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Builds the ledger.
    pub fn build(self) -> MemoryLedger {
        MemoryLedger {
            inner: Arc::new(Inner {
                clock: self.clock,
                default_credit: self.default_credit,
                retention: self
                    .retention
                    .map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
                max_entries: self.max_entries,
                picker: Picker::default(),
                actions: (0..SHARDS).map(|_| Mutex::default()).collect(),
                accounts: (0..SHARDS).map(|_| Mutex::default()).collect(),
                entries: AtomicUsize::new(0),
                pruned: AtomicU64::new(0),
                dropped_accounts: AtomicU64::new(0),
            }),
        }
    }
}
