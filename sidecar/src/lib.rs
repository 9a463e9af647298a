//! The DataStream sidecar: a data-plane proxy that runs beside every replica of a DataStream and
//! decides where each request goes.
//!
//! Requests from clients arrive on the *traffic* listener and are routed (an ordered route table:
//! balance, affinity, primary), balanced (p2c over peak-EWMA by default) and forwarded to a
//! replica: the local workload, or a peer sidecar's *peer* listener, which delivers to its own
//! workload only. Replicas come from discovery (static flags and file, or Kubernetes
//! EndpointSlices), the policy from the DataStream's `spec.traffic` (or the same shape in a
//! YAML file); both swap in live.
//!
//! Module map: [`config`] (flags, file, validation, compile, reload), [`discovery`], [`identity`]
//! (the workload certificate), [`peer_tls`] (mutual TLS between sidecars), [`client_tls`]
//! (optional TLS for clients), [`route`],
//! [`policy`], [`proxy`] (the request path behind the HTTP server), [`admin`], [`runtime`]
//! (listeners, start, drain), [`state`], [`metrics`]. The layers below are their own crates,
//! which know nothing of this one or of the API types: `datastream-http` (codec, connections,
//! bodies, pool), `datastream-lb` (per-replica state and the balancers) and
//! `datastream-resilience` (failover and overload mechanisms).

pub mod admin;
pub mod app;
pub mod client_tls;
pub mod config;
pub mod discovery;
pub mod identity;
pub mod metrics;
pub mod peer_tls;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod state;

pub use self::runtime::{RuntimeSettings, Sidecar};
pub use self::state::Shared;
