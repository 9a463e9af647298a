//! The HTTP server's metric families: connections per listener and the answers the server
//! generated itself (refused heads, and whatever the application counts as its own errors).
//! Registered by whoever owns the registry; handles are resolved once per listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

/// Metric families of the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    connections_open: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    local_errors: LocalErrors,
}

/// Responses generated locally rather than by a replica, by error code.
#[derive(Debug, Clone, Default)]
pub struct LocalErrors(Family<ErrorLabels, Counter>);

/// Per-listener handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Open connections.
    pub open: Gauge,
    /// Accepted connections.
    pub total: Counter,
    /// Locally generated answers (shared by every listener).
    pub errors: LocalErrors,
}

impl ServerMetrics {
    /// Registers the families, in the order `/metrics` lists them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Open client connections by listener",
            self.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Accepted client connections by listener",
            self.connections_total.clone(),
        );
        registry.register(
            "local_errors",
            "Responses the sidecar generated itself, by error",
            self.local_errors.0.clone(),
        );
    }

    /// Handles for one listener.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        ListenerMetrics {
            open: self.connections_open.get_or_create(&labels).clone(),
            total: self.connections_total.get_or_create(&labels).clone(),
            errors: self.local_errors.clone(),
        }
    }

    /// Counts a locally generated answer.
    #[inline]
    pub fn local_error(&self, error: &'static str) {
        self.local_errors.count(error);
    }
}

impl LocalErrors {
    /// Counts one answer with error code `error`.
    pub fn count(&self, error: &'static str) {
        self.0
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }
}
