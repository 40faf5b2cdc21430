//! Two-phase commit for billable actions: reserve, run, store the response, charge.
