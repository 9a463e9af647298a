//! One replica: its address and name, load, health, pool, resilience state, and the hold a
//! request keeps on it until its response body ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::client::conn::http1;
use serde::Serialize;

use super::metrics::{EndpointMetrics, LbMetrics};
use super::{Failure, Health, Load};
use datastream_http::body::RequestBody;
use datastream_http::pool::{Connector, Pool};
use datastream_resilience::breaker::{Breaker, Slots};
use datastream_resilience::metrics::EndpointResilienceMetrics;
use datastream_resilience::outlier::{
    Detector, EjectReason, Ejections, OutlierState, PROBATION_TRIALS,
};

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
    pub(super) addr: SocketAddr,
    pub(super) name: Arc<str>,
    /// `hash_bytes` of the name, which identifies the replica to the retry budget on every
    /// attempt.
    name_hash: u64,
    pub(super) local: bool,
    pub(super) draining: AtomicBool,
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
    /// Back from an ejection: at most [`PROBATION_TRIALS`] attempts at once until one
    /// succeeds; this many are waiting for their answers.
    Probation,
}

/// The per-request hold on an endpoint: counts the request in flight until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
    /// When the attempt started, on the resilience clock: a failure of an attempt older than
    /// the endpoint's last mark-down is not news (see [`Health::failure`]).
    started_ns: u64,
    /// When its response headers arrived (0 until then): the reading the request path goes on
    /// with, rather than reading the clock again.
    answered_ns: u64,
}

/// Ends a request on an endpoint when the response body ends: records the outcome, returns the
/// HTTP/1 connection to the pool on success, and releases the in-flight count.
#[derive(Debug)]
pub struct Completion {
    guard: InflightGuard,
    h1: Option<http1::SendRequest<RequestBody>>,
}

// === impl Endpoint ===

impl Endpoint {
    /// A new endpoint seeded with `seed` latency; `warming` starts it in slow start. Its
    /// ejections count into the set-wide `ejections`; `connector` wraps its connections (TLS).
    pub fn new(
        spec: &EndpointSpec,
        seed: Duration,
        warming: bool,
        metrics: &LbMetrics,
        ejections: &Arc<Ejections>,
        connector: Option<Arc<dyn Connector>>,
    ) -> Self {
        Self {
            addr: spec.addr,
            name: spec.name.as_str().into(),
            name_hash: crate::balance::hash::hash_bytes(spec.name.as_bytes(), 0),
            local: spec.local,
            draining: AtomicBool::new(!spec.serving),
            load: Load::new(seed, warming),
            health: Health::default(),
            pool: Pool::with_connector(spec.addr, connector),
            metrics: metrics.endpoint(&spec.name, spec.addr, spec.local),
            outlier: Detector::new(Arc::clone(ejections)),
            breaker: Breaker::new(),
            pending: Slots::default(),
            resilience_metrics: metrics.resilience().endpoint(&spec.name, spec.addr),
        }
    }

    /// The address requests go to.
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The stable name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A stable 64-bit hash of its name (`hash::hash_bytes` with seed 0).
    #[inline]
    pub fn name_hash(&self) -> u64 {
        self.name_hash
    }

    /// Whether this is the local workload.
    #[inline]
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether discovery reports it as terminating.
    #[inline]
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
                // Trials are counted until their response headers: a long-lived stream that
                // started on probation does not keep the replica from its next trials.
                if self.pending.held() >= PROBATION_TRIALS {
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
    #[inline]
    pub fn is_eligible(&self, now_ns: u64) -> bool {
        self.eligibility(now_ns) == Eligibility::Eligible
    }

    /// Counts a new request in flight on this endpoint, started at `now_ns` (a reading of the
    /// resilience clock).
    pub fn start(self: &Arc<Self>, now_ns: u64) -> InflightGuard {
        self.load.start();
        self.metrics.requests.inc();
        InflightGuard {
            endpoint: Arc::clone(self),
            started_ns: now_ns,
            answered_ns: 0,
        }
    }
}

// === impl InflightGuard ===

impl InflightGuard {
    /// The endpoint this request holds.
    #[inline]
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Records that the response headers arrived at `now_ns` (the time to them feeds the
    /// latency estimate) and that the attempt reached the endpoint.
    pub fn responded_at(&mut self, now_ns: u64) {
        self.answered_ns = now_ns;
        let latency = Duration::from_nanos(now_ns.saturating_sub(self.started_ns));
        self.endpoint.load.observe_at(latency, now_ns);
        if self.endpoint.health.success() {
            // A returning replica ramps up again until its latency has converged.
            self.endpoint.load.restart_slow_start();
        }
    }

    /// Records that the attempt's connection was ready at `now_ns`: latency is measured from
    /// there. Setting up a connection is a one-off cost of the connection, not the replica's
    /// response time; with TLS it is a handshake, which a peer under a CPU limit may take tens of
    /// milliseconds to complete, and peak-EWMA would otherwise take that as the replica's latency
    /// and starve it of requests for seconds after its first one.
    #[inline]
    pub fn connected_at(&mut self, now_ns: u64) {
        self.started_ns = now_ns;
    }

    /// When the attempt started (or its fresh connection was ready), on the resilience clock.
    #[inline]
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// When its response headers arrived, on the resilience clock (0 before).
    #[inline]
    pub fn answered_ns(&self) -> u64 {
        self.answered_ns
    }

    /// Records a failed attempt; returns whether it was news about the endpoint (see
    /// [`Health::failure`]).
    #[inline]
    pub fn failed(&self, kind: Failure) -> bool {
        self.endpoint.metrics.failures.inc();
        self.endpoint.health.failure(kind, self.started_ns)
    }

    /// Turns the guard into the completion carried by the response body.
    #[inline]
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
        let _ = self.guard.failed(Failure::Transport);
    }
}
