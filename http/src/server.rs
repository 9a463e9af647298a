//! Listeners: accepting connections under a connection cap, telling HTTP/2 prior knowledge from
//! HTTP/1 by the first bytes, and serving them (HTTP/1 with the sidecar's own connection, see
//! [`h1`]; HTTP/2 with [`h2`](super::h2)), with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures::task::AtomicWaker;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::app::{ConnMeta, HttpServerApp};
use super::h1;
use super::headers::Forwarding;
use super::io::{Duplex, Transport};
use super::metrics::ListenerMetrics;
use super::rewind::Rewind;

/// The client preface that starts every HTTP/2 prior-knowledge connection (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection-level limits of a proxy listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections per listener; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Largest request header section; larger ones get 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more get 431.
    pub max_header_fields: usize,
    /// Time a client has to send a complete request head; slower ones are disconnected.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// How long an HTTP/1 keep-alive connection may stay idle between requests (Envoy's default
    /// idle timeout: one hour).
    pub keep_alive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_header_fields: h1::MAX_HEADERS,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            keep_alive_timeout: Duration::from_secs(3600),
        }
    }
}

/// A connection after its handshake: the stream HTTP is spoken on, and who the client proved to
/// be.
pub struct Handshaken {
    /// The wrapped stream (a TLS session over the socket).
    pub io: Box<dyn Duplex>,
    /// The identity the client proved, for [`ConnMeta::peer_identity`].
    pub peer_identity: Option<Arc<str>>,
}

/// Runs a handshake (TLS) on each accepted socket before any HTTP: a listener's choice. The
/// implementation counts and logs refusals; the listener only drops the connection.
pub trait Handshake: Send + Sync + 'static {
    /// The handshaken connection, or `None` to drop it.
    fn handshake(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Handshaken>> + Send>>;
}

/// Accepts connections and serves their requests with `app` until `close` turns true, then lets
/// connections finish their requests, waiting up to `grace`. `name` names the listener in logs.
/// With `handshake`, every connection completes it (within the header read timeout) before
/// HTTP is read from it.
#[allow(
    clippy::too_many_arguments,
    reason = "one listener's whole configuration"
)]
pub async fn serve<A: HttpServerApp>(
    listener: TcpListener,
    name: &'static str,
    app: Arc<A>,
    metrics: ListenerMetrics,
    limits: ServerLimits,
    mut close: watch::Receiver<bool>,
    grace: watch::Receiver<Duration>,
    handshake: Option<Arc<dyn Handshake>>,
) {
    let h2 = h2_settings(&limits);
    let settings = h1::Settings {
        max_head: limits.max_header_bytes,
        max_fields: limits.max_header_fields,
        header_read_timeout: limits.header_read_timeout,
        keep_alive_timeout: limits.keep_alive_timeout,
    };
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    // Wakes the idle connections when the loop ends, however it ends.
    let drain = DrainOnDrop(Arc::new(Drain::default()));
    loop {
        let permit = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
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
            handshake: handshake.clone(),
            app: Arc::clone(&app),
            h2,
            settings,
            metrics: metrics.clone(),
            close: CloseSignal {
                watch: close.clone(),
                idle: drain.0.join(),
            },
        };
        // The connection's future lives in its own heap block, not inside tokio's task cell:
        // the cell is allocated 128-byte aligned, and an aligned block of about 2 KiB per idle
        // connection leaves holes glibc cannot reuse between the request buffers freed around it
        // (measured: +3.5 MB RSS at 10,000 idle connections when the cell grew from 1,792 to
        // 1,920 bytes). One allocation per connection, none per request.
        let serving = Box::pin(conn.serve());
        tokio::spawn(async move {
            let _permit = permit;
            serving.await;
        });
    }
    drop(listener);
    drop(drain);
    let grace = *grace.borrow();
    let open = max as usize - slots.available_permits();
    tracing::info!(
        listener = name,
        open,
        "listener closed; draining connections"
    );
    // Every connection holds a slot until it ends, so all slots free means all drained.
    if tokio::time::timeout(grace, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain deadline reached with connections still open"
        );
    }
}

fn h2_settings(limits: &ServerLimits) -> super::h2::Settings {
    super::h2::Settings {
        max_header_list_size: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
        max_concurrent_streams: limits.max_concurrent_streams,
    }
}

/// Resolves once `close` turns true (or its sender is gone).
pub(super) async fn closing(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|c| *c).await;
}

/// How a connection learns that its listener is closing: the listener's close flag, and a
/// waker slot of the connection's own that the listener wakes when its accept loop ends.
///
/// An idle HTTP/1 connection waits on the slot: storing a waker there costs a compare-and-swap,
/// where a subscription to the `watch` on every idle wait (every request on a keep-alive
/// connection) took a lock to join its waiter list and another to leave it.
#[derive(Debug)]
pub struct CloseSignal {
    watch: watch::Receiver<bool>,
    idle: IdleSlot,
}

