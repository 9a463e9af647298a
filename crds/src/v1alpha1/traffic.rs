//! `spec.traffic`: the policy every sidecar of a stream applies to each request.
//!
//! The same shape is the `traffic` section of the sidecar's YAML config file in local mode, so the
//! types here are the single definition of the policy language.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Pattern every duration string must match: numbers with Go-style units, e.g. `250ms`, `2s`,
/// `1m30s`. Each number has at most 9 digits before `ms` or `s`, 7 before `m` and 5 before `h`
/// (99999h is over 11 years): with at most [`DURATION_MAX_LEN`] characters, every duration the
/// pattern admits fits the sidecar's parser and the API server's CEL `duration()` (Go's
/// `time.Duration`, about 292 years), so no admitted duration can overflow anywhere.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(ms|s)|[0-9]{1,7}m|[0-9]{1,5}h)+$";

/// Most characters in a duration string.
pub const DURATION_MAX_LEN: usize = 32;

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Not numbers with units.
    #[error(
        "invalid duration {0:?}: expected numbers with a unit (ms, s, m, h), e.g. 250ms, 2s or 1m30s"
    )]
    Syntax(String),
    /// Well formed, but a number has too many digits or the text is too long.
    #[error(
        "duration {0:?} is out of range: at most 32 characters, with at most 9 digits before ms or s, 7 before m and 5 before h"
    )]
    Range(String),
}

/// Parses a duration written as the API accepts it (`250ms`, `2s`, `1m30s`): exactly the strings
/// that [`DURATION_PATTERN`] and [`DURATION_MAX_LEN`] admit, so what passes admission parses.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(value.to_owned());
    let mut rest = value;
    let mut total = Duration::ZERO;
    let mut in_range = value.len() <= DURATION_MAX_LEN;
    if rest.is_empty() {
        return Err(syntax());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        if digits == 0 {
            return Err(syntax());
        }
        let number = &rest[..digits];
        rest = &rest[digits..];
        let (unit, len, max_digits) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2, 9)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1, 9)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1, 7)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1, 5)
        } else {
            return Err(syntax());
        };
        rest = &rest[len..];
        if digits > max_digits {
            // Keep reading: a malformed tail is reported as such.
            in_range = false;
            continue;
        }
        // At most 9 digits: always a u32, and the sum of at most 16 parts never overflows.
        let amount: u32 = number.parse().map_err(|_| syntax())?;
        total += unit * amount;
    }
    if !in_range {
        return Err(DurationError::Range(value.to_owned()));
    }
    Ok(total)
}

/// The traffic policy of a DataStream: how each sidecar routes, balances and fails over requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.routes.all(r, self.routes.exists_one(o, o.name == r.name))")
    .message("traffic.routes[].name must be unique").field_path(".routes"))]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Ordered route table: the first route whose match fits a request decides its mode. Requests
    /// that match no route are balanced across all ready replicas.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub routes: Vec<Route>,

    /// How a replica is chosen among the eligible ones.
    #[serde(default)]
    pub load_balancing: LoadBalancing,

    /// Timeouts, retries, outlier ejection, health checks and circuit breaking.
    #[serde(default)]
    pub failover: Failover,

    /// Admission limits: rate limiting, adaptive load shedding and body size.
    #[serde(default)]
    pub limits: Limits,

    /// Protocol the sidecars speak towards replicas (the workload and peer sidecars): `auto`
    /// (default) keeps the client's (HTTP/2 stays HTTP/2, as gRPC needs), `http1` sends every
    /// request as HTTP/1.1 (for a workload that only speaks HTTP/1), `http2` sends every request
    /// as HTTP/2 with prior knowledge (for an h2c-only workload; protocol upgrades such as
    /// WebSocket are then not offered upstream).
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
}

/// How requests travel from a sidecar to a replica.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// The client's protocol: HTTP/1.x as HTTP/1.1, HTTP/2 as HTTP/2.
    #[default]
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl UpstreamProtocol {
    /// The protocol's name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }
}

/// One entry of the route table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.name != 'default'")
    .message("traffic.routes[].name 'default' is reserved for the implicit catch-all route"))]
