//! Upstream connections of one endpoint: a LIFO stack of idle HTTP/1 senders and one shared
//! HTTP/2 sender.
//!
//! This replaces hyper-util's legacy client on the hot path (see PERFORMANCE.md): taking an idle
//! HTTP/1 connection is one short lock on this endpoint's own stack, the connection comes back
//! when the response body ends (no spawned idle task), and upstreams are IP literals, so there
//! is no DNS. The most recently used connection is reused first, which keeps the set of warm
//! connections small and lets the rest expire.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::h1::client::{Connection, ResponseLimits};
use crate::io::{Duplex, Transport};

/// A connector's pending result: the wrapped stream, or why wrapping failed.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Duplex>>> + Send>>;

/// Wraps each new upstream connection before HTTP is spoken on it (TLS to a peer sidecar). `h2`
/// says which protocol the connection will carry, for ALPN.
pub trait Connector: Send + Sync + 'static {
    /// The wrapped stream over `tcp`, connected to `addr`.
    fn connect(&self, tcp: TcpStream, addr: SocketAddr, h2: bool) -> Connecting;
}

/// Idle HTTP/1 connections are closed after this long: below the keep-alive timeout of common
/// servers (Node's 5 s, nginx's 75 s), as Linkerd does with 3 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many idle HTTP/1 connections are kept per endpoint.
pub const MAX_IDLE: usize = 256;
/// Connect timeout (Linkerd uses 1 s outbound).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 stream window towards upstreams (Linkerd's memory-capped figure).
const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// HTTP/2 connection window towards upstreams.
const H2_CONN_WINDOW: u32 = 1024 * 1024;

/// Connecting to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("connecting to {addr} failed")]
    Tcp {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection did not complete in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection's own handshake (TLS) failed.
    #[error("TLS with {addr} failed")]
    Wrap {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
}

/// An idle HTTP/1 sender and when it became idle.
#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// An idle connection of the sidecar's own HTTP/1 client and when it became idle.
#[derive(Debug)]
struct IdleOwn {
    conn: Connection,
    since: Instant,
}

/// The connection pool of one endpoint.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of the sidecar's own client (requests with in-memory bodies); hyper's
    /// senders above serve streaming bodies and upgrades.
    idle_own: Mutex<Vec<IdleOwn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Serialises HTTP/2 connects so that a burst opens one connection, not one per request.
    h2_connect: tokio::sync::Mutex<()>,
    /// The policy's `failover.connectTimeout`, in nanoseconds.
    connect_timeout_ns: AtomicU64,
    /// The policy's response head limits, for hyper's clients (new connections take them).
    max_head_bytes: AtomicUsize,
    max_fields: AtomicUsize,
    /// Wraps new connections (TLS), when set.
    connector: Option<Arc<dyn Connector>>,
}

impl std::fmt::Debug for dyn Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

