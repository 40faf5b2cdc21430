//! Service-level tests of the server and client layers.

mod capture;
mod propagate;
mod server;
mod w3c;
