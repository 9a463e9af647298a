//! Command-line flags (and the environment variables Kubernetes mode reads).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use datastream_api::v1alpha1::{
    SIDECAR_ADMIN_PORT, SIDECAR_PEER_PORT, SIDECAR_TRAFFIC_PORT, UpstreamProtocol,
};

use super::Overrides;

/// DataStream sidecar: routes, balances and fails over requests between the replicas of a
/// DataStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "datastream-sidecar", version, about, long_about = None)]
pub struct Cli {
    /// `kubernetes` runs Kubernetes mode (same as `--mode kubernetes`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where replicas and policy come from.
    #[arg(long, value_enum, default_value_t = Mode::Local, global = true)]
    pub mode: Mode,

    /// Traffic listener address (local mode default 127.0.0.1:7080).
    #[arg(long, value_name = "ADDR", global = true)]
    pub listen: Option<String>,

    /// Admin listener address (local mode default 127.0.0.1:7082).
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin: Option<String>,

    /// Peer listener address: requests from other sidecars, delivered to the local workload.
    #[arg(long, value_name = "ADDR", global = true)]
    pub peer_listen: Option<String>,

    /// Replicas, comma separated (local mode).
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Option<Vec<String>>,

    /// Which endpoint is the local workload (added to the endpoints if missing).
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub local_endpoint: Option<String>,

    /// Load-balancing policy: p2c-ewma, round-robin, least-request, ring-hash or maglev.
    #[arg(long, value_name = "NAME", global = true)]
    pub policy: Option<String>,

    /// YAML config file (listeners, endpoints, limits and `traffic`); reloaded when it changes.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, value_name = "LEVEL", env = "DATASTREAM_LOG", global = true)]
    pub log_level: Option<String>,

    /// Time listeners keep accepting after SIGTERM (e.g. 5s).
    #[arg(long, value_name = "DURATION", global = true)]
    pub drain_delay: Option<String>,

    /// Time in-flight requests get once listeners closed (e.g. 20s).
    #[arg(long, value_name = "DURATION", global = true)]
    pub drain_timeout: Option<String>,

    /// Open connections per listener.
    #[arg(long, value_name = "N", global = true)]
    pub max_connections: Option<usize>,

    /// Largest request header section in bytes (431 above).
    #[arg(long, value_name = "BYTES", global = true)]
    pub max_header_bytes: Option<usize>,

    /// Most header fields in a request (431 above).
    #[arg(long, value_name = "N", global = true)]
    pub max_header_fields: Option<usize>,

    /// Time a client has to send a request head (e.g. 10s).
    #[arg(long, value_name = "DURATION", global = true)]
    pub header_read_timeout: Option<String>,

    /// Largest request body in bytes (413 above); overrides traffic.limits.maxRequestBodyBytes.
    #[arg(long, value_name = "BYTES", global = true)]
    pub max_body_bytes: Option<u64>,

    /// Time allowed per attempt on one replica (e.g. 500ms); a slower attempt is retried on
    /// another replica. Overrides traffic.failover.perTryTimeout.
    #[arg(long, value_name = "DURATION", global = true)]
    pub per_try_timeout: Option<String>,

    /// Time allowed for a whole request, retries included (e.g. 15s); 504 when it expires.
    /// Overrides traffic.failover.requestTimeout.
    #[arg(long, value_name = "DURATION", global = true)]
    pub request_timeout: Option<String>,

    /// Protocol towards replicas: auto (the client's), http1 (always HTTP/1.1) or http2 (always
    /// h2c). Overrides traffic.upstreamProtocol.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_upstream_protocol, global = true)]
    pub upstream_protocol: Option<UpstreamProtocol>,

    /// Worker threads; 1 runs a single-threaded runtime, which is fastest for a sidecar.
    #[arg(
        long,
        value_name = "N",
        env = "DATASTREAM_THREADS",
        default_value_t = 1,
        global = true
    )]
    pub threads: usize,

    /// Local mode: a directory with the workload certificate (`tls.crt`, its SPIFFE ID as URI
    /// SAN), its key (`tls.key`, PKCS#8) and the trust anchors (`ca.crt`), as cert-manager writes
    /// them. Turns on mutual TLS towards remote endpoints and on the peer listener; certificate and
    /// key are reloaded when they change.
    #[arg(
        long,
        value_name = "DIR",
        env = "DATASTREAM_IDENTITY_DIR",
        global = true
    )]
    pub identity_dir: Option<PathBuf>,

    /// TLS for clients on the traffic listener: a directory with `tls.crt` (the chain) and
    /// `tls.key`, as a `kubernetes.io/tls` Secret mounts; re-read when they change.
    #[arg(
        long,
        value_name = "DIR",
        env = "DATASTREAM_CLIENT_TLS_DIR",
        global = true
    )]
    pub client_tls_dir: Option<PathBuf>,

    /// Kubernetes settings.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Kubernetes mode: policy from the own DataStream, replicas from the peer EndpointSlices.
    Kubernetes,
}

/// Discovery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Flags and config file.
    Local,
    /// Kubernetes API.
    Kubernetes,
}