// === impl Pool ===

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_connector(addr, None)
    }

    /// An empty pool for `addr` whose connections `connector` wraps (TLS), when given.
    pub fn with_connector(addr: SocketAddr, connector: Option<Arc<dyn Connector>>) -> Self {
        Self {
            connector,
            addr,
            idle: Mutex::new(Vec::new()),
            idle_own: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connect: tokio::sync::Mutex::new(()),
            connect_timeout_ns: AtomicU64::new(CONNECT_TIMEOUT.as_nanos() as u64),
            max_head_bytes: AtomicUsize::new(ResponseLimits::default().max_head_bytes),
            max_fields: AtomicUsize::new(ResponseLimits::default().max_fields),
        }
    }

    /// Sets the response head limits hyper's clients apply on the connections opened from now
    /// (the sidecar's own client takes them per request).
    pub fn set_response_limits(&self, limits: ResponseLimits) {
        if self.max_head_bytes.load(Ordering::Relaxed) != limits.max_head_bytes {
            self.max_head_bytes
                .store(limits.max_head_bytes, Ordering::Relaxed);
        }
        if self.max_fields.load(Ordering::Relaxed) != limits.max_fields {
            self.max_fields.store(limits.max_fields, Ordering::Relaxed);
        }
    }

    /// Sets the time allowed to open a connection (the live policy's `connectTimeout`).
    pub fn set_connect_timeout(&self, timeout: Duration) {
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX).max(1);
        if self.connect_timeout_ns.load(Ordering::Relaxed) != ns {
            self.connect_timeout_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// Number of idle HTTP/1 connections.
    #[inline]
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len() + self.idle_own.lock().len()
    }

    /// The most recently used idle connection of the own client that is still open, if any.
    pub fn take_idle_own(&self) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = self.idle_own.lock();
        while let Some(mut entry) = idle.pop() {
            if now.duration_since(entry.since) < IDLE_TIMEOUT && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns an own-client connection after its response ended.
    pub fn put_own(&self, conn: Connection) {
        let now = Instant::now();
        let mut idle = self.idle_own.lock();
        let expired = idle
            .iter()
            .take_while(|e| now.duration_since(e.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(IdleOwn { conn, since: now });
        }
    }

    /// Whether new connections are wrapped (TLS).
    pub fn is_wrapped(&self) -> bool {
        self.connector.is_some()
    }

    /// Opens a new connection for the own client.
    pub async fn connect_own(&self) -> Result<Connection, ConnectError> {
        Ok(Connection::new(self.connect(false).await?))
    }

    /// The most recently used open idle HTTP/1 sender, if any. The caller awaits `ready()`: a
    /// sender returned at end of body may not have seen its connection turn idle yet.
    pub fn take_idle_h1(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && now.duration_since(entry.since) < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Returns an HTTP/1 sender after its response ended.
    pub fn put_h1(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock();
        // The oldest entries sit at the bottom; expire them here so a quiet pool shrinks.
        let expired = idle
            .iter()
            .take_while(|e| now.duration_since(e.since) >= IDLE_TIMEOUT || e.sender.is_closed())
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Opens a new HTTP/1 connection; `upgrades` keeps it usable for a protocol switch.
    pub async fn connect_h1(
        &self,
        upgrades: bool,
    ) -> Result<http1::SendRequest<RequestBody>, ConnectError> {
        let io = TokioIo::new(self.connect(false).await?);
        let max_head = self.max_head_bytes.load(Ordering::Relaxed);
        let (sender, conn) = http1::Builder::new()
            .max_headers(self.max_fields.load(Ordering::Relaxed))
            .max_buf_size(max_head.max(8192))
            .allow_spaces_after_header_name_in_responses(true)
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        if upgrades {
            tokio::spawn(async move {
                if let Err(error) = conn.with_upgrades().await {
                    tracing::debug!(%addr, %error, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%addr, %error, "upstream connection ended");
                }
            });
        }
        Ok(sender)
    }

    /// The shared HTTP/2 sender, connecting if there is none or it closed.
    pub async fn h2(&self) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
        if let Some(sender) = self.live_h2() {
            return Ok(sender);
        }
        let _connecting = self.h2_connect.lock().await;
        if let Some(sender) = self.live_h2() {
            return Ok(sender);
        }
        let io = TokioIo::new(self.connect(true).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .adaptive_window(false)
            // HTTP/2 counts 32 bytes of overhead per field (RFC 9113 6.5.2).
            .max_header_list_size(
                u32::try_from(
                    self.max_head_bytes.load(Ordering::Relaxed)
                        + 32 * self.max_fields.load(Ordering::Relaxed),
                )
                .unwrap_or(u32::MAX),
            )
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%addr, %error, "upstream h2 connection ended");
            }
        });
        *self.h2.lock() = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets the HTTP/2 connection (after it failed), so the next request opens a new one.
    pub fn reset_h2(&self) {
        self.h2.lock().take();
    }

    fn live_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let guard = self.h2.lock();
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A new connection, wrapped when the pool has a connector; `h2` is the protocol it will
    /// carry. The connect timeout covers the wrapping too.
    async fn connect(&self, h2: bool) -> Result<Transport, ConnectError> {
        let addr = self.addr;
        let timeout = Duration::from_nanos(self.connect_timeout_ns.load(Ordering::Relaxed));
        let Some(connector) = &self.connector else {
            return Ok(Transport::Tcp(self.connect_tcp().await?));
        };
        let deadline = Instant::now() + timeout;
        let tcp = self.connect_tcp().await?;
        tokio::time::timeout_at(deadline, connector.connect(tcp, addr, h2))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map(Transport::Wrapped)
            .map_err(|source| ConnectError::Wrap { addr, source })
    }

    async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let addr = self.addr;
        let timeout = Duration::from_nanos(self.connect_timeout_ns.load(Ordering::Relaxed));
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        // Nagle plus delayed ACKs would add 40 ms stalls to small requests.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
