//! Request heads: parsed with `httparse`, then checked for everything that would make two
//! HTTP implementations disagree about where the request ends.
//!
//! A sidecar sits in front of arbitrary workloads, so it refuses (rather than resolves, as RFC
//! 9112 would allow) a request carrying both `Content-Length` and `Transfer-Encoding`, two
//! different lengths, a length that is not a plain decimal number, or a transfer coding other
//! than a single `chunked`: any intermediary that framed such a request differently would be
//! desynchronised from the sidecar (request smuggling). Such requests are answered and the
//! connection closed; they never reach a replica.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderName, TE, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use smallvec::SmallVec;

use super::super::headers::{Codings, lists_token, plain_length, valid_host};

/// Header fields accepted per request head by default (`--max-header-fields`; hyper accepts
/// 100), and the size of the stack array heads are parsed into.
pub const MAX_HEADERS: usize = 128;
/// Header fields whose positions are kept on the stack while a head is parsed; more spill to
/// the heap.
const INLINE_FIELDS: usize = 32;
/// Fields the request path may add before forwarding (`x-forwarded-for`, `forwarded`,
/// `x-forwarded-proto`, `via`, and a `Host` or a deadline): a map that regrew would rehash and
/// copy every field.
const FORWARDING_FIELDS: usize = 5;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub struct Head {
    /// The request without its body.
    pub request: Request<()>,
    /// Its body framing.
    pub framing: Framing,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub expect_continue: bool,
    /// Whether the client accepts trailers in a chunked response (`TE: trailers`).
    pub accepts_trailers: bool,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head is larger than allowed, or has too many fields.
    #[error("request header section too large")]
    TooLarge,
    /// The body framing is ambiguous (request smuggling).
    #[error("ambiguous message framing: {0}")]
    Ambiguous(&'static str),
    /// A transfer coding the sidecar does not implement.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// The request-target alone is longer than the sidecar parses (RFC 9112 section 3).
    #[error("request-target too long")]
    UriTooLong,
}

impl HeadError {
    /// The status to answer with.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed(_) | HeadError::Ambiguous(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// The `x-datastream-error` code.
    pub fn code(self) -> &'static str {
        match self {
            HeadError::Malformed(_) => "bad-request",
            HeadError::TooLarge => "header-too-large",
            HeadError::Ambiguous(_) => "ambiguous-framing",
            HeadError::UnsupportedCoding => "unsupported-transfer-coding",
            HeadError::UriTooLong => "uri-too-long",
        }
    }
}

/// Byte ranges of one header field within the head.
#[derive(Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses one request head from the front of `buf`. `Ok(None)`: incomplete, read more (unless
/// `buf` already holds `max_head` bytes, which is [`HeadError::TooLarge`]). On success the head's
/// bytes are split off `buf`; header values and the target share them without copying. More
/// than `max_fields` fields is [`HeadError::TooLarge`].
pub fn parse(
    buf: &mut BytesMut,
    max_head: usize,
    max_fields: usize,
) -> Result<Option<Head>, HeadError> {
    // Neither array is zeroed per request: httparse fills the uninitialised one, and the spans
    // stay inline for the usual few dozen fields.
    let mut fields: SmallVec<[Field; INLINE_FIELDS]> = SmallVec::new();
    let parsed = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        match parse_into(
            buf,
            &mut headers[..max_fields.min(MAX_HEADERS)],
            &mut fields,
        ) {
            Err(HeadError::TooLarge) if max_fields > MAX_HEADERS && buf.len() <= max_head => {
                // More fields than the stack array holds, and a limit that allows them.
                let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> =
                    std::iter::repeat_with(MaybeUninit::uninit)
                        .take(max_fields)
                        .collect();
                fields.clear();
                parse_into(buf, &mut heap, &mut fields)
            }
            parsed => parsed,
        }
    };
    let Some(RequestLine {
        len,
        method,
        target,
        minor,
    }) = parsed?
    else {
        return if buf.len() < max_head {
            Ok(None)
        } else if !buf.contains(&b'\n') {
            // Not even the request line fits: the target is what is too long.
            Err(HeadError::UriTooLong)
        } else {
            Err(HeadError::TooLarge)
        };
    };
    if len > max_head {
        let line = buf.iter().position(|&b| b == b'\n').unwrap_or(len);
        return Err(if line >= max_head {
            HeadError::UriTooLong
        } else {
            HeadError::TooLarge
        });
    }
    let head = buf.split_to(len).freeze();
    build(&head, method, target, minor, &fields).map(Some)
}

