//! The seam between the HTTP server and the application behind a listener (the shape of
//! Pingora's `HttpServerApp`): the server owns connections, protocol detection, HTTP/1 framing
//! and HTTP/2, and hands every request to [`HttpServerApp::handle`]; the application decides
//! the answer. The server therefore depends on no application type, and the request path is
//! one monomorphised call, neither boxed nor dynamic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode};
use parking_lot::Mutex;

use super::body::ClientBody;
use super::h1::PendingUpgrade;
use super::headers::Forwarding;

/// What the application learns about the client connection of a request.
#[derive(Debug)]
pub struct ConnMeta {
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client connected to: the authority of a request that names none
    /// (RFC 9112 3.3, "the connection's incoming IP address").
    pub local: SocketAddr,
    /// The client's forwarding-header entries.
    pub forwarding: Forwarding,
    /// The identity the client proved in a mutual TLS handshake (a SPIFFE ID), if it did.
    pub peer_identity: Option<Arc<str>>,
}

/// Interim (1xx) responses on their way to the client while the final response is pending
/// (RFC 9110 15.2: a proxy MUST forward them). An HTTP/1.1 connection has one, since it serves
/// one request at a time, and opens it for the length of each exchange with an HTTP/1.1 client
/// (HTTP/1.0 clients must not get 1xx); each HTTP/2 stream has its own. Pushed while closed,
/// a response is dropped.
#[derive(Debug, Default)]
pub struct Interim {
    open: AtomicBool,
    pending: AtomicBool,
    heads: Mutex<Vec<(StatusCode, HeaderMap)>>,
    waker: AtomicWaker,
}

impl Interim {
    /// Whether interim responses pushed now reach the client.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Queues an interim response for the client. `100 Continue` (the sidecar answers
    /// `Expect` itself) and `101` (a protocol switch is a final answer here) are not relayed.
    pub fn push(&self, status: StatusCode, headers: HeaderMap) {
        if !self.is_open()
            || !status.is_informational()
            || status == StatusCode::CONTINUE
            || status == StatusCode::SWITCHING_PROTOCOLS
        {
            return;
        }
        self.heads.lock().push((status, headers));
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Queues the sidecar's own `100 Continue` (the request path started reading the body of a
    /// request that expects it).
    pub fn push_continue(&self) {
        if self.is_open() {
            self.heads
                .lock()
                .push((StatusCode::CONTINUE, HeaderMap::new()));
            self.pending.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    /// Opens (or closes) the relay for the exchange that starts (or ends); closing drops what
    /// was not written.
    pub(crate) fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Relaxed);
        if !open && self.pending.swap(false, Ordering::Acquire) {
            self.heads.lock().clear();
        }
    }

    /// The interim responses queued so far, if any, without waiting.
    pub(crate) fn take_now(&self) -> Option<Vec<(StatusCode, HeaderMap)>> {
        self.pending
            .swap(false, Ordering::AcqRel)
            .then(|| std::mem::take(&mut *self.heads.lock()))
    }

    /// The interim responses queued so far, once there are some. `registered` says whether
    /// this task's waker is already in place: one exchange is one task, so registering once per
    /// wake-up is enough (most exchanges never see a 1xx, and this is polled on each of their
    /// wake-ups).
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        registered: &mut bool,
    ) -> Poll<Vec<(StatusCode, HeaderMap)>> {
        if !self.pending.load(Ordering::Acquire) {
            if *registered {
                return Poll::Pending;
            }
            self.waker.register(cx.waker());
            *registered = true;
            if !self.pending.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        // The push that set `pending` also took the waker: register again next time.
        *registered = false;
        self.pending.store(false, Ordering::Release);
        Poll::Ready(std::mem::take(&mut *self.heads.lock()))
    }
}

/// What a response body can tell the HTTP/1 encoder beyond `http_body::Body`.
pub trait BodyHints {
    /// Whether the body may end with trailers although its length is known (an HTTP/2
    /// upstream's answer can carry both): the encoder then sends it chunked to a client that
    /// accepts trailers, since trailers need the chunked coding.
    #[inline]
    fn may_end_with_trailers(&self) -> bool {
        false
    }

    /// The response's field lines kept as bytes, which the HTTP/1 encoder writes after the
    /// header map's fields (see [`super::h1::RelayedFields`]); the map then holds no
    /// `Content-Length`. Taken once, when the head is written.
    #[inline]
    fn take_relayed_fields(&mut self) -> Option<super::h1::RelayedFields> {
        None
    }
}

impl<D> BodyHints for http_body_util::Empty<D> {}
impl<D> BodyHints for http_body_util::Full<D> {}

/// The application behind a listener: one value per listener, shared by its connections.
pub trait HttpServerApp: Send + Sync + 'static {
    /// Body of the application's responses.
    type Body: http_body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
        + BodyHints
        + Send
        + Unpin
        + 'static;

    /// Answers one request; errors are answers too. `upgrade` is the client side of a
    /// protocol switch, for HTTP/1 requests that ask for one; `interim` relays 1xx answers to
    /// the client ahead of the final one (`None` for clients that must not get them).
    fn handle(
        self: Arc<Self>,
        meta: Arc<ConnMeta>,
        req: Request<ClientBody>,
        upgrade: Option<PendingUpgrade>,
        interim: Option<Arc<Interim>>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;
}
