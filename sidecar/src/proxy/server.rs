//! Listeners: accepting connections under a connection cap and serving them with hyper
//! (HTTP/1.1 and HTTP/2 prior knowledge on one port), with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::forward::{ConnMeta, ListenerKind, handle};
use super::framing::{FramingGuard, Verdict};
use super::headers::Forwarding;
use crate::metrics::ListenerMetrics;
use crate::state::Shared;

/// Connection-level limits of a proxy listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections per listener; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Largest request header section; larger ones get 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head; slower ones are disconnected.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
        }
    }
}

/// hyper never lets its read buffer go below this (it asserts), so header limits below it are
/// raised to it.
const MIN_BUF_SIZE: usize = 8192;

/// Accepts and serves connections until `close` turns true, then shuts connections down
/// gracefully, waiting up to `grace` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    limits: ServerLimits,
    mut close: watch::Receiver<bool>,
    grace: watch::Receiver<Duration>,
) {
    let name = match kind {
        ListenerKind::Traffic => "traffic",
        ListenerKind::Peer => "peer",
    };
    let metrics = shared.metrics.listener(name);
    let builder = Arc::new(builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            a = listener.accept() => a,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors or a transient accept error: back off, don't spin.
                tracing::warn!(%error, listener = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            stream,
            client,
            kind,
            shared: Arc::clone(&shared),
            builder: Arc::clone(&builder),
            first_byte_timeout: limits.header_read_timeout,
            max_head: limits.max_header_bytes.max(MIN_BUF_SIZE),
            metrics: metrics.clone(),
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            conn.serve(watcher).await;
        });
    }
    drop(listener);
    let grace = *grace.borrow();
    tracing::info!(
        listener = name,
        open = graceful.count(),
        "listener closed; draining connections"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain deadline reached with connections still open"
        );
    }
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF_SIZE))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    b
}

/// One accepted connection.
struct Conn {
    stream: TcpStream,
    client: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    first_byte_timeout: Duration,
    max_head: usize,
    metrics: ListenerMetrics,
}

impl Conn {
    async fn serve(self, watcher: Watcher) {
        let Conn {
            stream,
            client,
            kind,
            shared,
            builder,
            first_byte_timeout,
            max_head,
            metrics,
        } = self;
        metrics.total.inc();
        metrics.open.inc();
        // hyper's header timeout starts with HTTP/1 parsing; protocol detection before it has
        // none, so a client that connects and stays silent is timed out here.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => {
                let framing = Verdict::new();
                let meta = Arc::new(ConnMeta {
                    client,
                    listener: kind,
                    requests: AtomicU64::new(0),
                    framing: Arc::clone(&framing),
                    forwarding: Forwarding::new(client),
                });
                let stream = FramingGuard::new(stream, framing, max_head);
                let svc =
                    service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&meta), req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                if let Err(error) = watcher.watch(conn).await {
                    tracing::debug!(%error, %client, "client connection ended with an error");
                }
            }
            _ => tracing::debug!(%client, "client sent nothing in time; closing"),
        }
        metrics.open.dec();
    }
}
