//! Failover and overload protection: the mechanisms that keep clients from noticing a replica
//! that dies, freezes, slows down or fails, and keep an overload from turning into an outage.
//!
//! Each mechanism is a small state machine in its own module, driven by explicit clock readings
//! (nanoseconds from [`crate::clock::now_ns`]) so it can be tested deterministically; the
//! request path in [`crate::proxy`] wires them together:
//!
//! | stage | mechanism | module |
//! | --- | --- | --- |
//! | admit | adaptive concurrency limit (503 `overloaded`) | [`shed`] |
//! | admit | token bucket per route (429 + `Retry-After`) | [`ratelimit`] |
//! | route | caller deadline bounding every attempt | [`deadline`] |
//! | select | outlier ejection, probation, cap and panic | [`outlier`] |
//! | select | adaptive throttle and concurrency caps per replica | [`breaker`] |
//! | attempt | retry rules, backoff, replayable bodies | [`retry`] |
//! | attempt | retry budget (adaptive, correlation-aware) | [`budget`] |
//! | attempt | hedging delay for idempotent reads | [`hedge`] |
//! | route | fan-out with quorum for `broadcast` routes | [`broadcast`] |
//! | background | active checks of the local workload | [`health`] |
//!
//! [`Settings`] compiles the API's `failover` and `limits` sections into the figures these
//! modules use, once per policy update.

pub mod breaker;
pub mod broadcast;
pub mod budget;
pub mod deadline;
pub mod health;
pub mod hedge;
pub mod metrics;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod shed;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use datastream_api::v1alpha1::{Failover, Limits, RateLimit, parse_duration};

use self::breaker::BreakerConfig;
use self::budget::{BudgetConfig, RetryBudget};
use self::health::{HealthCheckConfig, HealthStatus, Verdict};
use self::hedge::HedgeConfig;
use self::metrics::RouteResilienceMetrics;
use self::outlier::OutlierConfig;
use self::ratelimit::{RateLimitConfig, TokenBucket};
use self::retry::{Backoff, Conditions, MAX_REPLAY_BYTES, RetryPolicy};
use self::shed::{ShedConfig, Shedder};

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
    /// State under the default settings.
    pub fn new() -> Self {
        let defaults = Settings::default();
        Self {
            budget: RetryBudget::new(defaults.budget),
            shedder: Arc::new(Shedder::new(&defaults.shed)),
            local_health: Arc::new(HealthStatus::new()),
        }
    }

    /// Whether the local workload keeps the sidecar from being ready: only a failing check
    /// does; before the first check, readiness follows the rest of the sidecar's state.
    pub fn local_workload_failing(&self) -> bool {
        self.local_health.verdict() == Verdict::Unhealthy
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
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

impl Default for Settings {
    fn default() -> Self {
        Self::compile(&Failover::default(), &Limits::default()).expect("the API defaults are valid")
    }
}

// === impl Settings ===

impl Settings {
    /// Compiles the API sections, collecting every invalid value (named by its field path).
    pub fn compile(failover: &Failover, limits: &Limits) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut dur = |field: &str, value: &str| -> Duration {
            parse_duration(value).unwrap_or_else(|e| {
                errors.push(format!("{field}: {e}"));
                Duration::ZERO
            })
        };
        let connect_timeout = dur("failover.connectTimeout", &failover.connect_timeout);
        let request_timeout = dur("failover.requestTimeout", &failover.request_timeout);
        let per_try_timeout = failover
            .per_try_timeout
            .as_deref()
            .map(|v| dur("failover.perTryTimeout", v));
        let r = &failover.retries;
        let backoff = Backoff {
            base: dur("failover.retries.backoffBase", &r.backoff_base),
            max: dur("failover.retries.backoffMax", &r.backoff_max),
        };
        let o = &failover.outlier_detection;
        let interval = dur("failover.outlierDetection.interval", &o.interval);
        let base_ejection = dur(
            "failover.outlierDetection.baseEjectionTime",
            &o.base_ejection_time,
        );
        let h = &failover.health_check;
        let hc_interval = dur("failover.healthCheck.interval", &h.interval);
        let hc_timeout = dur("failover.healthCheck.timeout", &h.timeout);
        let cb = &failover.circuit_breaker;
        let cb_window = dur("failover.circuitBreaker.window", &cb.window);
        let hedge = failover.hedging.as_ref().map(|hg| HedgeConfig {
            percentile: hg.percentile,
            min_delay: dur("failover.hedging.minDelay", &hg.min_delay),
        });
        let ls = &limits.load_shedding;
        let shed_target = dur("limits.loadShedding.latencyTarget", &ls.latency_target);

        if request_timeout.is_zero() {
            errors.push("failover.requestTimeout: must be more than 0".to_owned());
        }
        if per_try_timeout.is_some_and(|p| p.is_zero() || p >= request_timeout) {
            errors.push(
                "failover.perTryTimeout: must be more than 0 and shorter than requestTimeout"
                    .to_owned(),
            );
        }
        if backoff.base > backoff.max {
            errors.push("failover.retries.backoffBase: must not exceed backoffMax".to_owned());
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) {
            errors.push("failover.retries.budgetRatio: must be within 0 and 1".to_owned());
        }
        if hc_timeout > hc_interval {
            errors.push("failover.healthCheck.timeout: must not exceed its interval".to_owned());
        }
        if interval.is_zero() || cb_window.is_zero() || hc_interval.is_zero() {
            errors.push("failover: intervals and windows must be more than 0".to_owned());
        }
        if !(1.0..=10.0).contains(&cb.k) {
            errors.push("failover.circuitBreaker.k: must be within 1 and 10".to_owned());
        }
        if ls.min_concurrency > ls.max_concurrency {
            errors.push(
                "limits.loadShedding.minConcurrency: must not exceed maxConcurrency".to_owned(),
            );
        }
        let rate_limit = limits
            .rate_limit
            .as_ref()
            .map(|rl| rate_limit_config("limits.rateLimit", rl, &mut errors));
        if !errors.is_empty() {
            return Err(errors);
        }
        let positive = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(Self {
            connect_timeout,
            request_timeout,
            per_try_timeout,
            retry: RetryPolicy {
                attempts: positive(r.attempts),
                conditions: Conditions::from_list(&r.retry_on),
                backoff,
                non_idempotent: false,
            },
            budget: BudgetConfig {
                ratio: r.budget_ratio,
                min_per_second: positive(r.min_retries_per_second),
            },
            outlier: OutlierConfig {
                consecutive_failures: positive(o.consecutive_failures).max(1),
                failure_rate_percent: o.failure_rate_percent.map(positive),
                interval,
                base_ejection,
                max_ejected_percent: positive(o.max_ejected_percent).min(100),
                panic_threshold_percent: positive(o.panic_threshold_percent).min(100),
            },
            health: HealthCheckConfig {
                interval: hc_interval,
                timeout: hc_timeout,
                unhealthy_threshold: positive(h.unhealthy_threshold).max(1),
                healthy_threshold: positive(h.healthy_threshold).max(1),
                path: h.path.clone(),
            },
            breaker: BreakerConfig {
                enabled: cb.enabled,
                k: cb.k,
                window: cb_window,
            },
            max_pending_per_replica: cb.max_pending_requests.map(positive),
            max_concurrent_per_replica: failover.max_concurrent_requests_per_replica.map(positive),
            hedge,
            shed: ShedConfig {
                enabled: ls.enabled,
                latency_target: shed_target,
                min_concurrency: positive(ls.min_concurrency).max(1),
                max_concurrency: positive(ls.max_concurrency).max(1),
            },
            rate_limit,
            replay_limit: MAX_REPLAY_BYTES,
        })
    }
}

