//! Replicas as the balancer sees them: address, load, health, connection pool, and the set they
//! form at one moment.
//!
//! An [`EndpointSet`] is immutable; discovery builds a new one for every change and swaps it in.
//! Endpoints that stay in the set are carried over as the same `Arc`, so their statistics and
//! warm connections survive any change to the rest of the set. An endpoint that joins a running
//! set starts from the set's median latency and in slow start; one that leaves keeps serving the
//! requests that hold it and closes its connections when the last of them ends.

mod health;
mod load;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::client::conn::http1;
use serde::Serialize;

pub use self::health::{BASE_BACKOFF, CONSECUTIVE_FAILURES, Failure, Health, MAX_BACKOFF};
pub use self::load::{
    DECAY, DEFAULT_RTT, FORCE_PICK, Load, LoadSnapshot, MIN_RTT, PROBE_WEIGHT, SAMPLE_WINDOW,
    SLOW_START_CONVERGED, SLOW_START_MAX_SAMPLES, SLOW_START_MIN_SAMPLES, median,
};
use self::metrics::{EndpointMetrics, LbMetrics};
use crate::balance::hash::{Maglev, Ring};
use datastream_http::body::RequestBody;
pub use datastream_http::pool::{CONNECT_TIMEOUT, ConnectError, IDLE_TIMEOUT, MAX_IDLE, Pool};
use datastream_resilience::breaker::{Breaker, Slots};
use datastream_resilience::clock;
use datastream_resilience::metrics::EndpointResilienceMetrics;
use datastream_resilience::outlier::{Detector, EjectReason, Ejections, OutlierState};

/// What discovery knows about one replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// Where to send requests (the local workload, or a peer sidecar's peer listener).
    pub addr: SocketAddr,
    /// A stable name (the pod name in Kubernetes, else the address): the identity used for
    /// consistent hashing and for the order of `primary` routes.
    pub name: String,
    /// Whether this is the local workload.
    pub local: bool,
    /// False while the replica terminates: it finishes what it has but gets nothing new.
    pub serving: bool,
}

/// One replica.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    name: Arc<str>,
    local: bool,
    draining: AtomicBool,
    /// Latency and in-flight figures.
    pub load: Load,
    /// Transport health.
    pub health: Health,
    /// Upstream connections.
    pub pool: Pool,
    /// Pre-resolved metric handles.
    pub metrics: EndpointMetrics,
    /// Passive outlier detection (ejection, probation).
    pub outlier: Detector,
    /// Adaptive client-side throttle.
    pub breaker: Breaker,
    /// Attempts waiting for this replica's response headers (`maxPendingRequests`).
    pub pending: Slots,
    /// Resilience metric handles.
    pub resilience_metrics: EndpointResilienceMetrics,
}

/// Why an endpoint can or cannot take a new request right now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Eligibility {
    /// It can.
    Eligible,
    /// Transport failures took it out of rotation.
    Down {
        /// Milliseconds until it is tried again.
        retry_in_ms: u64,
    },
    /// Discovery reports it as terminating.
    Draining,
    /// Slow start caps its in-flight requests until its latency has converged.
    SlowStartFull {
        /// Requests in flight.
        inflight: u32,
        /// The cap.
        cap: u32,
    },
    /// Outlier detection took it out of rotation.
    Ejected {
        /// Why.
        reason: EjectReason,
        /// Milliseconds until it returns on probation.
        retry_in_ms: u64,
    },
    /// Back from an ejection: one request at a time until one succeeds; this one is busy.
    Probation,
}

/// The per-request hold on an endpoint: counts the request in flight until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
}

/// Ends a request on an endpoint when the response body ends: records the outcome, returns the
/// HTTP/1 connection to the pool on success, and releases the in-flight count.
#[derive(Debug)]
pub struct Completion {
    guard: InflightGuard,
    h1: Option<http1::SendRequest<RequestBody>>,
}

/// Orders replica names as a StatefulSet numbers them: `db-2` before `db-10`. A name ending in
/// `-<number>` sorts by (prefix, number), any other name by itself, so the order is total (a sort
/// with an inconsistent comparison may panic). `primary` mode takes the first usable replica in
/// this order, so the primary is the lowest ordinal.
pub fn by_ordinal(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(name: &str) -> (&str, Option<u64>) {
        name.rsplit_once('-')
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(prefix, n)| Some((prefix, Some(n.parse().ok()?))))
            .unwrap_or((name, None))
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// The replicas at one moment, sorted by name (ordinals numerically, see [`by_ordinal`]).
#[derive(Debug, Default)]
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    local: Option<usize>,
    version: u64,
    /// Ejections across the set, carried from set to set.
    ejections: Arc<Ejections>,
    /// Built on first use by an affinity route, once per set.
    ring: OnceLock<Ring>,
    maglev: OnceLock<Maglev>,
}

// === impl Endpoint ===

