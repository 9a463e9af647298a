//! DataStream demo replica: a small HTTP/1.1 + h2c data service used by demos and end-to-end tests.
//!
//! It answers with its replica identity, keeps an in-memory key/value store, streams request bodies back,
//! and can be told (by flag or by an admin request) to add latency, fail with a status, or hang, so that
//! tests can exercise the sidecar's resilience features against a real server.

pub mod cli;
pub mod fault;
pub mod identity;
pub mod probe;
pub mod server;
pub mod service;
pub mod store;
