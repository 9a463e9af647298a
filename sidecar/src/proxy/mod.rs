//! The proxy: listeners, the request path, bodies, header rewriting and error responses.

pub mod body;
pub mod error;
mod failover;
pub mod forward;
pub mod h1;
pub mod headers;
mod rewind;
pub mod server;

pub use self::error::{ERROR_HEADER, ProxyError};
pub use self::forward::{ConnMeta, ListenerKind, MAX_CONNECT_ATTEMPTS};
pub use self::server::ServerLimits;
