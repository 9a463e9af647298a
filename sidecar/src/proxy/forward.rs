//! The request path, from a request accepted on the traffic or peer listener to the response.
//!
//! Stages, in order (each a seam where the resilience layer inserts its mechanism):
//!
//! 1. **admit** (`admit`): body-size limit, unsupported methods. Rate limiting and adaptive
//!    shedding go here, before any routing work.
//! 2. **route** ([`RouteTable::find`](crate::route::RouteTable::find)): the first matching
//!    route; its mode decides how a replica is chosen. Per-route timeouts, retry policy and
//!    broadcast hang off the route.
//! 3. **prepare** (`prepare`): hop-by-hop headers, forwarding headers, URI form for the
//!    upstream protocol. Done once, so any later attempt reuses the same request.
//! 4. **select** (`select`): a replica, skipping those an earlier attempt of this request
//!    failed on (`exclude`). Outlier ejection and breakers act through
//!    [`Endpoint::eligibility`](datastream_lb::endpoint::Endpoint::eligibility).
//! 5. **attempt** (`attempt`): one try on one replica: connection from the pool, send,
//!    response headers. It returns the request untouched when it provably never reached the
//!    replica (connect failure, stale pooled connection), which is what makes the built-in
//!    connect-failure retry safe for every method; per-try timeouts wrap this call.
//! 6. **respond**: hop-by-hop headers removed, the body streamed back carrying the
//!    completion that ends the in-flight count and returns the connection to its pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datastream_api::v1alpha1::UpstreamProtocol;
use http::header::{CONNECTION, CONTENT_LENGTH, COOKIE, HOST, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::ResponseBody;
use super::error::{ProxyError, is_grpc};
use super::failover;
use crate::metrics::RouteMetrics;
use crate::policy::Policy;
use crate::route::{Mode, Route};
use crate::state::Shared;
use datastream_http::app::{ConnMeta, HttpServerApp};
use datastream_http::body::{BodyTooLarge, ClientBody, RequestBody, UpstreamBody};
use datastream_http::h1::PendingUpgrade;
use datastream_http::headers::{Forwarding, strip_hop_by_hop, wants_upgrade};
use datastream_lb::balance::{self, hash};
use datastream_lb::endpoint::{ConnectError, Endpoint, EndpointSet, Failure, InflightGuard};
use datastream_resilience::clock;

/// Replicas a request tries when connections fail, before it answers 502.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Clients: routed and balanced across replicas.
    Traffic,
    /// Other sidecars: delivered to the local workload only, never routed again.
    Peer,
}

impl ListenerKind {
    /// The listener's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Traffic => "traffic",
            ListenerKind::Peer => "peer",
        }
    }
}

/// The sidecar's request path as the application behind one listener.
#[derive(Debug)]
pub struct ProxyApp {
    /// The sidecar's live state.
    pub shared: Arc<Shared>,
    /// The listener it serves.
    pub kind: ListenerKind,
}

impl HttpServerApp for ProxyApp {
    type Body = ResponseBody;

    #[inline]
    fn handle(
        self: Arc<Self>,
        meta: Arc<ConnMeta>,
        req: Request<ClientBody>,
        upgrade: Option<PendingUpgrade>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        handle(self, meta, req, upgrade)
    }
}

/// A connection ready to carry one request.
enum Sender {
    H1 {
        sender: http1::SendRequest<RequestBody>,
        reused: bool,
    },
    H2(http2::SendRequest<RequestBody>),
}

/// What a successful attempt yields: the response, the hold on the replica, and the hyper
/// HTTP/1 sender to return to the pool when the body ends (none for HTTP/2, upgrades and the
/// own client, whose connection travels in the body).
pub(super) type Attempted = (
    Response<UpstreamBody>,
    InflightGuard,
    Option<http1::SendRequest<RequestBody>>,
);