impl Endpoint {
    /// A new endpoint seeded with `seed` latency; `warming` starts it in slow start. Its
    /// ejections count into the set-wide `ejections`.
    pub fn new(
        spec: &EndpointSpec,
        seed: Duration,
        warming: bool,
        metrics: &LbMetrics,
        ejections: &Arc<Ejections>,
    ) -> Self {
        Self {
            addr: spec.addr,
            name: spec.name.as_str().into(),
            local: spec.local,
            draining: AtomicBool::new(!spec.serving),
            load: Load::new(seed, warming),
            health: Health::default(),
            pool: Pool::new(spec.addr),
            metrics: metrics.endpoint(&spec.name, spec.addr, spec.local),
            outlier: Detector::new(Arc::clone(ejections)),
            breaker: Breaker::new(),
            pending: Slots::default(),
            resilience_metrics: metrics.resilience().endpoint(&spec.name, spec.addr),
        }
    }

    /// The address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The stable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is the local workload.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether discovery reports it as terminating.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the endpoint can take a new request at `now_ns`, and if not, why.
    pub fn eligibility(&self, now_ns: u64) -> Eligibility {
        if self.is_draining() {
            return Eligibility::Draining;
        }
        if let Some(down) = self.health.down_for(now_ns) {
            return Eligibility::Down {
                retry_in_ms: u64::try_from(down.as_millis()).unwrap_or(u64::MAX),
            };
        }
        match self.outlier.state(now_ns) {
            OutlierState::Healthy => {}
            // Panic mode: too few replicas left un-ejected, so ejections are ignored.
            _ if self.outlier.ejections().in_panic() => {}
            OutlierState::Ejected {
                reason,
                remaining_ms,
                ..
            } => {
                return Eligibility::Ejected {
                    reason,
                    retry_in_ms: remaining_ms,
                };
            }
            OutlierState::Probation { .. } => {
                if self.load.inflight() >= 1 {
                    return Eligibility::Probation;
                }
            }
        }
        if let Some(cap) = self.load.slow_start_cap() {
            let inflight = self.load.inflight();
            if inflight >= cap {
                return Eligibility::SlowStartFull { inflight, cap };
            }
        }
        Eligibility::Eligible
    }

    /// Whether [`Self::eligibility`] is `Eligible`.
    pub fn is_eligible(&self, now_ns: u64) -> bool {
        self.eligibility(now_ns) == Eligibility::Eligible
    }

    /// Counts a new request in flight on this endpoint.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.load.start();
        self.metrics.requests.inc();
        InflightGuard {
            endpoint: Arc::clone(self),
        }
    }
}

// === impl InflightGuard ===

impl InflightGuard {
    /// The endpoint this request holds.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Records the time to response headers and that the attempt reached the endpoint.
    pub fn responded(&self, latency: Duration) {
        self.endpoint.load.observe(latency);
        if self.endpoint.health.success() {
            // A returning replica ramps up again until its latency has converged.
            self.endpoint.load.restart_slow_start();
        }
    }

    /// Records a failed attempt.
    pub fn failed(&self, kind: Failure) {
        self.endpoint.metrics.failures.inc();
        self.endpoint.health.failure(kind);
    }

    /// Turns the guard into the completion carried by the response body.
    pub fn into_completion(self, h1: Option<http1::SendRequest<RequestBody>>) -> Completion {
        Completion { guard: self, h1 }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.load.finish();
    }
}

// === impl Completion ===

impl datastream_http::body::BodyCompletion for Completion {
    /// The body ended cleanly: the connection can serve the next request (`own`: the own
    /// client's connection, when the body came over one).
    fn complete(mut self, own: Option<datastream_http::h1::client::Connection>) {
        if let Some(sender) = self.h1.take() {
            self.guard.endpoint.pool.put_h1(sender);
        }
        if let Some(conn) = own {
            self.guard.endpoint.pool.put_own(conn);
        }
    }

