//! Kubernetes Events for pods, so `kubectl describe pod` and `kubectl get events` explain what the
//! podlet did (started, killed, back-off, probe failures), as the kubelet's events do.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Publishes events about one pod without blocking its worker.
#[derive(Clone)]
pub struct PodEvents {
    recorder: Recorder,
    reference: ObjectReference,
}

impl PodEvents {
    /// Events about `pod`, reported as component `kubelet` from node `node`.
    pub fn new(client: Client, node: &str, pod: &Pod) -> Self {
        let reporter = Reporter {
            controller: "kubelet".into(),
            instance: Some(node.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            reference: pod.object_ref(&()),
        }
    }

    /// A `Normal` event.
    pub fn normal(&self, reason: &str, action: &str, note: String) {
        self.emit(EventType::Normal, reason, action, note);
    }

    /// A `Warning` event.
    pub fn warning(&self, reason: &str, action: &str, note: String) {
        self.emit(EventType::Warning, reason, action, note);
    }

    fn emit(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            // The API caps notes at 1 KiB.
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let reference = self.reference.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, reason = %ev.reason, "publishing event failed");
            }
        });
    }
}
