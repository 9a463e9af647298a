//! The seam between the HTTP server and the application behind a listener (the shape of
//! Pingora's `HttpServerApp`): the server owns connections, protocol detection, HTTP/1 framing
//! and HTTP/2, and hands every request to [`HttpServerApp::handle`]; the application decides
//! the answer. The server therefore depends on no application type, and the request path is
//! one monomorphised call, neither boxed nor dynamic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};

use super::body::ClientBody;
use super::h1::PendingUpgrade;
use super::headers::Forwarding;

/// What the application learns about the client connection of a request.
#[derive(Debug)]
pub struct ConnMeta {
    /// The client's address.
    pub client: SocketAddr,
    /// The client's forwarding-header entries.
    pub forwarding: Forwarding,
}

/// The application behind a listener: one value per listener, shared by its connections.
pub trait HttpServerApp: Send + Sync + 'static {
    /// Body of the application's responses.
    type Body: http_body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static>
        + Send
        + Unpin
        + 'static;

    /// Answers one request; errors are answers too. `upgrade` is the client side of a
    /// protocol switch, for HTTP/1 requests that ask for one.
    fn handle(
        self: Arc<Self>,
        meta: Arc<ConnMeta>,
        req: Request<ClientBody>,
        upgrade: Option<PendingUpgrade>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;
}