    /// The body failed mid-stream.
    fn fail(self) {
        self.guard.failed(Failure::Transport);
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    /// Builds the set for `specs`, carrying over endpoints of `previous` that are still present.
    pub fn build(
        previous: &EndpointSet,
        specs: &[EndpointSpec],
        version: u64,
        metrics: &LbMetrics,
    ) -> Self {
        let now = clock::now_ns();
        let seed = median(
            previous
                .endpoints
                .iter()
                .map(|e| e.load.rtt_ns(now))
                .collect(),
        )
        .map(|ns| Duration::from_nanos(ns as u64))
        .unwrap_or(DEFAULT_RTT);
        // Slow start only makes sense against a running set: at startup every endpoint is new.
        let warming = !previous.endpoints.is_empty();
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(specs.len());
        for spec in specs {
            if endpoints.iter().any(|e| e.addr == spec.addr) {
                continue;
            }
            let reused = previous
                .endpoints
                .iter()
                .find(|e| e.addr == spec.addr && e.local == spec.local && *e.name == *spec.name);
            let endpoint = match reused {
                Some(existing) => {
                    existing.draining.store(!spec.serving, Ordering::Relaxed);
                    Arc::clone(existing)
                }
                None => Arc::new(Endpoint::new(
                    spec,
                    seed,
                    warming,
                    metrics,
                    &previous.ejections,
                )),
            };
            endpoints.push(endpoint);
        }
        endpoints.sort_by(|a, b| by_ordinal(&a.name, &b.name).then(a.addr.cmp(&b.addr)));
        let local = endpoints.iter().position(|e| e.local);
        // Removed replicas no longer count against the ejection cap.
        for gone in previous
            .endpoints
            .iter()
            .filter(|p| !endpoints.iter().any(|e| Arc::ptr_eq(e, p)))
        {
            gone.outlier.forget();
        }
        previous.ejections.set_total(endpoints.len());
        Self {
            endpoints,
            local,
            ejections: Arc::clone(&previous.ejections),
            version,
            ring: OnceLock::new(),
            maglev: OnceLock::new(),
        }
    }

    /// The endpoints, sorted by name (ordinals numerically).
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The local workload, if it is part of the set.
    pub fn local(&self) -> Option<&Arc<Endpoint>> {
        self.local.map(|i| &self.endpoints[i])
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The hash ring of this set.
    pub fn ring(&self) -> &Ring {
        self.ring
            .get_or_init(|| Ring::new(self.endpoints.iter().map(|e| e.name())))
    }

    /// The Maglev table of this set.
    pub fn maglev(&self) -> &Maglev {
        self.maglev
            .get_or_init(|| Maglev::new(self.endpoints.iter().map(|e| e.name())))
    }

    /// The set-wide ejection figures.
    pub fn ejections(&self) -> &Arc<Ejections> {
        &self.ejections
    }

    /// Which discovery update produced this set.
    pub fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statefulset_ordinals_sort_numerically() {
        let mut names = vec!["db-10", "db-2", "db-0", "db-1", "cache-3", "db-x", "db-"];
        names.sort_by(|a, b| by_ordinal(a, b));
        assert_eq!(
            names,
            ["cache-3", "db-0", "db-1", "db-2", "db-10", "db-", "db-x"]
        );
        // A mix that a per-pair rule would order in a cycle.
        let mut mixed = vec!["a-1x", "a-10", "a-9"];
        mixed.sort_by(|a, b| by_ordinal(a, b));
        assert_eq!(mixed, ["a-9", "a-10", "a-1x"]);
    }

    fn spec(port: u16) -> EndpointSpec {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        EndpointSpec {
            addr,
            name: addr.to_string(),
            local: false,
            serving: true,
        }
    }

    #[test]
    fn statistics_survive_set_changes_and_newcomers_start_from_the_median() {
        let metrics = LbMetrics::default();
        let first = EndpointSet::build(
            &EndpointSet::default(),
            &[spec(1), spec(2), spec(3)],
            1,
            &metrics,
        );
        assert!(first.endpoints().iter().all(|e| !e.load.warming()));
        for (e, ms) in first.endpoints().iter().zip([10, 20, 300]) {
            e.load.observe(Duration::from_millis(ms));
        }
        let second = EndpointSet::build(&first, &[spec(2), spec(3), spec(4)], 2, &metrics);
        assert!(Arc::ptr_eq(&first.endpoints()[1], &second.endpoints()[0]));
        let newcomer = &second.endpoints()[2];
        assert_eq!(newcomer.addr().port(), 4);
        let ewma = newcomer.load.snapshot(clock::now_ns()).ewma_ms;
        assert!(
            (ewma - 20.0).abs() < 1.0,
            "seeded from the median, got {ewma}"
        );
        assert!(newcomer.load.warming());
    }

    #[test]
    fn a_replica_returning_from_down_restarts_slow_start() {
        let metrics = LbMetrics::default();
        let set = EndpointSet::build(&EndpointSet::default(), &[spec(1)], 1, &metrics);
        let e = &set.endpoints()[0];
        assert!(!e.load.warming());
        e.health.failure(Failure::Connect);
        assert!(matches!(
            e.eligibility(clock::now_ns()),
            Eligibility::Down { .. }
        ));
        e.start().responded(Duration::from_millis(5));
        assert!(e.load.warming(), "probation passed: ramp up again");
        assert_eq!(e.load.slow_start_cap(), Some(1));
    }

    #[test]
    fn draining_endpoint_is_not_eligible() {
        let metrics = LbMetrics::default();
        let mut s = spec(1);
        s.serving = false;
        let set = EndpointSet::build(&EndpointSet::default(), &[s], 1, &metrics);
        assert_eq!(
            set.endpoints()[0].eligibility(clock::now_ns()),
            Eligibility::Draining
        );
    }
}