#[x_kube(validation = Rule::new("self.mode != 'affinity' || has(self.affinity)")
    .message("mode affinity needs affinity.key: a header, query parameter or path segment that selects the owner replica"))]
#[x_kube(validation = Rule::new("self.mode == 'affinity' || !has(self.affinity)")
    .message("affinity is only used by routes with mode affinity"))]
#[x_kube(validation = Rule::new("self.mode == 'primary' || !has(self.primary)")
    .message("primary is only used by routes with mode primary"))]
#[x_kube(validation = Rule::new("self.mode == 'broadcast' || !has(self.broadcast)")
    .message("broadcast is only used by routes with mode broadcast"))]
#[x_kube(validation = Rule::new("!has(self.timeout) || duration(self.timeout) > duration('0s')")
    .message("traffic.routes[].timeout must be more than 0 (leave it unset to use failover.requestTimeout)")
    .field_path(".timeout"))]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Name of the route, unique in the table; used in metrics and logs.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Which requests this route takes. An empty match takes every request.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,

    /// How requests of this route reach replicas: `balance` (any replica, by the load-balancing
    /// policy), `affinity` (the replica owning the request's key), `primary` (one replica, the next
    /// takes over when it fails) or `broadcast` (every ready replica, answered after a quorum).
    #[serde(default)]
    pub mode: RouteMode,

    /// Key extraction and consistent hashing for mode `affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Failover behaviour for mode `primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Primary>,

    /// Fan-out settings for mode `broadcast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Broadcast>,

    /// Overall timeout of this route's requests, overriding `failover.requestTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub timeout: Option<String>,

    /// Retry requests of this route even when their method is not idempotent (for example a POST
    /// that the workload deduplicates). Off by default: a non-idempotent request that may have
    /// reached a replica is never retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,

    /// Token-bucket rate limit of this route, overriding `limits.rateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Conditions a request must meet to take a route. All given conditions must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,

    /// HTTP methods the route takes; any method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,

    /// Header conditions; every one must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
}

/// A condition on the request path. Exactly one of `exact` and `prefix`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.exact) != has(self.prefix)")
    .message("match.path needs exactly one of exact or prefix"))]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// The path must equal this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s?#]*$"))]
    pub exact: Option<String>,

    /// The path must start with this value at a segment boundary (`/api` takes `/api` and
    /// `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s?#]*$"))]
    pub prefix: Option<String>,
}

/// HTTP request methods a route can match.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    /// GET
    GET,
    /// HEAD
    HEAD,
    /// POST
    POST,
    /// PUT
    PUT,
    /// DELETE
    DELETE,
    /// PATCH
    PATCH,
    /// OPTIONS
    OPTIONS,
    /// TRACE
    TRACE,
    /// CONNECT
    CONNECT,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::GET => "GET",
            HttpMethod::HEAD => "HEAD",
            HttpMethod::POST => "POST",
            HttpMethod::PUT => "PUT",
            HttpMethod::DELETE => "DELETE",
            HttpMethod::PATCH => "PATCH",
            HttpMethod::OPTIONS => "OPTIONS",
            HttpMethod::TRACE => "TRACE",
            HttpMethod::CONNECT => "CONNECT",
        }
    }
}

/// Pattern of a header value (RFC 9110 field-value characters, as the `http` crate checks them):
/// no control characters except horizontal tab.
pub const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x08\x0A-\x1F\x7F]*$";

/// A condition on one request header (names are case-insensitive). Exactly one of `exact`,
/// `prefix` and `present`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.present)].filter(x, x).size() == 1")
    .message("match.headers[] needs exactly one of exact, prefix or present"))]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, e.g. `x-tenant`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,

    /// The header value must equal this. A header value: no control characters but tab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096), regex(pattern = HEADER_VALUE_PATTERN))]
    pub exact: Option<String>,

    /// The header value must start with this. No control characters but tab (no request could
    /// carry them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096), regex(pattern = HEADER_VALUE_PATTERN))]
    pub prefix: Option<String>,

    /// `true`: the header must be present; `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// How a route's requests reach replicas.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// Any eligible replica, chosen by the load-balancing policy.
    #[default]
    Balance,
    /// The replica that owns the request's key (consistent hashing with bounded load).
    Affinity,
    /// One primary replica; the next in order takes over while it fails.
    Primary,
    /// Every ready replica; the answer waits for a quorum of successes.
    Broadcast,
}

