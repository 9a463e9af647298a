//! Request-smuggling guard for HTTP/1 connections.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` the way RFC
//! 9112 allows (chunked wins, the connection closes afterwards) and removes the evidence from
//! the header map, so the service cannot see it. A sidecar in front of arbitrary workloads must
//! instead refuse such a request outright and never forward it: a workload or an intermediary
//! that frames it differently would be desynchronised. This guard watches the bytes hyper reads
//! and tracks HTTP/1 message framing (heads, `Content-Length` bodies, chunked bodies) just far
//! enough to know where each request head starts; when a head has both framing headers (or
//! conflicting lengths) it records that request's sequence number, and the request path answers
//! it with 400 without forwarding it.
//!
//! Anything it does not understand (HTTP/2, an upgrade, an oversized or malformed head, which
//! hyper itself rejects) turns the guard into a pass-through: it never blocks or alters bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header fields parsed per head; more makes hyper reject the request anyway.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line tracked.
const MAX_CHUNK_LINE: usize = 1024;
const NONE: u64 = u64::MAX;

/// Which request of a connection (0-based) had ambiguous framing, shared with the service.
#[derive(Debug)]
pub struct Verdict {
    flagged: AtomicU64,
}

/// An I/O stream whose inbound HTTP/1 framing is checked.
#[derive(Debug)]
pub struct FramingGuard<S> {
    inner: S,
    tracker: Tracker,
    verdict: Arc<Verdict>,
}

#[derive(Debug)]
struct Tracker {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize {
        len: usize,
        size: u64,
        digits: bool,
        ext: bool,
    },
    ChunkData(u64),
    ChunkEnd(u8),
    Trailer {
        len: usize,
    },
    Passthrough,
}

// === impl Verdict ===

impl Verdict {
    /// A verdict with nothing flagged.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            flagged: AtomicU64::new(NONE),
        })
    }

    /// Whether request number `seq` of the connection must be refused.
    pub fn is_flagged(&self, seq: u64) -> bool {
        self.flagged.load(Ordering::Acquire) == seq
    }

    fn flag(&self, seq: u64) {
        let _ = self
            .flagged
            .compare_exchange(NONE, seq, Ordering::AcqRel, Ordering::Relaxed);
    }
}

// === impl FramingGuard ===

