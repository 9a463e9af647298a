//! Kubernetes discovery: the own DataStream (its `spec.traffic` is the policy) and the
//! EndpointSlices of the stream's headless peer Service (the replicas), both watched with
//! kube-rs under the pod's service account.
//!
//! The local workload is always part of the set, at `127.0.0.1:<workload port>`, even before
//! this pod turns ready and appears in the slices; the slice entry with the pod's own IP is
//! that same replica and is not added again. Peers are reached at their pod IP on the port
//! named `peer` (their sidecar's peer listener).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use datastream_api::v1alpha1::{DataStream, POD_CONDITION_POLICY, policy_report_message};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::config::compile::compile;
use crate::state::Shared;
use datastream_lb::endpoint::EndpointSpec;

/// Name of the EndpointSlice port that leads to a peer's sidecar.
pub const PEER_PORT_NAME: &str = "peer";

/// Who this sidecar is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Namespace of the pod and the DataStream.
    pub namespace: String,
    /// The DataStream's name.
    pub datastream: String,
    /// The headless peer Service.
    pub peer_service: String,
    /// The pod's IP.
    pub pod_ip: IpAddr,
    /// The pod's name.
    pub pod_name: String,
    /// The local workload.
    pub workload: SocketAddr,
}

/// Watches the DataStream and the peer EndpointSlices until `close` turns true, and reports on
/// the pod whether each generation's policy was accepted.
pub async fn run(client: Client, me: Identity, shared: Arc<Shared>, close: watch::Receiver<bool>) {
    let (reports, reported) = watch::channel(None);
    let policy = watch_policy(client.clone(), me.clone(), Arc::clone(&shared), reports);
    let report = report_policy(client.clone(), me.clone(), reported);
    let endpoints = watch_endpoints(client, me, shared);
    let mut close = close;
    tokio::select! {
        _ = policy => {}
        _ = report => {}
        _ = endpoints => {}
        _ = close.wait_for(|c| *c) => {}
    }
}

/// What a sidecar says on its pod about the policy of one generation of its DataStream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    /// The DataStream's `metadata.generation`.
    pub generation: i64,
    /// Whether the policy compiled and is live.
    pub accepted: bool,
    /// Why it was rejected.
    pub detail: Option<String>,
}

impl PolicyReport {
    /// The strategic-merge patch of `pods/status` that sets the report's condition; the
    /// kubelet's conditions, merged by type, stay as they are.
    pub fn status_patch(&self, now: k8s_openapi::jiff::Timestamp) -> serde_json::Value {
        let (status, reason) = if self.accepted {
            ("True", "Accepted")
        } else {
            ("False", "Rejected")
        };
        serde_json::json!({
            "status": {
                "conditions": [{
                    "type": POD_CONDITION_POLICY,
                    "status": status,
                    "reason": reason,
                    "message": policy_report_message(self.generation, self.detail.as_deref()),
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
                }]
            }
        })
    }
}

/// Writes the latest report to the pod's status, retrying with backoff (1 s doubling to 30 s)
/// until it lands or a newer report replaces it.
async fn report_policy(
    client: Client,
    me: Identity,
    mut reports: watch::Receiver<Option<PolicyReport>>,
) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &me.namespace);
    while reports.changed().await.is_ok() {
        let mut delay = std::time::Duration::from_secs(1);
        loop {
            let Some(report) = reports.borrow_and_update().clone() else {
                break;
            };
            let patch = report.status_patch(k8s_openapi::jiff::Timestamp::now());
            match pods
                .patch_status(
                    &me.pod_name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::debug!(
                        generation = report.generation,
                        accepted = report.accepted,
                        "policy report written to the pod"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, ?delay, "cannot write the policy report to the pod; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = reports.changed() => if changed.is_err() { return },
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }
}

async fn watch_policy(
    client: Client,
    me: Identity,
    shared: Arc<Shared>,
    reports: watch::Sender<Option<PolicyReport>>,
) {
    let api: Api<DataStream> = Api::namespaced(client, &me.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", me.datastream));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(ds) | Event::InitApply(ds)) => {
                if let Some(report) = apply_policy(&shared, &ds) {
                    reports.send_replace(Some(report));
                }
            }
            Ok(Event::Delete(ds)) => tracing::warn!(
                name = %ds.name_any(),
                "own DataStream deleted; keeping the last policy"
            ),
            Ok(Event::Init | Event::InitDone) => {}
            Err(error) => tracing::warn!(%error, "DataStream watch failed; retrying"),
        }
    }
}

