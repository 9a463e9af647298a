//! The sidecar's HTTP layer: everything about speaking HTTP, nothing about where a request goes.
//!
//! - [`server`]: listeners with a connection cap, HTTP/2 prior knowledge told from HTTP/1 by
//!   the first bytes, graceful drain; every request goes to an [`HttpServerApp`].
//! - [`h1`]: the HTTP/1.1 codec (heads, framing, chunked bodies, trailers), the server
//!   connection and the upstream client connection.
//! - [`h2`]: HTTP/2 server connections on the `h2` crate (interim responses included).
//! - [`body`]: request and response bodies as enums, not boxed trait objects; a streamed
//!   upstream response completes through a [`body::BodyCompletion`] its creator supplies.
//! - [`headers`]: hop-by-hop rules and forwarding headers.
//! - [`io`]: connection transports: a plain socket, or a stream (TLS) wrapped around one.
//! - [`pool`]: idle upstream connections per address (own HTTP/1 client, hyper HTTP/1 and
//!   HTTP/2).
//! - [`stream`]: when a request body ended, and the stream idle timeout.
//! - [`metrics`]: connection and local-error families, registered by the owner of the registry.
//!
//! It depends on no other crate of the workspace: the application sees requests, never the
//! other way round.

pub mod app;
pub mod body;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod io;
pub mod metrics;
pub mod pool;
mod rewind;
pub mod server;
pub mod stream;

pub use self::app::{BodyHints, ConnMeta, HttpServerApp, Interim};
pub use self::rewind::Rewind;
pub use self::server::ServerLimits;
