//! Compiling the API's `TrafficPolicy` into the sidecar's [`Policy`]: every string parsed, every
//! cross-field rule checked, all problems reported together (each a [`PolicyError`] naming one
//! [`Rule`]). The hot path only ever sees the result.

use std::time::Duration;

use datastream_api::v1alpha1::{
    self as api, HashingAlgorithm, LoadBalancingPolicy, RouteMode, TrafficPolicy, parse_duration,
};
use http::{HeaderName, HeaderValue, Method};

use crate::config::resilience::{compile_settings, default_settings, rate_limit_config};
pub use crate::config::rules::{PolicyError, Rule};
use crate::metrics::Metrics;
use crate::policy::{DEFAULT_ROUTE, Policy};
use crate::route::{
    Affinity, HeaderCondition, HeaderMatch, KeySource, Mode, PathMatch, Route, RouteMatch,
    RouteTable,
};
use datastream_http::h1::client::ResponseLimits;
use datastream_lb::balance::{self, Balancer, HashAlgorithm};
use datastream_resilience::RouteResilience;
use datastream_resilience::ratelimit::TokenBucket;

/// Compiles `traffic`. `version` and `source` label the result; errors name the field.
pub fn compile(
    traffic: &TrafficPolicy,
    version: u64,
    source: &str,
    metrics: &Metrics,
) -> Result<Policy, Vec<String>> {
    compile_policy(traffic, version, source, metrics)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// [`compile`], with each problem as the rule it breaks.
pub fn compile_policy(
    traffic: &TrafficPolicy,
    version: u64,
    source: &str,
    metrics: &Metrics,
) -> Result<Policy, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let lb = &traffic.load_balancing;
    let policy = balancer_policy(lb.policy);
    let mut routes = Vec::with_capacity(traffic.routes.len());
    for (i, r) in traffic.routes.iter().enumerate() {
        let at = format!("traffic.routes[{i}] ({})", r.name);
        if r.name.is_empty() || r.name == DEFAULT_ROUTE {
            errors.push(PolicyError::new(format!("{at}.name"), Rule::RouteName));
        }
        if traffic.routes[..i].iter().any(|o| o.name == r.name) {
            errors.push(PolicyError::new(
                format!("{at}.name"),
                Rule::DuplicateRouteName,
            ));
        }
        let matcher = compile_match(&r.matches, &at, &mut errors);
        let mode = compile_mode(r, policy, lb.local_first, &at, &mut errors);
        let timeout = r.timeout.as_deref().and_then(|t| match parse_duration(t) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                errors.push(PolicyError::new(
                    format!("{at}.timeout"),
                    Rule::ZeroDuration,
                ));
                None
            }
            Err(e) => {
                errors.push(PolicyError::duration(format!("{at}.timeout"), &e));
                None
            }
        });
        let rate_limit = match (&r.rate_limit, &traffic.limits.rate_limit) {
            (Some(rl), _) => Some(rate_limit_config(
                &format!("{at}.rateLimit"),
                rl,
                &mut errors,
            )),
            // `limits.rateLimit` is checked (once) with the rest of `limits`.
            (None, Some(rl)) => Some(rate_limit_config("", rl, &mut Vec::new())),
            (None, None) => None,
        }
        .map(TokenBucket::new);
        if let Some(mode) = mode {
            let mut route = Route::new(&r.name, matcher, mode, metrics.route("traffic", &r.name));
            route.resilience = RouteResilience {
                timeout,
                retry_non_idempotent: r.retry_non_idempotent,
                rate_limit,
                metrics: metrics.resilience.route(&r.name),
                latency: Default::default(),
            };
            routes.push(route);
        }
    }
    let resilience = compile_settings(&traffic.failover, &traffic.limits).unwrap_or_else(|e| {
        errors.extend(e.into_iter().map(|e| e.under("traffic.")));
        default_settings()
    });
    let max_body = traffic.limits.max_request_body_bytes;
    if max_body < 0 {
        errors.push(PolicyError::got(
            "traffic.limits.maxRequestBodyBytes",
            Rule::NegativeBytes,
            max_body,
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut default = Route::new(
        DEFAULT_ROUTE,
        RouteMatch::default(),
        Mode::Balance(Balancer::new(policy, lb.local_first)),
        metrics.route("traffic", DEFAULT_ROUTE),
    );
    default.resilience = RouteResilience {
        timeout: None,
        retry_non_idempotent: false,
        rate_limit: resilience.rate_limit.map(TokenBucket::new),
        metrics: metrics.resilience.route(DEFAULT_ROUTE),
        latency: Default::default(),
    };
    Ok(Policy {
        version,
        source: source.to_owned(),
        routes: RouteTable::new(routes, default),
        max_body: u64::try_from(max_body).ok(),
        response_limits: ResponseLimits {
            max_head_bytes: usize::try_from(traffic.limits.max_response_header_bytes)
                .unwrap_or(0)
                .max(8192),
            max_fields: usize::try_from(traffic.limits.max_response_header_fields)
                .unwrap_or(0)
                .max(32),
        },
        upstream_protocol: traffic.upstream_protocol,
        resilience,
        spec: serde_json::to_value(traffic).unwrap_or_default(),
    })
}

/// The sidecar's balancer for an API policy.
pub fn balancer_policy(p: LoadBalancingPolicy) -> balance::Policy {
    match p {
        LoadBalancingPolicy::P2cEwma => balance::Policy::P2cEwma,
        LoadBalancingPolicy::RoundRobin => balance::Policy::RoundRobin,
        LoadBalancingPolicy::LeastRequest => balance::Policy::LeastRequest,
        LoadBalancingPolicy::RingHash => balance::Policy::RingHash,
        LoadBalancingPolicy::Maglev => balance::Policy::Maglev,
    }
}

/// The API policy for a sidecar balancer name (for the `--policy` flag).
pub fn api_policy(name: &str) -> Option<LoadBalancingPolicy> {
    Some(match balance::Policy::parse(name)? {
        balance::Policy::P2cEwma => LoadBalancingPolicy::P2cEwma,
        balance::Policy::RoundRobin => LoadBalancingPolicy::RoundRobin,
        balance::Policy::LeastRequest => LoadBalancingPolicy::LeastRequest,
        balance::Policy::RingHash => LoadBalancingPolicy::RingHash,
        balance::Policy::Maglev => LoadBalancingPolicy::Maglev,
    })
}

fn compile_match(m: &api::RouteMatch, at: &str, errors: &mut Vec<PolicyError>) -> RouteMatch {
    let path = match &m.path {
        None => PathMatch::Any,
        Some(p) => match (&p.exact, &p.prefix) {
            (Some(e), None) if e.starts_with('/') => PathMatch::Exact(e.clone()),
            (None, Some(pre)) if pre.starts_with('/') => PathMatch::Prefix(pre.clone()),
            (Some(v), None) | (None, Some(v)) => {
                let kind = if p.exact.is_some() { "exact" } else { "prefix" };
                errors.push(PolicyError::got(
                    format!("{at}.match.path.{kind}"),
                    Rule::PathNotAbsolute,
                    format!("{v:?}"),
                ));
                PathMatch::Any
            }
            _ => {
                errors.push(PolicyError::new(
                    format!("{at}.match.path"),
                    Rule::PathMatchKind,
                ));
                PathMatch::Any
            }
        },
    };
    let methods = m
        .methods
        .iter()
        .filter_map(|meth| Method::from_bytes(meth.as_str().as_bytes()).ok())
        .collect();
    let mut headers = Vec::with_capacity(m.headers.len());
    for (j, h) in m.headers.iter().enumerate() {
        let hat = format!("{at}.match.headers[{j}]");
        let Ok(name) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) else {
            errors.push(PolicyError::got(
                format!("{hat}.name"),
                Rule::HeaderName,
                format!("{:?}", h.name),
            ));
            continue;
        };
        let condition = match (&h.exact, &h.prefix, h.present) {
            (Some(v), None, None) => match HeaderValue::from_str(v) {
                Ok(v) => HeaderCondition::Exact(v),
                Err(_) => {
                    errors.push(PolicyError::got(
                        format!("{hat}.exact"),
                        Rule::HeaderValue,
                        format!("{v:?}"),
                    ));
                    continue;
                }
            },
            (None, Some(p), None) => HeaderCondition::Prefix(p.as_bytes().to_vec()),
            (None, None, Some(present)) => HeaderCondition::Present(present),
            _ => {
                errors.push(PolicyError::new(hat, Rule::HeaderMatchKind));
                continue;
            }
        };
        headers.push(HeaderMatch { name, condition });
    }
    RouteMatch {
        path,
        methods,
        headers,
    }
}

fn compile_mode(
    r: &api::Route,
    policy: balance::Policy,
    local_first: bool,
    at: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Mode> {
    match r.mode {
        RouteMode::Balance => Some(Mode::Balance(Balancer::new(policy, local_first))),
        RouteMode::Affinity => {
            let Some(a) = &r.affinity else {
                errors.push(PolicyError::new(
                    format!("{at}.affinity"),
                    Rule::AffinityMissing,
                ));
                return None;
            };
            let key = match (&a.key.header, &a.key.query_param, a.key.path_segment) {
                (Some(h), None, None) => {
                    match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                        Ok(h) => KeySource::Header(h),
                        Err(_) => {
                            errors.push(PolicyError::got(
                                format!("{at}.affinity.key.header"),
                                Rule::HeaderName,
                                format!("{h:?}"),
                            ));
                            return None;
                        }
                    }
                }
                (None, Some(q), None) if !q.is_empty() => KeySource::QueryParam(q.clone()),
                (None, None, Some(s)) if s >= 0 => KeySource::PathSegment(s as usize),
                _ => {
                    errors.push(PolicyError::new(
                        format!("{at}.affinity.key"),
                        Rule::AffinityKeySource,
                    ));
                    return None;
                }
            };
            if !(0.0..=10.0).contains(&a.load_bound) || (a.load_bound > 0.0 && a.load_bound < 1.0) {
                errors.push(PolicyError::got(
                    format!("{at}.affinity.loadBound"),
                    Rule::LoadBound,
                    a.load_bound,
                ));
            }
            let algorithm = match a.hashing {
                HashingAlgorithm::RingHash => HashAlgorithm::RingHash,
                HashingAlgorithm::Maglev => HashAlgorithm::Maglev,
            };
            // Requests without a key have no owner; they are balanced like the default route,
            // minus hashing (a hashing policy there would just pin them by client address).
            let keyless = match policy {
                balance::Policy::RingHash | balance::Policy::Maglev => balance::Policy::P2cEwma,
                p => p,
            };
            Some(Mode::Affinity(Affinity {
                key,
                algorithm,
                load_bound: a.load_bound,
                keyless: Balancer::new(keyless, local_first),
            }))
        }
        RouteMode::Primary => {
            let hold_down = match &r.primary {
                None => Duration::from_secs(10),
                Some(p) => match parse_duration(&p.hold_down) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(PolicyError::duration(format!("{at}.primary.holdDown"), &e));
                        return None;
                    }
                },
            };
            Some(Mode::Primary { hold_down })
        }
        RouteMode::Broadcast => {
            let b = r.broadcast.clone().unwrap_or_else(|| {
                serde_json::from_value(serde_json::json!({})).expect("broadcast defaults")
            });
            let quorum = match b.quorum {
                None => None,
                Some(q) if q >= 1 => u32::try_from(q).ok(),
                Some(q) => {
                    errors.push(PolicyError::got(
                        format!("{at}.broadcast.quorum"),
                        Rule::Quorum,
                        q,
                    ));
                    return None;
                }
            };
            let Ok(max_body) = u64::try_from(b.max_body_bytes) else {
                errors.push(PolicyError::got(
                    format!("{at}.broadcast.maxBodyBytes"),
                    Rule::NegativeBytes,
                    b.max_body_bytes,
                ));
                return None;
            };
            Some(Mode::Broadcast { quorum, max_body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> TrafficPolicy {
        serde_saphyr::from_str(yaml).expect("valid YAML for TrafficPolicy")
    }

    #[test]
    fn compiles_every_mode() {
        let t = parse(
            r#"
loadBalancing: { policy: round-robin, localFirst: true }
routes:
  - name: kv
    match: { path: { prefix: /kv }, methods: [GET, PUT], headers: [{ name: X-Tenant, present: true }] }
    mode: affinity
    affinity: { key: { pathSegment: 1 }, hashing: maglev }
  - name: leader
    match: { path: { exact: /leader } }
    mode: primary
    primary: { holdDown: 500ms }
"#,
        );
        let p = compile(&t, 3, "test", &Metrics::new()).expect("compiles");
        let names: Vec<&str> = p.routes.iter().map(|r| r.name()).collect();
        assert_eq!(names, vec!["kv", "leader", DEFAULT_ROUTE]);
        assert_eq!(p.version, 3);
        assert_eq!(p.max_body, Some(10 << 20));
    }

    #[test]
    fn reports_every_error_at_once() {
        let t = parse(
            r#"
routes:
  - name: a
    mode: affinity
  - name: a
    match: { path: { prefix: nope } }
    mode: primary
    primary: { holdDown: soon }
  - name: b
    mode: broadcast
    broadcast: { quorum: 0 }
failover: { perTryTimeout: 20s, requestTimeout: 10s }
"#,
        );
        let errors = compile(&t, 1, "test", &Metrics::new()).expect_err("invalid");
        let all = errors.join("\n");
        for needle in [
            "needs affinity.key",
            "is already the name of an earlier route",
            "must start with '/'",
            "primary.holdDown",
            "broadcast",
            "perTryTimeout",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }
}
