//! Entry point of `datastream-podlet`.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use datastream_podlet::cli::Args;
use datastream_podlet::context::Context;
use datastream_podlet::images::ImageStore;
use datastream_podlet::ipam::Ipam;
use datastream_podlet::node::{self, NodeInfo};
use datastream_podlet::runtime::Runc;
use datastream_podlet::{cleanup, controller, resizer};
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let state_dir = std::path::absolute(&args.state_dir)?;
    std::fs::create_dir_all(state_dir.join("run"))?;
    // Two podlets for one state dir would kill each other's containers and fight over sandboxes.
    let lock_path = state_dir.join("run").join("podlet.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            anyhow::anyhow!(
                "another podlet is running ({} is locked: {e})",
                lock_path.display()
            )
        })?;
    let layouts = std::path::absolute(&args.images)?;
    if !layouts.is_dir() {
        tracing::warn!(dir = %layouts.display(), "the image store does not exist (run `make images`); every pod will show ErrImagePull");
    }
    let runc = Runc {
        root: state_dir.join("run").join("runc"),
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let info = NodeInfo {
        name: args.node_name.clone(),
        ip: args.node_ip,
        pod_cidr: args.pod_cidr.to_string(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        node: info.clone(),
        bridge: args.bridge.clone(),
        cluster_prefix: args.cluster_cidr.prefix,
        images: ImageStore::new(layouts, state_dir.join("images")),
        runc,
        ipam: Mutex::new(Ipam::new(args.pod_cidr)),
        state_dir,
        apiserver_host: args.apiserver_host,
        apiserver_port: args.apiserver_port,
    });
    std::fs::create_dir_all(ctx.pods_run_dir())?;
    std::fs::create_dir_all(ctx.state_dir.join("logs").join("pods"))?;
    cleanup::leftovers(&ctx.runc, &ctx.pods_run_dir()).await;

    let since = Timestamp::now();
    let node_uid = node::register(&client, &info, since)
        .await
        .context("registering the node")?;
    node::renew_lease(&client, &info, &node_uid)
        .await
        .context("creating the node lease")?;
    tracing::info!(node = %info.name, ip = %info.ip, images = %ctx.images.layouts().display(), "node registered");

    let stop = CancellationToken::new();
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        info,
        node_uid,
        since,
        stop.clone(),
    ));
    let signals = {
        let stop = stop.clone();
        let mut term = signal(SignalKind::terminate())?;
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            stop.cancel();
        }
    };
    tokio::spawn(signals);
    let resizer = tokio::spawn(resizer::run(client.clone(), stop.clone()));
    let result = controller::run(ctx, stop.clone()).await;
    stop.cancel();
    let _ = heartbeat.await;
    let _ = resizer.await;
    result
}
