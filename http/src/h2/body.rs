//! An HTTP/2 request body as it arrives, and a response body on its way out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use crate::app::Interim;

/// The body of a request received on an HTTP/2 stream. Every data frame read gives its bytes
/// back to the peer's flow-control window, so a client streaming a large body is paced by the
/// reader (the upstream), not stopped by a full window.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// Exactly how long, when the request said so.
    length: Option<u64>,
    /// `100 Continue` to send when the body is first read (`Expect: 100-continue`).
    wants_continue: Option<Arc<Interim>>,
}

impl RecvBody {
    pub(super) fn new(
        recv: RecvStream,
        length: Option<u64>,
        wants_continue: Option<Arc<Interim>>,
    ) -> Self {
        Self {
            recv,
            data_done: false,
            length,
            wants_continue,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if let Some(interim) = this.wants_continue.take() {
            // The request path wants the body: the client may send it now.
            interim.push_continue();
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Read, so the peer may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = this.length.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Why sending a response body stopped early.
#[derive(Debug)]
pub(super) enum SendError {
    /// The client reset the stream (it cancelled the request).
    Reset(h2::Reason),
    /// The stream or the connection failed.
    H2(h2::Error),
    /// The response body failed (the upstream broke off): the stream is reset.
    Body,
}

/// Sends `body` on `tx`, each data frame within the flow-control window the client grants,
/// then its trailers or the end of the stream.
pub(super) async fn send_body<B>(mut body: B, mut tx: SendStream<Bytes>) -> Result<(), SendError>
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(reset) = tx.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => SendError::Reset(reason),
                    Err(e) => SendError::H2(e),
                }));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => return tx.send_data(Bytes::new(), true).map_err(SendError::H2),
            Some(Err(_)) => {
                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(SendError::Body);
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return tx.send_trailers(trailers).map_err(SendError::H2);
                }
                continue;
            }
        };
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| {
                if tx.capacity() > 0 {
                    return Poll::Ready(Ok(tx.capacity()));
                }
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Err(SendError::H2(e))),
                    // The stream closed: the client reset it.
                    Poll::Ready(None) => Poll::Ready(Err(SendError::Reset(h2::Reason::CANCEL))),
                    Poll::Pending => match tx.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => Poll::Ready(Err(SendError::Reset(reason))),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(SendError::H2(e))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            })
            .await?;
            let chunk = data.split_to(granted.min(data.len()));
            let end = data.is_empty() && body.is_end_stream();
            tx.send_data(chunk, end).map_err(SendError::H2)?;
            if end {
                return Ok(());
            }
        }
    }
}
