//! The sidecar's own HTTP/1.1 client connection, for requests whose body is already in memory
//! (no body, or buffered for retries): the common case of a proxy in front of data services.
//!
//! Why not hyper's client here: each hyper HTTP/1 client connection runs as its own task, fed
//! through a channel, answering through another, and streaming the response body through a
//! third, so every request costs two task hand-offs more than the work itself. This client is
//! driven by the request's own task: one write (head and body together), reads until the
//! response head parses, and a response body that reads the socket directly and puts the
//! connection back into the endpoint's pool at its end. Streaming request bodies and protocol
//! upgrades, which need sending and receiving at once, still go through hyper.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

use super::super::app::Interim;
use super::super::headers::{Codings, PendingForwarding, lists_token, plain_length};
use super::decode::{DecodeError, Decoded, Decoder};
use super::relayed::RelayedFields;

/// Header fields parsed into a stack array; heads with more (up to the limit) take a heap one.
const STACK_FIELDS: usize = 256;
/// Header fields whose positions stay on the stack while a head is parsed.
const INLINE_FIELDS: usize = 32;
/// Byte ranges of a field's name and value within the head.
pub(super) type Span = ((usize, usize), (usize, usize));
/// Largest chunk-size or trailer line accepted in a response body.
const MAX_CHUNK_LINES: usize = 64 * 1024;
/// Read-buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// How large a response head the client accepts: at least what common clients accept
/// (browsers and curl take a few hundred fields and well over 64 KiB), so that the sidecar is
/// never the one to refuse an answer its client would have read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Largest head, status line included.
    pub max_head_bytes: usize,
    /// Most header fields.
    pub max_fields: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 128 * 1024,
            max_fields: 256,
        }
    }
}

/// An upstream connection that is not in use.
#[derive(Debug)]
pub struct Connection {
    io: crate::io::Transport,
    /// The read buffer, kept from one exchange to the next. Once the previous response's head
    /// and body pieces are dropped it is unique again and is read into in place: no allocation,
    /// and no shared header for the next head split off it. An idle pooled connection (a few
    /// per endpoint, closed after the pool's idle timeout) keeps its buffer.
    buf: BytesMut,
}

