//! Body types of the request path, as enums rather than boxed trait objects.
//!
//! [`ClientBody`] is a request body as the client sends it: streamed from the sidecar's own
//! HTTP/1 connection, from hyper's HTTP/2 connection, or absent. [`RequestBody`] is what the sidecar sends upstream: the client's streaming body (with the size
//! limit enforced while it streams) or a buffered one (the seam for replayable retries and
//! broadcast). [`ResponseBody`] is what the client gets: the upstream's streaming body, carrying
//! the guard that ends the request's in-flight accounting and returns the HTTP/1 connection to
//! its pool at end of stream, or a small local body for errors and admin answers.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::RelayedFields;
use super::stream::{BodyFailure, EndSignal, IdleTimer};

/// What a streamed upstream response does when its body is over: return the connection to its
/// pool and end the request's accounting, or record the failure. The balancer implements it;
/// the body only says when.
pub trait BodyCompletion: Send + Unpin + 'static {
    /// The body ended cleanly; `own` is the own HTTP/1 client's connection when the body came
    /// over one, now reusable.
    fn complete(self, own: Option<super::h1::client::Connection>);
    /// The body failed mid-stream.
    fn fail(self);
}

/// A request body exceeded the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit.
    pub limit: u64,
}

/// A request body as it arrives from the client.
#[derive(Debug)]
pub enum ClientBody {
    /// No body.
    Empty,
    /// Streamed from an HTTP/1 connection.
    H1(super::h1::RequestBody),
    /// Streamed from an HTTP/2 stream.
    H2(super::h2::RecvBody),
}

/// Reading the client's body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// On an HTTP/1 connection.
    #[error(transparent)]
    H1(#[from] super::h1::BodyError),
    /// On an HTTP/2 stream.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::H1),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// The error of a [`RequestBody`].
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The body was over the limit.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    /// Reading the client's body failed.
    #[error("reading the request body failed")]
    Client(#[source] ClientBodyError),
    /// The client sent nothing for the stream idle timeout.
    #[error("the request body stalled for {0:?}")]
    Idle(Duration),
}

/// The body of a request on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    kind: RequestKind,
    /// Bytes still allowed; `u64::MAX` when unlimited.
    remaining: u64,
    limit: u64,
}

#[derive(Debug)]
enum RequestKind {
    Client {
        inner: ClientBody,
        /// Fired when the body has been read to its end.
        end: Option<EndSignal>,
        idle: IdleTimer,
    },
    Full(Option<Bytes>),
}

/// The body of a response on its way to the client; `C` completes an upstream one.
#[derive(Debug)]
pub struct ResponseBody<C> {
    kind: ResponseKind<C>,
    /// Whether it may end with trailers although its length is known (an HTTP/2 upstream's).
    may_trail: bool,
}

#[derive(Debug)]
enum ResponseKind<C> {
    Upstream {
        inner: UpstreamBody,
        done: Option<C>,
        idle: IdleTimer,
    },
    Full(Option<Bytes>),
}

