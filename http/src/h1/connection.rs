//! One HTTP/1.1 server connection: the exchange loop the module documentation describes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::io::{Transport, WriteHalf};
use bytes::BytesMut;
use futures::FutureExt;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::body::{BodyEnd, Reader, RequestBody};
use super::decode::Decoder;
use super::encode::{Exchange, Framing as WireFraming};
use super::head::{Framing, Head, HeadError};
use super::{encode, head, spare};
use crate::app::{BodyHints, ConnMeta, HttpServerApp, Interim};
use crate::body::ClientBody;
use crate::headers::{strip_hop_by_hop, wants_upgrade};
use crate::metrics::LocalErrors;
use crate::rewind::Rewind;
use crate::server::CloseSignal;

/// The client connection after a `101 Switching Protocols` answer, with any bytes the client
/// sent after its request.
pub type Upgraded = Rewind<Transport>;

/// The client side of a protocol switch: resolves once the `101` answer has been written.
pub type PendingUpgrade = oneshot::Receiver<Upgraded>;

/// First read-buffer size for a request head; it doubles up to the header limit.
const HEAD_BUFFER: usize = 4096;
/// Response bytes gathered before a write.
const GATHER: usize = 64 * 1024;
/// Data frames at least this large are written directly rather than copied.
const DIRECT_WRITE: usize = 16 * 1024;
/// How long, and how many bytes, a closing connection reads and discards so that a client still
/// sending gets the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest request head (request line and header section).
    pub max_head: usize,
    /// Most header fields in a request head.
    pub max_fields: usize,
    /// Time from a request's first byte to the end of its head; also how long a new connection
    /// may stay silent.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub keep_alive_timeout: Duration,
}

/// What happens after an exchange.
enum Outcome {
    /// Read the next request.
    Next(Reader),
    /// Close the connection (lingering on the read side when it is still here).
    Close(Option<Reader>),
    /// Hand the connection over to the tunnel.
    Upgrade(Reader, oneshot::Sender<Upgraded>),
}

/// Serves HTTP/1.1 requests on `stream` until the client leaves, an error, or `close` says the
/// listener is closing. `read_ahead` holds bytes already read from it.
pub async fn serve_connection<A: HttpServerApp>(
    stream: Transport,
    read_ahead: BytesMut,
    app: Arc<A>,
    meta: Arc<ConnMeta>,
    settings: Settings,
    errors: LocalErrors,
    close: CloseSignal,
) {
    let (read, write) = stream.into_split();
    let mut reader = Reader {
        io: read,
        buf: read_ahead,
    };
    let mut conn = Connection {
        write,
        app,
        meta,
        interim: Arc::new(Interim::default()),
        settings,
        errors,
        close,
    };
    let mut first = true;
    // One timer for every wait for a request on this connection, moved later before each wait:
    // a later deadline is an atomic update of the registered timer, where a timer per wait
    // would be registered and removed under the timer wheel's lock on every request. It stays
    // registered while an exchange runs; should it fire meanwhile, the task is woken once for
    // nothing and the next wait registers it again.
    let mut idle = std::pin::pin!(tokio::time::sleep(settings.header_read_timeout));
    loop {
        if reader.buf.is_empty() {
            // An idle connection keeps no buffer; the next connection with a request may reuse
            // it.
            spare::give(std::mem::take(&mut reader.buf), HEAD_BUFFER);
        }
        let head = match conn.read_head(&mut reader, first, idle.as_mut()).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => {
                conn.refuse(error).await;
                return linger(Some(reader), conn.write).await;
            }
        };
        first = false;
        // Boxed, like the request path inside it: the task of an idle connection then holds
        // only the small idle state, not the largest state an exchange passes through.
        match Box::pin(conn.exchange(reader, head)).await {
            Outcome::Next(r) => reader = r,
            Outcome::Close(r) => return linger(r, conn.write).await,
            Outcome::Upgrade(r, tx) => {
                let Reader { io, buf } = r;
                if let Some(stream) = Transport::reunite(io, conn.write) {
                    let _ = tx.send(Rewind::new(buf.freeze(), stream));
                }
                return;
            }
        }
    }
}

