//! Status derivation: what `kubectl get dst` shows, computed only from observed children.
//!
//! Pure functions, so that "status written only when it changed" can be decided by comparing two
//! values, and so that condition timestamps move only when a condition's status flips.

use std::time::Duration;

use datastream_api::v1alpha1::{
    CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_POLICY_ACCEPTED, CONDITION_PROGRESSING,
    DataStream, DataStreamStatus, MutualTls, POD_CONDITION_POLICY, Phase, SIDECAR_PEER_PORT,
    VolumeClaimStatus, parse_policy_report,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::desired::{claim_name, selector_string};
use crate::quantity::Quantity;

/// How long a replica's claim may stay unbound before the stream reports it: provisioning and
/// binding normally take well under a second, and a claim that cannot bind (no such
/// StorageClass, no capacity) must show within seconds, not after a rollout deadline.
pub const CLAIM_PENDING_GRACE: Duration = Duration::from_secs(5);

/// Label the StatefulSet controller puts on every pod: the revision of the template it runs.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Names of the replicas not yet on `update_revision`, in ordinal order. A pod without the label
/// (not yet seen by the StatefulSet controller) counts as outdated.
fn outdated_replicas(pods: &[&Pod], update_revision: Option<&str>) -> Vec<String> {
    let Some(update) = update_revision else {
        return Vec::new();
    };
    let ordinal = |name: &str| {
        name.rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    let mut outdated: Vec<String> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .map(String::as_str)
                != Some(update)
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    outdated.sort_by_key(|name| (ordinal(name), name.clone()));
    outdated.dedup();
    outdated
}

/// What the operator saw of a stream's children during one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The stream's StatefulSet, if it exists yet.
    pub stateful_set: Option<&'a StatefulSet>,
    /// EndpointSlices of the stream's peer Service.
    pub peer_slices: Vec<&'a EndpointSlice>,
    /// The PersistentVolumeClaims of the current replicas (not those a scale-down retained).
    pub claims: Vec<&'a PersistentVolumeClaim>,
    /// The stream's pods, as [`crate::pods::strip`] keeps them.
    pub pods: Vec<&'a Pod>,
    /// The error of this reconcile's apply step, if it failed: a condition reason and a message.
    pub apply_error: Option<(&'static str, String)>,
}

/// One condition's new state, before timestamps are settled.
struct Verdict {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// Claims that have stayed unbound for longer than [`CLAIM_PENDING_GRACE`], described for a
/// condition message.
fn pending_claims(claims: &[&PersistentVolumeClaim], now: &Time) -> Vec<String> {
    let mut pending: Vec<String> = claims
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
        .filter(|c| {
            c.metadata
                .creation_timestamp
                .as_ref()
                .is_none_or(|created| {
                    now.0.duration_since(created.0).as_secs_f64()
                        >= CLAIM_PENDING_GRACE.as_secs_f64()
                })
        })
        .map(|c| {
            let name = c.metadata.name.clone().unwrap_or_default();
            let class = c
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                .map(|class| format!("StorageClass {class:?}"))
                .unwrap_or_else(|| "no StorageClass and no default class".to_owned());
            format!("PersistentVolumeClaim {name} ({class}) is not bound to a volume")
        })
        .collect();
    pending.sort();
    pending
}

/// Computes the status `ds` should have, given what was observed. `now` is used only for
/// conditions whose status changed, and to judge how long a claim has been pending.
pub fn derive(ds: &DataStream, observed: &Observed<'_>, now: Time) -> DataStreamStatus {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let generation = ds.metadata.generation;
    let desired = ds.spec.replicas;

    let set_status = observed
        .stateful_set
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let replicas = set_status.replicas;
    let ready = set_status.ready_replicas.unwrap_or(0);
    let updated = set_status.updated_replicas.unwrap_or(0);
    let set_current = observed.stateful_set.is_some_and(|d| {
        d.metadata.generation.is_some()
            && d.metadata.generation == set_status.observed_generation
            && d.metadata.deletion_timestamp.is_none()
    }) && observed
        .stateful_set
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        == Some(desired);
    // The StatefulSet controller moves currentRevision to updateRevision once every replica runs
    // the latest template and is ready.
    let revisions_converged = set_status.update_revision.is_none()
        || set_status.current_revision == set_status.update_revision;
    // A rollout is complete once a replica has been ready on it: a fresh stream whose pods never
    // start (a bad image) has converged revisions at once, but nothing has rolled out.
    let was_complete = ds
        .status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_PROGRESSING))
        .is_some_and(|c| c.reason == "RolloutComplete");
    let rolled_out = set_current
        && revisions_converged
        && updated == desired
        && replicas == desired
        && (ready > 0 || desired == 0 || was_complete);
    let failing = crate::pods::problems(&observed.pods);
    let pending = pending_claims(&observed.claims, &now);

    let mut endpoints: Vec<String> = observed
        .peer_slices
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.iter())
        .map(|ip| {
            if ip.contains(':') {
                format!("[{ip}]:{SIDECAR_PEER_PORT}")
            } else {
                format!("{ip}:{SIDECAR_PEER_PORT}")
            }
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();

    let available = if desired == 0 {
        Verdict {
            type_: CONDITION_AVAILABLE,
            status: false,
            reason: "ScaledToZero",
            message: "spec.replicas is 0".into(),
        }
    } else if ready == 0 && !pending.is_empty() {
        Verdict {
            type_: CONDITION_AVAILABLE,
            status: false,
            reason: "VolumeClaimPending",
            message: format!("0 of {desired} replicas are ready: {}", pending.join("; ")),
        }
    } else if ready == 0 {
        Verdict {
            type_: CONDITION_AVAILABLE,
            status: false,
            reason: "NoReplicasReady",
            message: format!("0 of {desired} replicas are ready"),
        }
    } else if ready >= desired {
        Verdict {
            type_: CONDITION_AVAILABLE,
            status: true,
            reason: "AllReplicasReady",
            message: format!("{ready} of {desired} replicas are ready"),
        }
    } else {
        Verdict {
            type_: CONDITION_AVAILABLE,
            status: true,
            reason: "MinimumReplicasReady",
            message: format!("{ready} of {desired} replicas are ready"),
        }
    };

    let progressing = if observed.stateful_set.is_none() {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "Creating",
            message: "creating the replicas".into(),
        }
    } else if rolled_out {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: false,
            reason: "RolloutComplete",
            message: format!("{desired} replicas run the latest spec"),
        }
    } else if observed
        .stateful_set
        .is_some_and(|s| s.metadata.deletion_timestamp.is_some())
    {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "Recreating",
            message: "recreating the StatefulSet to change its volume claim templates; the replicas keep running".into(),
        }
    } else if replicas != desired {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "Scaling",
            message: format!("{replicas} of {desired} replicas exist"),
        }
    } else {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "RollingOut",
            message: format!("{updated} of {desired} replicas updated, {ready} ready"),
        }
    };

    let degraded = if let Some((reason, error)) = &observed.apply_error {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason,
            message: error.clone(),
        }
    } else if !pending.is_empty() {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason: "VolumeClaimPending",
            message: pending.join("; "),
        }
    } else if let Some(first) = failing.first() {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason: first.reason,
            message: crate::pods::describe(&failing),
        }
    } else if !progressing.status && ready < desired {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason: "ReplicasUnavailable",
            message: format!("only {ready} of {desired} replicas are ready"),
        }
    } else {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: false,
            reason: "AsExpected",
            message: "no problem observed".into(),
        }
    };

    let phase = if degraded.status {
        Phase::Degraded
    } else if progressing.status && ready == 0 {
        Phase::Pending
    } else if progressing.status {
        Phase::Progressing
    } else if available.status {
        Phase::Available
    } else {
        Phase::Pending
    };

    let previous = ds.status.as_ref();
    let (policy_status, policy_reason, policy_message, policy_current) =
        policy_verdict(&observed.pods, generation.unwrap_or(0));
    let mut conditions: Vec<Condition> = [available, progressing, degraded]
        .into_iter()
        .map(|v| settle(v, previous, generation, &now))
        .collect();
    conditions.push(settle_as(
        CONDITION_POLICY_ACCEPTED,
        policy_status,
        policy_reason,
        policy_message,
        previous,
        generation,
        &now,
    ));

    DataStreamStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        current_revision: set_status.current_revision.clone(),
        update_revision: set_status.update_revision.clone(),
        selector: selector_string(&name),
        endpoints,
        volume_claims: volume_claims(ds, &observed.claims),
        outdated_replicas: outdated_replicas(&observed.pods, set_status.update_revision.as_deref()),
        phase: Some(phase),
        mutual_tls: observed.stateful_set.map(mutual_tls),
        policy_current_replicas: policy_current,
        conditions,
    }
}