/// The request of one attempt.
// Moved once into the attempt, as the bare request was; boxing the large variant would cost an
// allocation per streamed request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing<'a> {
    /// A replayable request: its head stays with the caller for later attempts and its body is
    /// in memory, so the own HTTP/1 client sends it without copying the head.
    Replay(&'a Parts, Bytes),
    /// A request of its own: a streamed body, or one an earlier attempt handed back unsent.
    Owned(Request<RequestBody>),
}

impl Outgoing<'_> {
    fn version(&self) -> Version {
        match self {
            Outgoing::Replay(parts, _) => parts.version,
            Outgoing::Owned(req) => req.version(),
        }
    }

    /// The body, when it is in memory.
    fn in_memory(&self) -> Option<Bytes> {
        match self {
            Outgoing::Replay(_, body) => Some(body.clone()),
            Outgoing::Owned(req) => req.body().in_memory(),
        }
    }

    /// The request as one value, for hyper's clients.
    fn into_request(self) -> Request<RequestBody> {
        match self {
            Outgoing::Replay(parts, body) => rebuild(parts, body),
            Outgoing::Owned(req) => req,
        }
    }

    /// What to hand back when the request was not sent: nothing when the caller kept the head.
    fn into_unsent(self) -> Option<Box<Request<RequestBody>>> {
        match self {
            Outgoing::Replay(..) => None,
            Outgoing::Owned(req) => Some(Box::new(req)),
        }
    }
}

