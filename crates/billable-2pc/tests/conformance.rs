//! The store-level conformance suites (`dreamnet_billable::conformance`) on the memory
//! ledger and, when reachable, the PostgreSQL ledger (one fresh schema per scenario).
#![allow(missing_docs)]

mod common;

mod memory {
    use dreamnet_billable::ledger_conformance;

    use crate::common::memory;

    ledger_conformance!(core: memory);
    ledger_conformance!(admin: memory);
}

#[cfg(feature = "postgres")]
mod postgres {
    use dreamnet_billable::ledger_conformance;

    use crate::common::postgres;

    ledger_conformance!(core: postgres);
    ledger_conformance!(admin: postgres);
}
