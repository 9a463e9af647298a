//! Replicas as the balancer sees them, and the balancer.
//!
//! - [`endpoint`]: one [`endpoint::Endpoint`] per replica (its connection pool, load figures,
//!   connect-failure health, outlier and breaker state, metric handles) and the immutable
//!   [`endpoint::EndpointSet`] that a discovery update swaps in whole, carrying state over for
//!   replicas that stay.
//! - [`balance`]: the policies (p2c over peak-EWMA by default, round-robin, least-request) and
//!   the consistent-hash tables ([`balance::hash`]), built from replica names so that a replica
//!   that leaves moves only its own keys.
//!
//! It builds on `datastream-http` (pools, bodies) and `datastream-resilience` (outlier
//! detection, breaker, clock) and knows nothing of routes, policies or the API.

pub mod balance;
pub mod endpoint;
