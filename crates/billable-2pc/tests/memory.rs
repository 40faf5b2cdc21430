//! The shared suite against the memory ledger.

use std::sync::Arc;

use dreamnet_billable::MemoryLedger;
use dreamnet_common::ManualClock;

mod suite;

async fn memory() -> Option<suite::Fixture> {
    let clock = ManualClock::new(1_800_000_000_000);
    let ledger = MemoryLedger::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    Some(suite::Fixture {
        ledger: Arc::new(ledger),
        clock,
        cleanup: None,
    })
}

ledger_suite!(memory, proptest_cases = 128);
