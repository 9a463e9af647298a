//! Operator metrics, in Prometheus text format via prometheus-client.
//!
//! Every label has a bounded set of values (results, error variants, child kinds): per-object
//! labels would grow without bound with the number of DataStreams.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of `reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

/// Label set of `reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error variant.
    pub reason: &'static str,
}

/// Label set of `api_writes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind of the object written.
    pub kind: &'static str,
    /// `apply`, `delete` or `status`.
    pub verb: &'static str,
}

/// Label set of `watch_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// Kind being watched.
    pub kind: &'static str,
}

/// Label set of `datastreams_by_phase`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `status.phase`, or `None` before the first status.
    pub phase: &'static str,
}

/// All operator metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles finished, by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Reconcile failures, by error variant.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Reconciles running now.
    pub in_flight: Gauge,
    /// Write requests the operator sent, by kind and verb. Zero growth means a steady state.
    pub writes: Family<WriteLabels, Counter>,
    /// Watch stream errors, by kind.
    pub watch_errors: Family<WatchLabels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// DataStreams in the operator's cache.
    pub streams: Gauge,
    /// DataStreams in the operator's cache, by `status.phase`.
    pub streams_by_phase: Family<PhaseLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `datastream_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            in_flight: Gauge::default(),
            writes: Family::default(),
            watch_errors: Family::default(),
            leader: Gauge::default(),
            streams: Gauge::default(),
            streams_by_phase: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("datastream_operator");
        r.register(
            "reconcile",
            "Reconciles finished, by result",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile failures, by error variant",
            metrics.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.duration.clone(),
        );
        r.register(
            "reconcile_in_flight",
            "Reconciles running now",
            metrics.in_flight.clone(),
        );
        r.register(
            "api_writes",
            "Write requests sent to the API server, by kind and verb",
            metrics.writes.clone(),
        );
        r.register(
            "watch_errors",
            "Watch stream errors, by kind",
            metrics.watch_errors.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        r.register(
            "datastreams",
            "DataStreams in the operator's cache",
            metrics.streams.clone(),
        );
        r.register(
            "datastreams_by_phase",
            "DataStreams in the operator's cache, by status.phase (None before the first status)",
            metrics.streams_by_phase.clone(),
        );
        metrics
    }

    /// Counts one write request.
    pub fn wrote(&self, kind: &'static str, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { kind, verb }).inc();
    }
}
