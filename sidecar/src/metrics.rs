//! Prometheus metrics, with handles resolved once per endpoint, route and listener so a request
//! costs atomic increments, never a label lookup.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::endpoint::EndpointSet;

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    address: String,
    local: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: String,
    route: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

/// All metrics of one sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    endpoint_requests: Family<EndpointLabels, Counter>,
    endpoint_failures: Family<EndpointLabels, Counter>,
    endpoint_inflight: Family<EndpointLabels, Gauge>,
    endpoint_ewma: Family<EndpointLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    responses: Family<RouteLabels, Counter>,
    latency: Family<ListenerLabels, Histogram>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    /// Live config version.
    pub config_version: Gauge,
    /// Rejected config updates.
    pub config_rejected: Counter,
    /// Metrics of the resilience layer.
    pub resilience: crate::resilience::metrics::ResilienceMetrics,
}

/// Per-endpoint counters.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// Requests sent.
    pub requests: Counter,
    /// Failed attempts.
    pub failures: Counter,
}

/// Per-route response counters by status class, and the listener's latency histogram.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: Arc<[Counter; 5]>,
    latency: Histogram,
}

/// Per-listener connection metrics.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Open connections.
    pub open: Gauge,
    /// Accepted connections.
    pub total: Counter,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("datastream_sidecar");
        let m = Self {
            endpoint_requests: Family::default(),
            endpoint_failures: Family::default(),
            endpoint_inflight: Family::default(),
            endpoint_ewma: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            connections_open: Family::default(),
            connections_total: Family::default(),
            errors: Family::default(),
            config_version: Gauge::default(),
            config_rejected: Counter::default(),
            resilience: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "endpoint_requests",
            "Requests sent to each replica",
            m.endpoint_requests.clone(),
        );
        registry.register(
            "endpoint_failures",
            "Failed attempts (connect or transport) per replica",
            m.endpoint_failures.clone(),
        );
        registry.register(
            "endpoint_inflight",
            "Requests in flight per replica",
            m.endpoint_inflight.clone(),
        );
        registry.register(
            "endpoint_ewma_seconds",
            "Peak-EWMA latency estimate per replica",
            m.endpoint_ewma.clone(),
        );
        registry.register(
            "responses",
            "Responses by listener, route and status class",
            m.responses.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers by listener",
            m.latency.clone(),
        );
        registry.register(
            "connections_open",
            "Open client connections by listener",
            m.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Accepted client connections by listener",
            m.connections_total.clone(),
        );
        registry.register(
            "local_errors",
            "Responses the sidecar generated itself, by error",
            m.errors.clone(),
        );
        registry.register(
            "config_version",
            "Version of the live configuration",
            m.config_version.clone(),
        );
        registry.register(
            "config_rejected",
            "Configuration updates rejected by validation",
            m.config_rejected.clone(),
        );
        m.resilience.register(&mut registry);
        Self { registry, ..m }
    }

    /// Handles for one endpoint.
    pub fn endpoint(&self, name: &str, addr: SocketAddr, local: bool) -> EndpointMetrics {
        let labels = endpoint_labels(name, addr, local);
        EndpointMetrics {
            requests: self.endpoint_requests.get_or_create(&labels).clone(),
            failures: self.endpoint_failures.get_or_create(&labels).clone(),
        }
    }

    /// Handles for one route on one listener.
    pub fn route(&self, listener: &str, route: &str) -> RouteMetrics {
        let counter = |class: &str| {
            self.responses
                .get_or_create(&RouteLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    class: class.to_owned(),
                })
                .clone()
        };
        RouteMetrics {
            by_class: Arc::new([
                counter("1xx"),
                counter("2xx"),
                counter("3xx"),
                counter("4xx"),
                counter("5xx"),
            ]),
            latency: self
                .latency
                .get_or_create(&ListenerLabels {
                    listener: listener.to_owned(),
                })
                .clone(),
        }
    }

    /// Handles for one listener.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        ListenerMetrics {
            open: self.connections_open.get_or_create(&labels).clone(),
            total: self.connections_total.get_or_create(&labels).clone(),
        }
    }

    /// Counts a locally generated error response.
    pub fn local_error(&self, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    /// Encodes everything in the Prometheus text format, refreshing per-endpoint gauges from
    /// `endpoints` first.
    pub fn encode(&self, endpoints: &EndpointSet) -> String {
        self.endpoint_inflight.clear();
        self.endpoint_ewma.clear();
        self.resilience.clear_ejected();
        let now = crate::clock::now_ns();
        for e in endpoints.endpoints() {
            self.resilience
                .set_ejected(e.name(), e.addr(), e.outlier.is_ejected(now));
            let labels = endpoint_labels(e.name(), e.addr(), e.is_local());
            let snap = e.load.snapshot(now);
            self.endpoint_inflight
                .get_or_create(&labels)
                .set(i64::from(snap.inflight));
            self.endpoint_ewma
                .get_or_create(&labels)
                .set(snap.ewma_ms / 1000.0);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn endpoint_labels(name: &str, addr: SocketAddr, local: bool) -> EndpointLabels {
    EndpointLabels {
        endpoint: name.to_owned(),
        address: addr.to_string(),
        local: local.to_string(),
    }
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Counts one response and its time to headers.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }
}
