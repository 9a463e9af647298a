//! The body of an HTTP/1 request, streamed straight from the client connection.
//!
//! While a request has a body, the body owns the connection's read side: whoever forwards it
//! (an upstream connection task) reads the socket directly, with no channel or copy in between.
//! When the body ends it hands the read side back to the connection, which can then read the
//! next request; a body dropped before its end hands it back as abandoned, and the connection
//! closes after the response, since the rest of that body is still in the way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

use super::decode::{DecodeError, Decoded, Decoder};

/// Read-buffer growth step while a body streams.
const READ_CHUNK: usize = 16 * 1024;

/// The read side of a client connection with the bytes read but not yet consumed.
#[derive(Debug)]
pub struct Reader {
    /// The connection's read half.
    pub io: crate::io::ReadHalf,
    /// Bytes read ahead of what has been parsed.
    pub buf: BytesMut,
}

/// How a body gave the read side back.
#[derive(Debug)]
pub enum BodyEnd {
    /// Read to its end: the connection can carry another request.
    Complete(Reader),
    /// Dropped early or failed: unread body bytes may follow, so the connection must close.
    Abandoned(Option<Reader>),
}

/// Reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The chunked coding was malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The socket failed.
    #[error("reading the request body failed")]
    Io(#[source] io::Error),
    /// The client closed the connection before the end of the body.
    #[error("the client closed the connection before the end of the body")]
    Incomplete,
}

/// A streaming HTTP/1 request body.
#[derive(Debug)]
pub struct RequestBody {
    reader: Option<Reader>,
    decoder: Decoder,
    max_trailers: usize,
    /// Fired on the first read, so the connection answers `100 Continue`.
    wants_continue: Option<oneshot::Sender<()>>,
    ended: Option<oneshot::Sender<BodyEnd>>,
}

impl RequestBody {
    /// A body decoded by `decoder` from `reader`; `ended` receives the read side back.
    pub fn new(
        reader: Reader,
        decoder: Decoder,
        max_trailers: usize,
        wants_continue: Option<oneshot::Sender<()>>,
        ended: oneshot::Sender<BodyEnd>,
    ) -> Self {
        Self {
            reader: Some(reader),
            decoder,
            max_trailers,
            wants_continue,
            ended: Some(ended),
        }
    }

    fn end(&mut self, complete: bool) {
        let reader = self.reader.take();
        if let Some(tx) = self.ended.take() {
            let end = match reader {
                Some(r) if complete => BodyEnd::Complete(r),
                other => BodyEnd::Abandoned(other),
            };
            let _ = tx.send(end);
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.end(false);
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(tx) = this.wants_continue.take() {
            let _ = tx.send(());
        }
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut reader.buf, this.max_trailers) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.end(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.end(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.end(true);
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {
                    if reader.buf.capacity() - reader.buf.len() < 1024 {
                        reader.buf.reserve(READ_CHUNK);
                    }
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut reader.io),
                        cx,
                        &mut reader.buf
                    ));
                    match read {
                        Ok(0) => return this.fail(BodyError::Incomplete),
                        Ok(_) => {}
                        Err(e) => return this.fail(BodyError::Io(e)),
                    }
                }
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let complete = self.decoder.is_done();
        self.end(complete);
    }
}
