//! What the sidecar hands this crate: the figures of one policy ([`Settings`]), the state that
//! outlives policy updates ([`Runtime`]) and each route's own ([`RouteResilience`]).

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::health::{HealthCheckConfig, HealthStatus, Verdict};
use crate::hedge::{self, HedgeConfig};
use crate::metrics::RouteResilienceMetrics;
use crate::outlier::OutlierConfig;
use crate::ratelimit::{RateLimitConfig, TokenBucket};
use crate::retry::RetryPolicy;
use crate::shed::{ShedConfig, Shedder};

/// Resilience state of one sidecar that outlives policy updates: the retry budget, the
/// adaptive concurrency limit and the local workload's health.
#[derive(Debug)]
pub struct Runtime {
    /// The retry budget shared by every route.
    pub budget: RetryBudget,
    /// The adaptive concurrency limit of the traffic listener.
    pub shedder: Arc<Shedder>,
    /// The active health check's view of the local workload.
    pub local_health: Arc<HealthStatus>,
}

impl Runtime {
    /// State under `settings` (the budget and shedding figures it starts with; later policies
    /// reconfigure both in place).
    pub fn new(settings: &Settings) -> Self {
        Self {
            budget: RetryBudget::new(settings.budget),
            shedder: Arc::new(Shedder::new(&settings.shed)),
            local_health: Arc::new(HealthStatus::new()),
        }
    }

    /// Whether the local workload keeps the sidecar from being ready: only a failing check
    /// does; before the first check, readiness follows the rest of the sidecar's state.
    #[inline]
    pub fn local_workload_failing(&self) -> bool {
        self.local_health.verdict() == Verdict::Unhealthy
    }
}

/// Per-route resilience settings and state.
#[derive(Debug, Default)]
pub struct RouteResilience {
    /// The route's request timeout, overriding `failover.requestTimeout`.
    pub timeout: Option<Duration>,
    /// Retry non-idempotent requests too.
    pub retry_non_idempotent: bool,
    /// The route's token bucket.
    pub rate_limit: Option<TokenBucket>,
    /// Metric handles.
    pub metrics: RouteResilienceMetrics,
    /// Recent attempt latencies, kept only when hedging is configured.
    pub latency: hedge::LatencyRecord,
}

/// The resilience settings of one policy, compiled from `failover` and `limits`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, retries included (routes may override it).
    pub request_timeout: Duration,
    /// Time allowed per attempt; `None` leaves only the request timeout.
    pub per_try_timeout: Option<Duration>,
    /// How long a body may stall before the exchange is abandoned; `None` never.
    pub stream_idle_timeout: Option<Duration>,
    /// Retry rules (routes may allow non-idempotent retries).
    pub retry: RetryPolicy,
    /// Retry budget.
    pub budget: BudgetConfig,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// Active health checks of the local workload.
    pub health: HealthCheckConfig,
    /// Adaptive breaker per replica.
    pub breaker: BreakerConfig,
    /// Most requests waiting for a connection to one replica.
    pub max_pending_per_replica: Option<u32>,
    /// Most requests in flight to one replica.
    pub max_concurrent_per_replica: Option<u32>,
    /// Hedging of idempotent requests.
    pub hedge: Option<HedgeConfig>,
    /// Adaptive load shedding.
    pub shed: ShedConfig,
    /// Default rate limit of routes that set none.
    pub rate_limit: Option<RateLimitConfig>,
    /// Largest body buffered for retries.
    pub replay_limit: u64,
}
