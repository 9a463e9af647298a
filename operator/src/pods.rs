//! What the operator keeps of a replica's pod, and the failures it reads from it.
//!
//! The controller watches the replicas' pods to report, within seconds, what keeps a replica from
//! running: an image that cannot be pulled, a container that crash-loops or cannot be created, a
//! pod no node can take. Those live in the pod's status, so the watch carries full pods, but the
//! cache keeps only [`strip`]'s summary: the labels (the revision), the scheduling condition,
//! each container's waiting reason and last exit, and the sidecar's policy report. A full pod is
//! about 10 KiB; the summary a few hundred bytes.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodStatus,
};

/// Waiting reasons that mean a container will not start without a change (to the spec, the
/// image, the node or the workload), as the kubelet names them.
const FAILING_REASONS: [&str; 10] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreCreateHookError",
    "PostStartHookError",
];

/// Prefix of pod condition types the sidecar writes.
pub const SIDECAR_CONDITION_PREFIX: &str = "datastream.dev/";

/// One thing that keeps a replica from running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The kubelet's or scheduler's reason (`ImagePullBackOff`, `Unschedulable`, ...).
    pub reason: &'static str,
    /// The pod, the container and what they said.
    pub message: String,
}

/// Reduces `pod` to what status derivation reads (see the module docs).
pub fn strip(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    pod.spec = None;
    let Some(status) = pod.status.take() else {
        return;
    };
    let keep_container = |c: ContainerStatus| ContainerStatus {
        name: c.name,
        ready: c.ready,
        restart_count: c.restart_count,
        state: c.state.map(|s| ContainerState {
            waiting: s.waiting.map(|w| ContainerStateWaiting {
                reason: w.reason,
                message: w.message,
            }),
            ..ContainerState::default()
        }),
        last_state: c.last_state.map(|s| ContainerState {
            terminated: s.terminated.map(|t| ContainerStateTerminated {
                exit_code: t.exit_code,
                reason: t.reason,
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    pod.status = Some(PodStatus {
        phase: status.phase,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| {
                    (c.type_ == "PodScheduled" && c.status == "False")
                        || c.type_.starts_with(SIDECAR_CONDITION_PREFIX)
                })
                .map(|mut c| {
                    c.last_probe_time = None;
                    c.last_transition_time = None;
                    c
                })
                .collect()
        }),
        container_statuses: status
            .container_statuses
            .map(|s| s.into_iter().map(keep_container).collect()),
        init_container_statuses: status
            .init_container_statuses
            .map(|s| s.into_iter().map(keep_container).collect()),
        ..PodStatus::default()
    });
}

/// What keeps the replicas in `pods` from running, in the order of their ordinals.
pub fn problems(pods: &[&Pod]) -> Vec<Problem> {
    let mut sorted: Vec<&Pod> = pods.to_vec();
    sorted.sort_by_key(|p| {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let ordinal = name
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        (ordinal, name.to_owned())
    });
    let mut found = Vec::new();
    for pod in sorted {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        if let Some(unschedulable) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
        {
            found.push(Problem {
                reason: "Unschedulable",
                message: format!(
                    "pod {name} cannot be scheduled: {}",
                    unschedulable
                        .message
                        .as_deref()
                        .unwrap_or("no node fits it")
                ),
            });
            continue;
        }
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for container in containers {
            let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let Some(reason) = waiting
                .reason
                .as_deref()
                .and_then(|r| FAILING_REASONS.iter().copied().find(|f| *f == r))
            else {
                continue;
            };
            let mut message = format!("pod {name} container {}: {reason}", container.name);
            if let Some(text) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
                message.push_str(": ");
                message.push_str(text);
            }
            if let Some(exit) = container
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
            {
                message.push_str(&format!(
                    " (last exit code {}{})",
                    exit.exit_code,
                    exit.reason
                        .as_deref()
                        .map(|r| format!(", {r}"))
                        .unwrap_or_default()
                ));
            }
            found.push(Problem { reason, message });
        }
    }
    found
}

/// `problems` as one condition message: the first five, and how many more.
pub fn describe(problems: &[Problem]) -> String {
    const SHOWN: usize = 5;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn image_pull_and_crash_loop_failures_are_reported_with_the_kubelets_words() {
        let pulling = pod(json!({
            "metadata": {"name": "kv-1"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "sidecar", "image": "s", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {}}},
                {"name": "workload", "image": "example.com/kv:nope", "imageID": "", "ready": false,
                 "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                 "message": "Back-off pulling image \"example.com/kv:nope\""}}}
            ]}
        }));
        let crashing = pod(json!({
            "metadata": {"name": "kv-0"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "workload", "image": "kv", "imageID": "", "ready": false, "restartCount": 4,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                 "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
            ]}
        }));
        let starting = pod(json!({
            "metadata": {"name": "kv-2"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "workload", "image": "kv", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]}
        }));
        let found = problems(&[&pulling, &crashing, &starting]);
        assert_eq!(
            found,
            [
                Problem {
                    reason: "CrashLoopBackOff",
                    message: "pod kv-0 container workload: CrashLoopBackOff: back-off 40s restarting failed container (last exit code 137, OOMKilled)".into(),
                },
                Problem {
                    reason: "ImagePullBackOff",
                    message: "pod kv-1 container workload: ImagePullBackOff: Back-off pulling image \"example.com/kv:nope\"".into(),
                },
            ]
        );
    }

    #[test]
    fn an_unschedulable_pod_is_reported_with_the_schedulers_message() {
        let pending = pod(json!({
            "metadata": {"name": "kv-0"},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}
            ]}
        }));
        assert_eq!(
            problems(&[&pending]),
            [Problem {
                reason: "Unschedulable",
                message: "pod kv-0 cannot be scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.".into(),
            }]
        );
        // A pod being deleted is not a problem of the stream.
        let mut leaving = pending.clone();
        leaving.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(problems(&[&leaving]), []);
    }

    #[test]
    fn the_cached_summary_keeps_what_is_read_and_drops_the_rest() {
        let mut full = pod(json!({
            "metadata": {"name": "kv-0", "labels": {"controller-revision-hash": "kv-1"},
                         "annotations": {"big": "x"}, "managedFields": [{"manager": "kubelet"}]},
            "spec": {"containers": [{"name": "workload", "image": "kv"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "datastream.dev/PolicyAccepted", "status": "True", "reason": "Accepted",
                 "message": "generation 3", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ], "containerStatuses": [
                {"name": "workload", "image": "kv", "imageID": "sha256:1", "ready": true, "restartCount": 1,
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-01-01T00:00:00Z"}}}
            ]}
        }));
        strip(&mut full);
        assert_eq!(
            serde_json::to_value(&full).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "kv-0", "labels": {"controller-revision-hash": "kv-1"}},
                "status": {"phase": "Running", "conditions": [
                    {"type": "datastream.dev/PolicyAccepted", "status": "True", "reason": "Accepted",
                     "message": "generation 3"}
                ], "containerStatuses": [
                    {"name": "workload", "image": "", "imageID": "", "ready": true, "restartCount": 1,
                     "state": {}, "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ]}
            })
        );
    }

    #[test]
    fn a_long_list_of_problems_is_cut_to_five() {
        let many: Vec<Problem> = (0..8)
            .map(|i| Problem {
                reason: "ErrImagePull",
                message: format!("pod kv-{i}"),
            })
            .collect();
        assert_eq!(
            describe(&many),
            "pod kv-0; pod kv-1; pod kv-2; pod kv-3; pod kv-4; and 3 more"
        );
    }
}
