//! Command-line flags of the podlet.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

use crate::ipam::Ipv4Cidr;

/// DataStream process kubelet: runs the pods bound to one node as local processes in network namespaces.
#[derive(Debug, Clone, Parser)]
#[command(name = "datastream-podlet", version)]
pub struct Args {
    /// Kubeconfig with rights to manage nodes, leases, pods and service-account tokens.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, default_value = "e2e-node-0")]
    pub node_name: String,
    /// Bridge (in the podlet's network namespace) that pod veths join.
    #[arg(long, default_value = "dsbr0")]
    pub bridge: String,
    /// Range pod IPs are taken from.
    #[arg(long, default_value = "10.244.1.0/24")]
    pub pod_cidr: Ipv4Cidr,
    /// The bridge network; pods get addresses with its prefix length and reach only it.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Cidr,
    /// Node InternalIP (the bridge address).
    #[arg(long, default_value = "10.244.0.1")]
    pub node_ip: Ipv4Addr,
    /// apiserver address handed to pods as KUBERNETES_SERVICE_HOST.
    #[arg(long, default_value = "10.244.0.1")]
    pub apiserver_host: Ipv4Addr,
    /// apiserver port handed to pods as KUBERNETES_SERVICE_PORT.
    #[arg(long, default_value_t = 6443)]
    pub apiserver_port: u16,
    /// State directory (logs/pods/ and run/pods/ live below it).
    #[arg(long, default_value = "e2e/.state")]
    pub state_dir: PathBuf,
    /// The node's image store: one OCI image layout per image name (`make images` writes
    /// `target/images`).
    #[arg(long, default_value = "target/images")]
    pub images: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_command_line_parses() {
        let a = Args::try_parse_from([
            "datastream-podlet",
            "--kubeconfig",
            "e2e/.state/kubeconfig",
            "--node-name",
            "e2e-node-0",
            "--bridge",
            "dsbr0",
            "--pod-cidr",
            "10.244.1.0/24",
            "--state-dir",
            "e2e/.state",
            "--images",
            "target/images",
        ])
        .unwrap();
        assert_eq!(a.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(a.cluster_cidr.prefix, 16);
        assert_eq!(a.apiserver_port, 6443);
    }
}
