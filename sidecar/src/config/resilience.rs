//! The API's `failover` and `limits` sections compiled into the resilience layer's plain
//! [`Settings`]: every duration parsed, every cross-field rule checked, every invalid value
//! reported by its field path. The resilience mechanisms themselves never see the API types.

use std::time::Duration;

use datastream_api::v1alpha1::{Failover, Limits, RateLimit, RetryOn, parse_duration};

use super::rules::{PolicyError, Rule};
use datastream_resilience::Settings;
use datastream_resilience::breaker::BreakerConfig;
use datastream_resilience::budget::BudgetConfig;
use datastream_resilience::health::HealthCheckConfig;
use datastream_resilience::hedge::HedgeConfig;
use datastream_resilience::outlier::OutlierConfig;
use datastream_resilience::ratelimit::RateLimitConfig;
use datastream_resilience::retry::{Backoff, MAX_REPLAY_BYTES, RetryCondition, RetryPolicy};
use datastream_resilience::shed::ShedConfig;

/// The settings of a policy that says nothing about failover or limits.
pub fn default_settings() -> Settings {
    compile_settings(&Failover::default(), &Limits::default()).expect("the API defaults are valid")
}

/// The resilience layer's name for an API `retryOn` value.
pub fn retry_condition(on: RetryOn) -> RetryCondition {
    match on {
        RetryOn::ServerError => RetryCondition::ServerError,
        RetryOn::GatewayError => RetryCondition::GatewayError,
        RetryOn::Reset => RetryCondition::Reset,
        RetryOn::ConnectFailure => RetryCondition::ConnectFailure,
        RetryOn::PerTryTimeout => RetryCondition::PerTryTimeout,
    }
}

