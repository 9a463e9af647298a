//! The live state every request reads: the compiled policy and the endpoint set, each behind an
//! `ArcSwap` so that updates replace them atomically while requests in flight keep the version
//! they started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::{Metrics, RouteMetrics};
use crate::policy::Policy;
use datastream_lb::endpoint::{EndpointSet, EndpointSpec};

/// Shared state of one sidecar.
#[derive(Debug)]
pub struct Shared {
    policy: ArcSwap<Policy>,
    endpoints: ArcSwap<EndpointSet>,
    /// Serialises endpoint updates, which read the previous set to carry endpoints over.
    endpoints_update: Mutex<()>,
    endpoints_version: AtomicU64,
    /// Whether any endpoint set was ever received (readiness waits for it).
    endpoints_known: AtomicBool,
    draining: AtomicBool,
    config_status: Mutex<ConfigStatus>,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// Response counters of the peer listener.
    pub peer_metrics: RouteMetrics,
    /// Retry budget, adaptive concurrency limit and local health, kept across policy updates.
    pub resilience: datastream_resilience::Runtime,
    /// The workload identity, when the sidecar runs with one.
    identity: std::sync::OnceLock<crate::identity::IdentityHandle>,
    /// Mutual TLS between sidecars, with the identity.
    peer_tls: std::sync::OnceLock<Arc<crate::peer_tls::PeerTls>>,
    /// TLS for clients on the traffic listener.
    client_tls: std::sync::OnceLock<Arc<crate::client_tls::ClientTls>>,
    /// Dials remote endpoints with [`Self::peer_tls`].
    peer_connector: std::sync::OnceLock<Arc<dyn datastream_http::pool::Connector>>,
}

/// What `/config` reports about configuration updates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// Version of the live policy.
    pub version: u64,
    /// Where the live policy came from.
    pub source: String,
    /// The last rejected update, if it came after the live one.
    pub last_error: Option<String>,
}

// === impl Shared ===

impl Shared {
    /// State with `policy` and no endpoints yet.
    pub fn new(policy: Policy, metrics: Metrics) -> Self {
        metrics
            .config_version
            .set(i64::try_from(policy.version).unwrap_or(i64::MAX));
        let status = ConfigStatus {
            version: policy.version,
            source: policy.source.clone(),
            last_error: None,
        };
        Self {
            policy: ArcSwap::from_pointee(policy),
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            endpoints_update: Mutex::new(()),
            endpoints_version: AtomicU64::new(0),
            endpoints_known: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            config_status: Mutex::new(status),
            peer_metrics: metrics.route("peer", "local"),
            resilience: datastream_resilience::Runtime::new(
                &crate::config::resilience::default_settings(),
            ),
            metrics,
            identity: std::sync::OnceLock::new(),
            peer_tls: std::sync::OnceLock::new(),
            client_tls: std::sync::OnceLock::new(),
            peer_connector: std::sync::OnceLock::new(),
        }
    }

    /// Turns on mutual TLS between sidecars (once, at start, before any endpoint is known):
    /// remote endpoints are dialed with it and the peer listener accepts only it.
    pub fn set_peer_tls(&self, tls: Arc<crate::peer_tls::PeerTls>) {
        let connector: Arc<dyn datastream_http::pool::Connector> =
            Arc::new(crate::peer_tls::PeerConnector(Arc::clone(&tls)));
        let _ = self.peer_connector.set(connector);
        let _ = self.peer_tls.set(tls);
    }

    /// Mutual TLS between sidecars, when on.
    pub fn peer_tls(&self) -> Option<&Arc<crate::peer_tls::PeerTls>> {
        self.peer_tls.get()
    }

    /// Turns on mutual TLS between sidecars (once, before the endpoints and the listeners):
    /// `identity` is the sidecar's certificate, peers are verified against `anchors`.
    pub fn enable_mutual_tls(
        &self,
        identity: crate::identity::IdentityHandle,
        anchors: datastream_identity::verify::TrustAnchors,
    ) {
        self.set_identity(identity.clone());
        self.set_peer_tls(Arc::new(crate::peer_tls::PeerTls::new(
            identity,
            anchors,
            Arc::clone(&self.metrics.identity),
        )));
    }

    /// Sets the traffic listener's TLS (once, before the listeners start).
    pub fn set_client_tls(&self, tls: Arc<crate::client_tls::ClientTls>) {
        let _ = self.client_tls.set(tls);
    }

    /// The traffic listener's TLS, if clients must use it.
    pub fn client_tls(&self) -> Option<&Arc<crate::client_tls::ClientTls>> {
        self.client_tls.get()
    }

    /// Sets the workload identity (once, at start).
    pub fn set_identity(&self, handle: crate::identity::IdentityHandle) {
        let _ = self.identity.set(handle);
    }

    /// The workload identity, if the sidecar runs with one.
    pub fn identity(&self) -> Option<&crate::identity::IdentityHandle> {
        self.identity.get()
    }

    /// The live policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The live endpoint set.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Swaps in a new policy. Requests in flight finish under the one they started with.
    pub fn set_policy(&self, policy: Policy) {
        let mut status = self.config_status.lock();
        status.version = policy.version;
        status.source = policy.source.clone();
        status.last_error = None;
        self.metrics
            .config_version
            .set(i64::try_from(policy.version).unwrap_or(i64::MAX));
        tracing::info!(version = policy.version, source = %policy.source, "policy applied");
        self.policy.store(Arc::new(policy));
    }

    /// Records a rejected configuration update; the live policy stays.
    pub fn reject_config(&self, error: String) {
        tracing::warn!(%error, "configuration rejected; keeping the last good one");
        self.metrics.config_rejected.inc();
        self.config_status.lock().last_error = Some(error);
    }

    /// The configuration status for `/config`.
    pub fn config_status(&self) -> ConfigStatus {
        self.config_status.lock().clone()
    }

    /// Replaces the endpoint set, carrying over endpoints that stay.
    pub fn set_endpoints(&self, specs: &[EndpointSpec]) {
        let _serial = self.endpoints_update.lock();
        let version = self.endpoints_version.fetch_add(1, Ordering::Relaxed) + 1;
        let previous = self.endpoints.load();
        let next = EndpointSet::build_with(
            &previous,
            specs,
            version,
            &self.metrics.lb,
            self.peer_connector.get(),
        );
        tracing::info!(version, endpoints = next.len(), "endpoint set updated");
        self.endpoints.store(Arc::new(next));
        self.endpoints_known.store(true, Ordering::Release);
    }

    /// Whether an endpoint set has been received.
    pub fn endpoints_known(&self) -> bool {
        self.endpoints_known.load(Ordering::Acquire)
    }

    /// Starts draining: readiness fails and responses ask HTTP/1 clients to reconnect.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the sidecar is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether `/ready` should succeed: not draining, endpoints known, and the local workload
    /// not failing its active health check.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.endpoints_known() && !self.resilience.local_workload_failing()
    }
}