/// Where the affinity key comes from and how keys map to replicas.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.loadBound == 0.0 || self.loadBound >= 1.0")
    .message("affinity.loadBound must be 0 (no bound) or between 1 and 10: below 1, the replicas together could not take the mean load")
    .field_path(".loadBound"))]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// The request part that holds the key.
    pub key: AffinityKey,

    /// Consistent-hashing algorithm: `ring-hash` (default) or `maglev`.
    #[serde(default)]
    pub hashing: HashingAlgorithm,

    /// Bounded load: a replica takes at most this factor times the mean in-flight load before the
    /// key spills to the next owner. 1.25 is the Google bounded-load default; 0 disables the bound;
    /// otherwise between 1 and 10.
    #[serde(default = "default_load_bound")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub load_bound: f64,
}

fn default_load_bound() -> f64 {
    1.25
}

/// The request part holding the affinity key. Exactly one field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.header), has(self.queryParam), has(self.pathSegment)].filter(x, x).size() == 1")
    .message("affinity.key needs exactly one of header, queryParam or pathSegment"))]
#[serde(rename_all = "camelCase")]
pub struct AffinityKey {
    /// Name of the header holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: Option<String>,

    /// Name of the query parameter holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,

    /// Zero-based index of the path segment holding the key: in `/kv/user42`, segment 1 is `user42`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub path_segment: Option<i32>,
}

/// Consistent-hashing algorithms.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "kebab-case")]
pub enum HashingAlgorithm {
    /// Hash ring with virtual nodes (Karger et al.).
    #[default]
    RingHash,
    /// Maglev lookup table (Google): even spread, minimal disruption.
    Maglev,
}

/// Failover settings of a `primary` route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Primary {
    /// How long a recovered primary must stay healthy before it takes traffic back.
    #[serde(default = "default_hold_down")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub hold_down: String,
}

fn default_hold_down() -> String {
    "10s".to_owned()
}

/// Fan-out settings of a `broadcast` route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    /// Successful replica answers needed before the sidecar answers. Defaults to a majority of
    /// the ready replicas. Must not exceed `spec.replicas` (unless that is 0), so scaling below
    /// it is refused: lower or remove the quorum first. While fewer replicas are ready than the
    /// quorum, broadcasts are answered 503 `broadcast-quorum-unreachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub quorum: Option<i32>,

    /// Largest request body that can be broadcast (it is buffered to be sent to every replica).
    #[serde(default = "default_broadcast_body")]
    #[schemars(range(min = 0, max = 67108864))]
    pub max_body_bytes: i64,
}

fn default_broadcast_body() -> i64 {
    1 << 20
}

/// Load-balancing settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// Policy choosing among eligible replicas: `p2c-ewma` (default: power of two choices over
    /// peak-EWMA latency), `round-robin`, `least-request`, `ring-hash` or `maglev`.
    #[serde(default)]
    pub policy: LoadBalancingPolicy,

    /// Prefer the replica in the same pod while it is healthy and not much slower than the best peer.
    #[serde(default)]
    pub local_first: bool,
}

/// Load-balancing policies.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancingPolicy {
    /// Power of two random choices, comparing peak-EWMA latency weighted by in-flight requests.
    #[default]
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    /// Each replica in turn.
    RoundRobin,
    /// Power of two random choices, comparing in-flight requests.
    LeastRequest,
    /// Consistent hashing on a ring, keyed by client address when the route has no key.
    RingHash,
    /// Maglev consistent hashing, keyed by client address when the route has no key.
    Maglev,
}

impl LoadBalancingPolicy {
    /// The policy's name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancingPolicy::P2cEwma => "p2c-ewma",
            LoadBalancingPolicy::RoundRobin => "round-robin",
            LoadBalancingPolicy::LeastRequest => "least-request",
            LoadBalancingPolicy::RingHash => "ring-hash",
            LoadBalancingPolicy::Maglev => "maglev",
        }
    }
}

