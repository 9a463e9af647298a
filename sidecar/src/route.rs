//! The compiled route table: matchers parsed once at configuration time, matched per request
//! against borrowed request parts without allocating.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::metrics::RouteMetrics;
use datastream_lb::balance::{Balancer, HashAlgorithm, hash};
use datastream_resilience::RouteResilience;

/// The ordered table; the default route takes what no route matched.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Route,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: RouteMatch,
    /// How the route reaches replicas.
    pub mode: Mode,
    /// Response counters of this route on the traffic listener.
    pub metrics: RouteMetrics,
    /// Timeout, retry opt-in, rate limit and their metrics.
    pub resilience: RouteResilience,
}

/// Conditions a request must meet.
#[derive(Debug, Default, Clone)]
pub struct RouteMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Methods taken; any when empty.
    pub methods: Vec<Method>,
    /// Header conditions; all must hold.
    pub headers: Vec<HeaderMatch>,
}

/// A path condition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Any path.
    #[default]
    Any,
    /// The path equals this.
    Exact(String),
    /// The path starts with this at a segment boundary.
    Prefix(String),
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Header name.
    pub name: HeaderName,
    /// What the value must satisfy.
    pub condition: HeaderCondition,
}

/// What a header must satisfy.
#[derive(Debug, Clone)]
pub enum HeaderCondition {
    /// Equal to this value.
    Exact(HeaderValue),
    /// Starting with these bytes.
    Prefix(Vec<u8>),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

/// How a route's requests reach replicas.
#[derive(Debug)]
pub enum Mode {
    /// Any eligible replica, chosen by the balancer.
    Balance(Balancer),
    /// The replica owning the request's key.
    Affinity(Affinity),
    /// One replica at a time, in name order.
    Primary {
        /// How long a recovered replica must stay quiet before it takes traffic back.
        hold_down: Duration,
    },
    /// Every ready replica; answered once a quorum succeeded.
    Broadcast {
        /// Successes needed; a majority of the ready replicas when unset.
        quorum: Option<u32>,
        /// Largest body that can be broadcast (it is buffered).
        max_body: u64,
    },
}

/// Affinity settings.
#[derive(Debug)]
pub struct Affinity {
    /// Where the key comes from.
    pub key: KeySource,
    /// Ring or Maglev.
    pub algorithm: HashAlgorithm,
    /// Bounded-load factor (0: unbounded).
    pub load_bound: f64,
    /// Balances requests that carry no key.
    pub keyless: Balancer,
}

/// Where an affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    /// A request header.
    Header(#[serde(serialize_with = "ser_header")] HeaderName),
    /// A query parameter.
    QueryParam(String),
    /// A zero-based path segment.
    PathSegment(usize),
}

fn ser_header<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

// === impl RouteTable ===

impl RouteTable {
    /// A table of `routes` before `default`.
    pub fn new(routes: Vec<Route>, default: Route) -> Self {
        Self { routes, default }
    }

    /// The first route matching the request, else the default route.
    pub fn find(&self, parts: &Parts) -> &Route {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(parts))
            .unwrap_or(&self.default)
    }

    /// The routes in order, then the default one.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(std::iter::once(&self.default))
    }
}

// === impl Route ===

impl Route {
    /// A compiled route.
    pub fn new(name: &str, matcher: RouteMatch, mode: Mode, metrics: RouteMetrics) -> Self {
        Self {
            name: name.into(),
            matcher,
            mode,
            metrics,
            resilience: RouteResilience::default(),
        }
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    /// Whether the request meets every condition.
    pub fn matches(&self, parts: &Parts) -> bool {
        self.path.matches(parts.uri.path())
            && (self.methods.is_empty() || self.methods.contains(&parts.method))
            && self.headers.iter().all(|h| h.matches(&parts.headers))
    }
}

// === impl PathMatch ===

impl PathMatch {
    /// Whether `path` satisfies the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.strip_suffix('/').unwrap_or(p);
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

// === impl HeaderMatch ===

impl HeaderMatch {
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        let value = headers.get(&self.name);
        match &self.condition {
            HeaderCondition::Present(want) => value.is_some() == *want,
            HeaderCondition::Exact(v) => value == Some(v),
            HeaderCondition::Prefix(p) => value.is_some_and(|v| v.as_bytes().starts_with(p)),
        }
    }
}

// === impl KeySource ===

impl KeySource {
    /// The key's hash, if the request carries the key.
    pub fn hash(&self, parts: &Parts) -> Option<u64> {
        let bytes: &[u8] = match self {
            KeySource::Header(name) => parts.headers.get(name)?.as_bytes(),
            KeySource::QueryParam(name) => query_param(parts.uri.query()?, name)?.as_bytes(),
            KeySource::PathSegment(i) => path_segment(parts.uri.path(), *i)?.as_bytes(),
        };
        Some(hash::hash_bytes(bytes, 0))
    }
}

/// The raw value of the first `name` parameter in a query string. Values are compared as sent
/// (not percent-decoded): every sidecar sees the same bytes, so they agree on the owner.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The `i`-th non-empty segment of a path: in `/kv/user42`, segment 1 is `user42`.
fn path_segment(path: &str, i: usize) -> Option<&str> {
    path.split('/').filter(|s| !s.is_empty()).nth(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/x"));
        assert!(!p.matches("/apix"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/x"));
        assert!(PathMatch::Exact("/a".into()).matches("/a"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = RouteMatch {
            path: PathMatch::Prefix("/kv".into()),
            methods: vec![Method::GET, Method::PUT],
            headers: vec![
                HeaderMatch {
                    name: HeaderName::from_static("x-tenant"),
                    condition: HeaderCondition::Prefix(b"acme".to_vec()),
                },
                HeaderMatch {
                    name: HeaderName::from_static("x-debug"),
                    condition: HeaderCondition::Present(false),
                },
            ],
        };
        assert!(m.matches(&parts("GET", "/kv/1", &[("x-tenant", "acme-eu")])));
        assert!(!m.matches(&parts("POST", "/kv/1", &[("x-tenant", "acme-eu")])));
        assert!(!m.matches(&parts("GET", "/kv/1", &[("x-tenant", "other")])));
        assert!(!m.matches(&parts(
            "GET",
            "/kv/1",
            &[("x-tenant", "acme"), ("x-debug", "1")]
        )));
    }

    #[test]
    fn keys_from_header_query_and_path() {
        let p = parts("GET", "/kv/user42/x?a=1&user=bob", &[("x-user", "bob")]);
        let h = KeySource::Header(HeaderName::from_static("x-user")).hash(&p);
        let q = KeySource::QueryParam("user".into()).hash(&p);
        let s = KeySource::PathSegment(1).hash(&p);
        assert_eq!(h, q, "same key bytes, same hash");
        assert_eq!(s, Some(hash::hash_bytes(b"user42", 0)));
        assert_eq!(KeySource::PathSegment(7).hash(&p), None);
        assert_eq!(KeySource::QueryParam("nope".into()).hash(&p), None);
    }
}