/// Compiles the API sections, collecting every invalid value (named by its field path, relative
/// to `traffic`).
pub fn compile_settings(
    failover: &Failover,
    limits: &Limits,
) -> Result<Settings, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut dur = |field: &str, value: &str| -> Option<Duration> {
        parse_duration(value)
            .map_err(|e| errors.push(PolicyError::duration(field, &e)))
            .ok()
    };
    let connect_timeout = dur("failover.connectTimeout", &failover.connect_timeout);
    let request_timeout = dur("failover.requestTimeout", &failover.request_timeout);
    let per_try_timeout = failover
        .per_try_timeout
        .as_deref()
        .map(|v| dur("failover.perTryTimeout", v));
    let stream_idle_timeout = dur("failover.streamIdleTimeout", &failover.stream_idle_timeout);
    let r = &failover.retries;
    let backoff_base = dur("failover.retries.backoffBase", &r.backoff_base);
    let backoff_max = dur("failover.retries.backoffMax", &r.backoff_max);
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
    let hedge_min_delay = failover
        .hedging
        .as_ref()
        .map(|hg| dur("failover.hedging.minDelay", &hg.min_delay));
    let ls = &limits.load_shedding;
    let shed_target = dur("limits.loadShedding.latencyTarget", &ls.latency_target);

    // Checks between values run only on values that parsed (the parse error says enough).
    for (field, value) in [
        ("failover.requestTimeout", request_timeout),
        ("failover.perTryTimeout", per_try_timeout.flatten()),
        ("failover.outlierDetection.interval", interval),
        ("failover.healthCheck.interval", hc_interval),
        ("failover.circuitBreaker.window", cb_window),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            errors.push(PolicyError::new(field, Rule::ZeroDuration));
        }
    }
    if let (Some(Some(p)), Some(r)) = (per_try_timeout, request_timeout)
        && !p.is_zero()
        && p >= r
    {
        errors.push(PolicyError::new(
            "failover.perTryTimeout",
            Rule::PerTryTimeout,
        ));
    }
    if let (Some(c), Some(r)) = (connect_timeout, request_timeout)
        && c > r
    {
        errors.push(PolicyError::new(
            "failover.connectTimeout",
            Rule::ConnectTimeout,
        ));
    }
    if let (Some(b), Some(m)) = (backoff_base, backoff_max)
        && b > m
    {
        errors.push(PolicyError::new(
            "failover.retries.backoffBase",
            Rule::Backoff,
        ));
    }
    if !(0.0..=1.0).contains(&r.budget_ratio) {
        errors.push(PolicyError::got(
            "failover.retries.budgetRatio",
            Rule::BudgetRatio,
            r.budget_ratio,
        ));
    }
    if let (Some(t), Some(i)) = (hc_timeout, hc_interval)
        && t > i
    {
        errors.push(PolicyError::new(
            "failover.healthCheck.timeout",
            Rule::HealthCheckTimeout,
        ));
    }
    if !(1.0..=10.0).contains(&cb.k) {
        errors.push(PolicyError::got(
            "failover.circuitBreaker.k",
            Rule::BreakerK,
            cb.k,
        ));
    }
    if ls.min_concurrency > ls.max_concurrency {
        errors.push(PolicyError::new(
            "limits.loadShedding.minConcurrency",
            Rule::SheddingBounds,
        ));
    }
    let rate_limit = limits
        .rate_limit
        .as_ref()
        .map(|rl| rate_limit_config("limits.rateLimit", rl, &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    // Every duration parsed (or there would be errors).
    let d = Option::unwrap_or_default;
    let positive = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(Settings {
        connect_timeout: d(connect_timeout),
        stream_idle_timeout: stream_idle_timeout.filter(|t| !t.is_zero()),
        request_timeout: d(request_timeout),
        per_try_timeout: per_try_timeout.flatten(),
        retry: RetryPolicy {
            attempts: positive(r.attempts),
            conditions: r.retry_on.iter().map(|&on| retry_condition(on)).collect(),
            backoff: Backoff {
                base: d(backoff_base),
                max: d(backoff_max),
            },
            non_idempotent: false,
        },
        budget: BudgetConfig {
            ratio: r.budget_ratio,
            min_per_second: positive(r.min_retries_per_second),
        },
        outlier: OutlierConfig {
            consecutive_failures: positive(o.consecutive_failures).max(1),
            failure_rate_percent: o.failure_rate_percent.map(positive),
            interval: d(interval),
            base_ejection: d(base_ejection),
            max_ejected_percent: positive(o.max_ejected_percent).min(100),
            panic_threshold_percent: positive(o.panic_threshold_percent).min(100),
        },
        health: HealthCheckConfig {
            interval: d(hc_interval),
            timeout: d(hc_timeout),
            unhealthy_threshold: positive(h.unhealthy_threshold).max(1),
            healthy_threshold: positive(h.healthy_threshold).max(1),
            path: h.path.clone(),
        },
        breaker: BreakerConfig {
            enabled: cb.enabled,
            k: cb.k,
            window: d(cb_window),
            min_requests: u64::from(positive(cb.min_requests).max(1)),
        },
        max_pending_per_replica: cb.max_pending_requests.map(positive),
        max_concurrent_per_replica: failover.max_concurrent_requests_per_replica.map(positive),
        hedge: failover.hedging.as_ref().map(|hg| HedgeConfig {
            percentile: hg.percentile,
            min_delay: d(hedge_min_delay.flatten()),
        }),
        shed: ShedConfig {
            enabled: ls.enabled,
            latency_target: d(shed_target),
            min_concurrency: positive(ls.min_concurrency).max(1),
            max_concurrency: positive(ls.max_concurrency).max(1),
        },
        rate_limit,
        replay_limit: MAX_REPLAY_BYTES,
    })
}

/// Compiles a rate limit, recording invalid values under `field`.
pub fn rate_limit_config(
    field: &str,
    rl: &RateLimit,
    errors: &mut Vec<PolicyError>,
) -> RateLimitConfig {
    if rl.requests_per_second < 1 || rl.burst < 1 {
        errors.push(PolicyError::new(field, Rule::RateLimit));
    }
    RateLimitConfig {
        requests_per_second: u32::try_from(rl.requests_per_second).unwrap_or(1).max(1),
        burst: u32::try_from(rl.burst).unwrap_or(1).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile_to_the_documented_figures() {
        let s = default_settings();
        assert_eq!(s.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.request_timeout, Duration::from_secs(15));
        assert_eq!(s.per_try_timeout, None);
        assert_eq!(s.retry.attempts, 2);
        assert!(s.retry.conditions.contains(RetryCondition::GatewayError));
        assert!(!s.retry.conditions.contains(RetryCondition::ServerError));
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
        let errors = compile_settings(&f, &l).unwrap_err();
        let joined: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let joined = joined.join("\n");
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
