//! `status`: what the operator observed, derived only from the stream's children.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Condition type: enough replicas are ready to serve traffic.
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition type: the children are being created or rolled out towards the latest spec.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: something is wrong (fewer ready replicas than desired, or a reconcile error).
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition type: every sidecar runs the traffic policy of the current generation (False, with
/// the sidecar's words, when one rejected it; Unknown while sidecars have not reported it yet).
pub const CONDITION_POLICY_ACCEPTED: &str = "PolicyAccepted";

/// Pod condition type each sidecar sets on its own pod: whether it accepted the traffic policy
/// of the generation its message names (see [`policy_report_message`]).
pub const POD_CONDITION_POLICY: &str = "datastream.dev/PolicyAccepted";

/// The message of a sidecar's [`POD_CONDITION_POLICY`]: `generation <N>`, then `: <detail>`
/// when there is more to say (why the policy was rejected).
pub fn policy_report_message(generation: i64, detail: Option<&str>) -> String {
    match detail {
        Some(detail) => format!("generation {generation}: {detail}"),
        None => format!("generation {generation}"),
    }
}

/// The generation and detail of a [`policy_report_message`].
pub fn parse_policy_report(message: &str) -> Option<(i64, Option<&str>)> {
    let rest = message.strip_prefix("generation ")?;
    let (number, detail) = match rest.split_once(": ") {
        Some((number, detail)) => (number, Some(detail)),
        None => (rest, None),
    };
    Some((number.parse().ok()?, detail))
}

/// Observed state of a DataStream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataStreamStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pods currently created for the stream.
    #[serde(default)]
    pub replicas: i32,

    /// Pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Pods running the latest pod template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// Revision of the pod template that the replicas not yet updated run (the StatefulSet's
    /// `currentRevision`); equal to `updateRevision` once a rollout is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,

    /// Revision of the latest pod template, which a rollout moves every replica to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,

    /// Replicas (pod names, in ordinal order) that do not run `updateRevision` yet: what a
    /// rollout still has to replace. Empty once every replica runs the latest template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub outdated_replicas: Vec<String>,

    /// Label selector of the stream's pods, serialized (used by `kubectl scale` and HPAs).
    #[serde(default)]
    pub selector: String,

    /// Ready replicas as `ip:port` of their sidecar's peer listener, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,

    /// Size of each of `spec.workload.volumeClaims` that every current replica's claim already
    /// has, by claim name. Admission refuses a `size` below it: volumes never shrink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub volume_claims: Vec<VolumeClaimStatus>,

    /// Sidecars that run the traffic policy of `observedGeneration` (as they report it on their
    /// pods); equal to `replicas` once a policy change has reached every replica.
    #[serde(default)]
    pub policy_current_replicas: i32,

    /// Short summary: Pending, Progressing, Available or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Whether the pod template runs the sidecars with workload identity and mutual TLS between
    /// them (the operator signs their certificates), or plaintext on the peer port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_tls: Option<MutualTls>,

    /// Conditions: Available, Progressing, Degraded and PolicyAccepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// What the replicas' claims of one `spec.workload.volumeClaims` entry have.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimStatus {
    /// The entry's name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The smallest storage request among the current replicas' claims, capped at the spec's
    /// `size`: every replica's claim asks for at least this much. A growth the StorageClass
    /// refused leaves it at the old size, so the spec can go back to it.
    #[schemars(length(min = 1, max = 64))]
    pub size: String,
    /// The smallest capacity provisioned among the current replicas' claims (absent until
    /// every claim is bound): equal to `size` or above once a growth has completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub capacity: Option<String>,
}

/// Whether the peer port between the sidecars is mutual TLS.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutualTls {
    /// Every sidecar proves the stream's workload identity, and the peer port accepts only it.
    On,
    /// Plaintext on the peer port (the operator signs no certificates: a namespace-scoped
    /// install, or `--workload-signer=false`).
    Off,
}

/// One-word summary of a DataStream's conditions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing is ready yet.
    Pending,
    /// Rolling out or scaling towards the spec.
    Progressing,
    /// Every desired replica is ready on the latest spec.
    Available,
    /// Serving with fewer ready replicas than desired, or failing to reconcile.
    Degraded,
}

impl DataStreamStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod policy_report_tests {
    use super::*;

    #[test]
    fn policy_reports_round_trip() {
        assert_eq!(policy_report_message(7, None), "generation 7");
        assert_eq!(parse_policy_report("generation 7"), Some((7, None)));
        let rejected = policy_report_message(8, Some("traffic.routes[0]: bad: really"));
        assert_eq!(
            parse_policy_report(&rejected),
            Some((8, Some("traffic.routes[0]: bad: really")))
        );
        assert_eq!(parse_policy_report("gen 7"), None);
        assert_eq!(parse_policy_report("generation x"), None);
    }
}