/// A copy of a replayable request for hyper's clients.
pub(super) fn rebuild(parts: &Parts, body: Bytes) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::full(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// The outcome of one attempt.
pub(super) enum AttemptError {
    /// The request never reached the replica; here it is back, unless the caller kept it
    /// ([`Outgoing::Replay`]). Boxed: this is the rare path and the request is large.
    NotSent {
        /// The request, unless the caller kept it.
        back: Option<Box<Request<RequestBody>>>,
        /// Why the connection failed.
        error: ConnectError,
        /// Whether the failure told something new about the replica (not one of a burst of
        /// connects that failed together, nor one while it was already down): only news
        /// feeds outlier detection and the breaker.
        news: bool,
    },
    /// The request may have reached the replica.
    Failed(ProxyError),
}

/// Serves one request: never fails, errors become responses. `upgrade` is the client side of
/// a protocol switch, for HTTP/1 requests that ask for one.
pub async fn handle(
    app: Arc<ProxyApp>,
    meta: Arc<ConnMeta>,
    req: Request<ClientBody>,
    upgrade: Option<PendingUpgrade>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let downstream_h1 = req.version() != Version::HTTP_2;
    // Known before the request is taken apart: the sidecar's own errors answer gRPC calls in
    // gRPC's terms.
    let grpc = is_grpc(req.headers());
    let shared = &app.shared;
    let policy = shared.policy();
    let (resp, metrics) = match app.kind {
        ListenerKind::Traffic => {
            let (parts, body) = req.into_parts();
            let route = policy.routes.find(&parts);
            let resp = proxy_traffic(shared, &policy, route, &meta, parts, body, upgrade).await;
            (resp, &route.metrics)
        }
        ListenerKind::Peer => (
            proxy_peer(shared, &policy, &meta, req, upgrade).await,
            &shared.peer_metrics,
        ),
    };
    let mut resp = resp.unwrap_or_else(|e| respond_error(shared, e, grpc));
    if shared.is_draining() && downstream_h1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Draining: ask HTTP/1 clients to reconnect (elsewhere, once readiness propagated)
        // before the listener closes, so no request races a closing keep-alive connection.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    observe(metrics, resp.status(), started);
    Ok(resp)
}

fn observe(metrics: &RouteMetrics, status: StatusCode, started: Instant) {
    metrics.observe(status.as_u16(), started.elapsed().as_secs_f64());
}

fn respond_error(shared: &Shared, error: ProxyError, grpc: bool) -> Response<ResponseBody> {
    let (_, code, _) = error.classify();
    shared.metrics.local_error(code);
    tracing::debug!(%error, code, "answering with a local error");
    error.into_response(grpc)
}

async fn proxy_traffic(
    shared: &Arc<Shared>,
    policy: &Policy,
    route: &Route,
    meta: &ConnMeta,
    mut parts: Parts,
    body: ClientBody,
    client_upgrade: Option<PendingUpgrade>,
) -> Result<Response<ResponseBody>, ProxyError> {
    admit(policy, &parts)?;
    // Rate limit and adaptive shedding, before any routing work.
    let admission = failover::admit(shared, policy, route)?;
    let endpoints = shared.endpoints();
    let to_h2 = upstream_h2(policy.upstream_protocol, parts.version);
    // HTTP/2 has no Upgrade: an h2c-only replica answers the request as an ordinary one.
    let upgrade =
        !to_h2 && client_upgrade.is_some() && wants_upgrade(parts.version, &parts.headers);
    let key = route_key(route, &parts, meta.client);
    prepare(&mut parts, &meta.forwarding, upgrade, to_h2);
    // Deadline, per-try timeouts, retries, ejection, breakers, broadcast: see `failover`.
    let call = failover::Call {
        shared,
        policy,
        route,
        set: &endpoints,
        key,
        upgrade,
    };
    let result = failover::forward(call, parts, body, client_upgrade).await;
    failover::finish(shared, policy, admission);
    result
}

async fn proxy_peer(
    shared: &Shared,
    policy: &Policy,
    meta: &ConnMeta,
    req: Request<ClientBody>,
    client_upgrade: Option<PendingUpgrade>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    admit(policy, &parts)?;
    let endpoints = shared.endpoints();
    let local = endpoints.local().ok_or(ProxyError::NoLocalWorkload)?;
    let to_h2 = upstream_h2(policy.upstream_protocol, parts.version);
    let upgrade =
        !to_h2 && client_upgrade.is_some() && wants_upgrade(parts.version, &parts.headers);
    prepare(&mut parts, &meta.forwarding, upgrade, to_h2);
    let body = RequestBody::streaming(body, policy.max_body)
        .with_idle_timeout(policy.resilience.stream_idle_timeout);
    let req = Request::from_parts(parts, body);
    match attempt(local, Outgoing::Owned(req), upgrade).await {
        Ok((resp, guard, h1)) => Ok(respond(
            resp,
            guard,
            h1,
            client_upgrade,
            policy.resilience.stream_idle_timeout,
        )),
        Err(AttemptError::Failed(e)) => Err(e),
        Err(AttemptError::NotSent { error, .. }) => Err(ProxyError::Connect(error)),
    }
}

/// Stage 1: checks that need no replica.
fn admit(policy: &Policy, parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if let Some(limit) = policy.max_body
        && let Some(len) = parts.headers.get(CONTENT_LENGTH)
    {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ProxyError::BadRequest("invalid content-length"))?;
        if len > limit {
            return Err(BodyTooLarge { limit }.into());
        }
    }
    Ok(())
}

/// The hash key of the request: the route's affinity key, or the client address for hashing
/// policies on balance routes.
fn route_key(route: &Route, parts: &Parts, client: SocketAddr) -> Option<u64> {
    match &route.mode {
        Mode::Affinity(a) => a.key.hash(parts),
        _ => Some(client_key(client)),
    }
}

fn client_key(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(v4) => hash::hash_bytes(&v4.octets(), 0),
        std::net::IpAddr::V6(v6) => hash::hash_bytes(&v6.octets(), 0),
    }
}

/// Whether a request goes upstream over HTTP/2: by default when it came over HTTP/2 (gRPC needs it
/// end to end), or as the policy's `upstreamProtocol` fixes it.
fn upstream_h2(protocol: UpstreamProtocol, client: Version) -> bool {
    match protocol {
        UpstreamProtocol::Auto => client == Version::HTTP_2,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
    }
}

