//! Response encoding: the status line and header section, and the framing of the body.
//!
//! Framing is decided once, from the response head and what the body says about its size: a
//! known length is sent as `Content-Length` (so a keep-alive client needs no chunk parsing for
//! the common small answer), an unknown one as chunked for HTTP/1.1 clients and as
//! close-delimited for HTTP/1.0 ones.

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::SizeHint;

use super::super::headers::{lists_token, plain_length};
use super::relayed::RelayedFields;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: this many bytes remain.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    Eof,
}

/// The response body did not match its declared length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("response body does not match its content-length")]
pub struct LengthMismatch;

/// What the encoder knows about the request being answered.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The client's HTTP version.
    pub version: Version,
    /// Whether the connection is to be kept open after this response (so far).
    pub keep_alive: bool,
    /// Whether the client accepts trailers (`TE: trailers`) and the body may end with some
    /// although its length is known: the body then goes chunked, the only coding that carries
    /// trailers.
    pub trailers: bool,
}

/// Writes the response head into `out` and returns the body framing and whether the connection
/// must close after the response. `relayed`: field lines kept as bytes, written after the
/// map's fields; their `Content-Length` is the declared length.
pub fn head(
    out: &mut Vec<u8>,
    parts: &Parts,
    size: &SizeHint,
    ended: bool,
    ex: Exchange<'_>,
    relayed: Option<&RelayedFields>,
) -> (Framing, bool) {
    let status = parts.status;
    let headers = &parts.headers;
    // One pass over the fields instead of a hash lookup per field of interest.
    let (mut says_close, mut declared, mut has_date) = (false, None, false);
    // The received value, when it is the plain number the framing uses: copied, not formatted.
    let mut declared_text: Option<&[u8]> = None;
    for (name, value) in headers {
        if name == CONNECTION {
            says_close |= lists_token(value.as_bytes(), b"close");
        } else if name == CONTENT_LENGTH {
            declared = plain_length(value.as_bytes());
            declared_text = declared.map(|_| value.as_bytes());
        } else if name == DATE {
            has_date = true;
        }
    }
    if let Some(relayed) = relayed {
        has_date |= relayed.has_date();
        declared = Some(relayed.length());
        declared_text = None;
    }
    let mut keep_alive = ex.keep_alive && !says_close;
    let bodyless = *ex.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // The length on the wire is always the encoder's own, written once: a received field may be
    // a list ("5, 5"), carry a sign, or contradict the framing (RFC 9110 8.6).
    let framing = if bodyless {
        Framing::None
    } else if ex.trailers && ex.version == Version::HTTP_11 && !ended {
        Framing::Chunked
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if ended {
        Framing::Length(0)
    } else if let Some(n) = size.exact() {
        Framing::Length(n)
    } else if ex.version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Eof
    };
    let length = match framing {
        Framing::Length(n) => Some(n),
        // A HEAD or 304 answer may say what a GET would have got; 1xx and 204 must not.
        Framing::None if !status.is_informational() && status != StatusCode::NO_CONTENT => declared,
        _ => None,
    };

    status_line(out, status);
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The relayed `Content-Length` line goes out as it came when it is the length sent.
    let length = match relayed {
        Some(relayed) => {
            let as_received = length == Some(relayed.length());
            relayed.write(out, as_received);
            length.filter(|_| !as_received)
        }
        None => length,
    };
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        match declared_text.filter(|_| declared == Some(n)) {
            Some(text) => out.extend_from_slice(text),
            None => push_decimal(out, n),
        }
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        with_date_line(|line| out.extend_from_slice(line));
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive && !says_close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && ex.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    (framing, !keep_alive)
}

/// Appends the status line; the common ones are one copy of a constant.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    let line: &[u8] = match status.as_u16() {
        200 => b"HTTP/1.1 200 OK\r\n",
        201 => b"HTTP/1.1 201 Created\r\n",
        204 => b"HTTP/1.1 204 No Content\r\n",
        304 => b"HTTP/1.1 304 Not Modified\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\n",
        500 => b"HTTP/1.1 500 Internal Server Error\r\n",
        502 => b"HTTP/1.1 502 Bad Gateway\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\n",
        _ => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
            return;
        }
    };
    out.extend_from_slice(line);
}

/// Appends `n` in decimal (without the formatting machinery: this runs on most responses).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes an interim (1xx) response head.
pub fn interim(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    status_line(out, status);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the framing before a data frame of `len` bytes, checking it against a declared
/// length.
pub fn data_prefix(
    out: &mut Vec<u8>,
    framing: &mut Framing,
    len: usize,
) -> Result<(), LengthMismatch> {
    match framing {
        Framing::Length(remaining) => {
            *remaining = remaining.checked_sub(len as u64).ok_or(LengthMismatch)?;
        }
        Framing::Chunked if len > 0 => {
            let _ = write!(out, "{len:x}\r\n");
        }
        Framing::None | Framing::Chunked | Framing::Eof => {}
    }
    Ok(())
}

/// Appends the framing after a data frame.
pub fn data_suffix(out: &mut Vec<u8>, framing: Framing, len: usize) {
    if framing == Framing::Chunked && len > 0 {
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the end of the body (the last chunk and any trailers).
pub fn finish(
    out: &mut Vec<u8>,
    framing: Framing,
    trailers: Option<&HeaderMap>,
) -> Result<(), LengthMismatch> {
    match framing {
        Framing::Length(0) | Framing::None | Framing::Eof => Ok(()),
        Framing::Length(_) => Err(LengthMismatch),
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.into_iter().flatten() {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            Ok(())
        }
    }
}

/// A complete local answer that closes the connection (for requests refused before routing).
pub fn refusal(status: StatusCode, code: &str, message: &str) -> Bytes {
    let mut out = Vec::with_capacity(256);
    let body = format!("{message}\n");
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nx-datastream-error: {code}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    with_date_line(|line| out.extend_from_slice(line));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Bytes::from(out)
}

/// Where the date starts in the `Date` line, and its length (an IMF-fixdate).
const DATE_AT: usize = b"date: ".len();
const DATE_LEN: usize = 29;
/// `date: `, the date and CRLF.
const DATE_LINE: usize = DATE_AT + DATE_LEN + 2;

thread_local! {
    /// The `Date` field line and the second it was formatted for: formatting costs more than
    /// the rest of a small response head.
    static DATE_CACHE: RefCell<(u64, [u8; DATE_LINE])> =
        const { RefCell::new((u64::MAX, *b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n")) };
}

/// The current date as a `Date` field value (from the same per-second cache).
pub(crate) fn date_value() -> http::HeaderValue {
    let mut value = None;
    with_date_line(|line| {
        value = http::HeaderValue::from_bytes(&line[DATE_AT..DATE_AT + DATE_LEN]).ok();
    });
    value.unwrap_or_else(|| http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// Calls `f` with the current `Date` field line, CRLF included.
fn with_date_line(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == DATE_LEN {
                cache.1[DATE_AT..DATE_AT + DATE_LEN].copy_from_slice(formatted.as_bytes());
                cache.0 = secs;
            }
        }
        f(&cache.1);
    });
}

#[cfg(test)]
mod tests;
