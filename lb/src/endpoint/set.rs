//! The replicas at one moment, in StatefulSet ordinal order, with the hash tables built from
//! them on first use.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::metrics::LbMetrics;
use super::{DEFAULT_RTT, Endpoint, EndpointSpec, median};
use crate::balance::hash::{Maglev, Ring};
use datastream_resilience::clock;
use datastream_resilience::outlier::Ejections;

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

// === impl EndpointSet ===

impl EndpointSet {
    /// Builds the set for `specs`, carrying over endpoints of `previous` that are still present.
    pub fn build(
        previous: &EndpointSet,
        specs: &[EndpointSpec],
        version: u64,
        metrics: &LbMetrics,
    ) -> Self {
        Self::build_with(previous, specs, version, metrics, None)
    }

    /// [`Self::build`], with new remote endpoints (peer sidecars, not the local workload)
    /// connecting through `remote` (mutual TLS).
    pub fn build_with(
        previous: &EndpointSet,
        specs: &[EndpointSpec],
        version: u64,
        metrics: &LbMetrics,
        remote: Option<&Arc<dyn datastream_http::pool::Connector>>,
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
                    remote.filter(|_| !spec.local).cloned(),
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
    #[inline]
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The local workload, if it is part of the set.
    #[inline]
    pub fn local(&self) -> Option<&Arc<Endpoint>> {
        self.local.map(|i| &self.endpoints[i])
    }

    /// Number of endpoints.
    #[inline]
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the set is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The hash ring of this set.
    #[inline]
    pub fn ring(&self) -> &Ring {
        self.ring
            .get_or_init(|| Ring::new(self.endpoints.iter().map(|e| e.name())))
    }

    /// The Maglev table of this set.
    #[inline]
    pub fn maglev(&self) -> &Maglev {
        self.maglev
            .get_or_init(|| Maglev::new(self.endpoints.iter().map(|e| e.name())))
    }

    /// The set-wide ejection figures.
    #[inline]
    pub fn ejections(&self) -> &Arc<Ejections> {
        &self.ejections
    }

    /// Which discovery update produced this set.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version
    }
}
