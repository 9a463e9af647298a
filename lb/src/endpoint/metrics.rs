//! The balancer's per-replica metric families: requests and failed attempts counted on the
//! request path through handles resolved once per endpoint, in-flight requests and the
//! peak-EWMA estimate (and the resilience layer's ejection gauge) refreshed from the live
//! endpoint set at scrape time. Registered by whoever owns the registry.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use datastream_resilience::metrics::ResilienceMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::EndpointSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    address: String,
    local: String,
}

/// Per-replica metric families of the balancer.
#[derive(Debug, Clone, Default)]
pub struct LbMetrics {
    requests: Family<EndpointLabels, Counter>,
    failures: Family<EndpointLabels, Counter>,
    inflight: Family<EndpointLabels, Gauge>,
    ewma: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// The resilience layer's families (shared with the registry owner's copy: clones of a
    /// family count into the same series), for the per-endpoint handles and ejection gauge.
    resilience: ResilienceMetrics,
}

/// Per-endpoint counters.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// Requests sent.
    pub requests: Counter,
    /// Failed attempts.
    pub failures: Counter,
}

impl LbMetrics {
    /// Families that hand out per-endpoint handles of `resilience` too.
    pub fn new(resilience: ResilienceMetrics) -> Self {
        Self {
            resilience,
            ..Self::default()
        }
    }

    /// Registers this crate's families (not the resilience ones, which their owner registers).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "endpoint_requests",
            "Requests sent to each replica",
            self.requests.clone(),
        );
        registry.register(
            "endpoint_failures",
            "Failed attempts (connect or transport) per replica",
            self.failures.clone(),
        );
        registry.register(
            "endpoint_inflight",
            "Requests in flight per replica",
            self.inflight.clone(),
        );
        registry.register(
            "endpoint_ewma_seconds",
            "Peak-EWMA latency estimate per replica",
            self.ewma.clone(),
        );
    }

    /// Handles for one endpoint.
    pub fn endpoint(&self, name: &str, addr: SocketAddr, local: bool) -> EndpointMetrics {
        let labels = labels(name, addr, local);
        EndpointMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            failures: self.failures.get_or_create(&labels).clone(),
        }
    }

    /// The resilience layer's families.
    #[inline]
    pub fn resilience(&self) -> &ResilienceMetrics {
        &self.resilience
    }

    /// Refreshes the scrape-time gauges from `endpoints` as of `now_ns`.
    pub fn refresh(&self, endpoints: &EndpointSet, now_ns: u64) {
        self.inflight.clear();
        self.ewma.clear();
        self.resilience.clear_ejected();
        for e in endpoints.endpoints() {
            self.resilience
                .set_ejected(e.name(), e.addr(), e.outlier.is_ejected(now_ns));
            let labels = labels(e.name(), e.addr(), e.is_local());
            let snap = e.load.snapshot(now_ns);
            self.inflight
                .get_or_create(&labels)
                .set(i64::from(snap.inflight));
            self.ewma.get_or_create(&labels).set(snap.ewma_ms / 1000.0);
        }
    }
}

fn labels(name: &str, addr: SocketAddr, local: bool) -> EndpointLabels {
    EndpointLabels {
        endpoint: name.to_owned(),
        address: addr.to_string(),
        local: local.to_string(),
    }
}
