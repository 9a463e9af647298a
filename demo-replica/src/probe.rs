//! `datastream-demo-replica probe`: a client that checks a DataStream end to end.
//!
//! It reads the stream's `status.endpoints` (the ready replicas, as `IP:peer-port`) and sends one
//! request to every replica's sidecar traffic port by pod IP. Dialling pod IPs rather than the
//! stream's Service keeps it working where no kube-proxy programs ClusterIPs; it is what the
//! Helm chart's `helm test` hook runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use datastream_api::DataStream;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::service::REPLICA_HEADER;

/// Longest wait for one answer; a sidecar that takes longer is retried until the deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of the `probe` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Name of the DataStream to probe.
    #[arg(long)]
    pub datastream: String,
    /// Its namespace (default: $POD_NAMESPACE, then the service account's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// How long to wait for the stream to list ready endpoints and for each to answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// The sidecars' traffic port.
    #[arg(long, default_value_t = 7080)]
    pub traffic_port: u16,
    /// Path requested through each sidecar.
    #[arg(long, default_value = "/whoami")]
    pub path: String,
}

/// One sidecar that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The sidecar's traffic address.
    pub sidecar: SocketAddr,
    /// The replica that served the request (its `x-replica-id`).
    pub replica: String,
}

/// Runs the probe: waits for endpoints, then requires an answer from every sidecar.
pub async fn run(args: &ProbeArgs) -> anyhow::Result<Vec<Answer>> {
    let deadline = Instant::now() + args.timeout;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: kube::Api<DataStream> = kube::Api::namespaced(client, &namespace);
    let endpoints = loop {
        let last = match api.get_opt(&args.datastream).await {
            Ok(Some(ds)) => {
                let endpoints = ds.status.map(|s| s.endpoints).unwrap_or_default();
                if !endpoints.is_empty() {
                    break endpoints;
                }
                "it lists no ready endpoints yet".to_owned()
            }
            Ok(None) => "it does not exist".to_owned(),
            Err(e) => format!("reading it failed: {e}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "DataStream {namespace}/{}: {last} after {:?}",
                args.datastream,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let sidecars = traffic_addresses(&endpoints, args.traffic_port)?;
    probe_sidecars(&sidecars, &args.path, deadline).await
}

/// Turns `status.endpoints` entries (`IP:peer-port`) into the sidecars' traffic addresses.
pub fn traffic_addresses(
    endpoints: &[String],
    traffic_port: u16,
) -> anyhow::Result<Vec<SocketAddr>> {
    endpoints
        .iter()
        .map(|e| {
            let mut addr: SocketAddr = e
                .parse()
                .with_context(|| format!("endpoint {e:?} is not IP:port"))?;
            addr.set_port(traffic_port);
            Ok(addr)
        })
        .collect()
}

/// Sends `GET path` to every sidecar, retrying each until `deadline`; fails unless all answer
/// 200 with a replica identity.
pub async fn probe_sidecars(
    sidecars: &[SocketAddr],
    path: &str,
    deadline: Instant,
) -> anyhow::Result<Vec<Answer>> {
    let mut answers = Vec::with_capacity(sidecars.len());
    for &sidecar in sidecars {
        let mut last_error: Option<anyhow::Error> = None;
        let replica = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let why = last_error.unwrap_or_else(|| anyhow::anyhow!("no time left"));
                bail!("sidecar {sidecar} did not answer {path}: {why:#}");
            }
            let budget = remaining.min(ATTEMPT_TIMEOUT);
            match tokio::time::timeout(budget, get(sidecar, path)).await {
                Ok(Ok(replica)) => break replica,
                Ok(Err(e)) => last_error = Some(e),
                // An attempt cut short by the deadline says less than the previous real error.
                Err(_) if budget < ATTEMPT_TIMEOUT && last_error.is_some() => {}
                Err(_) => last_error = Some(anyhow::anyhow!("no answer within {budget:?}")),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(remaining.min(Duration::from_millis(500))).await;
        };
        answers.push(Answer { sidecar, replica });
    }
    Ok(answers)
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "datastream-probe")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let replica = response
        .headers()
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    if status != http::StatusCode::OK {
        bail!("status {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    replica.with_context(|| format!("answer without {REPLICA_HEADER}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_to_traffic_ports() {
        let got =
            traffic_addresses(&["10.244.1.7:7081".into(), "[fd00::5]:7081".into()], 7080).unwrap();
        assert_eq!(
            got,
            vec![
                "10.244.1.7:7080".parse::<SocketAddr>().unwrap(),
                "[fd00::5]:7080".parse().unwrap()
            ]
        );
        assert!(traffic_addresses(&["demo-0".into()], 7080).is_err());
    }
}
