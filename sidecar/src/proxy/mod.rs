//! The request path: the sidecar's application behind the HTTP server of `datastream-http`
//! (routing, balancing, failover, forwarding, error responses).

pub mod error;
mod failover;
pub mod forward;

pub use datastream_http::ServerLimits;

pub use self::error::{ERROR_HEADER, ProxyError};
pub use self::forward::{ListenerKind, MAX_CONNECT_ATTEMPTS, ProxyApp};

/// The body of the sidecar's responses: upstream bodies complete through the balancer's
/// [`Completion`](datastream_lb::endpoint::Completion).
pub type ResponseBody = datastream_http::body::ResponseBody<datastream_lb::endpoint::Completion>;