/// Compiles a rate limit, recording invalid values under `field`.
pub fn rate_limit_config(field: &str, rl: &RateLimit, errors: &mut Vec<String>) -> RateLimitConfig {
    if rl.requests_per_second < 1 || rl.burst < 1 {
        errors.push(format!(
            "{field}: requestsPerSecond and burst must be at least 1"
        ));
    }
    RateLimitConfig {
        requests_per_second: u32::try_from(rl.requests_per_second).unwrap_or(1).max(1),
        burst: u32::try_from(rl.burst).unwrap_or(1).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datastream_api::v1alpha1::RetryOn;

    #[test]
    fn defaults_compile_to_the_documented_figures() {
        let s = Settings::default();
        assert_eq!(s.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.request_timeout, Duration::from_secs(15));
        assert_eq!(s.per_try_timeout, None);
        assert_eq!(s.retry.attempts, 2);
        assert!(s.retry.conditions.contains(RetryOn::GatewayError));
        assert!(!s.retry.conditions.contains(RetryOn::ServerError));
        assert_eq!(s.budget.ratio, 0.2);
        assert_eq!(s.budget.min_per_second, 10);
        assert_eq!(s.outlier.consecutive_failures, 5);
        assert_eq!(s.outlier.base_ejection, Duration::from_secs(30));
        assert_eq!(s.outlier.max_ejected_percent, 50);
        assert!(s.breaker.enabled);
        assert_eq!(s.breaker.k, 1.5);
        assert!(s.shed.enabled);
        assert_eq!(s.shed.latency_target, Duration::from_millis(250));
        assert_eq!(s.rate_limit, None);
        assert_eq!(s.replay_limit, 64 * 1024);
    }

    #[test]
    fn every_invalid_value_is_reported() {
        let mut f = Failover {
            request_timeout: "1s".into(),
            per_try_timeout: Some("2s".into()),
            ..Failover::default()
        };
        f.retries.backoff_base = "1s".into();
        f.retries.backoff_max = "10ms".into();
        f.outlier_detection.interval = "soon".into();
        let mut l = Limits::default();
        l.load_shedding.min_concurrency = 100;
        l.load_shedding.max_concurrency = 10;
        let errors = Settings::compile(&f, &l).unwrap_err();
        let joined = errors.join("\n");
        for field in [
            "failover.perTryTimeout",
            "failover.retries.backoffBase",
            "failover.outlierDetection.interval",
            "limits.loadShedding.minConcurrency",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }
}