/// What one parse of a complete request head found besides its fields.
struct RequestLine {
    /// The head's length in bytes.
    len: usize,
    method: Method,
    /// The target's span.
    target: (usize, usize),
    /// The minor HTTP version.
    minor: u8,
}

/// One parse of `buf` with `headers` as the field array, or `None` while incomplete.
fn parse_into<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    fields: &mut SmallVec<[Field; INLINE_FIELDS]>,
) -> Result<Option<RequestLine>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("HTTP version")),
        Err(httparse::Error::Token | httparse::Error::Status) => {
            return Err(HeadError::Malformed("request line"));
        }
        Err(_) => return Err(HeadError::Malformed("header syntax")),
    };
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let span = |s: &[u8]| (offset(s), offset(s) + s.len());
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("method"))?;
    let target = span(req.path.unwrap_or_default().as_bytes());
    fields.extend(req.headers.iter().map(|h| Field {
        name: span(h.name.as_bytes()),
        value: span(h.value),
    }));
    Ok(Some(RequestLine {
        len,
        method,
        target,
        minor: req.version.unwrap_or(1),
    }))
}

fn build(
    head: &Bytes,
    method: Method,
    target: (usize, usize),
    minor: u8,
    fields: &[Field],
) -> Result<Head, HeadError> {
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let uri = target_uri(head, target, &method)?;
    // Room for the forwarding fields the request path adds, so that it does not regrow the map.
    let mut headers = super::spare::header_map(fields.len() + FORWARDING_FIELDS);
    // What the connection needs from the fields, noted as they go into the map: one pass of
    // cheap name comparisons instead of a hash lookup per field of interest afterwards.
    let mut seen = Seen::default();
    for f in fields {
        let name = HeaderName::from_bytes(&head[f.name.0..f.name.1])
            .map_err(|_| HeadError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(f.value.0..f.value.1))
            .map_err(|_| HeadError::Malformed("header value"))?;
        seen.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    let (framing, canonical_length) = seen.framing(version)?;
    if let (Framing::Length(n), false) = (framing, canonical_length) {
        // "5, 5" or repeated lines: forwarded as the one value they agree on (RFC 9110 8.6).
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    match (seen.hosts, seen.valid_host) {
        (2.., _) => return Err(HeadError::Ambiguous("more than one Host")),
        (1, false) => return Err(HeadError::Malformed("Host")),
        // RFC 9112 3.2: an HTTP/1.1 request without Host gets 400.
        (0, _) if version == Version::HTTP_11 => {
            return Err(HeadError::Malformed("missing Host"));
        }
        _ => {}
    }
    let keep_alive = match version {
        Version::HTTP_10 => seen.connection_keep_alive,
        _ => !seen.connection_close,
    };
    let expect_continue =
        version == Version::HTTP_11 && framing != Framing::Empty && seen.expect_continue;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
        accepts_trailers: seen.te_trailers,
    })
}

/// What a request head's fields say about its framing and its connection, gathered field by
/// field in the order received.
#[derive(Default)]
struct Seen {
    /// The one length every `Content-Length` item agrees on so far.
    length: Option<u64>,
    /// The first problem with the `Content-Length` fields, reported once every field has been
    /// read (a malformed name or value later in the head is reported first, as before).
    length_error: Option<HeadError>,
    /// `Content-Length` field lines.
    length_lines: u32,
    /// Whether the length is not one plain value on one line (it is then forwarded as the one
    /// value the items agree on, not as received).
    length_rewritten: bool,
    /// `Transfer-Encoding` field lines, and the codings they list.
    coding_lines: u32,
    codings: Codings,
    hosts: u32,
    /// Whether the (first) `Host` value is valid.
    valid_host: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    /// `Expect` field lines, and whether the first says `100-continue`.
    expects: u32,
    expect_continue: bool,
    te_trailers: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == HOST {
            self.hosts += 1;
            if self.hosts == 1 {
                self.valid_host = valid_host(value);
            }
        } else if *name == CONTENT_LENGTH {
            self.note_length(value);
        } else if *name == CONNECTION {
            self.connection_close |= lists_token(value, b"close");
            self.connection_keep_alive |= lists_token(value, b"keep-alive");
        } else if *name == TRANSFER_ENCODING {
            self.coding_lines += 1;
            self.codings.note(value);
        } else if *name == TE {
            self.te_trailers |= lists_token(value, b"trailers");
        } else if *name == EXPECT {
            self.expects += 1;
            if self.expects == 1 {
                self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
        }
    }

