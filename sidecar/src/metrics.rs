//! Prometheus metrics, with handles resolved once per endpoint, route and listener so a request
//! costs atomic increments, never a label lookup.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use datastream_resilience::metrics::ResilienceMetrics;

use datastream_http::metrics::{ListenerMetrics, ServerMetrics};
use datastream_lb::endpoint::EndpointSet;
use datastream_lb::endpoint::metrics::LbMetrics;

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of a refused peer connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `accept` or `dial`.
    pub side: &'static str,
    /// The refusal's reason.
    pub reason: &'static str,
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

/// All metrics of one sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The balancer's per-replica families.
    pub lb: LbMetrics,
    responses: Family<RouteLabels, Counter>,
    latency: Family<ListenerLabels, Histogram>,
    /// The HTTP server's families.
    pub http: ServerMetrics,
    /// Live config version.
    pub config_version: Gauge,
    /// Rejected config updates.
    pub config_rejected: Counter,
    /// Metrics of the resilience layer.
    pub resilience: ResilienceMetrics,
    /// The workload certificate's gauges.
    pub identity: Arc<IdentityMetrics>,
    /// The traffic listener's TLS (with `--client-tls-dir`).
    pub client_tls: Arc<crate::client_tls::ClientTlsMetrics>,
}

/// Gauges of the sidecar's workload certificate (zero when the sidecar runs without identity) and
/// the peer connections mutual TLS refused.
#[derive(Debug, Default)]
pub struct IdentityMetrics {
    /// Peer connections refused, by side (`accept`: the peer listener refused a client; `dial`:
    /// this sidecar refused the peer it dialed) and reason (`plaintext`, `wrong_identity`, ...).
    pub refusals: Family<RefusalLabels, Counter>,
    /// 1 while the sidecar holds a valid certificate.
    pub ready: Gauge,
    /// Certificates obtained (the first, then one per renewal).
    pub certificates: Counter,
    /// The certificate's `notAfter`, in Unix seconds (the expiry alert compares it with `time()`).
    pub certificate_expiry: Gauge,
}

/// Per-route response counters by status class, and the listener's latency histogram.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: Arc<[Counter; 5]>,
    latency: Histogram,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("datastream_sidecar");
        let resilience = ResilienceMetrics::default();
        let m = Self {
            lb: LbMetrics::new(resilience.clone()),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            http: ServerMetrics::default(),
            config_version: Gauge::default(),
            config_rejected: Counter::default(),
            resilience,
            identity: Arc::default(),
            client_tls: Arc::default(),
            registry: Registry::default(),
        };
        // Registration order is the order of `/metrics`.
        m.lb.register(&mut registry);
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
        m.http.register(&mut registry);
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
        registry.register(
            "identity_ready",
            "1 while the sidecar holds a valid workload certificate",
            m.identity.ready.clone(),
        );
        registry.register(
            "identity_certificates",
            "Workload certificates obtained (the first, then one per renewal)",
            m.identity.certificates.clone(),
        );
        registry.register(
            "peer_tls_refusals",
            "Peer connections refused by mutual TLS, by side and reason",
            m.identity.refusals.clone(),
        );
        registry.register(
            "identity_certificate_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix seconds; 0 without one)",
            m.identity.certificate_expiry.clone(),
        );
        registry.register(
            "client_tls_refusals",
            "Client connections on the traffic listener that did not complete TLS, by reason",
            m.client_tls.refusals.clone(),
        );
        registry.register(
            "client_tls_reloads",
            "Client TLS certificate reloads, by outcome (loaded, rejected)",
            m.client_tls.reloads.clone(),
        );
        registry.register(
            "client_tls_certificate_expiry_timestamp_seconds",
            "When the traffic listener's certificate expires (Unix seconds; 0 without client TLS)",
            m.client_tls.certificate_expiry.clone(),
        );
        Self { registry, ..m }
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
        self.http.listener(listener)
    }

    /// Counts a locally generated error response.
    #[inline]
    pub fn local_error(&self, error: &'static str) {
        self.http.local_error(error);
    }

    /// Encodes everything in the Prometheus text format, refreshing per-endpoint gauges from
    /// `endpoints` first.
    pub fn encode(&self, endpoints: &EndpointSet) -> String {
        self.lb
            .refresh(endpoints, datastream_resilience::clock::now_ns());
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

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Counts one response and its time to headers.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }
}
