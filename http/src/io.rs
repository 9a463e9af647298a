//! Connection transports: a plain TCP socket, or any stream wrapped around one (TLS), behind one
//! type, so that the HTTP/1 server, the own HTTP/1 client and HTTP/2 serve both.
//!
//! The plain socket stays a variant of its own, not a boxed trait object: the HTTP/1 connections
//! use what only a socket offers (readiness without reading, `peek`, non-blocking reads) to keep
//! idle connections free of buffers and to tell a closed connection without a system call. A
//! wrapped stream gets the same operations emulated through `poll_read`: TLS buffers records
//! itself, and the cost is a branch per call on the plain path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A stream a transport can be wrapped in (a TLS session over the socket).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// A connection's byte stream.
pub enum Transport {
    /// A plain TCP socket.
    Tcp(TcpStream),
    /// A stream over a socket (TLS), boxed.
    Wrapped(Box<dyn Duplex>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Transport::Wrapped(_) => f.write_str("Wrapped"),
        }
    }
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Self {
        Transport::Tcp(stream)
    }
}

impl Transport {
    /// Splits into halves that can be used from different places at once.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Transport::Wrapped(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Wrapped(r), WriteHalf::Wrapped(w))
            }
        }
    }

    /// Joins halves from [`Self::into_split`] again; `None` when they are of different
    /// connections.
    pub fn reunite(read: ReadHalf, write: WriteHalf) -> Option<Self> {
        match (read, write) {
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => r.reunite(w).ok().map(Transport::Tcp),
            (ReadHalf::Wrapped(r), WriteHalf::Wrapped(w)) if r.is_pair_of(&w) => {
                Some(Transport::Wrapped(r.unsplit(w)))
            }
            _ => None,
        }
    }

    /// Whether an idle connection is still open and has received nothing, judged without
    /// waiting: a socket through its readiness (no system call while nothing arrived), a wrapped
    /// stream through one non-blocking read (anything read, data or the end, means it cannot
    /// carry another request).
    pub fn is_idle_open(&mut self) -> bool {
        match self {
            Transport::Tcp(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                match s.poll_read_ready(&mut cx) {
                    Poll::Pending => true,
                    Poll::Ready(Err(_)) => false,
                    Poll::Ready(Ok(())) => {
                        let mut byte = [0u8; 1];
                        matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                    }
                }
            }
            Transport::Wrapped(s) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                let mut cx = Context::from_waker(Waker::noop());
                matches!(Pin::new(s).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }
}

impl AsyncRead for Transport {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Wrapped(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Wrapped(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Wrapped(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Wrapped(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Wrapped(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Wrapped(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The read side of a [`Transport`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Of a socket.
    Tcp(OwnedReadHalf),
    /// Of a wrapped stream.
    Wrapped(tokio::io::ReadHalf<Box<dyn Duplex>>),
}

impl std::fmt::Debug for dyn Duplex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Duplex")
    }
}

impl ReadHalf {
    /// Waits until the connection has something to read (or ended). A socket waits for
    /// readiness and reads nothing, so an idle connection holds no buffer; a wrapped stream can
    /// only wait by reading, into `buf`. Either way the next [`Self::try_read_buf`] or read
    /// returns what arrived, and a read of 0 bytes is the end.
    pub async fn wait_readable(&mut self, buf: &mut BytesMut, reserve: usize) -> io::Result<()> {
        match self {
            ReadHalf::Tcp(r) => r.readable().await,
            ReadHalf::Wrapped(r) => {
                buf.reserve(reserve);
                match r.read_buf(buf).await? {
                    0 => Err(io::ErrorKind::UnexpectedEof.into()),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    ///
    /// A socket's read that returns less than the buffer had room for emptied its receive
    /// queue, and its readiness is cleared then, as tokio's own `poll_read` does: otherwise
    /// the next wait for a request would find the readiness of this one still set and pay a
    /// `recv` that fails with `EAGAIN` (one per keep-alive request). The clear is tokio's
    /// race-free one: it is skipped when the reactor recorded an edge since the readiness was
    /// read, just before the read.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => {
                let socket: &TcpStream = r.as_ref();
                let room = buf.capacity() - buf.len();
                let mut read = None;
                let cleared = socket.try_io(tokio::io::Interest::READABLE, || {
                    let n = socket.try_read_buf(buf)?;
                    read = Some(n);
                    if n > 0 && n < room {
                        // Tells `try_io` to clear the readiness it read before the call.
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(n)
                    }
                });
                match (cleared, read) {
                    (Ok(n), _) => Ok(n),
                    (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
                    (Err(e), _) => Err(e),
                }
            }
            ReadHalf::Wrapped(r) => {
                let mut cx = Context::from_waker(Waker::noop());
                match tokio_util::io::poll_read_buf(Pin::new(r), &mut cx, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Resolves to true when the peer closes its side (or the connection fails), false when it
    /// sends more. A socket peeks; a wrapped stream reads what arrived into `buf`, where the
    /// connection will find it.
    pub async fn closed_or_more(&mut self, buf: &mut BytesMut) -> bool {
        match self {
            ReadHalf::Tcp(r) => {
                let mut byte = [0u8; 1];
                !matches!(r.peek(&mut byte).await, Ok(n) if n > 0)
            }
            ReadHalf::Wrapped(r) => {
                buf.reserve(1024);
                !matches!(r.read_buf(buf).await, Ok(n) if n > 0)
            }
        }
    }
}

impl AsyncRead for ReadHalf {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Wrapped(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The write side of a [`Transport`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Of a socket.
    Tcp(OwnedWriteHalf),
    /// Of a wrapped stream.
    Wrapped(tokio::io::WriteHalf<Box<dyn Duplex>>),
}

impl AsyncWrite for WriteHalf {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Wrapped(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Wrapped(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Wrapped(w) => w.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Wrapped(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Wrapped(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;

    /// A short read clears the socket's readiness (no `recv` failing with `EAGAIN` is needed
    /// before the next wait), and data that arrives later makes it readable again.
    #[tokio::test]
    async fn a_short_read_clears_readiness_and_later_data_sets_it_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut read, _write) = Transport::Tcp(server).into_split();

        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = BytesMut::with_capacity(4096);
        read.wait_readable(&mut buf, 4096).await.unwrap();
        assert_eq!(read.try_read_buf(&mut buf).unwrap(), 18);
        let ReadHalf::Tcp(half) = &read else {
            panic!("a socket")
        };
        assert!(
            half.readable().now_or_never().is_none(),
            "the short read cleared the readiness"
        );

        client.write_all(b"more").await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read.wait_readable(&mut buf, 0),
        )
        .await
        .expect("later data makes the socket readable again")
        .unwrap();
        assert_eq!(read.try_read_buf(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\nmore");
        assert_eq!(
            read.try_read_buf(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