struct Connection<A> {
    write: WriteHalf,
    app: Arc<A>,
    meta: Arc<ConnMeta>,
    /// Interim answers of the exchange in progress (one at a time on HTTP/1).
    interim: Arc<Interim>,
    settings: Settings,
    errors: LocalErrors,
    close: CloseSignal,
}

impl<A: HttpServerApp> Connection<A> {
    /// The next request head; `Ok(None)` when the connection should just close (client gone,
    /// idle or header timeout, drain). `idle` is the connection's timer for waits with nothing
    /// received yet.
    async fn read_head(
        &mut self,
        r: &mut Reader,
        first: bool,
        mut idle: Pin<&mut Sleep>,
    ) -> Result<Option<Head>, HeadError> {
        let s = self.settings;
        if r.buf.is_empty() {
            let limit = if first {
                s.header_read_timeout
            } else {
                s.keep_alive_timeout
            };
            idle.as_mut().reset(Instant::now() + limit);
        }
        // Set on the first read that has to wait once part of a head is here, microseconds
        // after its first bytes were read: usually the whole head is there already and no timer
        // is armed at all.
        let mut deadline = None;
        loop {
            if r.buf.is_empty() {
                // The socket before the timer, as a timeout around the wait would poll them: at
                // the same instant, a request that arrived wins.
                tokio::select! {
                    biased;
                    () = self.close.closed() => return Ok(None),
                    ready = r.io.wait_readable(&mut r.buf, HEAD_BUFFER) => {
                        if ready.is_err() {
                            return Ok(None);
                        }
                    }
                    () = idle.as_mut() => return Ok(None),
                }
                if r.buf.capacity() == 0 {
                    // Readable, and no buffer yet (a plain socket waits without one).
                    r.buf = spare::take();
                }
            }
            if !r.buf.is_empty()
                && let Some(head) = head::parse(&mut r.buf, s.max_head, s.max_fields)?
            {
                return Ok(Some(head));
            }
            let spare = r.buf.capacity() - r.buf.len();
            if spare < 512 {
                r.buf.reserve(r.buf.capacity().max(HEAD_BUFFER));
            }
            match r.io.try_read_buf(&mut r.buf) {
                Ok(0) => return Ok(None),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(None),
            }
            if r.buf.is_empty() {
                // A socket's readiness left over from the previous request (rare: a short
                // read clears it, see `ReadHalf::try_read_buf`): nothing of a new one has
                // arrived, so this is still the idle wait, under the idle timer rather than the
                // header read timeout, and without a buffer.
                spare::give(std::mem::take(&mut r.buf), HEAD_BUFFER);
                continue;
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + s.header_read_timeout);
            match tokio::time::timeout_at(until, r.io.read_buf(&mut r.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Ok(None),
            }
        }
    }

    /// Answers a refused head; the connection closes after it.
    async fn refuse(&mut self, error: HeadError) {
        self.errors.count(error.code());
        tracing::debug!(%error, client = %self.meta.client, "refusing a request head");
        let answer = encode::refusal(error.status(), error.code(), &error.to_string());
        let _ = flush(&mut self.write, &mut answer.to_vec()).await;
    }

    /// One request and its response.
    async fn exchange(&mut self, reader: Reader, head: Head) -> Outcome {
        let Head {
            request,
            framing,
            keep_alive,
            expect_continue,
            accepts_trailers,
        } = head;
        let (parts, ()) = request.into_parts();
        let method = parts.method.clone();
        let version = parts.version;
        let mut local = None;
        let mut body_end = None;
        let mut continue_rx = None;
        let body = match framing {
            Framing::Empty => {
                local = Some(reader);
                ClientBody::Empty
            }
            Framing::Length(_) | Framing::Chunked => {
                let decoder = match framing {
                    Framing::Length(n) => Decoder::Length(n),
                    _ => Decoder::ChunkSize,
                };
                let (tx, rx) = oneshot::channel();
                body_end = Some(rx);
                let wants_continue = expect_continue.then(|| {
                    let (tx, rx) = oneshot::channel();
                    continue_rx = Some(rx);
                    tx
                });
                let max_trailers = self.settings.max_head;
                ClientBody::H1(RequestBody::new(
                    reader,
                    decoder,
                    max_trailers,
                    wants_continue,
                    tx,
                ))
            }
        };
        let (upgrade_tx, upgrade_rx) = if local.is_some() && wants_upgrade(version, &parts.headers)
        {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let req = Request::from_parts(parts, body);
        // RFC 9110 15.2: a proxy forwards 1xx answers, but never to an HTTP/1.0 client.
        let relay = version == Version::HTTP_11;
        let interim = Arc::clone(&self.interim);
        interim.set_open(relay);
        // Not boxed on its own: this whole exchange already is (see `serve_connection`), so an
        // idle connection's task does not carry the request path's state.
        let mut call = std::pin::pin!(A::handle(
            Arc::clone(&self.app),
            Arc::clone(&self.meta),
            req,
            upgrade_rx,
            relay.then(|| Arc::clone(&interim)),
        ));
        let mut watch_client = local.is_some();
        let mut registered = false;
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut call => break resp,
                heads = std::future::poll_fn(|cx| interim.poll_take(cx, &mut registered)), if relay => {
                    if !write_interim(&mut self.write, heads).await {
                        interim.set_open(false);
                        return Outcome::Close(None);
                    }
                }
                sent = recv(&mut continue_rx), if continue_rx.is_some() => {
                    continue_rx = None;
                    if sent
                        && (self.write.write_all(CONTINUE).await.is_err()
                            || self.write.flush().await.is_err())
                    {
                        return Outcome::Close(None);
                    }
                }
                gone = client_gone(local.as_mut()), if watch_client => {
                    if gone {
                        // Dropping the call cancels the upstream request.
                        return Outcome::Close(None);
                    }
                    watch_client = false;
                }
            }
        };
        if relay {
            // Interim answers that arrived with the final one (in the same read) go first.
            if let Some(heads) = interim.take_now()
                && !write_interim(&mut self.write, heads).await
            {
                interim.set_open(false);
                return Outcome::Close(None);
            }
            interim.set_open(false);
        }
        let resp: Response<A::Body> = match resp {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let mut closing = self.close.is_closing();
        if let Some(rx) = body_end.as_mut() {
            match rx.try_recv() {
                Ok(BodyEnd::Complete(r)) => {
                    local = Some(r);
                    body_end = None;
                }
                Ok(BodyEnd::Abandoned(r)) => {
                    local = r;
                    body_end = None;
                    closing = true;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    body_end = None;
                    closing = true;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        let (parts, mut body) = resp.into_parts();
        let relayed = body.take_relayed_fields();
        let mut out = Vec::with_capacity(512);
        let ex = Exchange {
            method: &method,
            version,
            keep_alive: keep_alive && !closing,
            trailers: accepts_trailers && body.may_end_with_trailers(),
        };
        let (mut framing, close) = encode::head(
            &mut out,
            &parts,
            &body.size_hint(),
            body.is_end_stream(),
            ex,
            relayed.as_ref(),
        );
        // Written out: the head's bytes are no longer needed (they may share the upstream
        // connection's read buffer, which is then reused in place).
        drop(relayed);
        let http::response::Parts {
            status, headers, ..
        } = parts;
        // Written out: the map's room serves the next head parsed.
        spare::give_header_map(headers);
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(tx) = upgrade_tx
        {
            if !flush(&mut self.write, &mut out).await {
                return Outcome::Close(None);
            }
            return match local {
                Some(r) => Outcome::Upgrade(r, tx),
                None => Outcome::Close(None),
            };
        }
        if framing != WireFraming::None {
            let mut trailers = None;
            loop {
                let frame = if out.is_empty() {
                    body.frame().await
                } else {
                    match body.frame().now_or_never() {
                        Some(frame) => frame,
                        None => {
                            if !flush(&mut self.write, &mut out).await {
                                return Outcome::Close(None);
                            }
                            continue;
                        }
                    }
                };
                let data = match frame {
                    None => break,
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            trailers = frame.into_trailers().ok();
                            continue;
                        }
                    },
                    Some(Err(error)) => {
                        // The upstream failed mid-body: all the client can be told is an
                        // incomplete response.
                        tracing::debug!(%error, "response body failed; closing the connection");
                        let _ = flush(&mut self.write, &mut out).await;
                        return Outcome::Close(None);
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if encode::data_prefix(&mut out, &mut framing, data.len()).is_err() {
                    return Outcome::Close(None);
                }
                if data.len() >= DIRECT_WRITE {
                    if !flush(&mut self.write, &mut out).await
                        || self.write.write_all(&data).await.is_err()
                    {
                        return Outcome::Close(None);
                    }
                } else {
                    out.extend_from_slice(&data);
                }
                encode::data_suffix(&mut out, framing, data.len());
                if out.len() >= GATHER && !flush(&mut self.write, &mut out).await {
                    return Outcome::Close(None);
                }
            }
            let trailers = trailers.as_ref().filter(|_| accepts_trailers);
            if encode::finish(&mut out, framing, trailers).is_err() {
                let _ = flush(&mut self.write, &mut out).await;
                return Outcome::Close(None);
            }
        }
        if !flush(&mut self.write, &mut out).await {
            return Outcome::Close(None);
        }
        drop(body);
        if close || framing == WireFraming::Eof {
            return Outcome::Close(local);
        }
        let reader = match (local, body_end) {
            (Some(r), _) => r,
            (None, Some(rx)) => {
                // The body is still with the upstream; it is normally over by now.
                match tokio::time::timeout(self.settings.header_read_timeout, rx).await {
                    Ok(Ok(BodyEnd::Complete(r))) => r,
                    Ok(Ok(BodyEnd::Abandoned(r))) => return Outcome::Close(r),
                    _ => return Outcome::Close(None),
                }
            }
            (None, None) => return Outcome::Close(None),
        };
        if self.close.is_closing() {
            return Outcome::Close(Some(reader));
        }
        Outcome::Next(reader)
    }
}

/// Writes interim (1xx) answers; false when the client is gone.
async fn write_interim(write: &mut WriteHalf, heads: Vec<(StatusCode, http::HeaderMap)>) -> bool {
    let mut out = Vec::with_capacity(256);
    for (status, mut headers) in heads {
        strip_hop_by_hop(&mut headers, false, false);
        encode::interim(&mut out, status, &headers);
    }
    flush(write, &mut out).await
}

/// Writes and clears `out`, then flushes the transport (a TLS session may hold the last record
/// back until then; a socket's flush does nothing); false when the client is gone.
async fn flush(write: &mut WriteHalf, out: &mut Vec<u8>) -> bool {
    if !out.is_empty() {
        let ok = write.write_all(out).await.is_ok();
        out.clear();
        if !ok {
            return false;
        }
    }
    write.flush().await.is_ok()
}

async fn recv(rx: &mut Option<oneshot::Receiver<()>>) -> bool {
    match rx {
        Some(rx) => rx.await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Resolves to true when the client closes its side, false when it sends more (a pipelined
/// request, left for later).
async fn client_gone(reader: Option<&mut Reader>) -> bool {
    let Some(reader) = reader else {
        return std::future::pending().await;
    };
    reader.io.closed_or_more(&mut reader.buf).await
}

/// Closes the connection: the write side first, then a bounded wait for the client to finish
/// sending, so that unread bytes do not make the kernel answer with a reset that could destroy
/// the response in flight.
async fn linger(reader: Option<Reader>, mut write: WriteHalf) {
    let _ = write.shutdown().await;
    let Some(mut reader) = reader else { return };
    let drain = async {
        let mut scratch = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match reader.io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