/// Why an exchange on a [`Connection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (the request may have reached the upstream).
    #[error("upstream connection failed")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before answering")]
    Closed,
    /// The response was not valid HTTP/1.
    #[error("invalid upstream response: {0}")]
    Protocol(&'static str),
    /// The response head is larger than the limits allow: the replica answered, so this is no
    /// failure of the replica's, but the answer cannot be relayed.
    #[error("upstream response head exceeds {max_head_bytes} bytes or {max_fields} fields")]
    HeadTooLarge {
        /// The byte limit.
        max_head_bytes: usize,
        /// The field limit.
        max_fields: usize,
    },
    /// The response body's chunked coding was malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Connection {
    /// Wraps a connected socket, or a TLS stream over one.
    pub fn new(io: impl Into<crate::io::Transport>) -> Self {
        Self {
            io: io.into(),
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request, judged without a system call in the
    /// common case: a connection that nothing has been received on since its last response
    /// (no readiness from the reactor) is open. When there is readiness, a non-blocking read
    /// tells whether the upstream closed it (or sent something unsolicited; either way it is
    /// not reusable). See [`crate::io::Transport::is_idle_open`].
    pub fn is_reusable(&mut self) -> bool {
        self.io.is_idle_open()
    }

    /// Sends a request with a body already in memory and reads the response head, within
    /// `limits`; interim (1xx) answers before it go to `interim`. `forwarding`: fields to add
    /// after the request's own (see [`PendingForwarding`]). The body of the response reads
    /// from this connection; see [`ResponseBody`].
    ///
    /// `relay_fields`: the caller hands the response to this crate's HTTP/1 server without
    /// changing its fields, so a head that allows it keeps its field lines as bytes
    /// ([`ResponseBody::take_relayed_fields`]) and the response's header map stays empty; a
    /// caller that must read a field first takes them with [`crate::body::upstream_headers`].
    pub async fn send(
        mut self,
        parts: &Parts,
        forwarding: Option<PendingForwarding<'_>>,
        body: &Bytes,
        limits: ResponseLimits,
        interim: Option<&Interim>,
        relay_fields: bool,
    ) -> Result<Response<ResponseBody>, ClientError> {
        // A HEAD answer's length describes no body here, so it goes through the map's rules.
        let relay_fields = relay_fields && parts.method != Method::HEAD;
        // A small body goes out with the head in one write; a large one is not copied.
        let inline = body.len() <= 16 * 1024;
        let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
        encode_request(&mut out, parts, forwarding, body);
        if inline {
            out.extend_from_slice(body);
        }
        self.io.write_all(&out).await.map_err(ClientError::Io)?;
        if !inline {
            self.io.write_all(body).await.map_err(ClientError::Io)?;
        }
        // A TLS session may hold the last record back until flushed (a socket's flush is a
        // no-op).
        self.io.flush().await.map_err(ClientError::Io)?;
        drop(out);
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            if !buf.is_empty()
                && let Some(head) = parse_response(&mut buf, limits, relay_fields)?
            {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    // This client never asks for an upgrade.
                    return Err(ClientError::Protocol("101 to a request without Upgrade"));
                }
                if head.status.is_informational() {
                    // 103 Early Hints and friends: relayed, and the final answer follows.
                    if let Some(interim) = interim {
                        interim.push(head.status, head.headers);
                    }
                    continue;
                }
                let (framing, reusable) = framing(&parts.method, &head)?;
                let mut headers = head.headers;
                if head.fields.transfer_encoding {
                    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, which an
                    // intermediary must remove before forwarding.
                    headers.remove(CONTENT_LENGTH);
                }
                let mut resp = Response::new(ResponseBody {
                    conn: Some(self),
                    buf,
                    framing,
                    reusable,
                    relayed: head.relayed,
                });
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = headers;
                return Ok(resp);
            }
            if buf.len() >= limits.max_head_bytes {
                return Err(limits.exceeded());
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            match tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut buf).await {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }
}

impl ResponseLimits {
    fn exceeded(self) -> ClientError {
        ClientError::HeadTooLarge {
            max_head_bytes: self.max_head_bytes,
            max_fields: self.max_fields,
        }
    }
}

/// The request head (and the framing of `body`) in HTTP/1.1 origin form.
fn encode_request(
    out: &mut Vec<u8>,
    parts: &Parts,
    forwarding: Option<PendingForwarding<'_>>,
    body: &Bytes,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Fields in the client's order: its Host is first when it sent it first (RFC 9110 7.2's
    // SHOULD); moving a rebuilt Host to the front would cost every request a lookup.
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(forwarding) = forwarding {
        forwarding.write_h1(out);
    }
    // The length comes from the bytes actually sent, never from the client's header.
    let needs_length =
        !body.is_empty() || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
}

struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// What the framing decision needs, noted while the fields were read (no lookups later).
    fields: FramingFields,
    /// The field lines kept as bytes, `headers` then being empty.
    relayed: Option<RelayedFields>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FramingFields {
    connection_close: bool,
    connection_keep_alive: bool,
    transfer_encoding: bool,
    codings: Codings,
    length: Option<u64>,
    bad_length: bool,
}

/// Parses a response head from the front of `buf`; `Ok(None)` when incomplete. With
/// `relay_fields`, a final answer framed by its length keeps its field lines as bytes when
/// [`RelayedFields::scan`] allows.
fn parse_response(
    buf: &mut BytesMut,
    limits: ResponseLimits,
    relay_fields: bool,
) -> Result<Option<ResponseHead>, ClientError> {
    // As for request heads: nothing zeroed per response (see `head::parse`).
    let mut spans: SmallVec<[Span; INLINE_FIELDS]> = SmallVec::new();
    let parsed = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
        let stack = limits.max_fields.min(STACK_FIELDS);
        match parse_into(buf, &mut headers[..stack], &mut spans)? {
            Parsed::TooMany if limits.max_fields > STACK_FIELDS => {
                // A head with more fields than the stack array holds, and a limit that allows it.
                let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> =
                    std::iter::repeat_with(MaybeUninit::uninit)
                        .take(limits.max_fields)
                        .collect();
                spans.clear();
                parse_into(buf, &mut heap, &mut spans)?
            }
            parsed => parsed,
        }
    };
    let (len, code, minor) = match parsed {
        Parsed::Complete { len, code, minor } => (len, code, minor),
        Parsed::Partial => return Ok(None),
        Parsed::TooMany => return Err(limits.exceeded()),
    };
    if len > limits.max_head_bytes {
        return Err(limits.exceeded());
    }
    let head = buf.split_to(len).freeze();
    // RFC 9110 15: status codes are 100-599; anything else has no class to fall back to.
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.as_u16() < 600)
        .ok_or(ClientError::Protocol("invalid status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // 1xx, 204 and 304 have no body whatever a length says: the map's rules frame them.
    if relay_fields
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
        && let Some(relayed) = RelayedFields::scan(&head, &spans)
    {
        return Ok(Some(ResponseHead {
            status,
            version,
            headers: HeaderMap::new(),
            fields: FramingFields {
                length: Some(relayed.length()),
                ..FramingFields::default()
            },
            relayed: Some(relayed),
        }));
    }
    let mut headers = super::spare::header_map(spans.len());
    let mut fields = FramingFields::default();
    for &((n0, n1), (v0, v1)) in &spans {
        let name = HeaderName::from_bytes(&head[n0..n1])
            .map_err(|_| ClientError::Protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| ClientError::Protocol("invalid header value"))?;
        let bytes = value.as_bytes();
        if name == CONNECTION {
            fields.connection_close |= lists_token(bytes, b"close");
            fields.connection_keep_alive |= lists_token(bytes, b"keep-alive");
        } else if name == TRANSFER_ENCODING {
            fields.transfer_encoding = true;
            fields.codings.note(bytes);
        } else if name == CONTENT_LENGTH {
            // One value, or a list of identical ones; each a plain decimal number.
            for item in bytes.split(|&b| b == b',') {
                match (plain_length(item.trim_ascii()), fields.length) {
                    (None, _) => fields.bad_length = true,
                    (Some(n), Some(l)) if n != l => fields.bad_length = true,
                    (Some(n), _) => fields.length = Some(n),
                }
            }
        }
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        fields,
        relayed: None,
    }))
}

