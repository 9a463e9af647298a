//! Turning command-line flags into a running sidecar, in local or Kubernetes mode.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use datastream_api::v1alpha1::TrafficPolicy;
use serde_json::json;
use tokio::sync::watch;

use crate::config::cli::Cli;
use crate::config::compile::compile;
use crate::config::reload::{self, POLL_INTERVAL};
use crate::config::{FileConfig, Overrides, Resolved};
use crate::discovery::kubernetes::{self, Identity};
use crate::identity::IdentitySettings;
use crate::metrics::Metrics;
use crate::runtime::{RuntimeSettings, Sidecar};
use crate::state::Shared;
use datastream_identity::WorkloadId;
use datastream_identity::verify::TrustAnchors;

/// A validated configuration, ready to run.
#[derive(Debug)]
pub struct Prepared {
    /// Log filter.
    pub log_level: String,
    /// Worker threads.
    pub threads: usize,
    mode: Mode,
    /// Where the traffic listener's TLS certificate is read from, if clients must use TLS.
    client_tls: Option<PathBuf>,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "built once at startup")]
enum Mode {
    Local {
        resolved: Box<Resolved>,
        file: Option<PathBuf>,
        flags: Overrides,
        identity: Option<crate::identity::files::IdentityFiles>,
    },
    Kubernetes {
        runtime: RuntimeSettings,
        me: Identity,
        traffic: TrafficPolicy,
        identity: Option<IdentitySettings>,
    },
}

/// Validates the flags (and the config file) without starting anything; every problem is
/// reported.
pub fn prepare(cli: &Cli) -> Result<Prepared, Vec<String>> {
    let client_tls = match &cli.client_tls_dir {
        Some(dir) => crate::client_tls::ClientTls::load(dir, Arc::default())
            .map(|_| Some(dir.clone()))
            .map_err(|e| format!("client TLS (--client-tls-dir): {e}")),
        None => Ok(None),
    };
    match (prepare_mode(cli), client_tls) {
        (Ok(prepared), Ok(client_tls)) => Ok(Prepared {
            client_tls,
            ..prepared
        }),
        (Err(mut errors), Err(tls)) => {
            errors.push(tls);
            Err(errors)
        }
        (Err(errors), Ok(_)) => Err(errors),
        (Ok(_), Err(tls)) => Err(vec![tls]),
    }
}

fn prepare_mode(cli: &Cli) -> Result<Prepared, Vec<String>> {
    let flags = cli.overrides();
    if cli.threads == 0 {
        return Err(vec!["threads: must be at least 1".into()]);
    }
    if cli.kubernetes() {
        if cli.identity_dir.is_some() {
            return Err(vec!["DATASTREAM_IDENTITY_DIR (--identity-dir) is for local mode; in Kubernetes mode the operator's signer certifies the sidecar (--trust-domain)".into()]);
        }
        return prepare_kubernetes(cli, flags);
    }
    let file = match &cli.config {
        Some(path) => FileConfig::read(path).map_err(|e| vec![e])?,
        None => FileConfig::default(),
    };
    let mut errors = Vec::new();
    let identity = cli.identity_dir.as_deref().and_then(|dir| {
        crate::identity::files::IdentityFiles::load(dir, time::OffsetDateTime::now_utc())
            .map_err(|e| errors.push(format!("workload identity (--identity-dir): {e}")))
            .ok()
    });
    let resolved = Resolved::resolve(&file, &flags).map_err(|mut e| {
        e.append(&mut errors);
        e
    })?;
    if !errors.is_empty() {
        return Err(errors);
    }
    // Compile once here so policy errors are reported with the rest, before binding anything.
    compile(&resolved.traffic, 1, "validation", &Metrics::new())?;
    Ok(Prepared {
        log_level: resolved.log_level.clone(),
        threads: cli.threads,
        client_tls: None,
        mode: Mode::Local {
            resolved: Box::new(resolved),
            file: cli.config.clone(),
            flags,
            identity,
        },
    })
}

