//! Running a sidecar: binding the listeners, serving, and the drain sequence on shutdown.
//!
//! Drain, in one setting's worth of steps: readiness turns 503 at once (so Kubernetes takes
//! the pod out of its peers' EndpointSlices), the listeners keep accepting for `drain_delay`
//! while responses ask HTTP/1 clients to reconnect, then the listeners close and open
//! connections are shut down gracefully, in-flight requests finishing up to `drain_timeout`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::proxy::ServerLimits;
use crate::proxy::{ListenerKind, ProxyApp};
use crate::state::Shared;
use datastream_http::server;

/// Default time listeners keep accepting after draining starts.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Default time in-flight requests get to finish once listeners closed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Accept backlog of every listener.
const BACKLOG: u32 = 1024;

/// Addresses and process-level settings.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Traffic listener.
    pub traffic: SocketAddr,
    /// Peer listener, if any.
    pub peer: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Connection limits of the traffic and peer listeners.
    pub limits: ServerLimits,
    /// Time listeners keep accepting after draining starts.
    pub drain_delay: Duration,
    /// Time in-flight requests get after the listeners close.
    pub drain_timeout: Duration,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    shared: Arc<Shared>,
    traffic: SocketAddr,
    peer: Option<SocketAddr>,
    admin: SocketAddr,
    close_proxy: watch::Sender<bool>,
    close_admin: watch::Sender<bool>,
    _grace: watch::Sender<Duration>,
    proxies: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    drain_delay: Duration,
}

// === impl Sidecar ===

impl Sidecar {
    /// Binds every listener and starts serving.
    pub async fn start(
        settings: &RuntimeSettings,
        shared: Arc<Shared>,
        settings_json: Value,
    ) -> io::Result<Self> {
        let traffic_listener = bind(settings.traffic)?;
        let traffic = traffic_listener.local_addr()?;
        let peer_listener = settings.peer.map(bind).transpose()?;
        let peer = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let admin_listener = bind(settings.admin)?;
        let admin = admin_listener.local_addr()?;
        let (close_proxy, close_rx) = watch::channel(false);
        let (close_admin, admin_rx) = watch::channel(false);
        let (grace, grace_rx) = watch::channel(settings.drain_timeout);
        let app = |kind: ListenerKind| {
            let app = Arc::new(ProxyApp {
                shared: Arc::clone(&shared),
                kind,
            });
            (kind.name(), app, shared.metrics.listener(kind.name()))
        };
        let (name, traffic_app, metrics) = app(ListenerKind::Traffic);
        let client_tls = shared.client_tls().map(|tls| {
            Arc::new(crate::client_tls::ClientTlsAcceptor(Arc::clone(tls)))
                as Arc<dyn server::Handshake>
        });
        let mut proxies = vec![tokio::spawn(server::serve(
            traffic_listener,
            name,
            traffic_app,
            metrics,
            settings.limits,
            close_rx.clone(),
            grace_rx.clone(),
            client_tls,
        ))];
        if let Some(l) = peer_listener {
            let (name, peer_app, metrics) = app(ListenerKind::Peer);
            // With a workload identity, only sidecars of the same stream get through, over TLS.
            let handshake = shared.peer_tls().map(|tls| {
                Arc::new(crate::peer_tls::PeerAcceptor(Arc::clone(tls)))
                    as Arc<dyn server::Handshake>
            });
            proxies.push(tokio::spawn(server::serve(
                l,
                name,
                peer_app,
                metrics,
                settings.limits,
                close_rx,
                grace_rx,
                handshake,
            )));
        }
        // Active health checks of the local workload drive `/ready`; they stop with the admin
        // listener, the last thing to go.
        tokio::spawn(check_local_workload(Arc::clone(&shared), admin_rx.clone()));
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            Arc::clone(&shared),
            settings_json,
            admin_rx,
        ));
        tracing::info!(%traffic, ?peer, %admin, "sidecar listening");
        Ok(Self {
            shared,
            traffic,
            peer,
            admin,
            close_proxy,
            close_admin,
            _grace: grace,
            proxies,
            admin_task,
            drain_delay: settings.drain_delay,
        })
    }

    /// The shared state (to apply discovery and config updates).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bound traffic address.
    pub fn traffic_addr(&self) -> SocketAddr {
        self.traffic
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Drains and stops: see the module docs. Returns when every listener is done.
    pub async fn drain(self) {
        tracing::info!(delay = ?self.drain_delay, "draining");
        self.shared.start_draining();
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.close_proxy.send(true);
        for task in self.proxies {
            let _ = task.await;
        }
        let _ = self.close_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!("drained");
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Runs the resilience layer's health checks against the sidecar's local workload (whichever the
/// live endpoint set names) under the live policy's settings, until `stop`.
async fn check_local_workload(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    use datastream_resilience::health::{self, Verdict};
    let status = Arc::clone(&shared.resilience.local_health);
    let gauge = shared.metrics.resilience.local_healthy.clone();
    let target = {
        let shared = Arc::clone(&shared);
        move || {
            let addr = shared.endpoints().local()?.addr();
            Some((addr, shared.policy().resilience.health.clone()))
        }
    };
    let on_verdict = move |v: Verdict| {
        gauge.set(i64::from(v == Verdict::Healthy));
    };
    health::run(status, target, on_verdict, stop).await;
}
