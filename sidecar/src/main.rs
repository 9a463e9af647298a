//! `datastream-sidecar`: parses flags, installs logging and runs the sidecar (see docs/sidecar.md).

use std::process::ExitCode;

use clap::Parser;
use datastream_sidecar::app;
use datastream_sidecar::config::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prepared = match app::prepare(&cli) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("datastream-sidecar: invalid configuration:");
            for e in errors {
                eprintln!("  - {e}");
            }
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&prepared.log_level))
        .with_target(false)
        .init();
    let runtime = if prepared.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(prepared.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("datastream-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sidecar failed");
            ExitCode::FAILURE
        }
    }
}