/// Whether the StatefulSet's pod template runs its sidecars with a workload identity (the
/// operator gives them a trust domain only when it signs their certificates).
fn mutual_tls(set: &StatefulSet) -> MutualTls {
    let identity = set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| {
            p.containers
                .iter()
                .find(|c| c.name == crate::desired::SIDECAR_CONTAINER)
        })
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.iter().any(|e| e.name == "DATASTREAM_TRUST_DOMAIN"));
    if identity {
        MutualTls::On
    } else {
        MutualTls::Off
    }
}

/// Per `spec.workload.volumeClaims` entry, the smallest request (capped at the spec's size, so
/// that a status write can never contradict the spec's admission rule) and the smallest
/// provisioned capacity among the current replicas' claims. Entries without any claim yet are
/// left out: admission then lets the size change freely, and nothing exists to shrink.
fn volume_claims(ds: &DataStream, claims: &[&PersistentVolumeClaim]) -> Vec<VolumeClaimStatus> {
    fn smallest<'a>(sizes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        sizes
            .filter_map(|text| Some((Quantity::parse(text)?, text)))
            .min_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(_, text)| text)
    }
    let stream = ds.metadata.name.as_deref().unwrap_or_default();
    ds.spec
        .workload
        .volume_claims
        .iter()
        .filter_map(|template| {
            let names: Vec<String> = (0..ds.spec.replicas)
                .map(|ordinal| claim_name(&template.name, stream, ordinal))
                .collect();
            let own: Vec<&PersistentVolumeClaim> = claims
                .iter()
                .copied()
                .filter(|c| c.metadata.name.as_ref().is_some_and(|n| names.contains(n)))
                .collect();
            let requested =
                smallest(own.iter().filter_map(|c| {
                    storage(c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?)
                }))?;
            let size = match (Quantity::parse(requested), Quantity::parse(&template.size)) {
                (Some(have), Some(want)) if want < have => template.size.clone(),
                _ => requested.to_owned(),
            };
            let capacities: Vec<&str> = own
                .iter()
                .filter_map(|c| storage(c.status.as_ref()?.capacity.as_ref()?))
                .collect();
            let capacity = (capacities.len() == own.len())
                .then(|| smallest(capacities.into_iter()))
                .flatten()
                .map(str::to_owned);
            Some(VolumeClaimStatus {
                name: template.name.clone(),
                size,
                capacity,
            })
        })
        .collect()
}

