//! Every way a traffic policy can be refused, as a closed list.
//!
//! Compilation ([`super::compile`]) reports each problem as a [`PolicyError`]: the field, in the
//! API's terms, and the [`Rule`] it breaks. The list is closed on purpose: the admission-parity
//! test (`tests/admission_parity.rs`) goes over [`Rule::ALL`] with an exhaustive `match`, so a new
//! rule does not compile until that test shows a spec that breaks it and that the DataStream
//! CRD's schema or CEL rules refuse the same spec at admission. A stream the API server admitted
//! must never be refused here.

use std::fmt;

use datastream_api::v1alpha1::DurationError;

/// Declares [`Rule`] with its messages and [`Rule::ALL`] from one list, so the list cannot miss
/// a rule.
macro_rules! rules {
    ($($(#[$doc:meta])* $rule:ident => $message:literal,)*) => {
        /// A rule of the traffic policy that compilation enforces.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rule {
            $($(#[$doc])* $rule,)*
        }

        impl Rule {
            /// Every rule, in declaration order.
            pub const ALL: &'static [Rule] = &[$(Rule::$rule,)*];

            /// What the rule requires, said to the author of the policy.
            pub fn message(self) -> &'static str {
                match self {
                    $(Rule::$rule => $message,)*
                }
            }
        }
    };
}

rules! {
    /// `routes[].name` is empty or `default`, the implicit catch-all route's name.
    RouteName => "must be non-empty and not \"default\" (the implicit catch-all route)",
    /// Two routes share a name.
    DuplicateRouteName => "is already the name of an earlier route",
    /// `match.path.exact` or `prefix` does not start with `/`.
    PathNotAbsolute => "must start with '/'",
    /// `match.path` sets both or neither of `exact` and `prefix`.
    PathMatchKind => "needs exactly one of exact or prefix",
    /// A header name (`match.headers[].name`, `affinity.key.header`) is not a valid one.
    HeaderName => "is not a valid header name",
    /// `match.headers[].exact` is not a valid header value (control characters).
    HeaderValue => "is not a valid header value (no control characters but tab)",
    /// `match.headers[]` sets not exactly one of `exact`, `prefix` and `present`.
    HeaderMatchKind => "needs exactly one of exact, prefix or present",
    /// A route of mode `affinity` has no `affinity`.
    AffinityMissing => "mode affinity needs affinity.key (a header, queryParam or pathSegment)",
    /// `affinity.key` sets not exactly one usable source.
    AffinityKeySource => "needs exactly one of header, queryParam (non-empty) or pathSegment (>= 0)",
    /// `affinity.loadBound` is neither 0 nor within 1 and 10.
    LoadBound => "must be 0 (unbounded) or between 1 and 10",
    /// `broadcast.quorum` is below 1.
    Quorum => "must be at least 1",
    /// A byte limit (`broadcast.maxBodyBytes`, `limits.maxRequestBodyBytes`) is negative.
    NegativeBytes => "must not be negative",
    /// A rate limit's `requestsPerSecond` or `burst` is below 1.
    RateLimit => "requestsPerSecond and burst must be at least 1",
    /// A duration is not numbers with units.
    DurationSyntax => "must be numbers with a unit (ms, s, m, h), e.g. 250ms, 2s or 1m30s",
    /// A duration is too long (more digits than its unit allows, or more than 32 characters).
    DurationRange => "must have at most 9 digits before ms or s, 7 before m and 5 before h, and at most 32 characters",
    /// A duration that must be positive is 0 (timeouts, intervals, windows).
    ZeroDuration => "must be more than 0",
    /// `failover.perTryTimeout` is not shorter than `requestTimeout`.
    PerTryTimeout => "must be shorter than requestTimeout",
    /// `failover.connectTimeout` exceeds `requestTimeout`.
    ConnectTimeout => "must not exceed requestTimeout",
    /// `failover.retries.backoffBase` exceeds `backoffMax`.
    Backoff => "must not exceed backoffMax",
    /// `failover.retries.budgetRatio` is outside 0 to 1.
    BudgetRatio => "must be within 0 and 1",
    /// `failover.healthCheck.timeout` exceeds its interval.
    HealthCheckTimeout => "must not exceed its interval",
    /// `failover.circuitBreaker.k` is outside 1 to 10.
    BreakerK => "must be within 1 and 10",
    /// `limits.loadShedding.minConcurrency` exceeds `maxConcurrency`.
    SheddingBounds => "must not exceed maxConcurrency",
}

/// One problem of a traffic policy: the field (a path in the API's terms, routes named), the rule
/// it breaks, and the offending value where showing it helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where, e.g. `traffic.routes[0] (kv).affinity.loadBound`.
    pub field: String,
    /// Which rule.
    pub rule: Rule,
    /// The value as written (`Debug`-quoted for strings), if it is worth repeating.
    pub got: Option<String>,
}

// === impl Rule ===

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

// === impl PolicyError ===

impl PolicyError {
    /// `field` breaks `rule`.
    pub fn new(field: impl Into<String>, rule: Rule) -> Self {
        Self {
            field: field.into(),
            rule,
            got: None,
        }
    }

    /// `field` breaks `rule` with the value `got`.
    pub fn got(field: impl Into<String>, rule: Rule, got: impl fmt::Display) -> Self {
        Self {
            got: Some(got.to_string()),
            ..Self::new(field, rule)
        }
    }

    /// The duration at `field` did not parse.
    pub fn duration(field: impl Into<String>, error: &DurationError) -> Self {
        match error {
            DurationError::Syntax(v) => Self::got(field, Rule::DurationSyntax, format!("{v:?}")),
            DurationError::Range(v) => Self::got(field, Rule::DurationRange, format!("{v:?}")),
        }
    }

    /// The same problem, under `prefix` (for sections compiled on their own).
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)?;
        if let Some(got) = &self.got {
            write!(f, ", got {got}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}
