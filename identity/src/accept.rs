//! Accepting peer connections: TLS only, and only from the identities the listener allows.
//!
//! A plaintext client is told apart from a failed handshake by its first byte (a TLS record starts
//! with 22, the handshake content type), so the refusal metric can say which it was.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::spiffe::WorkloadId;
use crate::verify::{Refusal, identity_of};

/// First byte of a TLS record carrying a handshake message.
pub const TLS_HANDSHAKE_RECORD: u8 = 22;

/// An accepted peer: the TLS stream and the identity its certificate proved.
#[derive(Debug)]
pub struct AcceptedPeer<IO> {
    /// The decrypted stream.
    pub stream: TlsStream<IO>,
    /// The peer's verified identity.
    pub identity: WorkloadId,
    /// The negotiated application protocol (`h2` or `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
}

/// Completes the TLS handshake of a TCP connection, refusing plaintext clients and any peer the
/// acceptor's verifier refuses, with the reason.
pub async fn accept_peer(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<AcceptedPeer<TcpStream>, Refusal> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(1) => return Err(Refusal::Plaintext),
        _ => return Err(Refusal::Handshake),
    }
    handshake(acceptor, tcp).await
}

/// The handshake part of [`accept_peer`], for any stream.
pub async fn handshake<IO>(acceptor: &TlsAcceptor, io: IO) -> Result<AcceptedPeer<IO>, Refusal>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(io).await.map_err(|e| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Refusal::of)
            .unwrap_or(Refusal::Handshake)
    })?;
    let (_, session) = stream.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(Refusal::NoCertificate)?;
    // The verifier checked this identity already; reading it again gives it to the caller.
    let identity = identity_of(leaf)?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Ok(AcceptedPeer {
        stream,
        identity,
        alpn,
    })
}
