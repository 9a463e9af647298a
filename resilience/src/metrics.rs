//! Metrics of the resilience layer, registered into the sidecar's registry and resolved once
//! per route and per replica, so the request path only increments atomics.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::budget::Refusal;
use super::outlier::EjectReason;
use super::retry::RetryReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointReason {
    endpoint: String,
    address: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
    address: String,
}

/// The resilience metric families.
#[derive(Debug, Clone, Default)]
pub struct ResilienceMetrics {
    retries: Family<RouteReason, Counter>,
    budget_refusals: Family<RouteReason, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    timeouts: Family<RouteLabel, Counter>,
    broadcasts: Family<RouteReason, Counter>,
    ejections: Family<EndpointReason, Counter>,
    breaker_drops: Family<EndpointLabel, Counter>,
    capacity_skips: Family<EndpointLabel, Counter>,
    ejected: Family<EndpointLabel, Gauge>,
    /// Requests shed by the adaptive concurrency limit.
    pub shed: Counter,
    /// The adaptive concurrency limit in force.
    pub concurrency_limit: Gauge,
    /// Whether the local workload's active health check passes (1), fails (0).
    pub local_healthy: Gauge,
}

/// Handles of one route (unregistered counters by default, until compiled against a registry).
#[derive(Debug, Clone, Default)]
pub struct RouteResilienceMetrics {
    retries: [Counter; RetryReason::ALL.len()],
    /// Retries refused because the budget was used up.
    pub budget_exhausted: Counter,
    /// Retries refused because failures were correlated across replicas.
    pub budget_correlated: Counter,
    /// Requests answered 429.
    pub rate_limited: Counter,
    /// Requests answered 504.
    pub timeouts: Counter,
    /// Broadcasts that reached their quorum.
    pub broadcast_ok: Counter,
    /// Broadcasts that did not.
    pub broadcast_failed: Counter,
}

/// Handles of one replica.
#[derive(Debug, Clone, Default)]
pub struct EndpointResilienceMetrics {
    ejections: [Counter; 4],
    /// Attempts the adaptive breaker dropped locally.
    pub breaker_drops: Counter,
    /// Picks skipped because the replica was at its concurrency or pending cap.
    pub capacity_skips: Counter,
}

// === impl ResilienceMetrics ===

impl ResilienceMetrics {
    /// Registers every family into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "retries",
            "Retries by route and reason",
            self.retries.clone(),
        );
        registry.register(
            "retry_budget_refusals",
            "Retries refused by the retry budget, by route and reason (exhausted, correlated)",
            self.budget_refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests answered 429 by the route's token bucket",
            self.rate_limited.clone(),
        );
        registry.register(
            "timeouts",
            "Requests answered 504 because their deadline expired",
            self.timeouts.clone(),
        );
        registry.register(
            "broadcasts",
            "Broadcast requests by route and outcome (quorum, failed)",
            self.broadcasts.clone(),
        );
        registry.register(
            "ejections",
            "Outlier ejections by replica and reason",
            self.ejections.clone(),
        );
        registry.register(
            "ejected",
            "Whether each replica is ejected now (1) or not (0)",
            self.ejected.clone(),
        );
        registry.register(
            "breaker_drops",
            "Attempts dropped locally by a replica's adaptive breaker",
            self.breaker_drops.clone(),
        );
        registry.register(
            "capacity_skips",
            "Picks that skipped a replica at its max concurrent or pending requests",
            self.capacity_skips.clone(),
        );
        registry.register(
            "shed",
            "Requests shed by the adaptive concurrency limit (503 overloaded)",
            self.shed.clone(),
        );
        registry.register(
            "concurrency_limit",
            "The adaptive concurrency limit in force",
            self.concurrency_limit.clone(),
        );
        registry.register(
            "local_healthy",
            "Whether the local workload passes its active health check",
            self.local_healthy.clone(),
        );
    }

    /// Handles of `route`.
    pub fn route(&self, route: &str) -> RouteResilienceMetrics {
        let rr = |reason: &str| RouteReason {
            route: route.to_owned(),
            reason: reason.to_owned(),
        };
        let r = RouteLabel {
            route: route.to_owned(),
        };
        // One statement per handle: a `Family` read guard lives until the end of its
        // statement, and creating a second label set of the same family needs the write lock.
        let retries = RetryReason::ALL.map(|x| self.retries.get_or_create(&rr(x.as_str())).clone());
        let budget_exhausted = self.budget_refusals.get_or_create(&rr("exhausted")).clone();
        let budget_correlated = self
            .budget_refusals
            .get_or_create(&rr("correlated"))
            .clone();
        let rate_limited = self.rate_limited.get_or_create(&r).clone();
        let timeouts = self.timeouts.get_or_create(&r).clone();
        let broadcast_ok = self.broadcasts.get_or_create(&rr("quorum")).clone();
        let broadcast_failed = self.broadcasts.get_or_create(&rr("failed")).clone();
        RouteResilienceMetrics {
            retries,
            budget_exhausted,
            budget_correlated,
            rate_limited,
            timeouts,
            broadcast_ok,
            broadcast_failed,
        }
    }

    /// Handles of one replica.
    pub fn endpoint(&self, name: &str, addr: SocketAddr) -> EndpointResilienceMetrics {
        let er = |reason: EjectReason| EndpointReason {
            endpoint: name.to_owned(),
            address: addr.to_string(),
            reason: reason_label(reason).to_owned(),
        };
        let e = EndpointLabel {
            endpoint: name.to_owned(),
            address: addr.to_string(),
        };
        let ejections = EJECT_REASONS.map(|r| self.ejections.get_or_create(&er(r)).clone());
        let breaker_drops = self.breaker_drops.get_or_create(&e).clone();
        let capacity_skips = self.capacity_skips.get_or_create(&e).clone();
        EndpointResilienceMetrics {
            ejections,
            breaker_drops,
            capacity_skips,
        }
    }

    /// Refreshes the per-replica `ejected` gauge (at scrape time).
    pub fn set_ejected(&self, name: &str, addr: SocketAddr, ejected: bool) {
        self.ejected
            .get_or_create(&EndpointLabel {
                endpoint: name.to_owned(),
                address: addr.to_string(),
            })
            .set(i64::from(ejected));
    }

    /// Forgets every per-replica gauge (before a refresh, so removed replicas disappear).
    pub fn clear_ejected(&self) {
        self.ejected.clear();
    }
}