/// Timeouts, retries and the mechanisms that take failing replicas out of rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.perTryTimeout) || duration(self.perTryTimeout) < duration(self.requestTimeout)")
    .message("failover.perTryTimeout must be shorter than failover.requestTimeout, or no retry could ever start")
    .field_path(".perTryTimeout"))]
#[x_kube(validation = Rule::new("duration(self.connectTimeout) <= duration(self.requestTimeout)")
    .message("failover.connectTimeout must not exceed failover.requestTimeout")
    .field_path(".connectTimeout"))]
#[x_kube(validation = Rule::new("duration(self.requestTimeout) > duration('0s')")
    .message("failover.requestTimeout must be more than 0")
    .field_path(".requestTimeout"))]
#[x_kube(validation = Rule::new("!has(self.perTryTimeout) || duration(self.perTryTimeout) > duration('0s')")
    .message("failover.perTryTimeout must be more than 0 (leave it unset for no per-try limit)")
    .field_path(".perTryTimeout"))]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Time allowed to open a connection to a replica.
    #[serde(default = "default_connect_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub connect_timeout: String,

    /// Time allowed for a request, retries included, counted from the end of the request body
    /// to the response headers (so an upload or a client-streaming call is not cut while the
    /// client sends, and a streaming response is not cut once it started). Answers 504 (gRPC:
    /// DEADLINE_EXCEEDED) when it expires. A caller's shorter `grpc-timeout` or
    /// `x-datastream-deadline-ms` counts from the request's arrival and is forwarded as the
    /// caller's; this timeout is never advertised to the workload.
    #[serde(default = "default_request_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub request_timeout: String,

    /// Time allowed for one attempt on one replica; unset means only the request timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub per_try_timeout: Option<String>,

    /// How long a request or response body may go without a byte before the exchange is
    /// abandoned (Envoy's stream idle timeout): what bounds streams, uploads and long polls,
    /// which the request timeout leaves alone. `0s` disables it.
    #[serde(default = "default_stream_idle_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub stream_idle_timeout: String,

    /// Retry policy.
    #[serde(default)]
    pub retries: Retries,

    /// Passive outlier detection: ejects replicas whose answers fail.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,

    /// Active health checking of the local workload (and optionally of peers).
    #[serde(default)]
    pub health_check: HealthCheck,

    /// Adaptive client-side circuit breaking per replica.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,

    /// Most requests in flight to one replica at once; excess requests pick another replica or
    /// fail fast with 503. Unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_requests_per_replica: Option<i32>,

    /// Hedging of idempotent requests: a second attempt on another replica when the first is slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedging: Option<Hedging>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            per_try_timeout: None,
            stream_idle_timeout: default_stream_idle_timeout(),
            retries: Retries::default(),
            outlier_detection: OutlierDetection::default(),
            health_check: HealthCheck::default(),
            circuit_breaker: CircuitBreaker::default(),
            max_concurrent_requests_per_replica: None,
            hedging: None,
        }
    }
}

fn default_connect_timeout() -> String {
    "1s".to_owned()
}

fn default_request_timeout() -> String {
    "15s".to_owned()
}

fn default_stream_idle_timeout() -> String {
    "5m".to_owned()
}

/// Retry policy. Requests that never reached a replica are always retried on another one;
/// requests that may have reached one are retried only when idempotent and the condition is listed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.backoffBase) <= duration(self.backoffMax)")
    .message("failover.retries.backoffBase must not exceed backoffMax").field_path(".backoffBase"))]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Most retries after the first attempt (0 disables retries).
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,

    /// Conditions that make an attempt retryable.
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = 8))]
    pub retry_on: Vec<RetryOn>,

    /// Retries may add at most this fraction of recent requests (0.2 = 20%).
    #[serde(default = "default_budget_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub budget_ratio: f64,

    /// Retries always allowed per second, whatever the ratio, so that low traffic can retry.
    #[serde(default = "default_min_retries_per_second")]
    #[schemars(range(min = 0, max = 100000))]
    pub min_retries_per_second: i32,

    /// First backoff before a retry; doubles per retry with full jitter.
    #[serde(default = "default_backoff_base")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub backoff_base: String,

    /// Largest backoff before a retry.
    #[serde(default = "default_backoff_max")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub backoff_max: String,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: default_attempts(),
            retry_on: default_retry_on(),
            budget_ratio: default_budget_ratio(),
            min_retries_per_second: default_min_retries_per_second(),
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_attempts() -> i32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
        RetryOn::PerTryTimeout,
    ]
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_min_retries_per_second() -> i32 {
    10
}
fn default_backoff_base() -> String {
    "25ms".to_owned()
}
fn default_backoff_max() -> String {
    "250ms".to_owned()
}

