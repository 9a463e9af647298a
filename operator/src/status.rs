//! Status derivation: what `kubectl get dst` shows, computed only from observed children.
//!
//! Pure functions, so that "status written only when it changed" can be decided by comparing two
//! values, and so that condition timestamps move only when a condition's status flips.

use datastream_api::v1alpha1::{
    CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_PROGRESSING, DataStream, DataStreamStatus,
    Phase, SIDECAR_PEER_PORT,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::desired::selector_string;

/// What the operator saw of a stream's children during one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The stream's Deployment, if it exists yet.
    pub deployment: Option<&'a Deployment>,
    /// EndpointSlices of the stream's peer Service.
    pub peer_slices: Vec<&'a EndpointSlice>,
    /// The error of this reconcile's apply step, if it failed.
    pub apply_error: Option<String>,
}

/// One condition's new state, before timestamps are settled.
struct Verdict {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// Computes the status `ds` should have, given what was observed. `now` is used only for
/// conditions whose status changed.
pub fn derive(ds: &DataStream, observed: &Observed<'_>, now: Time) -> DataStreamStatus {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let generation = ds.metadata.generation;
    let desired = ds.spec.replicas;

    let deploy_status = observed
        .deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let replicas = deploy_status.replicas.unwrap_or(0);
    let ready = deploy_status.ready_replicas.unwrap_or(0);
    let updated = deploy_status.updated_replicas.unwrap_or(0);
    let deployment_current = observed.deployment.is_some_and(|d| {
        d.metadata.generation.is_some()
            && d.metadata.generation == deploy_status.observed_generation
    }) && observed
        .deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        == Some(desired);

    // The Deployment controller says "NewReplicaSetAvailable" once a rollout has completed; a
    // replica lost after that is a degradation, not progress.
    let deploy_progress = observed
        .deployment
        .and_then(|d| deployment_condition(d, "Progressing"));
    let rollout_settled = deploy_progress
        .as_ref()
        .is_some_and(|(_, reason)| reason == "NewReplicaSetAvailable");
    let deadline_exceeded = deploy_progress
        .as_ref()
        .is_some_and(|(_, reason)| reason == "ProgressDeadlineExceeded");
    let pods_current = deployment_current && updated == desired && replicas == desired;
    let rolled_out = pods_current && (ready == desired || rollout_settled || deadline_exceeded);

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

    let progressing = if observed.deployment.is_none() {
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
    } else if replicas != desired {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "Scaling",
            message: format!("scaling from {replicas} to {desired} replicas"),
        }
    } else {
        Verdict {
            type_: CONDITION_PROGRESSING,
            status: true,
            reason: "RollingOut",
            message: format!("{updated} of {desired} replicas updated, {ready} ready"),
        }
    };

    let degraded = if let Some(error) = &observed.apply_error {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason: "ReconcileFailed",
            message: error.clone(),
        }
    } else if deadline_exceeded && ready < desired {
        Verdict {
            type_: CONDITION_DEGRADED,
            status: true,
            reason: "ProgressDeadlineExceeded",
            message: format!("the rollout stalled with {ready} of {desired} replicas ready"),
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
    let conditions = [available, progressing, degraded]
        .into_iter()
        .map(|v| settle(v, previous, generation, &now))
        .collect();

    DataStreamStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        selector: selector_string(&name),
        endpoints,
        phase: Some(phase),
        conditions,
    }
}

fn deployment_condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    let conditions = d.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
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
    let last_transition_time = previous
        .and_then(|p| p.condition(v.type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: v.type_.to_owned(),
        status: status.to_owned(),
        reason: v.reason.to_owned(),
        message: v.message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use datastream_api::v1alpha1::DataStreamSpec;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
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

    fn deployment(spec_replicas: i32, replicas: i32, updated: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(spec_replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
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
        let d = deployment(3, 3, 3, 3);
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
            deployment: Some(&d),
            peer_slices: vec![&slice],
            apply_error: None,
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
        let d = deployment(5, 3, 3, 3);
        let observed = Observed {
            deployment: Some(&d),
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

    fn with_progress(mut d: Deployment, reason: &str) -> Deployment {
        d.status.as_mut().unwrap().conditions =
            Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..Default::default()
            }]);
        d
    }

    #[test]
    fn missing_replicas_after_rollout_degrade() {
        // During the first rollout, unready replicas are progress.
        let d = with_progress(deployment(3, 3, 3, 2), "ReplicaSetUpdated");
        let observed = Observed {
            deployment: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Progressing));
        // Once the rollout completed, a lost replica is a degradation.
        let d = with_progress(deployment(3, 3, 3, 2), "NewReplicaSetAvailable");
        let observed = Observed {
            deployment: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(
            condition(&s, CONDITION_DEGRADED).reason,
            "ReplicasUnavailable"
        );
        assert_eq!(condition(&s, CONDITION_AVAILABLE).status, "True");
        // A stalled rollout says so.
        let d = with_progress(deployment(3, 3, 3, 1), "ProgressDeadlineExceeded");
        let observed = Observed {
            deployment: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(
            condition(&s, CONDITION_DEGRADED).reason,
            "ProgressDeadlineExceeded"
        );
        let observed = Observed {
            deployment: Some(&d),
            apply_error: Some("boom".into()),
            ..Observed::default()
        };
        let s = derive(&stream(3), &observed, time(10));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(condition(&s, CONDITION_DEGRADED).reason, "ReconcileFailed");
        assert_eq!(condition(&s, CONDITION_DEGRADED).message, "boom");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let d = deployment(3, 3, 3, 3);
        let observed = Observed {
            deployment: Some(&d),
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

        let d2 = deployment(3, 3, 3, 0);
        let observed = Observed {
            deployment: Some(&d2),
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
        let d = deployment(0, 0, 0, 0);
        let observed = Observed {
            deployment: Some(&d),
            ..Observed::default()
        };
        let s = derive(&stream(0), &observed, time(1));
        assert_eq!(condition(&s, CONDITION_AVAILABLE).reason, "ScaledToZero");
    }
}