const EJECT_REASONS: [EjectReason; 4] = [
    EjectReason::ConsecutiveFailures,
    EjectReason::FailureRate,
    EjectReason::ProbationFailed,
    EjectReason::RetryAfter,
];

fn reason_label(r: EjectReason) -> &'static str {
    match r {
        EjectReason::ConsecutiveFailures => "consecutive-failures",
        EjectReason::FailureRate => "failure-rate",
        EjectReason::ProbationFailed => "probation-failed",
        EjectReason::RetryAfter => "retry-after",
    }
}

// === impl RouteResilienceMetrics ===

impl RouteResilienceMetrics {
    /// Counts a retry.
    pub fn retry(&self, reason: RetryReason) {
        if let Some(i) = RetryReason::ALL.iter().position(|r| *r == reason) {
            self.retries[i].inc();
        }
    }

    /// Counts a refused retry.
    pub fn refused(&self, refusal: Refusal) {
        match refusal {
            Refusal::Exhausted => self.budget_exhausted.inc(),
            Refusal::Correlated => self.budget_correlated.inc(),
        };
    }
}

// === impl EndpointResilienceMetrics ===

impl EndpointResilienceMetrics {
    /// Counts an ejection.
    pub fn ejected(&self, reason: EjectReason) {
        if let Some(i) = EJECT_REASONS.iter().position(|r| *r == reason) {
            self.ejections[i].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn handles_feed_the_registered_families() {
        let m = ResilienceMetrics::default();
        let mut registry = Registry::with_prefix("datastream_sidecar");
        m.register(&mut registry);
        let route = m.route("default");
        route.retry(RetryReason::PerTryTimeout);
        route.refused(Refusal::Correlated);
        let ep = m.endpoint("r1", ([127, 0, 0, 1], 9).into());
        ep.ejected(EjectReason::FailureRate);
        ep.breaker_drops.inc();
        m.shed.inc();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        for line in [
            r#"datastream_sidecar_retries_total{route="default",reason="per-try-timeout"} 1"#,
            r#"datastream_sidecar_retry_budget_refusals_total{route="default",reason="correlated"} 1"#,
            r#"datastream_sidecar_ejections_total{endpoint="r1",address="127.0.0.1:9",reason="failure-rate"} 1"#,
            r#"datastream_sidecar_breaker_drops_total{endpoint="r1",address="127.0.0.1:9"} 1"#,
            "datastream_sidecar_shed_total 1",
        ] {
            assert!(out.contains(line), "{line} missing from:\n{out}");
        }
    }
}
