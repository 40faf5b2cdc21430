//! Shared helpers for the DreamNet criterion benchmarks.
