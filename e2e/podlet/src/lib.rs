//! DataStream podlet: a small kubelet that runs the pods bound to one node as local processes.
//!
//! Each pod gets a network namespace with an address on the cluster bridge; each container runs from
//! its OCI image ([`images`]) under runc ([`runtime`]) with the user, capabilities, read-only root and
//! cgroup limits its security context and resources ask for ([`security`]); env, volumes (including the projected
//! service-account token), probes, restarts with backoff, graceful deletion and the pod status follow
//! the kubelet's behaviour closely enough for end-to-end tests against a real control plane.
//! See `e2e/podlet/README.md` for what is and is not implemented.

pub mod backoff;
pub mod claims;
pub mod cleanup;
pub mod cli;
pub mod context;
pub mod controller;
pub mod env;
pub mod events;
pub mod images;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod objects;
pub mod probe;
pub mod process;
pub mod resizer;
pub mod runtime;
pub mod security;
pub mod status;
pub mod volumes;
pub mod worker;
