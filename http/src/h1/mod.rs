//! The sidecar's own HTTP/1.1 server connection.
//!
//! Why not hyper's: a hyper HTTP/1 connection keeps its read and write buffers (8 KiB or more
//! each) for as long as the connection is open, so 10,000 idle keep-alive clients cost hundreds
//! of MiB. Here an idle connection holds no buffer at all: it waits for readability, allocates
//! a buffer for the request head, and releases it once the exchange is over, the way nginx and
//! HAProxy do. Owning the parser also puts the request-smuggling checks where the framing is
//! decided (`head`), instead of in a second parser watching hyper's bytes.
//!
//! One exchange, in order:
//!
//! 1. **idle**: wait for the first byte (no timeout beyond the keep-alive idle timeout; a drain
//!    closes idle connections at once);
//! 2. **head**: read and parse it within the header-read timeout; refuse bad ones with a
//!    complete answer and close (`head::HeadError`);
//! 3. **call**: hand the request to the request path; its body, if any, reads the socket
//!    directly (`body`) and hands the read side back when it ends; meanwhile answer `100
//!    Continue` when the body is first read and, for body-less requests, cancel the call when
//!    the client goes away;
//! 4. **respond**: head and the first ready body frames in one write, then the rest as it
//!    comes (`encode`);
//! 5. keep the connection for the next request, or close it (lingering briefly so that a
//!    client still sending does not get a reset instead of the answer).
//!
//! HTTP/2 (prior knowledge) is detected before this and served by hyper.

mod body;
pub mod client;
mod connection;
mod decode;
pub(crate) mod encode;
mod head;
mod relayed;
mod spare;

pub use self::relayed::RelayedFields;
pub use self::spare::give_header_map;

pub use self::body::{BodyError, RequestBody};
pub use self::connection::{PendingUpgrade, Settings, Upgraded, serve_connection};
pub use self::head::MAX_HEADERS;