/// Conditions under which an attempt is retried.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 and 504 answers.
    GatewayError,
    /// The connection was reset or closed before a complete answer.
    Reset,
    /// The connection to the replica could not be opened.
    ConnectFailure,
    /// The per-try timeout expired.
    PerTryTimeout,
}

/// Passive outlier detection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.interval) > duration('0s')")
    .message("failover.outlierDetection.interval must be more than 0").field_path(".interval"))]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failed attempts that eject a replica.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: i32,

    /// Failure percentage over one interval that ejects a replica (with enough requests); unset
    /// disables the rate check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_percent: Option<i32>,

    /// Window over which failure rates are measured.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub interval: String,

    /// First ejection time; each repeated ejection of the same replica lasts longer.
    #[serde(default = "default_base_ejection_time")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub base_ejection_time: String,

    /// Largest share of replicas ejected at once, in percent (0 to 100).
    #[serde(default = "default_max_ejected_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejected_percent: i32,

    /// When fewer than this percentage of replicas are healthy, the sidecar ignores health and
    /// uses all replicas (panic mode), as a partial answer beats none.
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 0, max = 100))]
    pub panic_threshold_percent: i32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: default_consecutive_failures(),
            failure_rate_percent: None,
            interval: default_interval(),
            base_ejection_time: default_base_ejection_time(),
            max_ejected_percent: default_max_ejected_percent(),
            panic_threshold_percent: default_panic_threshold(),
        }
    }
}

fn default_consecutive_failures() -> i32 {
    5
}
fn default_interval() -> String {
    "10s".to_owned()
}
fn default_base_ejection_time() -> String {
    "30s".to_owned()
}
fn default_max_ejected_percent() -> i32 {
    50
}
fn default_panic_threshold() -> i32 {
    50
}

/// Active health checking.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.timeout) <= duration(self.interval)")
    .message("failover.healthCheck.timeout must not exceed its interval").field_path(".timeout"))]
#[x_kube(validation = Rule::new("duration(self.interval) > duration('0s')")
    .message("failover.healthCheck.interval must be more than 0").field_path(".interval"))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Time between checks.
    #[serde(default = "default_hc_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub interval: String,

    /// Time allowed for one check.
    #[serde(default = "default_hc_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub timeout: String,

    /// Consecutive failed checks that mark a replica unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: i32,

    /// Consecutive passed checks that mark it healthy again.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: i32,

    /// Also probe peer replicas (through their sidecars' admin `/ready`), not only the local workload.
    #[serde(default)]
    pub probe_peers: bool,

    /// HTTP path of the local workload's readiness endpoint, checked with `GET` (a 2xx or 3xx
    /// answer passes). Unset: a check passes when a TCP connection to the workload opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s#]*$"))]
    pub path: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            unhealthy_threshold: default_unhealthy_threshold(),
            healthy_threshold: default_healthy_threshold(),
            probe_peers: false,
            path: None,
        }
    }
}

fn default_hc_interval() -> String {
    "2s".to_owned()
}
fn default_hc_timeout() -> String {
    "1s".to_owned()
}
fn default_unhealthy_threshold() -> i32 {
    3
}
fn default_healthy_threshold() -> i32 {
    2
}

