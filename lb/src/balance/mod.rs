//! Choosing a replica for a request.
//!
//! Every function here is synchronous and allocation-free on the common path: it reads atomics
//! of an immutable [`EndpointSet`](crate::endpoint::EndpointSet) and returns a reference into it. `exclude` lists endpoints
//! an earlier attempt of the same request already failed on, so that a retry (connect failures
//! here, policy-driven retries in the resilience layer) goes elsewhere.
//!
//! Selection first considers *eligible* endpoints (not down, not draining, not capped by slow
//! start). Only when none is, it falls back to draining and slow-start-capped ones, in the
//! manner of Kubernetes' terminating-endpoint fallback: a slower answer beats a 503.

mod balancer;
pub mod hash;
mod owner;
mod policy;

pub use self::balancer::{Balancer, LOCAL_FIRST_FACTOR};
pub use self::owner::{HASH_BALANCE_FACTOR, pick_hashed, pick_primary};
pub use self::policy::{HashAlgorithm, Policy};

#[cfg(test)]
mod tests;
