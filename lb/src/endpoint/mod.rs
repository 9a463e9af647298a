//! Replicas as the balancer sees them: address, load, health, connection pool, and the set they
//! form at one moment.
//!
//! An [`EndpointSet`] is immutable; discovery builds a new one for every change and swaps it in.
//! Endpoints that stay in the set are carried over as the same `Arc`, so their statistics and
//! warm connections survive any change to the rest of the set. An endpoint that joins a running
//! set starts from the set's median latency and in slow start; one that leaves keeps serving the
//! requests that hold it and closes its connections when the last of them ends.

mod health;
mod load;
pub mod metrics;
mod replica;
mod set;

pub use self::health::{BASE_BACKOFF, CONSECUTIVE_FAILURES, Failure, Health, MAX_BACKOFF};
pub use self::load::{
    DECAY, DEFAULT_RTT, FORCE_PICK, Load, LoadSnapshot, MIN_RTT, PROBE_WEIGHT, SAMPLE_WINDOW,
    SLOW_START_CONVERGED, SLOW_START_MAX_SAMPLES, SLOW_START_MIN_SAMPLES, median,
};
pub use self::replica::{Completion, Eligibility, Endpoint, EndpointSpec, InflightGuard};
pub use self::set::{EndpointSet, by_ordinal};
pub use datastream_http::pool::{CONNECT_TIMEOUT, ConnectError, IDLE_TIMEOUT, MAX_IDLE, Pool};

#[cfg(test)]
mod tests;
