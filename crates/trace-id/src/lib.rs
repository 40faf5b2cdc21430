//! Trace ids for every request: the `X-Trace-Id` / W3C `traceparent` tower layer.