/// Stage 3: rewrites the request for the upstream protocol (see [`upstream_h2`]): HTTP/2 takes
/// the authority into the URI and drops `Host`; HTTP/1.1 takes an origin-form URI, a `Host` and
/// one `Cookie` line (RFC 9113 8.2.3: HTTP/2 may split cookies, HTTP/1.1 must not).
fn prepare(parts: &mut Parts, forwarding: &Forwarding, upgrade: bool, to_h2: bool) {
    let from_h2 = parts.version == Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers, upgrade, true);
    forwarding.apply(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if to_h2 {
        let authority = parts
            .uri
            .authority()
            .cloned()
            .or_else(|| {
                parts
                    .headers
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .unwrap_or_else(|| Authority::from_static("localhost"));
        parts.headers.remove(HOST);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(uri) {
            parts.uri = uri;
        }
        parts.version = Version::HTTP_2;
    } else {
        if !parts.headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(HOST, v);
        }
        if from_h2 {
            join_cookies(&mut parts.headers);
        }
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
    }
}

/// Folds several `Cookie` field lines into one, separated by "; ".
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// Stage 4: the replica for this request, or none.
pub(super) fn select<'a>(
    route: &Route,
    set: &'a EndpointSet,
    key: Option<u64>,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    match &route.mode {
        Mode::Balance(b) => b.pick(set, key.unwrap_or(0), exclude),
        Mode::Affinity(a) => match key {
            Some(k) => balance::pick_hashed(set, a.algorithm, k, a.load_bound, exclude),
            None => a.keyless.pick(set, 0, exclude),
        },
        Mode::Primary { hold_down } => balance::pick_primary(set, *hold_down, exclude),
        // Broadcast requests go to every replica (see `failover`); a single pick takes the
        // first usable one.
        Mode::Broadcast { .. } => balance::pick_primary(set, Duration::ZERO, exclude),
    }
}

/// Stage 5: one attempt on `endpoint`.
pub(super) async fn attempt(
    endpoint: &Arc<Endpoint>,
    out: Outgoing<'_>,
    upgrade: bool,
) -> Result<Attempted, AttemptError> {
    let guard = endpoint.start(clock::now_ns());
    let h2 = out.version() == Version::HTTP_2;
    if !h2
        && !upgrade
        && let Some(body) = out.in_memory()
    {
        return attempt_own(endpoint, out, body, guard).await;
    }
    // Boxed: hyper's client futures are large, and the own client's path above is the common one.
    Box::pin(attempt_hyper(
        endpoint,
        out.into_request(),
        h2,
        upgrade,
        guard,
    ))
    .await
}

/// Stage 5 through hyper's clients: streamed bodies, upgrades and HTTP/2.
async fn attempt_hyper(
    endpoint: &Arc<Endpoint>,
    mut req: Request<RequestBody>,
    h2: bool,
    upgrade: bool,
    guard: InflightGuard,
) -> Result<Attempted, AttemptError> {
    // An HTTP/2 upstream may send content with its answer to HEAD, which its client rejects
    // mid-stream; the answer has none (RFC 9110 9.3.2), so its body is never read.
    let head = req.method() == Method::HEAD;
    // A stale pooled connection hands the request back unsent; then a fresh one is opened. The
    // bound keeps a pool full of dead connections from looping for long.
    for _ in 0..4 {
        let sender = match acquire(endpoint, h2, upgrade).await {
            Ok(s) => s,
            Err(e) => {
                let news = guard.failed(Failure::Connect);
                return Err(AttemptError::NotSent {
                    back: Some(Box::new(req)),
                    error: e,
                    news,
                });
            }
        };
        let (result, h1, reused) = match sender {
            Sender::H1 { mut sender, reused } => {
                let r = sender.try_send_request(req).await;
                (r, (!upgrade).then_some(sender), reused)
            }
            Sender::H2(mut sender) => (sender.try_send_request(req).await, None, true),
        };
        match result {
            Ok(resp) => {
                guard.responded(clock::since(guard.started_ns(), clock::now_ns()));
                let resp = if head {
                    resp.map(|_| UpstreamBody::Empty)
                } else {
                    resp.map(UpstreamBody::Hyper)
                };
                return Ok((resp, guard, h1));
            }
            Err(mut e) => match e.take_message() {
                Some(back) if reused => {
                    if h2 {
                        endpoint.pool.reset_h2();
                    }
                    req = back;
                }
                _ => {
                    let error = e.into_error();
                    if !error.is_user() {
                        guard.failed(Failure::Transport);
                        if h2 {
                            endpoint.pool.reset_h2();
                        }
                    }
                    return Err(AttemptError::Failed(ProxyError::Upstream(error)));
                }
            },
        }
    }
    guard.failed(Failure::Transport);
    Err(AttemptError::Failed(ProxyError::BadRequest(
        "upstream connections keep closing",
    )))
}

