//! The DreamNet gRPC example: the standard `grpc.health.v1.Health` (tonic-health) and a small
//! `dreamnet.mint.v1.Mint` service (`proto/mint.proto`) behind every DreamNet layer: trace
//! ids, the control plane (cluster `star-bridge` for Health, `dream-state` for Mint),
//! idempotency keyed by the `idempotency-key` metadata, and billing on Mint. Every rejection
//! reaches a tonic client as a gRPC status it can act on (see the README's table).
//!
//! - [`app`]: the stores, the layers and the services.
//! - [`mint`]: the Mint messages, server and client, by hand (no protoc).
//! - [`unary`]: keeping a unary response whole for the idempotency and billing layers.
//! - [`serve`]: HTTP/2 over TCP.

pub mod app;
pub mod mint;
pub mod serve;
pub mod unary;

pub use app::{App, Settings};