fn storage(
    resources: &std::collections::BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >,
) -> Option<&str> {
    resources.get("storage").map(|q| q.0.as_str())
}

/// Turns a verdict into a condition, keeping the previous `lastTransitionTime` unless the
/// condition's status flipped (Kubernetes API conventions).
fn settle(
    v: Verdict,
    previous: Option<&DataStreamStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if v.status { "True" } else { "False" };
    settle_as(
        v.type_, status, v.reason, v.message, previous, generation, now,
    )
}

/// A condition whose `lastTransitionTime` moves only when its status changes.
fn settle_as(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: Option<&DataStreamStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .and_then(|p| p.condition(type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// How the sidecars took the policy of `generation`, from the reports on their pods: the
/// condition's status, reason and message, and how many run it.
fn policy_verdict(pods: &[&Pod], generation: i64) -> (&'static str, &'static str, String, i32) {
    let mut current = 0;
    let mut rejected = Vec::new();
    let mut live = 0;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        live += 1;
        let report = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == POD_CONDITION_POLICY))
            .and_then(|c| {
                let (reported, detail) = parse_policy_report(c.message.as_deref()?)?;
                Some((reported, c.status == "True", detail.map(str::to_owned)))
            });
        match report {
            Some((reported, true, _)) if reported == generation => current += 1,
            Some((reported, false, detail)) if reported == generation => rejected.push(format!(
                "{}: {}",
                pod.metadata.name.as_deref().unwrap_or_default(),
                detail.unwrap_or_else(|| "rejected".into())
            )),
            _ => {}
        }
    }
    rejected.sort();
    if !rejected.is_empty() {
        (
            "False",
            "Rejected",
            format!(
                "{} of {live} sidecars rejected the policy of generation {generation}: {}",
                rejected.len(),
                rejected.join("; ")
            ),
            current,
        )
    } else if live > 0 && current == live {
        (
            "True",
            "Accepted",
            format!("all {live} sidecars run the policy of generation {generation}"),
            current,
        )
    } else {
        (
            "Unknown",
            "Pending",
            format!("{current} of {live} sidecars report the policy of generation {generation}"),
            current,
        )
    }
}