/// A frame, with hop-by-hop and framing fields removed if it is a trailers frame.
fn without_hop_fields(frame: Frame<Bytes>) -> Frame<Bytes> {
    if !frame.is_trailers() {
        return frame;
    }
    match frame.into_trailers() {
        Ok(mut trailers) => {
            super::headers::strip_trailer_fields(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

// === impl RequestBody ===

impl RequestBody {
    /// Streams the client's body, failing once more than `limit` bytes went through.
    pub fn streaming(inner: ClientBody, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        Self {
            kind: RequestKind::Client {
                inner,
                end: None,
                idle: IdleTimer::new(None),
            },
            remaining: limit,
            limit,
        }
    }

    /// Fails a streaming body once the client has sent nothing for `idle` (the stream idle
    /// timeout); `None` waits for ever.
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        if let RequestKind::Client { idle: timer, .. } = &mut self.kind {
            *timer = IdleTimer::new(idle);
        }
        self
    }

    /// Fires `end` once a streaming body has been read to its end (at once for a body in
    /// memory or already complete).
    pub fn with_end_signal(mut self, signal: EndSignal) -> Self {
        match &mut self.kind {
            RequestKind::Client { inner, end, .. } if !inner.is_end_stream() => *end = Some(signal),
            _ => signal.fire(),
        }
        self
    }

    /// A buffered body (possibly empty).
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: RequestKind::Full((!bytes.is_empty()).then_some(bytes)),
            remaining: u64::MAX,
            limit: u64::MAX,
        }
    }

    /// An empty body.
    #[inline]
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The whole body, when it is in memory rather than streaming from the client.
    pub fn in_memory(&self) -> Option<Bytes> {
        match &self.kind {
            RequestKind::Full(bytes) => Some(bytes.clone().unwrap_or_default()),
            RequestKind::Client {
                inner: ClientBody::Empty,
                ..
            } => Some(Bytes::new()),
            RequestKind::Client { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            RequestKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestKind::Client { inner, end, idle } => {
                let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending => {
                        if idle.poll_stalled(cx).is_ready() {
                            if let Some(end) = end {
                                end.fail(BodyFailure::Stalled);
                            }
                            return Poll::Ready(Some(Err(RequestBodyError::Idle(idle.duration()))));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => {
                        if let Some(end) = end.take() {
                            end.fire();
                        }
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(end) = end {
                            end.fail(BodyFailure::Client);
                        }
                        return Poll::Ready(Some(Err(RequestBodyError::Client(e))));
                    }
                    Poll::Ready(Some(Ok(frame))) => frame,
                };
                idle.progress();
                let frame = if frame.is_trailers() {
                    without_hop_fields(frame)
                } else {
                    frame
                };
                // A reader that trusts `is_end_stream` (hyper does) never polls for the end.
                if inner.is_end_stream()
                    && let Some(end) = end.take()
                {
                    end.fire();
                }
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        if let RequestKind::Client { end: Some(end), .. } = &this.kind {
                            end.fail(BodyFailure::TooLarge);
                        }
                        let limit = this.limit;
                        return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Full(bytes) => bytes.is_none(),
            RequestKind::Client { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestKind::Client { inner, .. } => inner.size_hint(),
        }
    }
}

/// A response body as an upstream sends it: through hyper's client (HTTP/2, streaming
/// requests, upgrades) or the sidecar's own HTTP/1 client.
#[derive(Debug)]
pub enum UpstreamBody {
    /// From a hyper client connection.
    Hyper(Incoming),
    /// From the own HTTP/1 client; it holds the connection until the end.
    Own(super::h1::client::ResponseBody),
    /// No content, whatever the upstream sent: the response to a HEAD request (RFC 9110
    /// 9.3.2), whose upstream body, if any, is dropped unread.
    Empty,
}

/// Reading an upstream response body failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    /// Over a hyper client connection.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// Over an own client connection.
    #[error(transparent)]
    Own(#[from] super::h1::client::ClientError),
    /// The upstream sent nothing for the stream idle timeout.
    #[error("the response body stalled for {0:?}")]
    Idle(Duration),
}

impl UpstreamBody {
    fn take_reusable(&mut self) -> Option<super::h1::client::Connection> {
        match self {
            UpstreamBody::Own(b) => b.take_reusable(),
            UpstreamBody::Hyper(_) | UpstreamBody::Empty => None,
        }
    }

    fn take_relayed_fields(&mut self) -> Option<RelayedFields> {
        match self {
            UpstreamBody::Own(b) => b.take_relayed_fields(),
            UpstreamBody::Hyper(_) | UpstreamBody::Empty => None,
        }
    }
}

/// The headers of an upstream response, with the field lines the own client kept as bytes
/// (see [`super::h1::client::Connection::send`]) put back into the map first: for a reader
/// that needs them after all, such as one looking for `Retry-After`.
pub fn upstream_headers(resp: &mut http::Response<UpstreamBody>) -> &http::HeaderMap {
    if let Some(fields) = resp.body_mut().take_relayed_fields() {
        fields.append_to(resp.headers_mut());
    }
    resp.headers()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::Hyper),
            UpstreamBody::Own(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::Own),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Own(b) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

// === impl ResponseBody ===

impl<C: BodyCompletion> ResponseBody<C> {
    /// The upstream's body; `done` completes when it ends (or is dropped).
    pub fn upstream(inner: UpstreamBody, done: C) -> Self {
        let mut body = Self {
            kind: ResponseKind::Upstream {
                inner,
                done: Some(done),
                idle: IdleTimer::new(None),
            },
            may_trail: false,
        };
        body.complete_if_ended();
        body
    }

    /// Marks an upstream body that may end with trailers whatever its length says (an HTTP/2
    /// answer can carry `content-length` and trailers), so that an HTTP/1.1 client that
    /// accepts trailers gets it chunked.
    pub fn with_trailers_hint(mut self, may_trail: bool) -> Self {
        self.may_trail = may_trail;
        self
    }

    /// Fails the body once the upstream has sent nothing for `idle` (the stream idle timeout);
    /// `None` waits for ever.
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        if let ResponseKind::Upstream { idle: timer, .. } = &mut self.kind {
            *timer = IdleTimer::new(idle);
        }
        self
    }

    /// Hyper's server stops polling once `is_end_stream` says so, so completion must happen as
    /// soon as the stream is known to be over, not only on a final `None`.
    fn complete_if_ended(&mut self) {
        if let ResponseKind::Upstream { inner, done, .. } = &mut self.kind
            && inner.is_end_stream()
            && let Some(done) = done.take()
        {
            done.complete(inner.take_reusable());
        }
    }
}

impl<C> ResponseBody<C> {
    /// A small local body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: ResponseKind::Full((!bytes.is_empty()).then_some(bytes)),
            may_trail: false,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: ResponseKind::Full(None),
            may_trail: false,
        }
    }
}

impl<C> super::app::BodyHints for ResponseBody<C> {
    #[inline]
    fn may_end_with_trailers(&self) -> bool {
        self.may_trail
    }

    /// The own client's response keeps them in its body until the head is written (they stay
    /// there when the connection goes back to its pool at the body's end).
    #[inline]
    fn take_relayed_fields(&mut self) -> Option<RelayedFields> {
        match &mut self.kind {
            ResponseKind::Upstream { inner, .. } => inner.take_relayed_fields(),
            ResponseKind::Full(_) => None,
        }
    }
}

impl<C: BodyCompletion> Body for ResponseBody<C> {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseKind::Upstream { inner, done, idle } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Pending => {
                        if idle.poll_stalled(cx).is_ready() {
                            if let Some(done) = done.take() {
                                done.fail();
                            }
                            return Poll::Ready(Some(Err(UpstreamBodyError::Idle(
                                idle.duration(),
                            ))));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(_))) => idle.progress(),
                    _ => {}
                }
                // Data frames, nearly all of them, pass as they are.
                let polled = match polled {
                    Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                        Poll::Ready(Some(Ok(without_hop_fields(frame))))
                    }
                    other => other,
                };
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(done) = done.take() {
                            done.complete(inner.take_reusable());
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(done) = done.take() {
                            done.fail();
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => this.complete_if_ended(),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full(bytes) => bytes.is_none(),
            ResponseKind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseKind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