impl<S> FramingGuard<S> {
    /// Guards `inner`; heads longer than `max_head` are left to hyper (which answers 431).
    pub fn new(inner: S, verdict: Arc<Verdict>, max_head: usize) -> Self {
        Self {
            inner,
            tracker: Tracker {
                state: State::Head,
                head: Vec::new(),
                max_head,
                seq: 0,
            },
            verdict,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.tracker.state != State::Passthrough {
            this.tracker.feed(&buf.filled()[before..], &this.verdict);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === impl Tracker ===

impl Tracker {
    fn feed(&mut self, mut bytes: &[u8], verdict: &Verdict) {
        while !bytes.is_empty() {
            match self.state {
                State::Passthrough => return,
                State::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 section 2.2).
                    if self.head.is_empty() {
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    // Copy at most one head's worth: body bytes never enter the buffer.
                    let old = self.head.len();
                    let take = bytes
                        .len()
                        .min((self.max_head + 4).saturating_sub(old).max(1));
                    self.head.extend_from_slice(&bytes[..take]);
                    let start = old.saturating_sub(3);
                    match find_end(&self.head[start..]) {
                        Some(end) => {
                            let end = start + end;
                            self.finish_head(end, verdict);
                            bytes = &bytes[end - old..];
                            self.head.clear();
                            if self.head.capacity() > 16 * 1024 {
                                self.head.shrink_to(1024);
                            }
                        }
                        None => {
                            if self.head.len() > self.max_head || take < bytes.len() {
                                self.pass();
                            }
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == n {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd(left) => {
                    bytes = &bytes[1..];
                    self.state = if left > 1 {
                        State::ChunkEnd(left - 1)
                    } else {
                        State::ChunkSize {
                            len: 0,
                            size: 0,
                            digits: false,
                            ext: false,
                        }
                    };
                }
                State::ChunkSize {
                    len,
                    size,
                    digits,
                    ext,
                } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if len > MAX_CHUNK_LINE {
                        self.pass();
                        return;
                    }
                    self.state = match b {
                        b'\n' if !digits => {
                            self.pass();
                            return;
                        }
                        b'\n' if size == 0 => State::Trailer { len: 0 },
                        b'\n' => State::ChunkData(size),
                        b'\r' => State::ChunkSize {
                            len: len + 1,
                            size,
                            digits,
                            ext: true,
                        },
                        _ if ext => State::ChunkSize {
                            len: len + 1,
                            size,
                            digits,
                            ext,
                        },
                        b';' | b' ' | b'\t' => State::ChunkSize {
                            len: len + 1,
                            size,
                            digits,
                            ext: true,
                        },
                        _ => match (b as char).to_digit(16) {
                            Some(d) if size >> 60 == 0 => State::ChunkSize {
                                len: len + 1,
                                size: size * 16 + u64::from(d),
                                digits: true,
                                ext,
                            },
                            _ => {
                                self.pass();
                                return;
                            }
                        },
                    };
                }
                State::Trailer { len } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.state = match b {
                        b'\n' if len == 0 => State::Head,
                        b'\n' => State::Trailer { len: 0 },
                        b'\r' => State::Trailer { len },
                        _ if len > self.max_head => {
                            self.pass();
                            return;
                        }
                        _ => State::Trailer { len: len + 1 },
                    };
                }
            }
        }
    }

    /// Decides the framing of the head in `self.head[..end]`.
    fn finish_head(&mut self, end: usize, verdict: &Verdict) {
        let seq = self.seq;
        self.seq += 1;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&self.head[..end]),
            Ok(httparse::Status::Complete(_))
        ) {
            // hyper answers 400 and closes; nothing more to track.
            self.pass();
            return;
        }
        let mut length: Option<u64> = None;
        let mut conflicting = false;
        let mut te = false;
        let mut chunked = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for v in h.value.split(|b| *b == b',') {
                    let parsed = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    match (parsed, length) {
                        (None, _) => conflicting = true,
                        (Some(n), Some(prev)) if n != prev => conflicting = true,
                        (Some(n), _) => length = Some(n),
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if conflicting || (te && length.is_some()) {
            verdict.flag(seq);
            self.pass();
            return;
        }
        self.state = if upgrade || (te && !chunked) {
            // A tunnel follows, or hyper refuses the request: stop tracking.
            State::Passthrough
        } else if te {
            State::ChunkSize {
                len: 0,
                size: 0,
                digits: false,
                ext: false,
            }
        } else {
            match length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head,
            }
        };
    }

    fn pass(&mut self) {
        self.state = State::Passthrough;
        self.head = Vec::new();
    }
}

/// Index just past the first `\r\n\r\n` (or bare `\n\n`) in `buf`.
fn find_end(buf: &[u8]) -> Option<usize> {
    for i in 0..buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Arc<Verdict>, Tracker) {
        let verdict = Verdict::new();
        let mut t = Tracker {
            state: State::Head,
            head: Vec::new(),
            max_head: 8192,
            seq: 0,
        };
        for c in chunks {
            t.feed(c, &verdict);
        }
        (verdict, t)
    }

    #[test]
    fn flags_content_length_with_transfer_encoding() {
        let (v, _) = run(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]);
        assert!(v.is_flagged(0));
    }

    #[test]
    fn tracks_pipelined_bodies_to_the_smuggled_request() {
        let (v, t) = run(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab",
            b"cGET /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        ]);
        assert!(v.is_flagged(2), "{t:?}");
        assert!(!v.is_flagged(0) && !v.is_flagged(1));
    }

    #[test]
    fn flags_conflicting_lengths_and_ignores_h2() {
        let (v, _) = run(&[b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]);
        assert!(v.is_flagged(0));
        let (v, t) = run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(!v.is_flagged(0));
        assert_eq!(t.state, State::Passthrough);
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_answer() {
        let msg: &[u8] = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPUT / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunks: Vec<&[u8]> = msg.chunks(1).collect();
        let (v, _) = run(&chunks);
        assert!(v.is_flagged(2));
    }
}
