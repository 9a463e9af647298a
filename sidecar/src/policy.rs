//! The compiled traffic policy: what the hot path reads. Built once from the API's
//! `TrafficPolicy` (see `config::compile`), never from API types per request.

use datastream_api::v1alpha1::UpstreamProtocol;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::route::{Mode, Route, RouteMatch, RouteTable};
use datastream_http::h1::client::ResponseLimits;
use datastream_lb::balance::{self, Balancer};
use datastream_resilience::Settings;

/// Name of the route that takes requests no configured route matched.
pub const DEFAULT_ROUTE: &str = "default";

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    /// Increases with every applied update.
    pub version: u64,
    /// Where it came from, for `/config` and logs.
    pub source: String,
    /// The route table.
    pub routes: RouteTable,
    /// Largest request body accepted.
    pub max_body: Option<u64>,
    /// Largest response head relayed from a replica.
    pub response_limits: ResponseLimits,
    /// The protocol towards replicas.
    pub upstream_protocol: UpstreamProtocol,
    /// Timeouts, retries, ejection, breaking, shedding and health-check settings.
    pub resilience: Settings,
    /// The policy as written (the `TrafficPolicy` with defaults filled in), for `/config`.
    pub spec: Value,
}

// === impl Policy ===

impl Policy {
    /// A policy with only the default route, balancing with `policy`.
    pub fn simple(
        policy: balance::Policy,
        local_first: bool,
        max_body: Option<u64>,
        metrics: &Metrics,
    ) -> Self {
        let mut default = Route::new(
            DEFAULT_ROUTE,
            RouteMatch::default(),
            Mode::Balance(Balancer::new(policy, local_first)),
            metrics.route("traffic", DEFAULT_ROUTE),
        );
        default.resilience.metrics = metrics.resilience.route(DEFAULT_ROUTE);
        Self {
            version: 1,
            source: "built-in".to_owned(),
            routes: RouteTable::new(Vec::new(), default),
            max_body,
            response_limits: ResponseLimits::default(),
            upstream_protocol: UpstreamProtocol::Auto,
            resilience: crate::config::resilience::default_settings(),
            spec: serde_json::json!({ "loadBalancing": { "policy": policy.name(), "localFirst": local_first } }),
        }
    }
}
