//! State shared by the node loop, the pod controller and every pod worker.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use kube::Client;

use crate::images::ImageStore;
use crate::ipam::Ipam;
use crate::node::NodeInfo;
use crate::runtime::Runc;

/// Shared, long-lived podlet state.
pub struct Context {
    /// API client (admin kubeconfig).
    pub client: Client,
    /// The node this podlet runs pods for.
    pub node: NodeInfo,
    /// Bridge the pod veths are enslaved to.
    pub bridge: String,
    /// Prefix length of pod addresses (the cluster network, e.g. 16 for 10.244.0.0/16).
    pub cluster_prefix: u8,
    /// The node's images (OCI layouts) and their unpacked cache.
    pub images: ImageStore,
    /// The container runtime.
    pub runc: Runc,
    /// Pod IP allocator.
    pub ipam: Mutex<Ipam>,
    /// `e2e/.state` (absolute).
    pub state_dir: PathBuf,
    /// Address pods use to reach the apiserver (`KUBERNETES_SERVICE_HOST`).
    pub apiserver_host: Ipv4Addr,
    /// Port pods use to reach the apiserver (`KUBERNETES_SERVICE_PORT`).
    pub apiserver_port: u16,
}

impl Context {
    /// Directory of per-pod runtime state (volumes, container bundles, pid files).
    pub fn pods_run_dir(&self) -> PathBuf {
        self.state_dir.join("run").join("pods")
    }

    /// Directory of one pod.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_run_dir().join(uid)
    }

    /// Container log file, appended to across restarts.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.state_dir
            .join("logs")
            .join("pods")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// The service variables every container gets, as the kubelet injects for the `kubernetes` Service,
    /// but pointing at the apiserver's advertise address: there is no kube-proxy for the ClusterIP.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let (h, p) = (self.apiserver_host, self.apiserver_port);
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), h.to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), p.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.to_string()),
            ("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}")),
            ("KUBERNETES_PORT_443_TCP".into(), format!("tcp://{h}:{p}")),
            ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT".into(), p.to_string()),
            ("KUBERNETES_PORT_443_TCP_ADDR".into(), h.to_string()),
        ]
    }
}
