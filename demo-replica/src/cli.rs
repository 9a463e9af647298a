//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::fault::Fault;

/// DataStream demo replica: an HTTP/1.1 + h2c data service for demos and tests.
#[derive(Debug, Clone, Parser)]
#[command(name = "datastream-demo-replica", version)]
pub struct Args {
    /// A client mode instead of the server (the server runs when none is given).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Replica identity; defaults to $POD_NAME, then the host name.
    #[arg(long)]
    pub replica_id: Option<String>,
    /// Latency added to every data request (e.g. `50ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Status returned instead of the real answer (see --fail-rate).
    #[arg(long, value_parser = clap::value_parser!(u16).range(200..=599))]
    pub fail_status: Option<u16>,
    /// Fraction (0.0..=1.0) of data requests that get --fail-status or --hang.
    #[arg(long)]
    pub fail_rate: Option<f64>,
    /// Never answer data requests.
    #[arg(long)]
    pub hang: bool,
    /// Largest accepted `/kv` value, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// How long open connections may keep running after SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
    /// Directory of the `/kv` database (file `kv.redb`), created if missing. Every PUT and DELETE is
    /// committed to it (fsync) before the answer, so the data survives restarts when the directory is
    /// on a persistent volume. Without it the data is kept in memory and lost on exit.
    #[arg(long, env = "DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Client modes of the binary.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Send a request through every ready replica's sidecar of a DataStream (what `helm test` runs).
    Probe(crate::probe::ProbeArgs),
}

impl Args {
    /// The fault requested on the command line, validated.
    pub fn initial_fault(&self) -> Result<Fault, String> {
        let fault = Fault {
            latency_ms: self
                .latency
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            status: self.fail_status,
            hang: self.hang,
            rate: self.fail_rate,
        };
        fault.validate()?;
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["demo"]).unwrap();
        assert_eq!(a.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(!a.initial_fault().unwrap().is_active());
        // `--data-dir` falls back to $DATA_DIR, which whoever runs the tests might have set.
        if std::env::var_os("DATA_DIR").is_none() {
            assert_eq!(a.data_dir, None);
        }
    }

    #[test]
    fn fault_flags() {
        let a = Args::try_parse_from([
            "demo",
            "--latency",
            "50ms",
            "--fail-status",
            "503",
            "--fail-rate",
            "0.5",
            "--listen",
            "127.0.0.1:9000",
        ])
        .unwrap();
        let f = a.initial_fault().unwrap();
        assert_eq!(f.latency_ms, 50);
        assert_eq!(f.status, Some(503));
        assert_eq!(f.rate, Some(0.5));
    }

    #[test]
    fn data_dir_flag() {
        let a = Args::try_parse_from(["demo", "--data-dir", "/var/lib/demo"]).unwrap();
        assert_eq!(a.data_dir, Some(PathBuf::from("/var/lib/demo")));
    }

    #[test]
    fn bad_rate_and_status_rejected() {
        let a = Args::try_parse_from(["demo", "--fail-rate", "2"]).unwrap();
        assert!(a.initial_fault().is_err());
        assert!(Args::try_parse_from(["demo", "--fail-status", "99"]).is_err());
    }
}
