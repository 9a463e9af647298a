//! Where replicas (and, in Kubernetes, the policy) come from.
//!
//! Local mode needs no module: the resolved config's endpoints are applied once and then by the
//! file reloader. Kubernetes mode watches the API ([`kubernetes`]).

pub mod kubernetes;
