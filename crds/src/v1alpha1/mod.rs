//! Version `v1alpha1` of the DataStream API.
//!
//! Field doc comments become the schema descriptions that `kubectl explain` prints, so they are
//! written for users. Cross-field rules are CEL (`x-kubernetes-validations`) so that an invalid
//! DataStream is rejected at admission with a message naming the field, never accepted and failed later.

mod pod;
mod status;
mod traffic;
mod workload;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use pod::*;
pub use status::*;
pub use traffic::*;
pub use workload::*;

/// Port of the sidecar's client-facing `traffic` listener inside every pod.
pub const SIDECAR_TRAFFIC_PORT: i32 = 7080;
/// Port of the sidecar's `peer` listener (requests from other sidecars of the same stream).
pub const SIDECAR_PEER_PORT: i32 = 7081;
/// Port of the sidecar's `admin` listener (probes, metrics, config and endpoint introspection).
pub const SIDECAR_ADMIN_PORT: i32 = 7082;

/// A DataStream runs `replicas` copies of a data service, each fronted by a DataStream sidecar that
/// routes, balances and fails over client traffic between the replicas according to `traffic`.
// Several printer columns share a type, which clippy mistakes for repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "datastream.dev",
    version = "v1alpha1",
    kind = "DataStream",
    namespaced,
    plural = "datastreams",
    shortname = "dst",
    category = "datastream",
    status = "DataStreamStatus",
    derive = "PartialEq",
    doc = "A DataStream runs replicas of a data service, each fronted by a sidecar that routes, balances and fails over traffic between them.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas ready to serve"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.traffic.loadBalancing.policy",
        description = "Load-balancing policy"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the conditions"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].reason",
        priority = 1,
        description = "Why the stream is or is not available"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        priority = 1,
        description = "What is wrong, when the stream is Degraded (AsExpected otherwise)"
    ),
    printcolumn(
        name = "Policy-Current",
        type_ = "integer",
        json_path = ".status.policyCurrentReplicas",
        priority = 1,
        description = "Sidecars running the traffic policy of the current generation"
    ),
    printcolumn(
        name = "Policy-Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"PolicyAccepted\")].status",
        priority = 1,
        description = "Whether every sidecar accepted the current policy (False: one rejected it; Unknown: not all reported yet)"
    ),
    printcolumn(
        name = "mTLS",
        type_ = "string",
        json_path = ".status.mutualTls",
        priority = 1,
        description = "Whether the sidecars talk mutual TLS between replicas (On) or plaintext (Off)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(validation = Rule::new("size(self.metadata.name) <= 52").message(
    "metadata.name must be at most 52 characters: replica pods are named <name>-<ordinal> and their StatefulSet revision label adds 11 more characters"
))]
#[kube(validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(
    "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and ending with a letter or digit, no '.'): it is the name of the stream's Services"
))]
#[kube(validation = Rule::new("!self.metadata.name.endsWith('-peers')").message(
    "metadata.name must not end in -peers: <name>-peers is the peer Service of the stream <name>, and this stream's client Service would take that name"
))]
#[kube(validation = Rule::new(
    "!has(self.status) || !has(self.status.volumeClaims) || !has(self.spec.workload.volumeClaims) || self.spec.workload.volumeClaims.all(c, !isQuantity(c.size) || self.status.volumeClaims.all(s, s.name != c.name || !isQuantity(s.size) || quantity(c.size).compareTo(quantity(s.size)) >= 0))"
).message(
    "spec.workload.volumeClaims[].size cannot be smaller than status.volumeClaims[].size, the size the replicas' claims already have: a volume can only grow, and only where its StorageClass allows volume expansion"
).field_path(".spec.workload.volumeClaims"))]
// A quorum above the replicas is refused, on `kubectl scale` and autoscalers too (the scale
// subresource runs these rules): the message says why and what to do. Zero replicas (a paused
// stream, no sidecar running) is always allowed. See docs/operations.md.
#[x_kube(validation = Rule::new(
    "self.replicas == 0 || !has(self.traffic) || !has(self.traffic.routes) || self.traffic.routes.all(r, !has(r.broadcast) || !has(r.broadcast.quorum) || r.broadcast.quorum <= self.replicas)"
).message(
    "spec.replicas must be 0 or at least every traffic.routes[].broadcast.quorum: with fewer replicas the broadcast could never reach its quorum. This also refuses kubectl scale and autoscalers: to scale below a quorum, lower or remove traffic.routes[].broadcast.quorum first"
).field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
pub struct DataStreamSpec {
    /// Number of replicas (pods) of the data service. Each pod runs the workload and a sidecar.
    /// Supports `kubectl scale dst NAME --replicas=N` and HorizontalPodAutoscalers. Must be 0 or
    /// at least the `quorum` of every broadcast route (scaling below one is refused).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// The data service container that each sidecar fronts.
    pub workload: WorkloadSpec,

    /// The routing, load-balancing and failover policy that every sidecar of this stream applies.
    /// Changes reach running sidecars live, without restarting pods.
    #[serde(default)]
    pub traffic: TrafficPolicy,

    /// Settings of the sidecar container itself.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// How a change of the pod template replaces the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// How updates roll over the replicas. Replicas are replaced from the highest ordinal down, each
/// keeping its identity and volumes; the next one is replaced only after the replaced one is
/// ready again (its sidecar serving, which includes the workload's readiness).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Replicas replaced at the same time. Defaults to 1 (one at a time). More than 1 needs the
    /// StatefulSet feature gate MaxUnavailableStatefulSet (beta, off by default through Kubernetes
    /// 1.36): without it the API server ignores the setting, the stream gets a Warning event
    /// `RolloutSettingIgnored`, and replicas roll one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: Option<i32>,

    /// Seconds a replaced replica must stay ready before the next one is replaced. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: Option<i32>,
}

fn default_replicas() -> i32 {
    3
}

/// Settings of the DataStream sidecar container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image. Defaults to the image the operator was installed with (its `--sidecar-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of the sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<k8s_openapi::api::core::v1::ResourceRequirements>>,

    /// Log level of the sidecar: one of error, warn, info, debug, trace. Defaults to info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,

    /// Makes clients use TLS on the traffic port, with the certificate and key of a Secret.
    /// Without it the traffic port speaks plaintext HTTP. (Sidecars talk mutual TLS to each
    /// other either way, with certificates of their own.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

/// TLS for clients on the traffic port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// A Secret in the stream's namespace with `tls.crt` (the certificate, then any
    /// intermediates, PEM) and `tls.key` (its key: PKCS#8, SEC1 or PKCS#1 PEM): a
    /// `kubernetes.io/tls` Secret, as cert-manager writes it. It is mounted read-only into each
    /// sidecar, which serves a renewed certificate once the kubelet has updated the volume (a
    /// bad one is refused and the previous one kept). A missing Secret keeps new pods from
    /// starting, as for any Secret volume.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("sidecar.clientTls.secretName must be a Secret name (a DNS subdomain: lowercase letters, digits, '-' and '.')"))]
    pub secret_name: String,
}

/// Verbosity of a component's logs.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Verbose diagnostics.
    Debug,
    /// Everything, including per-request details.
    Trace,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[cfg(test)]
mod tests;