fn prepare_kubernetes(cli: &Cli, mut flags: Overrides) -> Result<Prepared, Vec<String>> {
    let k = &cli.kube;
    let mut errors = Vec::new();
    let mut need = |v: &Option<String>, what: &str| {
        v.clone().filter(|s| !s.is_empty()).or_else(|| {
            errors.push(format!("kubernetes mode needs {what}"));
            None
        })
    };
    let datastream = need(&k.datastream, "DATASTREAM_NAME (--datastream)");
    let namespace = need(&k.namespace, "POD_NAMESPACE (--namespace)");
    let pod_ip = need(&k.pod_ip, "POD_IP (--pod-ip)");
    let pod_name = k.pod_name.clone().unwrap_or_else(|| "local".into());
    let pod_ip = pod_ip.and_then(|ip| {
        ip.parse::<IpAddr>()
            .map_err(|_| errors.push(format!("POD_IP: {ip:?} is not an IP address")))
            .ok()
    });
    if k.workload_port.is_none() {
        errors.push("kubernetes mode needs WORKLOAD_PORT (--workload-port)".into());
    }
    // Listener defaults for a pod; explicit flags still win.
    flags
        .listen
        .get_or_insert_with(|| format!("0.0.0.0:{}", k.traffic_port));
    flags
        .peer_listen
        .get_or_insert_with(|| format!("0.0.0.0:{}", k.peer_port));
    flags
        .admin
        .get_or_insert_with(|| format!("0.0.0.0:{}", k.admin_port));
    flags.endpoints = Some(Vec::new());
    flags.local_endpoint = None;
    let resolved = Resolved::resolve(&FileConfig::default(), &flags);
    if let Err(e) = &resolved {
        errors.extend(e.iter().cloned());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Ok(resolved), Some(datastream), Some(namespace), Some(pod_ip), Some(port)) =
        (resolved, datastream, namespace, pod_ip, k.workload_port)
    else {
        return Err(vec!["invalid Kubernetes settings".into()]);
    };
    let identity = identity_settings(k, &namespace)?;
    let me = Identity {
        peer_service: k
            .peer_service
            .clone()
            .unwrap_or_else(|| format!("{datastream}-peers")),
        namespace,
        datastream,
        pod_ip,
        pod_name,
        workload: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    Ok(Prepared {
        log_level: resolved.log_level,
        threads: cli.threads,
        client_tls: None,
        mode: Mode::Kubernetes {
            runtime: resolved.runtime,
            me,
            traffic: resolved.traffic,
            identity,
        },
    })
}

/// The workload identity settings, when `--trust-domain` asks for one.
fn identity_settings(
    k: &crate::config::cli::KubeArgs,
    namespace: &str,
) -> Result<Option<IdentitySettings>, Vec<String>> {
    let Some(trust_domain) = k.trust_domain.as_deref().filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let anchors = match k.trust_anchors.as_deref().filter(|a| !a.trim().is_empty()) {
        Some(pem) => TrustAnchors::from_pem(pem)
            .map_err(|e| errors.push(format!("DATASTREAM_TRUST_ANCHORS (--trust-anchors): {e}")))
            .ok(),
        None => {
            errors.push(
                "a trust domain needs DATASTREAM_TRUST_ANCHORS (--trust-anchors), the PEM bundle peers chain to"
                    .into(),
            );
            None
        }
    };
    let id = match k.service_account.as_deref().filter(|s| !s.is_empty()) {
        Some(sa) => WorkloadId::new(trust_domain, namespace, sa)
            .map_err(|e| errors.push(format!("workload identity: {e}")))
            .ok(),
        None => {
            errors.push(
                "a trust domain needs POD_SERVICE_ACCOUNT (--service-account), the identity to prove"
                    .into(),
            );
            None
        }
    };
    let lifetime = match k.certificate_lifetime_seconds {
        None => crate::identity::DEFAULT_LIFETIME,
        Some(s) if (600..=86_400).contains(&s) => std::time::Duration::from_secs(s),
        Some(s) => {
            errors.push(format!(
                "DATASTREAM_CERTIFICATE_LIFETIME_SECONDS: {s} is outside 600..=86400 (the Kubernetes API's minimum and the signer's cap)"
            ));
            crate::identity::DEFAULT_LIFETIME
        }
    };
    match (anchors, id) {
        (Some(anchors), Some(id)) if errors.is_empty() => Ok(Some(IdentitySettings {
            id,
            anchors,
            lifetime,
        })),
        _ => Err(errors),
    }
}

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(prepared: Prepared) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (close_tx, close_rx) = watch::channel(false);
    let client_tls = match &prepared.client_tls {
        Some(dir) => {
            let tls = crate::client_tls::ClientTls::load(dir, Arc::clone(&metrics.client_tls))
                .map_err(|e| anyhow::anyhow!("client TLS (--client-tls-dir): {e}"))?;
            tracing::info!(dir = %dir.display(), "TLS for clients on the traffic listener");
            let tls = Arc::new(tls);
            tokio::spawn(Arc::clone(&tls).watch(POLL_INTERVAL, close_rx.clone()));
            Some(tls)
        }
        None => None,
    };
    let (sidecar, background) = match prepared.mode {
        Mode::Local {
            resolved,
            file,
            flags,
            identity,
        } => {
            let source = match &file {
                Some(p) => format!("file {}", p.display()),
                None => "flags".to_owned(),
            };
            let policy = compile(&resolved.traffic, 1, &source, &metrics)
                .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
            let shared = Arc::new(Shared::new(policy, metrics));
            if let Some(tls) = &client_tls {
                shared.set_client_tls(Arc::clone(tls));
            }
            // Before the endpoints: remote ones are built with the mutual TLS connector.
            if let Some(files) = identity {
                tracing::info!(id = %files.id, not_after = %files.credentials.not_after(), trust_anchors = files.anchors.len(), "workload identity from {} and mutual TLS towards remote endpoints on", files.dir.display());
                let anchors = files.anchors.clone();
                let handle = crate::identity::files::start(
                    files,
                    POLL_INTERVAL,
                    &shared.metrics,
                    close_rx.clone(),
                );
                shared.enable_mutual_tls(handle, anchors);
            }
            shared.set_endpoints(&resolved.endpoints);
            let settings = settings_json(&resolved.runtime, "local", None);
            let sidecar = Sidecar::start(&resolved.runtime, Arc::clone(&shared), settings).await?;
            let background = file.map(|path| {
                tokio::spawn(reload::watch_file(
                    path,
                    flags,
                    *resolved,
                    shared,
                    POLL_INTERVAL,
                    close_rx,
                ))
            });
            (sidecar, background)
        }
        Mode::Kubernetes {
            runtime,
            me,
            traffic,
            identity,
        } => {
            let policy = compile(&traffic, 1, "built-in default", &metrics)
                .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
            let shared = Arc::new(Shared::new(policy, metrics));
            if let Some(tls) = &client_tls {
                shared.set_client_tls(Arc::clone(tls));
            }
            let client = kube::Client::try_default().await?;
            if let Some(settings) = identity {
                tracing::info!(id = %settings.id, lifetime = ?settings.lifetime, trust_anchors = settings.anchors.len(), "workload identity and mutual TLS between sidecars on");
                let anchors = settings.anchors.clone();
                let handle = crate::identity::start(
                    settings,
                    client.clone(),
                    &me.pod_name,
                    &shared.metrics,
                    close_rx.clone(),
                );
                shared.enable_mutual_tls(handle, anchors);
            }
            let settings = settings_json(&runtime, "kubernetes", Some(&me));
            let sidecar = Sidecar::start(&runtime, Arc::clone(&shared), settings).await?;
            let background = tokio::spawn(kubernetes::run(client, me, shared, close_rx));
            (sidecar, Some(background))
        }
    };
    shutdown_signal().await;
    tracing::info!("shutdown signal received");
    sidecar.drain().await;
    let _ = close_tx.send(true);
    if let Some(task) = background {
        let _ = task.await;
    }
    Ok(())
}

fn settings_json(r: &RuntimeSettings, mode: &str, me: Option<&Identity>) -> serde_json::Value {
    json!({
        "mode": mode,
        "listeners": {
            "traffic": r.traffic.to_string(),
            "peer": r.peer.map(|p| p.to_string()),
            "admin": r.admin.to_string(),
        },
        "server": {
            "maxConnections": r.limits.max_connections,
            "maxHeaderBytes": r.limits.max_header_bytes,
            "maxHeaderFields": r.limits.max_header_fields,
            "headerReadTimeoutMs": r.limits.header_read_timeout.as_millis() as u64,
        },
        "drain": {
            "delayMs": r.drain_delay.as_millis() as u64,
            "timeoutMs": r.drain_timeout.as_millis() as u64,
        },
        "kubernetes": me.map(|m| json!({
            "namespace": m.namespace,
            "datastream": m.datastream,
            "peerService": m.peer_service,
            "podIP": m.pod_ip.to_string(),
            "podName": m.pod_name,
            "workload": m.workload.to_string(),
        })),
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
