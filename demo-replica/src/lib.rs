//! DataStream demo replica: a small HTTP/1.1 + h2c data service used by demos and end-to-end tests.
//!
//! It answers with its replica identity, keeps a key/value store (`/kv/{key}`), streams request bodies
//! back, and can be told (by flag or by an admin request) to add latency, fail with a status, or hang, so
//! that tests can exercise the sidecar's resilience features against a real server.
//!
//! The key/value data lives in an embedded [redb](https://docs.rs/redb) database: with `--data-dir DIR`
//! (or `$DATA_DIR`) in the file `DIR/kv.redb`, where every PUT and DELETE is committed durably (fsync)
//! before it is answered, so the data survives process and pod restarts on a persistent volume; without
//! it, in memory. See [`store`].

pub mod cli;
pub mod fault;
pub mod identity;
pub mod probe;
pub mod server;
pub mod service;
pub mod store;