/// Kubernetes-mode settings, normally from the pod's environment.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Name of the own DataStream.
    #[arg(long, env = "DATASTREAM_NAME", global = true)]
    pub datastream: Option<String>,

    /// Headless peer Service whose EndpointSlices list the replicas (default `<name>-peers`).
    #[arg(long, env = "DATASTREAM_PEER_SERVICE", global = true)]
    pub peer_service: Option<String>,

    /// Namespace of the pod and the DataStream.
    #[arg(long, env = "POD_NAMESPACE", global = true)]
    pub namespace: Option<String>,

    /// The pod's IP: the EndpointSlice entry with it is the local replica.
    #[arg(long, env = "POD_IP", global = true)]
    pub pod_ip: Option<String>,

    /// The pod's name (for logs and the local endpoint's name).
    #[arg(long, env = "POD_NAME", global = true)]
    pub pod_name: Option<String>,

    /// Port of the workload on 127.0.0.1 inside the pod.
    #[arg(long, env = "WORKLOAD_PORT", global = true)]
    pub workload_port: Option<u16>,

    /// Readiness path of the workload (used by health checking).
    #[arg(long, env = "WORKLOAD_READINESS_PATH", global = true)]
    pub workload_readiness_path: Option<String>,

    /// Traffic port (listens on 0.0.0.0).
    #[arg(long, default_value_t = SIDECAR_TRAFFIC_PORT as u16, global = true)]
    pub traffic_port: u16,

    /// Peer port (listens on 0.0.0.0; the peer Service's `peer` port).
    #[arg(long, default_value_t = SIDECAR_PEER_PORT as u16, global = true)]
    pub peer_port: u16,

    /// Admin port (listens on 0.0.0.0).
    #[arg(long, default_value_t = SIDECAR_ADMIN_PORT as u16, global = true)]
    pub admin_port: u16,

    /// SPIFFE trust domain of workload identities; when set, the sidecar gets a workload
    /// certificate for its ServiceAccount and is not ready until it has one.
    #[arg(long, env = "DATASTREAM_TRUST_DOMAIN", global = true)]
    pub trust_domain: Option<String>,

    /// PEM bundle of the trust anchors peers' certificates must chain to (with
    /// `--trust-domain`).
    #[arg(
        long,
        env = "DATASTREAM_TRUST_ANCHORS",
        global = true,
        hide_env_values = true
    )]
    pub trust_anchors: Option<String>,

    /// The pod's ServiceAccount: the identity the certificate names.
    #[arg(long, env = "POD_SERVICE_ACCOUNT", global = true)]
    pub service_account: Option<String>,

    /// Lifetime of the workload certificates asked for, in seconds (the signer caps it at 24 h;
    /// the Kubernetes API's minimum is 600 s).
    #[arg(long, env = "DATASTREAM_CERTIFICATE_LIFETIME_SECONDS", global = true)]
    pub certificate_lifetime_seconds: Option<u64>,
}

// === impl Cli ===

impl Cli {
    /// Whether Kubernetes mode was asked for.
    pub fn kubernetes(&self) -> bool {
        matches!(self.command, Some(Command::Kubernetes)) || self.mode == Mode::Kubernetes
    }

    /// The flags that override the file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            peer_listen: self.peer_listen.clone(),
            admin: self.admin.clone(),
            endpoints: self.endpoints.clone(),
            local_endpoint: self.local_endpoint.clone(),
            policy: self.policy.clone(),
            log_level: self.log_level.clone(),
            drain_delay: self.drain_delay.clone(),
            drain_timeout: self.drain_timeout.clone(),
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_header_fields: self.max_header_fields,
            header_read_timeout: self.header_read_timeout.clone(),
            max_body_bytes: self.max_body_bytes,
            per_try_timeout: self.per_try_timeout.clone(),
            request_timeout: self.request_timeout.clone(),
            upstream_protocol: self.upstream_protocol,
        }
    }
}

fn parse_upstream_protocol(text: &str) -> Result<UpstreamProtocol, String> {
    [
        UpstreamProtocol::Auto,
        UpstreamProtocol::Http1,
        UpstreamProtocol::Http2,
    ]
    .into_iter()
    .find(|p| p.as_str() == text)
    .ok_or_else(|| format!("{text:?} is not one of auto, http1, http2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_mode_flags_parse() {
        let cli = Cli::try_parse_from([
            "datastream-sidecar",
            "--listen",
            "127.0.0.1:8080",
            "--admin",
            "127.0.0.1:9901",
            "--endpoints",
            "127.0.0.1:8081,127.0.0.1:8082",
            "--policy",
            "p2c-ewma",
        ])
        .unwrap();
        assert!(!cli.kubernetes());
        assert_eq!(cli.endpoints.as_ref().map(Vec::len), Some(2));
        assert_eq!(cli.upstream_protocol, None);
    }

    #[test]
    fn upstream_protocol_flag_takes_the_api_names_only() {
        let parse = |v| Cli::try_parse_from(["datastream-sidecar", "--upstream-protocol", v]);
        assert_eq!(
            parse("http1").unwrap().overrides().upstream_protocol,
            Some(UpstreamProtocol::Http1)
        );
        assert_eq!(
            parse("http2").unwrap().upstream_protocol,
            Some(UpstreamProtocol::Http2)
        );
        let err = parse("h3").unwrap_err().to_string();
        assert!(err.contains("not one of auto, http1, http2"), "{err}");
    }

    #[test]
    fn kubernetes_subcommand_takes_flags_after_it() {
        let cli = Cli::try_parse_from([
            "datastream-sidecar",
            "kubernetes",
            "--workload-port",
            "8080",
            "--datastream",
            "orders",
        ])
        .unwrap();
        assert!(cli.kubernetes());
        assert_eq!(cli.kube.workload_port, Some(8080));
        assert_eq!(cli.kube.traffic_port, 7080);
    }
}