/// Adaptive client-side circuit breaking (Google SRE "client-side throttling").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.window) > duration('0s')")
    .message("failover.circuitBreaker.window must be more than 0").field_path(".window"))]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Whether the breaker is on.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Accept multiplier K: requests are dropped with probability
    /// max(0, (requests - K * accepts) / (requests + 1)). Lower is more aggressive; 1.5 is go-zero's.
    #[serde(default = "default_breaker_k")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub k: f64,

    /// Sliding window over which requests and accepts are counted.
    #[serde(default = "default_breaker_window")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub window: String,

    /// Fewest attempts to a replica within the window before the breaker may drop anything: a
    /// few failures prove too little, and on a single replica would turn unrelated requests away.
    #[serde(default = "default_breaker_min_requests")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_requests: i32,

    /// Most requests waiting for a connection to one replica; unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_pending_requests: Option<i32>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            enabled: true,
            k: default_breaker_k(),
            window: default_breaker_window(),
            min_requests: default_breaker_min_requests(),
            max_pending_requests: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_breaker_k() -> f64 {
    1.5
}
fn default_breaker_min_requests() -> i32 {
    20
}
fn default_breaker_window() -> String {
    "10s".to_owned()
}

/// Hedged requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hedging {
    /// Send the hedge once the first attempt is slower than this latency percentile of recent
    /// requests (50 to 99.9).
    #[serde(default = "default_hedge_percentile")]
    #[schemars(range(min = 50.0, max = 99.9))]
    pub percentile: f64,

    /// Never hedge earlier than this.
    #[serde(default = "default_hedge_min_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub min_delay: String,
}

fn default_hedge_percentile() -> f64 {
    95.0
}
fn default_hedge_min_delay() -> String {
    "10ms".to_owned()
}

/// Admission limits applied before a request is routed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Token-bucket rate limit per route (each route's own `rateLimit` overrides it). Excess
    /// requests get 429 with `Retry-After`. Unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Adaptive load shedding.
    #[serde(default)]
    pub load_shedding: LoadShedding,

    /// Largest request body accepted; larger bodies get 413.
    #[serde(default = "default_max_body")]
    #[schemars(range(min = 0, max = 1073741824))]
    pub max_request_body_bytes: i64,

    /// Largest response head (status line and header section) relayed from a replica; a larger
    /// one is answered 502 `upstream-header-too-large` (and is no failure of the replica's).
    /// The default is above what browsers and curl accept, so the sidecar never refuses what
    /// its client would have read.
    #[serde(default = "default_max_response_header_bytes")]
    #[schemars(range(min = 8192, max = 4194304))]
    pub max_response_header_bytes: i32,

    /// Most header fields in a response head relayed from a replica (for example many
    /// `Set-Cookie` fields); more are answered like an oversized head.
    #[serde(default = "default_max_response_header_fields")]
    #[schemars(range(min = 32, max = 10000))]
    pub max_response_header_fields: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_limit: None,
            load_shedding: LoadShedding::default(),
            max_request_body_bytes: default_max_body(),
            max_response_header_bytes: default_max_response_header_bytes(),
            max_response_header_fields: default_max_response_header_fields(),
        }
    }
}

fn default_max_response_header_bytes() -> i32 {
    128 * 1024
}

fn default_max_response_header_fields() -> i32 {
    256
}

fn default_max_body() -> i64 {
    10 << 20
}

/// A token bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,

    /// Requests allowed in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: i32,
}

fn default_burst() -> i32 {
    10
}

/// Adaptive load shedding: an adaptive concurrency limit rejects excess work early with 503 so
/// that admitted requests keep a bounded latency.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minConcurrency <= self.maxConcurrency")
    .message("limits.loadShedding.minConcurrency must not exceed maxConcurrency").field_path(".minConcurrency"))]
#[serde(rename_all = "camelCase")]
pub struct LoadShedding {
    /// Whether shedding is on.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Latency the limiter aims to keep admitted requests under (a tolerance above the measured
    /// minimum); the concurrency limit shrinks when latency exceeds it.
    #[serde(default = "default_shed_target")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LEN))]
    pub latency_target: String,

    /// Lowest concurrency limit the limiter may set.
    #[serde(default = "default_min_concurrency")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_concurrency: i32,

    /// Highest concurrency limit the limiter may set.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrency: i32,
}

impl Default for LoadShedding {
    fn default() -> Self {
        LoadShedding {
            enabled: true,
            latency_target: default_shed_target(),
            min_concurrency: default_min_concurrency(),
            max_concurrency: default_max_concurrency(),
        }
    }
}

fn default_shed_target() -> String {
    "250ms".to_owned()
}
fn default_min_concurrency() -> i32 {
    8
}
fn default_max_concurrency() -> i32 {
    10000
}