    fn note_length(&mut self, value: &[u8]) {
        self.length_lines += 1;
        self.length_rewritten |= self.length_lines > 1;
        // A list of identical values ("5, 5") is allowed; anything else is not.
        for item in value.split(|&b| b == b',') {
            if self.length_error.is_some() {
                return;
            }
            let trimmed = item.trim_ascii();
            self.length_rewritten |= trimmed.len() != item.len();
            let Some(n) = plain_length(trimmed) else {
                self.length_error = Some(HeadError::Malformed("content-length"));
                return;
            };
            if self.length.is_some_and(|l| l != n) {
                self.length_error = Some(HeadError::Ambiguous("conflicting content-length"));
                return;
            }
            self.length_rewritten |= self.length.is_some();
            self.length = Some(n);
        }
    }

    /// The body framing of the request (RFC 9112 section 6.3), refusing every ambiguity, and
    /// whether its `Content-Length` (if any) is already one plain value.
    fn framing(&self, version: Version) -> Result<(Framing, bool), HeadError> {
        if let Some(error) = self.length_error {
            return Err(error);
        }
        let canonical = !self.length_rewritten;
        if self.coding_lines == 0 {
            return Ok((
                match self.length {
                    None | Some(0) => Framing::Empty,
                    Some(n) => Framing::Length(n),
                },
                canonical,
            ));
        }
        if self.length.is_some() {
            return Err(HeadError::Ambiguous(
                "both content-length and transfer-encoding",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::Ambiguous("transfer-encoding in HTTP/1.0"));
        }
        // RFC 9112 6.3: a request whose last coding is not chunked cannot be framed (400);
        // chunked after another coding could be, but the sidecar would have to decode that
        // coding (501).
        if self.codings.count == 0 {
            Err(HeadError::Malformed("empty transfer-encoding"))
        } else if !self.codings.last_chunked {
            Err(HeadError::Malformed(
                "transfer-encoding does not end in chunked",
            ))
        } else if self.codings.count > 1 {
            Err(HeadError::UnsupportedCoding)
        } else {
            Ok((Framing::Chunked, true))
        }
    }
}

/// The request-target as a URI, checked against the request's method (RFC 9112 3.2): origin
/// form (`/path?query`) for any method, absolute form (`http://host/path`) for any method, the
/// asterisk only for OPTIONS, the authority form only for CONNECT (which the request path then
/// refuses).
///
/// Bytes that common clients send unencoded in a query (`"`, `<`, `>`, which RFC 3986 excludes
/// and the `http` crate's URI parser refuses) are percent-encoded, as a browser would send them;
/// a server that decodes the query sees the same characters.
fn target_uri(head: &Bytes, target: (usize, usize), method: &Method) -> Result<Uri, HeadError> {
    let raw = &head[target.0..target.1];
    if raw.len() > MAX_TARGET {
        return Err(HeadError::UriTooLong);
    }
    let uri = match Uri::from_maybe_shared(head.slice(target.0..target.1)) {
        Ok(uri) => uri,
        Err(_) => Uri::from_maybe_shared(Bytes::from(percent_encode_unsafe(raw)))
            .map_err(|_| HeadError::Malformed("request target"))?,
    };
    match raw.first() {
        Some(b'/') => {}
        Some(b'*') if raw.len() == 1 => {
            if *method != Method::OPTIONS {
                return Err(HeadError::Malformed(
                    "asterisk-form target of a method other than OPTIONS",
                ));
            }
        }
        _ if uri.scheme().is_some() => {
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(HeadError::Malformed("target scheme"));
            }
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                // RFC 9110 4.2.4: userinfo from an untrusted source is an error.
                return Err(HeadError::Malformed("userinfo in the target"));
            }
        }
        _ if *method == Method::CONNECT => {}
        _ => {
            return Err(HeadError::Malformed(
                "authority-form target of a method other than CONNECT",
            ));
        }
    }
    Ok(uri)
}

/// Longest request-target parsed (the `http` crate's limit); longer ones get 414.
const MAX_TARGET: usize = 65_534;

/// `raw` with every byte the `http` crate's URI parser refuses but HTTP clients send (the
/// printable ASCII outside RFC 3986's set) percent-encoded.
fn percent_encode_unsafe(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 16);
    for &b in raw {
        if matches!(
            b,
            b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'\\' | b'^'
        ) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests;
