//! `datastream-operator`: runs the controller, or prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use datastream_operator::{admin, controller, desired, fence, leader, metrics};
use kube::Client;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "datastream-operator",
    version,
    about = "Reconciles DataStreams into sidecar-fronted replicas"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DataStream CustomResourceDefinition as YAML.
    Crd,
    /// Print, offline, the objects the operator would create for the DataStreams in a file
    /// (like `helm template`): the controller's own code path, without a cluster.
    Render(RenderArgs),
    /// Run the controller (the default).
    Run,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// File with one or more DataStreams (YAML, `---`-separated; other kinds are skipped). `-`
    /// reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: std::path::PathBuf,
    /// Namespace of streams that set none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Sidecar image for DataStreams that do not set spec.sidecar.image (the operator's
    /// --sidecar-image).
    #[arg(
        long,
        env = "DATASTREAM_SIDECAR_IMAGE",
        default_value = DEFAULT_SIDECAR_IMAGE
    )]
    sidecar_image: String,
}

/// The sidecar image of this release.
const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/datastream-dev/datastream-sidecar:0.1.0";

#[derive(clap::Args)]
struct RunArgs {
    /// Sidecar image for DataStreams that do not set spec.sidecar.image.
    #[arg(
        long,
        env = "DATASTREAM_SIDECAR_IMAGE",
        default_value = DEFAULT_SIDECAR_IMAGE
    )]
    sidecar_image: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "DATASTREAM_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Elect a leader among operator replicas through a Lease (needed with more than one replica).
    #[arg(long, env = "DATASTREAM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "DATASTREAM_LEASE_NAME",
        default_value = "datastream-operator"
    )]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespaces to watch, comma-separated (a namespace-scoped install, with Roles in each);
    /// empty: every namespace (needs the ClusterRole).
    #[arg(long, env = "DATASTREAM_WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    watch_namespaces: Vec<String>,
    /// How often every DataStream is reconciled with no event (seconds; jittered by ±10 %).
    #[arg(long, env = "DATASTREAM_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    resync_seconds: u64,
    /// Approve and sign the sidecars' workload certificate requests (`datastream.dev/workload`
    /// CSRs), with the trust anchor and issuer of Secret `datastream-identity` in the operator's
    /// namespace, generated when absent, and give the sidecars their identity settings (see
    /// docs/identity.md). Needs cluster-scoped access (CSRs are cluster-scoped): a
    /// namespace-scoped install turns it off.
    #[arg(long, env = "DATASTREAM_WORKLOAD_SIGNER", default_value_t = true, action = clap::ArgAction::Set)]
    workload_signer: bool,
    /// Lifetime of the sidecars' workload certificates, in seconds (600, the Kubernetes API's
    /// minimum, to 86400, the signer's cap; default 86400).
    #[arg(long, env = "DATASTREAM_CERTIFICATE_LIFETIME_SECONDS", value_parser = clap::value_parser!(u64).range(600..=86_400))]
    certificate_lifetime_seconds: Option<u64>,
    /// Name of the ClusterRole that lets sidecars file certificate requests, and of the
    /// ClusterRoleBinding the operator keeps listing every stream's sidecar account (the chart
    /// names both after the release; created under this name when missing and permitted).
    #[arg(long, env = "DATASTREAM_SIDECAR_CERTIFICATE_ROLE", default_value = datastream_operator::certificate_access::DEFAULT_ROLE_NAME)]
    sidecar_certificate_role: String,
    /// Longest lifetime the signer issues, in seconds, whatever the sidecars ask (30 to 86400;
    /// default 86400). Below the sidecars' own lifetime it shortens every certificate: a
    /// tighter policy, or certificate rotation every half minute in tests.
    #[arg(long, env = "DATASTREAM_MAX_CERTIFICATE_LIFETIME_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(30..=86_400))]
    max_certificate_lifetime_seconds: u64,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "DATASTREAM_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "DATASTREAM_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines (default) or human-readable text.
    #[arg(long, env = "DATASTREAM_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Crd) => {
            print!("{}", datastream_api::crd_yaml());
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Render(args)) => return render(args),
        Some(Command::Run) | None => {}
    }
    let args = cli.run;
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into());
    if args.log_format == "text" {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let mut config = kube::Config::infer().await?;
    // Names this replica in the apiserver's audit log and request metrics.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!(
            "datastream-operator/{} ({identity})",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|_| {
            http::HeaderValue::from_static(concat!(
                "datastream-operator/",
                env!("CARGO_PKG_VERSION")
            ))
        }),
    ));
    let timing = leader::Timing::default();
    timing.validate()?;
    // The elector's own client; the controller's refuses writes outside the leadership term.
    let elector_client = Client::try_from(config.clone())?;
    let mut elector = args.leader_elect.then(|| {
        leader::Elector::new(
            elector_client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timing,
        )
    });
    let leadership = elector
        .as_ref()
        .map_or_else(leader::Leadership::unconditional, |e| e.leadership());
    let mut sidecar_identity = None;
    if args.workload_signer {
        // Issuance does not wait for leadership: every replica signs.
        let signer_client = Client::try_from(config.clone())?;
        let (authority, trust_anchors_pem) = datastream_operator::signer::load_or_create_authority(
            &signer_client,
            &args.lease_namespace,
            &args.trust_domain,
        )
        .await?;
        info!(trust_domain = %args.trust_domain, "signing workload certificates");
        tokio::spawn(datastream_operator::signer::run(
            signer_client,
            authority,
            std::time::Duration::from_secs(args.max_certificate_lifetime_seconds),
            std::future::pending(),
        ));
        sidecar_identity = Some(desired::SidecarIdentity {
            trust_domain: args.trust_domain.clone(),
            trust_anchors_pem,
            certificate_lifetime_seconds: args.certificate_lifetime_seconds,
        });
    }
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&fence::FenceLayer::new(leadership))
        .build();
    let mut scopes: Vec<controller::Scope> = args
        .watch_namespaces
        .iter()
        .map(|ns| ns.trim())
        .filter(|ns| !ns.is_empty())
        .map(|ns| controller::Scope::Namespace(ns.to_owned()))
        .collect();
    scopes.dedup();
    if scopes.is_empty() {
        scopes.push(controller::Scope::Cluster);
    }
    for scope in &scopes {
        let streams: kube::Api<datastream_api::DataStream> = scope.api(&client);
        if let Err(e) = streams
            .list(&kube::api::ListParams::default().limit(1))
            .await
        {
            return Err(format!(
                "cannot list DataStreams in the {scope} ({e}); is the CRD installed (kubectl apply -f crds/), and does the operator's ServiceAccount have its {} there?",
                if *scope == controller::Scope::Cluster { "ClusterRole" } else { "Role" }
            )
            .into());
        }
    }
    info!(scopes = ?scopes.iter().map(ToString::to_string).collect::<Vec<_>>(), "watching");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let health = Arc::new(controller::WatchHealth::for_scopes(scopes.len()));
    let standby = Arc::new(AtomicBool::new(args.leader_elect));
    let resync = std::time::Duration::from_secs(args.resync_seconds);
    let progress = datastream_operator::progress::Progress::new(resync);
    let admin = Arc::new(admin::Admin {
        registry,
        health: health.clone(),
        standby: standby.clone(),
        progress: progress.clone(),
    });
    let admin_addr = args.admin_addr;
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_addr, admin).await {
            error!(error = %e, "admin server failed");
        }
    });

    let settings = desired::Settings {
        sidecar_image: args.sidecar_image.clone(),
        identity: sidecar_identity,
    };

    if let Some(elector) = &mut elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        standby.store(false, Ordering::Release);
    }
    metrics.leader.set(1);
    info!(%identity, "reconciling DataStreams");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if settings.identity.is_some() {
        let mut stop = stop_rx.clone();
        tokio::spawn(datastream_operator::certificate_access::run(
            client.clone(),
            args.sidecar_certificate_role.clone(),
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ));
    }
    let controllers = futures::future::join_all(scopes.into_iter().map(|scope| {
        let mut stop = stop_rx.clone();
        tokio::spawn(controller::run(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            health.clone(),
            identity.clone(),
            controller::Pacing {
                resync,
                progress: progress.clone(),
                scope,
            },
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ))
    }));

    let outcome: Result<(), Box<dyn std::error::Error>> = match &mut elector {
        Some(elector) => tokio::select! {
            lost = elector.hold() => Err(Box::new(lost)),
            _ = shutdown_signal() => Ok(()),
        },
        None => {
            shutdown_signal().await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    let _ = stop_tx.send(true);
    if outcome.is_ok() {
        // Let in-flight reconciles finish before giving up the Lease.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), controllers).await;
        if let Some(elector) = &mut elector {
            elector.release().await;
        }
    }
    outcome
}

fn render(args: &RenderArgs) -> std::process::ExitCode {
    use std::io::Read;
    let input = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let input = match input {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "datastream-operator render: reading {}: {e}",
                args.file.display()
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let settings = desired::Settings {
        sidecar_image: args.sidecar_image.clone(),
        identity: None,
    };
    match datastream_operator::render::render(&input, &settings, &args.namespace) {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("datastream-operator render: {}: {e}", args.file.display());
            std::process::ExitCode::FAILURE
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "operator".into())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