impl CloseSignal {
    /// Whether the listener is closing.
    pub fn is_closing(&self) -> bool {
        *self.watch.borrow()
    }

    /// The listener's close flag itself, for a connection that waits on it only rarely.
    pub fn into_watch(self) -> watch::Receiver<bool> {
        self.watch
    }

    /// Resolves once the listener is closing (its accept loop has ended).
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before the flag is read: a close after the read wakes this waker.
            self.idle.waker.register(cx.waker());
            if self.idle.drain.closing.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// The waker slots of one listener's connections.
#[derive(Debug, Default)]
struct Drain {
    closing: AtomicBool,
    /// One per connection that has joined; those of ended connections no longer upgrade.
    slots: parking_lot::Mutex<Vec<Weak<AtomicWaker>>>,
}

/// A connection's waker slot, and the listener it belongs to.
#[derive(Debug)]
struct IdleSlot {
    drain: Arc<Drain>,
    waker: Arc<AtomicWaker>,
}

impl Drain {
    /// A slot for a new connection: one allocation and one lock per connection.
    fn join(self: &Arc<Self>) -> IdleSlot {
        let waker = Arc::new(AtomicWaker::new());
        let mut slots = self.slots.lock();
        if slots.len() == slots.capacity() {
            // Before the list grows, the slots of ended connections go: it stays within twice
            // the connections open at once.
            slots.retain(|w| w.strong_count() > 0);
        }
        slots.push(Arc::downgrade(&waker));
        drop(slots);
        IdleSlot {
            drain: Arc::clone(self),
            waker,
        }
    }

    /// Marks the listener closing and wakes every connection waiting on its slot.
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let slots = std::mem::take(&mut *self.slots.lock());
        for waker in slots.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }
}