/// Compiles and installs the stream's policy unless this generation is live already; returns
/// what to report on the pod.
fn apply_policy(shared: &Shared, ds: &DataStream) -> Option<PolicyReport> {
    let generation = ds.metadata.generation.unwrap_or(0);
    let live = shared.config_status();
    let source = format!(
        "datastream {}/{} generation {generation}",
        ds.namespace().unwrap_or_default(),
        ds.name_any()
    );
    if live.source == source {
        return None;
    }
    Some(
        match compile(&ds.spec.traffic, live.version + 1, &source, &shared.metrics) {
            Ok(policy) => {
                shared.set_policy(policy);
                PolicyReport {
                    generation,
                    accepted: true,
                    detail: None,
                }
            }
            Err(errors) => {
                let detail = errors.join("; ");
                shared.reject_config(format!("{source}: {detail}"));
                PolicyReport {
                    generation,
                    accepted: false,
                    detail: Some(format!("rejected, keeping the last good policy: {detail}")),
                }
            }
        },
    )
}

async fn watch_endpoints(client: Client, me: Identity, shared: Arc<Shared>) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &me.namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={}", me.peer_service));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut slices: BTreeMap<String, Vec<EndpointSpec>> = BTreeMap::new();
    let mut buffer: Option<BTreeMap<String, Vec<EndpointSpec>>> = None;
    let mut last: Option<Vec<EndpointSpec>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => {
                buffer = Some(BTreeMap::new());
                continue;
            }
            Ok(Event::InitApply(s)) => {
                if let Some(b) = buffer.as_mut() {
                    b.insert(s.name_any(), slice_endpoints(&s, &me));
                }
                continue;
            }
            Ok(Event::InitDone) => slices = buffer.take().unwrap_or_default(),
            Ok(Event::Apply(s)) => {
                slices.insert(s.name_any(), slice_endpoints(&s, &me));
            }
            Ok(Event::Delete(s)) => {
                slices.remove(&s.name_any());
            }
            Err(error) => {
                tracing::warn!(%error, "EndpointSlice watch failed; retrying");
                continue;
            }
        }
        let set = endpoint_set(&slices, &me);
        if last.as_ref() != Some(&set) {
            shared.set_endpoints(&set);
            last = Some(set);
        }
    }
}

/// The replicas of all slices plus the local workload, deduplicated by address.
pub fn endpoint_set(
    slices: &BTreeMap<String, Vec<EndpointSpec>>,
    me: &Identity,
) -> Vec<EndpointSpec> {
    let mut set = vec![EndpointSpec {
        addr: me.workload,
        name: me.pod_name.clone(),
        local: true,
        serving: true,
    }];
    for spec in slices.values().flatten() {
        if !set.iter().any(|e| e.addr == spec.addr) {
            set.push(spec.clone());
        }
    }
    set
}

/// The peers one slice lists: ready or still-serving entries, on the `peer` port, without the
/// pod itself.
pub fn slice_endpoints(slice: &EndpointSlice, me: &Identity) -> Vec<EndpointSpec> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(PEER_PORT_NAME))
        .or_else(|| ports.first())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let cond = ep.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        if !serving {
            continue;
        }
        let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        if ip == me.pod_ip {
            continue;
        }
        let name = ep
            .target_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .or_else(|| ep.hostname.clone())
            .unwrap_or_else(|| ip.to_string());
        out.push(EndpointSpec {
            addr: SocketAddr::new(ip, port),
            name,
            local: false,
            serving: ready && !terminating,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            namespace: "ns".into(),
            datastream: "orders".into(),
            peer_service: "orders-peers".into(),
            pod_ip: "10.244.1.2".parse().unwrap(),
            pod_name: "orders-a".into(),
            workload: "127.0.0.1:8080".parse().unwrap(),
        }
    }

    #[test]
    fn slices_become_peers_and_the_local_workload() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "orders-peers-x" },
            "addressType": "IPv4",
            "ports": [{ "name": "peer", "port": 7081 }],
            "endpoints": [
                { "addresses": ["10.244.1.2"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "orders-a" } },
                { "addresses": ["10.244.1.3"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "orders-b" } },
                { "addresses": ["10.244.1.4"], "conditions": { "ready": false, "serving": true, "terminating": true }, "targetRef": { "kind": "Pod", "name": "orders-c" } },
                { "addresses": ["10.244.1.5"], "conditions": { "ready": false, "serving": false } }
            ]
        }))
        .unwrap();
        let peers = slice_endpoints(&slice, &me());
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].addr, "10.244.1.3:7081".parse().unwrap());
        assert_eq!(peers[0].name, "orders-b");
        assert!(peers[0].serving);
        assert!(!peers[1].serving, "terminating peers drain");
        let mut slices = BTreeMap::new();
        slices.insert("x".to_owned(), peers);
        let set = endpoint_set(&slices, &me());
        assert_eq!(set.len(), 3);
        assert!(set[0].local);
        assert_eq!(set[0].addr, "127.0.0.1:8080".parse().unwrap());
    }
}
