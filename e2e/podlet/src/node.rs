//! Node registration, status heartbeats and the node Lease.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Kubelet version the node reports (matches the control plane build).
pub const KUBELET_VERSION: &str = "v1.36.3";
/// Namespace of node leases.
const LEASE_NS: &str = "kube-node-lease";
/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the full node status is re-posted as a heartbeat.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
const LEASE_SECONDS: i32 = 40;
/// Field manager used for every write of the podlet.
pub const FIELD_MANAGER: &str = "datastream-podlet";

/// The node's identity and advertised resources.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub ip: Ipv4Addr,
    /// `spec.podCIDR`.
    pub pod_cidr: String,
}

/// The Node object the podlet registers (labels and spec; status is separate).
pub fn node_object(info: &NodeInfo) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), info.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        (
            "node.kubernetes.io/instance-type".to_owned(),
            "datastream-podlet".to_owned(),
        ),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(info.pod_cidr.clone()),
            pod_cidrs: Some(vec![info.pod_cidr.clone()]),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The node status: Ready, no pressure, addresses, capacity and version.
pub fn node_status(info: &NodeInfo, now: Timestamp, since: Timestamp) -> NodeStatus {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    };
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity("8".to_owned())),
        ("memory".to_owned(), Quantity("16Gi".to_owned())),
        ("pods".to_owned(), Quantity("110".to_owned())),
        ("ephemeral-storage".to_owned(), Quantity("100Gi".to_owned())),
    ]);
    NodeStatus {
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "podlet has sufficient memory available",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "podlet has no disk pressure",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "podlet has sufficient PID available",
            ),
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "podlet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: info.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: info.name.clone(),
            },
        ]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().to_owned(),
            operating_system: "linux".to_owned(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            kube_proxy_version: String::new(),
            container_runtime_version: "process://datastream-podlet".to_owned(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            os_image: "DataStream podlet".to_owned(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates the Node when missing (or refreshes labels and spec when it exists) and posts its status.
/// Returns the node's uid for the Lease owner reference.
pub async fn register(client: &Client, info: &NodeInfo, since: Timestamp) -> kube::Result<String> {
    let api = Api::<Node>::all(client.clone());
    let desired = node_object(info);
    let node = match api.get_opt(&info.name).await? {
        None => match api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &desired,
            )
            .await
        {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 409 => api.get(&info.name).await?,
            Err(e) => return Err(e),
        },
        Some(_) => {
            // Strip taints a previous owner (or the node lifecycle controller) left behind.
            let patch = serde_json::json!({
                "metadata": { "labels": desired.metadata.labels },
                "spec": { "podCIDR": info.pod_cidr, "podCIDRs": [info.pod_cidr], "taints": null, "unschedulable": null },
            });
            api.patch(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?
        }
    };
    post_status(client, info, since).await?;
    clear_taints(client, &info.name, &node).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Removes every taint. The TaintNodesByCondition admission plugin puts `node.kubernetes.io/not-ready`
/// on a new Node, and only the node lifecycle controller would lift it once the node reports Ready; this
/// cluster does not run that controller, so the podlet lifts it itself after posting a Ready status.
async fn clear_taints(client: &Client, name: &str, node: &Node) -> kube::Result<()> {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| !t.is_empty());
    if tainted {
        let api = Api::<Node>::all(client.clone());
        let patch = serde_json::json!({ "spec": { "taints": null } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = name, "removed node taints");
    }
    Ok(())
}

/// Posts a fresh node status (heartbeat).
pub async fn post_status(client: &Client, info: &NodeInfo, since: Timestamp) -> kube::Result<()> {
    let api = Api::<Node>::all(client.clone());
    let status = node_status(info, Timestamp::now(), since);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Creates or renews the node Lease.
pub async fn renew_lease(client: &Client, info: &NodeInfo, node_uid: &str) -> kube::Result<()> {
    let api = Api::<Lease>::namespaced(client.clone(), LEASE_NS);
    let now = MicroTime(Timestamp::now());
    match api.get_opt(&info.name).await? {
        Some(_) => {
            let patch = serde_json::json!({
                "spec": { "holderIdentity": info.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now }
            });
            api.patch(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(info.name.clone()),
                    namespace: Some(LEASE_NS.into()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: info.name.clone(),
                            uid: node_uid.to_owned(),
                            ..OwnerReference::default()
                        }]
                    }),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(info.name.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Keeps the Lease and node status fresh until cancelled; errors are logged and retried next tick.
pub async fn heartbeat(
    client: Client,
    info: NodeInfo,
    mut node_uid: String,
    since: Timestamp,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &info, &node_uid).await {
                    tracing::warn!(error = %e, "renewing the node lease failed");
                }
            }
            _ = status_tick.tick() => match post_status(&client, &info, since).await {
                Ok(()) => {}
                // Someone deleted the Node: register it again, as a kubelet would.
                Err(kube::Error::Api(e)) if e.code == 404 => match register(&client, &info, since).await {
                    Ok(uid) => {
                        tracing::info!(node = %info.name, "node re-registered after it was deleted");
                        node_uid = uid;
                    }
                    Err(e) => tracing::warn!(error = %e, "re-registering the node failed"),
                },
                Err(e) => tracing::warn!(error = %e, "posting node status failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            name: "e2e-node-0".into(),
            ip: "10.244.0.1".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".into(),
        }
    }

    #[test]
    fn node_has_required_labels_and_no_taints() {
        let n = node_object(&info());
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "e2e-node-0");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(labels.contains_key("kubernetes.io/arch"));
        assert!(n.spec.unwrap().taints.is_none());
    }

    #[test]
    fn status_is_ready_with_capacity() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&info(), t, t);
        let conds = s.conditions.unwrap();
        let get = |ty: &str| conds.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        assert_eq!(get("Ready"), "True");
        for p in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(get(p), "False");
        }
        let addrs = s.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.244.0.1");
        assert_eq!(addrs[1].type_, "Hostname");
        let cap = s.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "8");
        assert_eq!(cap["memory"].0, "16Gi");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(s.allocatable.unwrap()["pods"].0, "110");
        assert_eq!(s.node_info.unwrap().kubelet_version, KUBELET_VERSION);
    }
}
