//! Entry point of the `datastream-demo-replica` binary.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use datastream_demo_replica::cli::{Args, Command};
use datastream_demo_replica::service::App;
use datastream_demo_replica::store::Store;
use datastream_demo_replica::{identity, server};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Command::Probe(probe)) = &args.command {
        return run_probe(probe).await;
    }
    let fault = args
        .initial_fault()
        .map_err(anyhow::Error::msg)
        .context("invalid fault flags")?;
    let pod_name = std::env::var("POD_NAME").ok();
    let id = identity::resolve(
        args.replica_id.as_deref(),
        pod_name.as_deref(),
        identity::system_hostname,
    );
    // The store opens before the listener binds: a replica whose database cannot be opened (held by
    // another process, unreadable) exits instead of answering.
    let store = open_store(&args).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(replica = %id, addr = %listener.local_addr()?, ?fault, "demo replica listening");
    let drain = CancellationToken::new();
    let app = Arc::new(App::new(
        id,
        store.clone(),
        fault,
        args.max_value_bytes,
        drain.clone(),
    ));
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    server::serve(listener, app, shutdown, drain, args.shutdown_timeout).await;
    // Every answered write is already committed; closing only records the clean shutdown (the next
    // open then skips the repair scan), after any write still in progress.
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "closing the database failed");
    }
    tracing::info!("demo replica stopped");
    Ok(())
}

/// Opens the `/kv` store: the database in `--data-dir`, or one in memory.
async fn open_store(args: &Args) -> anyhow::Result<Store> {
    let store = match args.data_dir.clone() {
        Some(dir) => tokio::task::spawn_blocking(move || Store::open(dir))
            .await
            .context("opening the database")??,
        None => Store::in_memory()?,
    };
    let durable = args.data_dir.is_some();
    tracing::info!(database = store.location(), durable, "key/value store open");
    Ok(store)
}

/// Runs the `probe` client and reports each sidecar's answer (the exit status tells `helm test`).
async fn run_probe(probe: &datastream_demo_replica::probe::ProbeArgs) -> anyhow::Result<()> {
    let answers = datastream_demo_replica::probe::run(probe).await?;
    for a in &answers {
        println!(
            "sidecar {} answered through replica {}",
            a.sidecar, a.replica
        );
    }
    println!(
        "probe: DataStream {} answered through all {} sidecars",
        probe.datastream,
        answers.len()
    );
    Ok(())
}