/// Stage 5 for a request whose body is in memory: the own HTTP/1 client, driven by this task.
async fn attempt_own(
    endpoint: &Arc<Endpoint>,
    out: Outgoing<'_>,
    body: Bytes,
    guard: InflightGuard,
) -> Result<Attempted, AttemptError> {
    // Idle connections the upstream closed are skipped (and dropped) by the pool.
    let conn = match endpoint.pool.take_idle_own() {
        Some(conn) => conn,
        None => match endpoint.pool.connect_own().await {
            Ok(conn) => conn,
            Err(e) => {
                let news = guard.failed(Failure::Connect);
                return Err(AttemptError::NotSent {
                    back: out.into_unsent(),
                    error: e,
                    news,
                });
            }
        },
    };
    let sent = match out {
        Outgoing::Replay(parts, _) => conn.send(parts, &body).await,
        Outgoing::Owned(req) => conn.send(&req.into_parts().0, &body).await,
    };
    match sent {
        Ok(resp) => {
            guard.responded(clock::since(guard.started_ns(), clock::now_ns()));
            Ok((resp.map(UpstreamBody::Own), guard, None))
        }
        Err(error) => {
            guard.failed(Failure::Transport);
            Err(AttemptError::Failed(ProxyError::UpstreamH1(error)))
        }
    }
}

async fn acquire(endpoint: &Endpoint, h2: bool, upgrade: bool) -> Result<Sender, ConnectError> {
    if h2 {
        return endpoint.pool.h2().await.map(Sender::H2);
    }
    if !upgrade {
        while let Some(mut sender) = endpoint.pool.take_idle_h1() {
            if sender.ready().await.is_ok() {
                return Ok(Sender::H1 {
                    sender,
                    reused: true,
                });
            }
        }
    }
    let sender = endpoint.pool.connect_h1(upgrade).await?;
    Ok(Sender::H1 {
        sender,
        reused: false,
    })
}

/// Stage 6: the response for the client; its body fails once the upstream stalls for `idle`.
pub(super) fn respond(
    resp: Response<UpstreamBody>,
    guard: InflightGuard,
    h1: Option<http1::SendRequest<RequestBody>>,
    client_upgrade: Option<PendingUpgrade>,
    idle: Option<Duration>,
) -> Response<ResponseBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = resp.into_parts();
    let body = match (switching, client_upgrade, body) {
        // Upgrades always go through hyper's client, which hands over the connection.
        (true, Some(client_upgrade), UpstreamBody::Hyper(body)) => {
            let mut resp = Response::from_parts(parts, body);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true, false);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
            return Response::from_parts(parts, ResponseBody::empty());
        }
        (_, _, body) => body,
    };
    strip_hop_by_hop(&mut parts.headers, false, false);
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, guard.into_completion(h1)).with_idle_timeout(idle),
    )
}

/// Copies bytes both ways between an upgraded client and upstream connection; the request
/// stays in flight on its replica until the tunnel closes.
async fn tunnel(client: PendingUpgrade, upstream: hyper::upgrade::OnUpgrade, guard: InflightGuard) {
    let (client, upstream) = tokio::join!(client, upstream);
    match (client, upstream) {
        (Ok(mut client), Ok(upstream)) => {
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%error, "upgraded tunnel ended with an error");
            }
        }
        (Err(_), _) => tracing::debug!("the client connection closed before the switch"),
        (_, Err(error)) => tracing::debug!(%error, "upstream protocol upgrade failed"),
    }
    drop(guard);
}
