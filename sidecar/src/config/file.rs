//! The YAML config file's schema and parser.

use std::path::Path;

use serde::{Deserialize, Serialize};

use datastream_api::v1alpha1::TrafficPolicy;

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
    /// Most header fields in a request (431 above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_fields: Option<usize>,
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