#[cfg(test)]
mod tests {
    use datastream_api::v1alpha1::DataStreamSpec;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn stream(replicas: i32) -> DataStream {
        let spec: DataStreamSpec = serde_json::from_value(serde_json::json!({
            "replicas": replicas,
            "workload": { "image": "demo" }
        }))
        .unwrap();
        let mut ds = DataStream::new("catalog", spec);
        ds.metadata.namespace = Some("shop".into());
        ds.metadata.generation = Some(4);
        ds
    }

    /// A StatefulSet whose replicas all run revision `current` while the template is at `update`.
    fn set(spec_replicas: i32, replicas: i32, updated: i32, ready: i32) -> StatefulSet {
        rolling(spec_replicas, replicas, updated, ready, "r1", "r1")
    }

    fn rolling(
        spec_replicas: i32,
        replicas: i32,
        updated: i32,
        ready: i32,
        current: &str,
        update: &str,
    ) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(spec_replicas),
                ..StatefulSetSpec::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(2),
                replicas,
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                current_revision: Some(format!("catalog-{current}")),
                update_revision: Some(format!("catalog-{update}")),
                ..StatefulSetStatus::default()
            }),
        }
    }

    fn claim(name: &str, phase: &str, created: i64) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(time(created)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("fast".into()),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(phase.into()),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn time(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn condition<'a>(s: &'a DataStreamStatus, t: &str) -> &'a Condition {
        s.condition(t).unwrap()
    }

    #[test]
    fn a_stream_whose_replicas_never_became_ready_has_not_rolled_out() {
        // A fresh StatefulSet: revisions converge at once, every pod is "updated", none ready.
        let d = set(3, 3, 3, 0);
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        let progressing = condition(&s, CONDITION_PROGRESSING);
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RollingOut")
        );
        assert_eq!(s.phase, Some(Phase::Pending));
        // Once one replica is ready the rollout completes, and stays complete when replicas
        // later fail (Available and Degraded tell that story).
        let ready = set(3, 3, 3, 3);
        let s = derive(
            &stream(3),
            &Observed {
                stateful_set: Some(&ready),
                ..Observed::default()
            },
            time(20),
        );
        assert_eq!(
            condition(&s, CONDITION_PROGRESSING).reason,
            "RolloutComplete"
        );
        let mut later = stream(3);
        later.status = Some(s);
        let s = derive(&later, &observed, time(30));
        assert_eq!(
            condition(&s, CONDITION_PROGRESSING).reason,
            "RolloutComplete"
        );
        assert_eq!(
            condition(&s, CONDITION_DEGRADED).reason,
            "ReplicasUnavailable"
        );
    }

    #[test]
    fn a_failing_pod_makes_the_stream_degraded_with_the_kubelets_reason() {
        let d = set(2, 2, 2, 1);
        let failing: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "catalog-1"},
            "status": {"containerStatuses": [
                {"name": "workload", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}}
            ]}
        }))
        .unwrap();
        let observed = Observed {
            stateful_set: Some(&d),
            pods: vec![&failing],
            ..Observed::default()
        };
        let s = derive(&stream(2), &observed, time(10));
        let degraded = condition(&s, CONDITION_DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "ErrImagePull");
        assert_eq!(
            degraded.message,
            "pod catalog-1 container workload: ErrImagePull: pull access denied"
        );
        assert_eq!(s.phase, Some(Phase::Degraded));
    }

    fn reporting(name: &str, status: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": POD_CONDITION_POLICY, "status": status,
                                        "reason": "x", "message": message}]}
        }))
        .unwrap()
    }

    #[test]
    fn policy_accepted_counts_the_sidecars_on_the_current_generation() {
        let d = set(3, 3, 3, 3);
        let pods = [
            reporting("catalog-0", "True", "generation 4"),
            reporting("catalog-1", "True", "generation 3"),
            Pod::default(),
        ];
        let observed = Observed {
            stateful_set: Some(&d),
            pods: pods.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.policy_current_replicas, 1);
        let policy = condition(&s, CONDITION_POLICY_ACCEPTED);
        assert_eq!(
            (
                policy.status.as_str(),
                policy.reason.as_str(),
                policy.message.as_str()
            ),
            (
                "Unknown",
                "Pending",
                "1 of 3 sidecars report the policy of generation 4"
            )
        );

        let all = [
            reporting("catalog-0", "True", "generation 4"),
            reporting("catalog-1", "True", "generation 4"),
            reporting("catalog-2", "True", "generation 4"),
        ];
        let observed = Observed {
            stateful_set: Some(&d),
            pods: all.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.policy_current_replicas, 3);
        let policy = condition(&s, CONDITION_POLICY_ACCEPTED);
        assert_eq!(
            (policy.status.as_str(), policy.reason.as_str()),
            ("True", "Accepted")
        );
    }

    #[test]
    fn one_sidecar_rejecting_the_policy_makes_policy_accepted_false_with_its_words() {
        let d = set(2, 2, 2, 2);
        let pods = [
            reporting("catalog-0", "True", "generation 4"),
            reporting(
                "catalog-1",
                "False",
                "generation 4: rejected, keeping the last good policy: traffic.routes[0] (a).timeout: must be more than 0",
            ),
        ];
        let observed = Observed {
            stateful_set: Some(&d),
            pods: pods.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&stream(2), &observed, time(10));
        let policy = condition(&s, CONDITION_POLICY_ACCEPTED);
        assert_eq!(policy.status, "False");
        assert_eq!(policy.reason, "Rejected");
        assert_eq!(
            policy.message,
            "1 of 2 sidecars rejected the policy of generation 4: catalog-1: rejected, keeping the last good policy: traffic.routes[0] (a).timeout: must be more than 0"
        );
        assert_eq!(s.policy_current_replicas, 1);
        // A rejection of an older generation no longer counts.
        let old = [reporting("catalog-0", "False", "generation 3: nope")];
        let observed = Observed {
            stateful_set: Some(&d),
            pods: old.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&stream(2), &observed, time(10));
        assert_eq!(condition(&s, CONDITION_POLICY_ACCEPTED).status, "Unknown");
    }

    #[test]
    fn new_stream_is_pending_and_progressing() {
        let s = derive(&stream(3), &Observed::default(), time(10));
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(condition(&s, CONDITION_PROGRESSING).reason, "Creating");
        assert_eq!(condition(&s, CONDITION_AVAILABLE).status, "False");
        assert_eq!(
            s.selector,
            "app.kubernetes.io/instance=catalog,app.kubernetes.io/name=datastream"
        );
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn all_ready_is_available_with_sorted_endpoints() {
        let d = set(3, 3, 3, 3);
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                Endpoint {
                    addresses: vec!["10.244.1.9".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Endpoint {
                    addresses: vec!["10.244.1.3".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Endpoint {
                    addresses: vec!["10.244.1.5".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            metadata: ObjectMeta::default(),
            ports: None,
        };
        let observed = Observed {
            stateful_set: Some(&d),
            peer_slices: vec![&slice],
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Available));
        assert_eq!(s.endpoints, ["10.244.1.3:7081", "10.244.1.9:7081"]);
        assert_eq!(
            condition(&s, CONDITION_AVAILABLE).reason,
            "AllReplicasReady"
        );
        assert_eq!(condition(&s, CONDITION_PROGRESSING).status, "False");
        assert_eq!(condition(&s, CONDITION_DEGRADED).status, "False");
    }

    #[test]
    fn scaling_is_reported_as_progressing() {
        let d = set(5, 3, 3, 3);
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(5), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Progressing));
        assert_eq!(condition(&s, CONDITION_PROGRESSING).reason, "Scaling");
        assert_eq!(
            condition(&s, CONDITION_AVAILABLE).reason,
            "MinimumReplicasReady"
        );
    }

    #[test]
    fn missing_replicas_after_rollout_degrade() {
        // During a rollout, unready replicas are progress.
        let d = rolling(3, 3, 2, 2, "r1", "r2");
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Progressing));
        assert_eq!(condition(&s, CONDITION_PROGRESSING).reason, "RollingOut");
        assert_eq!(s.current_revision.as_deref(), Some("catalog-r1"));
        assert_eq!(s.update_revision.as_deref(), Some("catalog-r2"));
        // Once the rollout completed, a lost replica is a degradation.
        let d = set(3, 3, 3, 2);
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(
            condition(&s, CONDITION_DEGRADED).reason,
            "ReplicasUnavailable"
        );
        assert_eq!(condition(&s, CONDITION_AVAILABLE).status, "True");
        let observed = Observed {
            stateful_set: Some(&d),
            apply_error: Some(("VolumeResizeFailed", "boom".into())),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(
            condition(&s, CONDITION_DEGRADED).reason,
            "VolumeResizeFailed"
        );
        assert_eq!(condition(&s, CONDITION_DEGRADED).message, "boom");
    }

    #[test]
    fn a_claim_that_does_not_bind_is_reported_after_the_grace() {
        // A new stream: replicas created, none ready yet.
        let d = rolling(3, 3, 3, 0, "r0", "r1");
        let pending = claim("data-catalog-0", "Pending", 100);
        let bound = claim("data-catalog-1", "Bound", 100);
        let observed = Observed {
            stateful_set: Some(&d),
            claims: vec![&pending, &bound],
            ..Observed::default()
        };
        let young = derive(&stream(3), &observed, time(102));
        assert_eq!(condition(&young, CONDITION_DEGRADED).status, "False");
        let s = derive(&stream(3), &observed, time(106));
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = condition(&s, CONDITION_DEGRADED);
        assert_eq!(degraded.reason, "VolumeClaimPending");
        assert_eq!(
            degraded.message,
            "PersistentVolumeClaim data-catalog-0 (StorageClass \"fast\") is not bound to a volume"
        );
        assert_eq!(
            condition(&s, CONDITION_AVAILABLE).reason,
            "VolumeClaimPending"
        );
    }

    fn sized(name: &str, requested: &str, capacity: Option<&str>) -> PersistentVolumeClaim {
        let quantity = |q: &str| {
            std::collections::BTreeMap::from([(
                "storage".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(q.to_owned()),
            )])
        };
        let mut c = claim(name, "Bound", 100);
        c.spec.as_mut().unwrap().resources = Some(VolumeResourceRequirements {
            requests: Some(quantity(requested)),
            limits: None,
        });
        c.status.as_mut().unwrap().capacity = capacity.map(quantity);
        c
    }

    #[test]
    fn claim_sizes_are_the_smallest_among_the_replicas_and_never_above_the_spec() {
        let mut ds = stream(3);
        ds.spec.workload.volume_claims = serde_json::from_value(serde_json::json!([
            { "name": "data", "mountPath": "/data", "size": "2Gi" },
            { "name": "logs", "mountPath": "/logs", "size": "1Gi" },
            { "name": "new", "mountPath": "/new", "size": "1Gi" },
        ]))
        .unwrap();
        // data: a growth to 2Gi that reached two claims; the third still asks 1Gi and none has
        // grown yet. logs: one claim grown by hand beyond the spec, one not provisioned yet.
        // A claim of a removed replica (ordinal 3) does not count.
        let claims = [
            sized("data-catalog-0", "2Gi", Some("1Gi")),
            sized("data-catalog-1", "2048Mi", Some("1Gi")),
            sized("data-catalog-2", "1Gi", Some("1Gi")),
            sized("data-catalog-3", "512Mi", Some("512Mi")),
            sized("logs-catalog-0", "4Gi", Some("4Gi")),
            sized("logs-catalog-1", "4Gi", None),
        ];
        let observed = Observed {
            claims: claims.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&ds, &observed, time(200));
        assert_eq!(
            s.volume_claims,
            [
                VolumeClaimStatus {
                    name: "data".into(),
                    size: "1Gi".into(),
                    capacity: Some("1Gi".into()),
                },
                VolumeClaimStatus {
                    name: "logs".into(),
                    size: "1Gi".into(),
                    capacity: None,
                },
            ]
        );
    }

    fn pod_meta(name: &str, revision: Option<&str>) -> Pod {
        let mut meta = ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        };
        meta.labels =
            revision.map(|r| std::collections::BTreeMap::from([(REVISION_LABEL.into(), r.into())]));
        Pod {
            metadata: meta,
            ..Pod::default()
        }
    }

    #[test]
    fn outdated_replicas_are_listed_in_ordinal_order_until_the_rollout_is_done() {
        let d = rolling(12, 12, 3, 12, "r1", "r2");
        let pods = [
            pod_meta("catalog-10", Some("catalog-r1")),
            pod_meta("catalog-11", Some("catalog-r2")),
            pod_meta("catalog-2", Some("catalog-r1")),
            pod_meta("catalog-0", Some("catalog-r1")),
            pod_meta("catalog-1", None),
        ];
        let observed = Observed {
            stateful_set: Some(&d),
            pods: pods.iter().collect(),
            ..Observed::default()
        };
        let s = derive(&stream(12), &observed, time(300));
        assert_eq!(
            s.outdated_replicas,
            ["catalog-0", "catalog-1", "catalog-2", "catalog-10"]
        );
        let done = rolling(12, 12, 12, 12, "r2", "r2");
        let updated: Vec<_> = (0..12)
            .map(|i| pod_meta(&format!("catalog-{i}"), Some("catalog-r2")))
            .collect();
        let observed = Observed {
            stateful_set: Some(&done),
            pods: updated.iter().collect(),
            ..Observed::default()
        };
        assert!(
            derive(&stream(12), &observed, time(300))
                .outdated_replicas
                .is_empty()
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let d = set(3, 3, 3, 3);
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let mut ds = stream(3);
        let first = derive(&ds, &observed, time(10));
        ds.status = Some(first.clone());
        let second = derive(&ds, &observed, time(99));
        assert_eq!(
            first, second,
            "an unchanged world must yield an identical status (no write)"
        );

        let d2 = rolling(3, 3, 3, 0, "r1", "r2");
        let observed = Observed {
            stateful_set: Some(&d2),
            ..Observed::default()
        };
        let third = derive(&ds, &observed, time(200));
        assert_eq!(
            condition(&third, CONDITION_AVAILABLE).last_transition_time,
            time(200)
        );
        assert_eq!(
            condition(&third, CONDITION_DEGRADED).last_transition_time,
            condition(&second, CONDITION_DEGRADED).last_transition_time
        );
    }

    #[test]
    fn scaled_to_zero_is_not_available() {
        let d = set(0, 0, 0, 0);
        let observed = Observed {
            stateful_set: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(0), &observed, time(1));
        assert_eq!(condition(&s, CONDITION_AVAILABLE).reason, "ScaledToZero");
    }
}
