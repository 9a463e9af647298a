//! The DataStream operator: reconciles `DataStream` resources into sidecar-fronted replicas.
//!
//! - [`desired`]: pure spec → child objects (StatefulSet, Services, RBAC, PDB, NetworkPolicy).
//! - [`quantity`]: resource quantities compared by value.
//! - [`render`]: the same children, printed offline (`datastream-operator render -f`).
//! - [`status`]: pure observed children → status and conditions.
//! - [`pods`]: the replica pods' cached summary and the failures read from it.
//! - [`apply`]: compare-then-apply, so that a steady stream costs no API request.
//! - [`cache`]: the children's caches, each child reduced to its drift verdict.
//! - [`controller`]: watches, reconcile, error policy.
//! - [`leader`]: Lease-based leader election.
//! - [`fence`]: the client layer that refuses writes outside the leadership term.
//! - [`signer`]: decisions on workload CertificateSigningRequests (mTLS identity, in progress).
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod apply;
pub mod cache;
pub mod certificate_access;
pub mod controller;
pub mod desired;
pub mod error;
pub mod events;
pub mod expectations;
pub mod fence;
pub mod grouped;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod progress;
pub mod quantity;
pub mod render;
pub mod signer;
pub mod status;
