//! Configuration: command-line flags, the YAML file, validation, compilation and reload.
//!
//! The file holds listeners, endpoints, server limits, drain settings and `traffic`, which has
//! exactly the shape of a DataStream's `spec.traffic`. Flags override the file. Every value is
//! parsed and every problem collected before anything is rejected, so one run reports them all.

pub mod cli;
pub mod compile;
pub mod reload;
pub mod resilience;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use datastream_api::v1alpha1::{TrafficPolicy, UpstreamProtocol, parse_duration};
use serde::{Deserialize, Serialize};

use crate::proxy::ServerLimits;
use crate::runtime::{DEFAULT_DRAIN_DELAY, DEFAULT_DRAIN_TIMEOUT, RuntimeSettings};
use datastream_lb::endpoint::EndpointSpec;

/// Default traffic listener in local mode.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
/// Default admin listener in local mode.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7082";
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The YAML config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Listener addresses.
    #[serde(default)]
    pub listeners: Listeners,
    /// The replicas (local mode).
    #[serde(default)]
    pub endpoints: Vec<EndpointEntry>,
    /// Which endpoint is the local workload (added to `endpoints` if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<String>,
    /// Connection limits.
    #[serde(default)]
    pub server: ServerFile,
    /// Shutdown behaviour.
    #[serde(default)]
    pub drain: DrainFile,
    /// Log filter (`info`, `debug`, or a tracing filter such as `datastream_sidecar=debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// The traffic policy: the same shape as a DataStream's `spec.traffic`.
    #[serde(default)]
    pub traffic: TrafficPolicy,
}

/// Listener addresses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listeners {
    /// Client traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<String>,
    /// Requests from peer sidecars (optional in local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// One endpoint: `HOST:PORT`, or an object with a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndpointEntry {
    /// `HOST:PORT`.
    Address(String),
    /// With details.
    Detailed {
        /// `HOST:PORT`.
        address: String,
        /// Stable name (defaults to the address).
        #[serde(default)]
        name: Option<String>,
    },
}

/// Connection limits in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerFile {
    /// Open connections per listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Largest request header section (431 above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Time allowed to send a request head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
}

/// Drain settings in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrainFile {
    /// Time listeners keep accepting after SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Time in-flight requests get once listeners closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--peer-listen`.
    pub peer_listen: Option<String>,
    /// `--admin`.
    pub admin: Option<String>,
    /// `--endpoints`.
    pub endpoints: Option<Vec<String>>,
    /// `--local-endpoint`.
    pub local_endpoint: Option<String>,
    /// `--policy`.
    pub policy: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--drain-delay`.
    pub drain_delay: Option<String>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<String>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-header-bytes`.
    pub max_header_bytes: Option<usize>,
    /// `--header-read-timeout`.
    pub header_read_timeout: Option<String>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<u64>,
    /// `--per-try-timeout`.
    pub per_try_timeout: Option<String>,
    /// `--request-timeout`.
    pub request_timeout: Option<String>,
    /// `--upstream-protocol`.
    pub upstream_protocol: Option<UpstreamProtocol>,
}

/// A resolved local-mode configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Listeners and process settings.
    pub runtime: RuntimeSettings,
    /// The replicas.
    pub endpoints: Vec<EndpointSpec>,
    /// The traffic policy, flags applied.
    pub traffic: TrafficPolicy,
    /// Log filter.
    pub log_level: String,
}

// === impl FileConfig ===

