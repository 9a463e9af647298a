//! HTTP/2 server connections on the `h2` crate: the sidecar's own accept loop, request bodies
//! with flow control, response bodies sent within the peer's windows, and interim (1xx)
//! responses, which hyper's HTTP/2 server cannot send (RFC 9110 15.2: a proxy forwards them;
//! and `100 Continue` to an HTTP/2 client that asked for it).

mod body;
mod server;

pub use self::body::RecvBody;
pub use self::server::{Settings, serve_connection};
