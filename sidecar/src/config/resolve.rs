//! Merging the file and the flags into one local-mode configuration.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use datastream_api::v1alpha1::{TrafficPolicy, UpstreamProtocol, parse_duration};

use super::{DEFAULT_ADMIN, DEFAULT_LISTEN, DEFAULT_LOG_LEVEL, EndpointEntry, FileConfig, compile};
use crate::proxy::ServerLimits;
use crate::runtime::{DEFAULT_DRAIN_DELAY, DEFAULT_DRAIN_TIMEOUT, RuntimeSettings};
use datastream_lb::endpoint::EndpointSpec;

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
    /// `--max-header-fields`.
    pub max_header_fields: Option<usize>,
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
        let max_header_fields = flags
            .max_header_fields
            .or(file.server.max_header_fields)
            .unwrap_or(defaults.max_header_fields);
        if !(16..=10_000).contains(&max_header_fields) {
            errors.push(format!(
                "max-header-fields: must be between 16 and 10000, got {max_header_fields}"
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
                    max_header_fields,
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