impl FileConfig {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

// === impl Resolved ===

impl Resolved {
    /// Merges `file` and `flags`, parsing every value and collecting every problem.
    pub fn resolve(file: &FileConfig, flags: &Overrides) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or(file.clone());
        let traffic_addr = addr(
            "listen",
            &pick(&flags.listen, &file.listeners.traffic).unwrap_or_else(|| DEFAULT_LISTEN.into()),
            &mut errors,
        );
        let admin_addr = addr(
            "admin",
            &pick(&flags.admin, &file.listeners.admin).unwrap_or_else(|| DEFAULT_ADMIN.into()),
            &mut errors,
        );
        let peer_addr = pick(&flags.peer_listen, &file.listeners.peer)
            .map(|p| addr("peer-listen", &p, &mut errors));
        let entries: Vec<(String, Option<String>)> = match &flags.endpoints {
            Some(list) => list
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| (s.to_owned(), None))
                .collect(),
            None => file
                .endpoints
                .iter()
                .map(|e| match e {
                    EndpointEntry::Address(a) => (a.clone(), None),
                    EndpointEntry::Detailed { address, name } => (address.clone(), name.clone()),
                })
                .collect(),
        };
        let local = pick(&flags.local_endpoint, &file.local_endpoint)
            .and_then(|l| addr("local-endpoint", &l, &mut errors).map(|a| (l, a)));
        let mut endpoints: Vec<EndpointSpec> = Vec::new();
        for (text, name) in &entries {
            let Some(a) = addr("endpoints", text, &mut errors) else {
                continue;
            };
            if endpoints.iter().any(|e| e.addr == a) {
                errors.push(format!("endpoints: {text} is listed twice"));
                continue;
            }
            endpoints.push(EndpointSpec {
                addr: a,
                name: name.clone().unwrap_or_else(|| text.clone()),
                local: local.as_ref().is_some_and(|(_, l)| *l == a),
                serving: true,
            });
        }
        if let Some((text, a)) = &local
            && !endpoints.iter().any(|e| e.addr == *a)
        {
            endpoints.push(EndpointSpec {
                addr: *a,
                name: text.clone(),
                local: true,
                serving: true,
            });
        }
        let dur = |field: &str, v: Option<String>, default: Duration, errors: &mut Vec<String>| {
            v.map_or(Some(default), |v| {
                parse_duration(&v)
                    .map_err(|e| errors.push(format!("{field}: {e}")))
                    .ok()
            })
        };
        let drain_delay = dur(
            "drain-delay",
            pick(&flags.drain_delay, &file.drain.delay),
            DEFAULT_DRAIN_DELAY,
            &mut errors,
        );
        let drain_timeout = dur(
            "drain-timeout",
            pick(&flags.drain_timeout, &file.drain.timeout),
            DEFAULT_DRAIN_TIMEOUT,
            &mut errors,
        );
        let defaults = ServerLimits::default();
        let header_read_timeout = dur(
            "header-read-timeout",
            pick(&flags.header_read_timeout, &file.server.header_read_timeout),
            defaults.header_read_timeout,
            &mut errors,
        );
        let max_connections = flags
            .max_connections
            .or(file.server.max_connections)
            .unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            errors.push("max-connections: must be at least 1".into());
        }
        let max_header_bytes = flags
            .max_header_bytes
            .or(file.server.max_header_bytes)
            .unwrap_or(defaults.max_header_bytes);
        if !(1024..=1 << 20).contains(&max_header_bytes) {
            errors.push(format!(
                "max-header-bytes: must be between 1024 and 1048576, got {max_header_bytes}"
            ));
        }
        let log_level =
            pick(&flags.log_level, &file.log_level).unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            errors.push(format!("log-level: {log_level:?} is not a valid filter"));
        }
        let mut traffic = file.traffic.clone();
        apply_traffic_flags(&mut traffic, flags, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let (Some(traffic_addr), Some(admin_addr), Some(drain_delay), Some(drain_timeout)) =
            (traffic_addr, admin_addr, drain_delay, drain_timeout)
        else {
            return Err(vec!["invalid configuration".into()]);
        };
        Ok(Self {
            runtime: RuntimeSettings {
                traffic: traffic_addr,
                peer: peer_addr.flatten(),
                admin: admin_addr,
                limits: ServerLimits {
                    max_connections,
                    max_header_bytes,
                    header_read_timeout: header_read_timeout
                        .unwrap_or(defaults.header_read_timeout),
                    ..defaults
                },
                drain_delay,
                drain_timeout,
            },
            endpoints,
            traffic,
            log_level,
        })
    }
}

/// Applies `--policy`, `--max-body-bytes`, `--per-try-timeout`, `--request-timeout` and
/// `--upstream-protocol` to a traffic policy (also on every reload).
pub fn apply_traffic_flags(
    traffic: &mut TrafficPolicy,
    flags: &Overrides,
    errors: &mut Vec<String>,
) {
    if let Some(name) = &flags.policy {
        match compile::api_policy(name) {
            Some(p) => traffic.load_balancing.policy = p,
            None => errors.push(format!(
                "policy: unknown policy {name:?}; expected one of {}",
                datastream_lb::balance::Policy::ALL
                    .map(|p| p.name())
                    .join(", ")
            )),
        }
    }
    if let Some(max) = flags.max_body_bytes {
        traffic.limits.max_request_body_bytes = i64::try_from(max).unwrap_or(i64::MAX);
    }
    // Validated with the rest of the policy when it is compiled.
    if let Some(t) = &flags.per_try_timeout {
        traffic.failover.per_try_timeout = Some(t.clone());
    }
    if let Some(t) = &flags.request_timeout {
        traffic.failover.request_timeout = t.clone();
    }
    if let Some(p) = flags.upstream_protocol {
        traffic.upstream_protocol = p;
    }
}

/// Resolves `HOST:PORT` once, at configuration time.
fn addr(field: &str, text: &str, errors: &mut Vec<String>) -> Option<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    match text.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            errors.push(format!("{field}: {text:?} is not a HOST:PORT address"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            r#"
listeners: { traffic: "127.0.0.1:9000", admin: "127.0.0.1:9001" }
endpoints: ["127.0.0.1:8001", { address: "127.0.0.1:8002", name: b }]
localEndpoint: "127.0.0.1:8001"
traffic: { loadBalancing: { policy: maglev } }
"#,
        )
        .unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".into()),
            policy: Some("round-robin".into()),
            ..Overrides::default()
        };
        let r = Resolved::resolve(&file, &flags).unwrap();
        assert_eq!(r.runtime.traffic.port(), 9100);
        assert_eq!(r.runtime.admin.port(), 9001);
        assert_eq!(r.endpoints.len(), 2);
        assert!(r.endpoints[0].local);
        assert_eq!(r.endpoints[1].name, "b");
        assert_eq!(r.traffic.load_balancing.policy.as_str(), "round-robin");
    }

    #[test]
    fn collects_every_error() {
        let flags = Overrides {
            listen: Some("nowhere".into()),
            endpoints: Some(vec!["127.0.0.1:1".into(), "127.0.0.1:1".into(), "x".into()]),
            policy: Some("random".into()),
            drain_delay: Some("5 minutes".into()),
            max_header_bytes: Some(10),
            ..Overrides::default()
        };
        let errors = Resolved::resolve(&FileConfig::default(), &flags).unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "listen:",
            "listed twice",
            "\"x\"",
            "unknown policy",
            "drain-delay",
            "max-header-bytes",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = FileConfig::parse("listeners: { trafic: x }").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
