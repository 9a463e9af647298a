//! One HTTP/2 server connection: the accept loop and the exchange of each stream.

use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::header::{CONTENT_LENGTH, DATE, EXPECT, HeaderValue};
use http::{Request, Response};
use http_body::Body as _;
use tokio::sync::watch;

use super::body::{RecvBody, SendError, send_body};
use crate::app::{ConnMeta, HttpServerApp, Interim};
use crate::body::ClientBody;
use crate::headers::strip_hop_by_hop;
use crate::rewind::Rewind;

/// Each stream's flow-control window, and the connection's: what a client may send before the
/// request path reads it (hyper's defaults).
const WINDOW: u32 = 1024 * 1024;
/// Largest frame the sidecar accepts (the protocol's default).
const MAX_FRAME: u32 = 16 * 1024;
/// Response bytes buffered per stream before the body is polled again.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client may reset by error before the connection is closed (a reset flood).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Limits of one HTTP/2 connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest request header list (RFC 9113 6.5.2); larger ones are refused.
    pub max_header_list_size: u32,
    /// Streams open at once.
    pub max_concurrent_streams: u32,
}

/// Serves an HTTP/2 connection whose client preface is at the front of `io`, until the client
/// leaves, an error, or `close` turns true (then it sends GOAWAY and lets the open streams
/// finish).
pub async fn serve_connection<A: HttpServerApp>(
    io: Rewind<crate::io::Transport>,
    app: Arc<A>,
    meta: Arc<ConnMeta>,
    settings: Settings,
    mut close: watch::Receiver<bool>,
) -> Result<(), h2::Error> {
    let mut conn = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io)
        .await?;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            biased;
            () = crate::server::closing(&mut close), if !draining => {
                // GOAWAY; accept() then ends once the open streams are done.
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
            next = conn.accept() => next,
        };
        match next {
            Some(Ok((req, respond))) => {
                let (app, meta) = (Arc::clone(&app), Arc::clone(&meta));
                tokio::spawn(serve_stream(app, meta, req, respond));
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// Sends interim answers on a stream; false when the stream is gone.
fn send_interim(
    respond: &mut SendResponse<Bytes>,
    heads: Vec<(http::StatusCode, http::HeaderMap)>,
) -> bool {
    for (status, mut headers) in heads {
        strip_hop_by_hop(&mut headers, false, false);
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = headers;
        if respond.send_informational(head).is_err() {
            return false;
        }
    }
    true
}

/// One stream: the request to the application, interim answers and the final one back, the
/// response body within the client's windows. A stream the client resets is dropped, which
/// cancels the request path's work (and its upstream request).
async fn serve_stream<A: HttpServerApp>(
    app: Arc<A>,
    meta: Arc<ConnMeta>,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let interim = Arc::new(Interim::default());
    interim.set_open(true);
    let (parts, recv) = req.into_parts();
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let wants_continue = (!recv.is_end_stream()
        && parts
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")))
    .then(|| Arc::clone(&interim));
    let body = ClientBody::H2(RecvBody::new(recv, length, wants_continue));
    let req = Request::from_parts(parts, body);
    let mut call = std::pin::pin!(A::handle(app, meta, req, None, Some(Arc::clone(&interim))));
    let mut registered = false;
    let resp = loop {
        tokio::select! {
            biased;
            resp = &mut call => break resp,
            heads = std::future::poll_fn(|cx| interim.poll_take(cx, &mut registered)) => {
                if !send_interim(&mut respond, heads) {
                    return;
                }
            }
            reset = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                tracing::debug!(?reset, "client reset the stream before the answer");
                return;
            }
        }
    };
    // Interim answers that arrived with the final one (in the same read) go first.
    if let Some(heads) = interim.take_now()
        && !send_interim(&mut respond, heads)
    {
        return;
    }
    interim.set_open(false);
    let resp = match resp {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (mut head, body) = resp.into_parts();
    // Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2).
    strip_hop_by_hop(&mut head.headers, false, false);
    if !head.headers.contains_key(DATE) {
        head.headers.insert(DATE, crate::h1::encode::date_value());
    }
    let end = body.is_end_stream();
    if !end
        && !head.headers.contains_key(CONTENT_LENGTH)
        && let Some(len) = body.size_hint().exact()
    {
        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    let tx = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(tx) => tx,
        Err(error) => {
            tracing::debug!(%error, "sending the response head failed");
            return;
        }
    };
    if end {
        return;
    }
    match send_body(body, tx).await {
        Ok(()) => {}
        Err(SendError::Reset(reason)) => tracing::debug!(?reason, "client reset the stream"),
        Err(SendError::H2(error)) => tracing::debug!(%error, "stream failed"),
        Err(SendError::Body) => tracing::debug!("response body failed; stream reset"),
    }
}