/// Closes the drain when dropped: at the end of the accept loop, or when the listener's future
/// is dropped before that.
struct DrainOnDrop(Arc<Drain>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// One accepted connection.
struct Conn<A> {
    stream: TcpStream,
    client: SocketAddr,
    handshake: Option<Arc<dyn Handshake>>,
    app: Arc<A>,
    h2: super::h2::Settings,
    settings: h1::Settings,
    metrics: ListenerMetrics,
    close: CloseSignal,
}

impl<A: HttpServerApp> Conn<A> {
    async fn serve(self) {
        let Conn {
            stream,
            client,
            handshake,
            app,
            h2,
            settings,
            metrics,
            close,
        } = self;
        metrics.total.inc();
        metrics.open.inc();
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (mut stream, peer_identity) = match handshake {
            None => (Transport::Tcp(stream), None),
            Some(h) => {
                let done =
                    tokio::time::timeout(settings.header_read_timeout, h.handshake(stream, client))
                        .await;
                match done {
                    Ok(Some(done)) => (Transport::Wrapped(done.io), done.peer_identity),
                    Ok(None) | Err(_) => {
                        metrics.open.dec();
                        return;
                    }
                }
            }
        };
        // The first bytes decide the protocol; a client that stays silent is timed out here.
        let mut first = BytesMut::new();
        let read = tokio::time::timeout(settings.header_read_timeout, async {
            loop {
                first.reserve(4096);
                match stream.read_buf(&mut first).await {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
                let n = first.len().min(H2_PREFACE.len());
                if first[..n] != H2_PREFACE[..n] || first.len() >= H2_PREFACE.len() {
                    return true;
                }
            }
        })
        .await;
        if read == Ok(true) {
            let meta = Arc::new(ConnMeta {
                client,
                local,
                forwarding: Forwarding::new(client),
                peer_identity,
            });
            if first.starts_with(H2_PREFACE) {
                let io = Rewind::new(first.freeze(), stream);
                // Boxed: an HTTP/2 connection's state is large, and every HTTP/1 connection's
                // task would otherwise reserve room for it.
                let close = close.into_watch();
                let served = Box::pin(super::h2::serve_connection(io, app, meta, h2, close)).await;
                if let Err(error) = served {
                    tracing::debug!(%error, %client, "client connection ended with an error");
                }
            } else {
                let errors = metrics.errors.clone();
                h1::serve_connection(stream, first, app, meta, settings, errors, close).await;
            }
        } else {
            tracing::debug!(%client, "client sent nothing in time; closing");
        }
        metrics.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application that answers every request with an empty 200.
    struct Nothing;

    impl HttpServerApp for Nothing {
        type Body = http_body_util::Empty<bytes::Bytes>;

        async fn handle(
            self: Arc<Self>,
            _meta: Arc<ConnMeta>,
            _req: http::Request<crate::body::ClientBody>,
            _upgrade: Option<h1::PendingUpgrade>,
            _interim: Option<Arc<crate::app::Interim>>,
        ) -> Result<http::Response<Self::Body>, std::convert::Infallible> {
            Ok(http::Response::new(http_body_util::Empty::new()))
        }
    }

    /// A plain-text connection of `Nothing` on `stream`, with the default limits but the given
    /// header read and keep-alive timeouts; `close` never fires unless its sender is used.
    fn conn(
        stream: TcpStream,
        peer: std::net::SocketAddr,
        header_read_timeout: Duration,
        keep_alive_timeout: Duration,
        close: watch::Receiver<bool>,
    ) -> Conn<Nothing> {
        let limits = ServerLimits::default();
        Conn {
            stream,
            client: peer,
            handshake: None,
            app: Arc::new(Nothing),
            h2: h2_settings(&limits),
            settings: h1::Settings {
                max_head: limits.max_header_bytes,
                max_fields: limits.max_header_fields,
                header_read_timeout,
                keep_alive_timeout,
            },
            metrics: crate::metrics::ServerMetrics::default().listener("traffic"),
            close: CloseSignal {
                watch: close,
                idle: Arc::new(Drain::default()).join(),
            },
        }
    }

    /// Every open connection is one task; its future's size is what an idle connection costs
    /// beyond the kernel's socket. Keeping big states (an HTTP/2 connection, an exchange,
    /// the request path) boxed keeps it small; this fails when one slips in unboxed. The app
    /// is behind an `Arc` and its request futures live in the boxed exchange, so the figure
    /// holds for any app.
    #[test]
    fn an_idle_connection_task_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let (_tx, close) = watch::channel(false);
            let limits = ServerLimits::default();
            let conn = conn(
                stream,
                peer,
                limits.header_read_timeout,
                limits.keep_alive_timeout,
                close,
            );
            let size = size_of_future(&conn.serve());
            assert!(size <= 2048, "connection future is {size} bytes");
            drop(client);
        });
    }

    /// Waits for a request share one timer per connection, moved before each wait: the first
    /// gets the header read timeout, later ones the (here shorter) keep-alive timeout counted
    /// from their own start, so requests spaced under it keep the connection open however long
    /// it lives, and silence longer than it closes the connection.
    #[test]
    fn the_idle_timer_is_moved_before_each_wait_for_a_request() {
        use tokio::io::AsyncWriteExt;
        const KEEP_ALIVE: Duration = Duration::from_secs(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let (_tx, close) = watch::channel(false);
            let conn = conn(stream, peer, Duration::from_secs(5), KEEP_ALIVE, close);
            let served = tokio::spawn(conn.serve());
            // Longer than the keep-alive timeout before the first request: the header read
            // timeout applies to a new connection.
            tokio::time::sleep(KEEP_ALIVE + Duration::from_millis(200)).await;
            let mut buf = vec![0u8; 1024];
            let mut answered = tokio::time::Instant::now();
            for _ in 0..6 {
                client
                    .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\n") {
                    let n = client.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed after {} bytes", got.len());
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
                answered = tokio::time::Instant::now();
                // Six waits of a fifth of the timeout: together longer than it.
                tokio::time::sleep(KEEP_ALIVE / 5).await;
            }
            let n = tokio::time::timeout(Duration::from_secs(4), client.read(&mut buf))
                .await
                .expect("the keep-alive timeout closes the connection")
                .unwrap();
            assert_eq!(n, 0);
            // Counted from the wait after the last answer (which began about when the client
            // read that answer), not from any earlier one.
            let idle = answered.elapsed();
            assert!(
                idle + KEEP_ALIVE / 10 >= KEEP_ALIVE,
                "closed after {idle:?}"
            );
            served.await.unwrap();
        });
    }

    #[test]
    fn closing_the_drain_wakes_a_waiting_connection_and_forgets_ended_ones() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let drain = Arc::new(Drain::default());
            let (_tx, watch) = watch::channel(false);
            let signal = CloseSignal {
                watch,
                idle: drain.join(),
            };
            // Connections that ended leave nothing behind once the list would grow.
            for _ in 0..64 {
                drop(drain.join());
            }
            assert!(drain.slots.lock().len() <= 64);
            let mut closed = std::pin::pin!(signal.closed());
            assert!(futures::poll!(closed.as_mut()).is_pending());
            drain.close();
            assert!(futures::poll!(closed.as_mut()).is_ready());
            assert!(
                !signal.is_closing(),
                "the flag read between requests is the watch's"
            );
        });
    }
}
