//! The control plane: kill switches, multi-window rate limits and circuit breakers.