/// What one parse of a response head found.
enum Parsed {
    Complete { len: usize, code: u16, minor: u8 },
    Partial,
    TooMany,
}

/// Parses `buf` with `headers` as the field array, noting each field's spans.
fn parse_into<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut SmallVec<[Span; INLINE_FIELDS]>,
) -> Result<Parsed, ClientError> {
    let mut resp = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    // RFC 9112 5.1: a proxy removes whitespace between a field name and the colon in a response
    // rather than refusing it; re-encoding the field does that.
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Ok(Parsed::TooMany),
        Err(_) => return Err(ClientError::Protocol("malformed response head")),
    };
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    spans.extend(
        resp.headers
            .iter()
            .map(|h| (span(h.name.as_bytes()), span(h.value))),
    );
    Ok(Parsed::Complete {
        len,
        code: resp.code.unwrap_or(0),
        minor: resp.version.unwrap_or(1),
    })
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// By length or chunked coding.
    Decoded(Decoder),
    /// By the end of the connection.
    Eof,
}

/// The body framing of a response (RFC 9112 section 6.3) and whether the connection can be
/// reused after it.
fn framing(method: &Method, head: &ResponseHead) -> Result<(Framing, bool), ClientError> {
    let f = head.fields;
    let keep_alive = match head.version {
        Version::HTTP_10 => f.connection_keep_alive,
        _ => !f.connection_close,
    };
    if *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Decoded(Decoder::Done), keep_alive));
    }
    if f.transfer_encoding {
        // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding is badly framed. Codings
        // other than one chunked would have to be decoded to re-frame the body, and forwarding
        // them without their Transfer-Encoding would corrupt it: 502 either way.
        if head.version == Version::HTTP_10 {
            return Err(ClientError::Protocol(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        return if f.codings.count == 1 && f.codings.last_chunked {
            // With a Content-Length beside it the message is suspect: decoded, never reused.
            Ok((
                Framing::Decoded(Decoder::ChunkSize),
                keep_alive && f.length.is_none() && !f.bad_length,
            ))
        } else {
            Err(ClientError::Protocol("unsupported transfer coding"))
        };
    }
    if f.bad_length {
        return Err(ClientError::Protocol(
            "invalid or conflicting content-length",
        ));
    }
    match f.length {
        Some(0) => Ok((Framing::Decoded(Decoder::Done), keep_alive)),
        Some(n) => Ok((Framing::Decoded(Decoder::Length(n)), keep_alive)),
        None => Ok((Framing::Eof, false)),
    }
}

/// A response body read straight from its upstream connection.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Connection>,
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    relayed: Option<RelayedFields>,
}

impl ResponseBody {
    /// The response's field lines, when they were kept as bytes (see [`Connection::send`]):
    /// the response's header map then holds none of them.
    pub fn take_relayed_fields(&mut self) -> Option<RelayedFields> {
        self.relayed.take()
    }

    /// The connection, once the body has been read to its end and the upstream keeps it open.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        let done = matches!(self.framing, Framing::Decoded(d) if d.is_done());
        if done && self.reusable && self.buf.is_empty() {
            let mut conn = self.conn.take()?;
            conn.buf = std::mem::take(&mut self.buf);
            Some(conn)
        } else {
            None
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.framing {
                Framing::Decoded(decoder) => {
                    match decoder.decode(&mut this.buf, MAX_CHUNK_LINES)? {
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::Trailers(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Decoded::End => return Poll::Ready(None),
                        Decoded::NeedMore => {}
                    }
                }
                Framing::Eof => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf
                    .reserve(READ_CHUNK.max(this.buf.capacity()).min(64 * 1024));
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut this.buf
            ))
            .map_err(ClientError::Io)?;
            if n == 0 {
                this.conn = None;
                if this.framing != Framing::Eof {
                    return Poll::Ready(Some(Err(ClientError::Closed)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Decoded(d) if d.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Decoded(d) => match d.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::new(),
            },
            Framing::Eof => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parse(text: &str) -> ResponseHead {
        parse_response(&mut BytesMut::from(text), ResponseLimits::default(), false)
            .unwrap()
            .unwrap()
    }

    fn try_parse(text: &str) -> Result<Option<ResponseHead>, ClientError> {
        parse_response(&mut BytesMut::from(text), ResponseLimits::default(), false)
    }

    #[test]
    fn requests_are_encoded_in_origin_form_with_their_real_length() {
        let req = Request::post("/kv/a?x=1")
            .header("host", "svc")
            .header("content-length", "999")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_request(&mut out, &parts, None, &Bytes::from_static(b"abc"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /kv/a?x=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\n"
        );
        let (parts, ()) = Request::get("/").body(()).unwrap().into_parts();
        let mut out = Vec::new();
        encode_request(&mut out, &parts, None, &Bytes::new());
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// Forwarding fields left to the sender go after the request's own fields and before the
    /// length, exactly as the same fields put in the header map would have been written.
    #[test]
    fn pending_forwarding_fields_are_written_as_the_map_would_have_held_them() {
        let forwarding = crate::headers::Forwarding::new("10.1.2.3:5000".parse().unwrap());
        for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            let (mut parts, ()) = Request::post("/a")
                .header("host", "svc")
                .body(())
                .unwrap()
                .into_parts();
            let pending = forwarding
                .apply_or_defer(&mut parts.headers, version, true)
                .expect("a request without forwarding fields defers them");
            assert_eq!(parts.headers.len(), 1, "the map is left alone");
            let mut deferred = Vec::new();
            encode_request(
                &mut deferred,
                &parts,
                Some(pending),
                &Bytes::from_static(b"x"),
            );

            let mut in_map = parts.clone();
            pending.apply(&mut in_map.headers);
            pending.apply(&mut in_map.headers);
            assert_eq!(
                in_map.headers.len(),
                5,
                "applying twice adds the fields once"
            );
            let mut direct = Vec::new();
            encode_request(&mut direct, &in_map, None, &Bytes::from_static(b"x"));
            assert_eq!(
                String::from_utf8(deferred).unwrap(),
                String::from_utf8(direct).unwrap(),
                "{version:?}"
            );
        }
        // A request that already carries one of them gets them in its map at once.
        let (mut parts, ()) = Request::get("/")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap()
            .into_parts();
        assert!(
            forwarding
                .apply_or_defer(&mut parts.headers, Version::HTTP_11, true)
                .is_none()
        );
        assert_eq!(parts.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = Method::GET;
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(
            framing(&get, &h).unwrap(),
            (Framing::Decoded(Decoder::Length(5)), true)
        );
        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        assert_eq!(
            framing(&get, &h).unwrap(),
            (Framing::Decoded(Decoder::ChunkSize), false)
        );
        let h = parse("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(framing(&get, &h).unwrap(), (Framing::Eof, false));
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(
            framing(&Method::HEAD, &h).unwrap().0,
            Framing::Decoded(Decoder::Done)
        );
        let h = parse("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(
            framing(&get, &h).unwrap().0,
            Framing::Decoded(Decoder::Done)
        );
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n");
        assert!(framing(&get, &h).is_err());
    }

    #[test]
    fn garbage_responses_are_protocol_errors() {
        assert!(try_parse("HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(try_parse("HTTP/1.1 600 Nope\r\n\r\n").is_err());
        assert!(try_parse("SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(try_parse("HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }

    /// RFC 9112 6.1 and 6.3: what a proxy must not forward as it came.
    #[test]
    fn suspect_framings_are_refused_or_repaired() {
        let get = Method::GET;
        // Transfer-Encoding with Content-Length: chunked wins, never reused.
        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n");
        assert_eq!(
            framing(&get, &h).unwrap(),
            (Framing::Decoded(Decoder::ChunkSize), false)
        );
        // Codings the sidecar would have to decode, or chunked not last: refused.
        for te in ["gzip", "gzip, chunked", "chunked, gzip"] {
            let h = parse(&format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n"
            ));
            assert!(framing(&get, &h).is_err(), "{te}");
        }
        // HTTP/1.0 with Transfer-Encoding is badly framed.
        let h = parse("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(framing(&get, &h).is_err());
        // A signed length is not a length; an agreeing list is one.
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n");
        assert!(framing(&get, &h).is_err());
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n");
        assert_eq!(
            framing(&get, &h).unwrap(),
            (Framing::Decoded(Decoder::Length(5)), true)
        );
        // Whitespace before the colon is removed, not refused (RFC 9112 5.1).
        let h = parse("HTTP/1.1 200 OK\r\nx-a : b\r\n\r\n");
        assert_eq!(h.headers["x-a"], "b");
    }

    /// Heads up to the limits parse (300 Set-Cookie fields with a raised field limit, 100 KiB
    /// by default); beyond them the error says so.
    #[test]
    fn large_heads_parse_up_to_the_limits() {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..250 {
            text.push_str(&format!("set-cookie: c{i}=v\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(
            parse(&text).headers.get_all("set-cookie").iter().count(),
            250
        );
        let mut more = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..300 {
            more.push_str(&format!("set-cookie: c{i}=v\r\n"));
        }
        more.push_str("\r\n");
        assert!(matches!(
            try_parse(&more),
            Err(ClientError::HeadTooLarge { .. })
        ));
        let raised = ResponseLimits {
            max_fields: 400,
            ..ResponseLimits::default()
        };
        let head = parse_response(&mut BytesMut::from(more.as_str()), raised, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 300);
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "v".repeat(100 * 1024)
        );
        assert_eq!(parse(&big).headers["x-big"].len(), 100 * 1024);
        let small = ResponseLimits {
            max_head_bytes: 64 * 1024,
            ..ResponseLimits::default()
        };
        assert!(matches!(
            parse_response(&mut BytesMut::from(big.as_str()), small, false),
            Err(ClientError::HeadTooLarge { .. })
        ));
    }
}
