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
use http::header::{CONNECTION, CONTENT_LENGTH, COOKIE, HOST, HeaderValue, MAX_FORWARDS, UPGRADE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

use super::ResponseBody;
use super::error::{ProxyError, is_grpc};
use super::failover;
use crate::metrics::RouteMetrics;
use crate::policy::Policy;
use crate::route::{Mode, Route};
use crate::state::Shared;
use datastream_http::app::{ConnMeta, HttpServerApp, Interim};
use datastream_http::body::{BodyTooLarge, ClientBody, RequestBody, UpstreamBody};
use datastream_http::h1::PendingUpgrade;
use datastream_http::h1::client::{ClientError, ResponseLimits};
use datastream_http::headers::{PendingForwarding, strip_hop_by_hop, wants_upgrade};
use datastream_lb::balance::{self, hash};
use datastream_lb::endpoint::{ConnectError, Endpoint, EndpointSet, Failure, InflightGuard};
use datastream_resilience::clock;
use datastream_resilience::shed::Admission;

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
        interim: Option<Arc<Interim>>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        handle(self, meta, req, upgrade, interim)
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
pub(super) enum Outgoing<'a> {
    /// A replayable request: its head stays with the caller for later attempts and its body is
    /// in memory, so the own HTTP/1 client sends it without copying the head.
    Replay(&'a Parts, Bytes),
    /// A request of its own: a streamed body, or one an earlier attempt handed back unsent.
    /// Boxed: the common path sends a [`Self::Replay`], and an attempt's future, which holds
    /// its request, is moved whole (into its timeout, into its caller's state) on every
    /// request; a request inline would make each of those moves 384 bytes larger.
    Owned(Box<Request<RequestBody>>),
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
            Outgoing::Owned(req) => *req,
        }
    }

    /// What to hand back when the request was not sent: nothing when the caller kept the head.
    fn into_unsent(self) -> Option<Box<Request<RequestBody>>> {
        match self {
            Outgoing::Replay(..) => None,
            Outgoing::Owned(req) => Some(req),
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

/// What an attempt relays to the client besides the final answer, and the limits that answer
/// must fit.
#[derive(Clone, Copy)]
pub(super) struct Relay<'a> {
    /// The policy's response head limits.
    pub limits: ResponseLimits,
    /// Where the upstream's interim (1xx) answers go, for a client that can get them.
    pub interim: Option<&'a Arc<Interim>>,
    /// Forwarding fields every copy of the request gets on its way out, not yet in its head.
    pub forwarding: Option<PendingForwarding<'a>>,
    /// Whether the answer goes to an HTTP/1 client with its fields unread and unchanged on the
    /// way, so that the own client may keep them as bytes (see `RelayedFields`). A reader
    /// of an upstream answer's fields takes them with `upstream_headers`.
    pub fields_as_bytes: bool,
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
/// a protocol switch, for HTTP/1 requests that ask for one; `interim` relays the replica's 1xx
/// answers to the client.
pub async fn handle(
    app: Arc<ProxyApp>,
    meta: Arc<ConnMeta>,
    req: Request<ClientBody>,
    upgrade: Option<PendingUpgrade>,
    interim: Option<Arc<Interim>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = clock::now_ns();
    let downstream_h1 = req.version() != Version::HTTP_2;
    // Known before the request is taken apart: the sidecar's own errors answer gRPC calls in
    // gRPC's terms. gRPC runs over HTTP/2 only (gRPC-Web clients read statuses from the body).
    let grpc = !downstream_h1 && is_grpc(req.headers());
    let shared = &app.shared;
    let policy = shared.policy();
    let (resp, metrics, done_ns) = match app.kind {
        // The traffic path's checks and preparation run apart from its one await, so that the
        // forward's future sits directly in this one rather than in a future of its own that
        // this one would move and dispatch on every request.
        ListenerKind::Traffic => {
            let (mut parts, body) = req.into_parts();
            let route = policy.routes.find(&parts);
            let planned = plan_traffic(
                shared,
                &policy,
                route,
                &meta,
                &mut parts,
                upgrade.is_some(),
                started,
            );
            let (resp, done_ns) = match planned {
                Ok(Planned::Forward(plan)) => {
                    let endpoints = shared.endpoints();
                    // Deadline, per-try timeouts, retries, ejection, breakers, broadcast: see
                    // `failover`.
                    let call = failover::Call {
                        shared,
                        policy: &policy,
                        route,
                        set: &endpoints,
                        key: plan.key,
                        upgrade: plan.upgrade,
                        interim: interim.as_ref(),
                        forwarding: plan.forwarding,
                        client_h1: downstream_h1,
                        last_ns: std::sync::atomic::AtomicU64::new(0),
                    };
                    let result = failover::forward(&call, parts, body, upgrade, started).await;
                    let done_ns = failover::answered_ns(&call);
                    failover::finish(shared, &policy, plan.admission, done_ns);
                    (result, done_ns)
                }
                Ok(Planned::Answered(resp)) => (Ok(*resp), clock::now_ns()),
                Err(e) => (Err(e), clock::now_ns()),
            };
            (resp, &route.metrics, done_ns)
        }
        ListenerKind::Peer => {
            let resp = proxy_peer(shared, &policy, &meta, req, upgrade, interim.as_ref()).await;
            (resp, &shared.peer_metrics, clock::now_ns())
        }
    };
    let mut resp = resp.unwrap_or_else(|e| respond_error(shared, e, grpc));
    if shared.is_draining() && downstream_h1 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Draining: ask HTTP/1 clients to reconnect (elsewhere, once readiness propagated)
        // before the listener closes, so no request races a closing keep-alive connection.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    observe(metrics, resp.status(), started, done_ns);
    Ok(resp)
}

/// Records a request's answer and duration, from its arrival to `done_ns` (when its answer
/// was known).
fn observe(metrics: &RouteMetrics, status: StatusCode, started_ns: u64, done_ns: u64) {
    let took = clock::since(started_ns, done_ns);
    metrics.observe(status.as_u16(), took.as_secs_f64());
}

fn respond_error(shared: &Shared, error: ProxyError, grpc: bool) -> Response<ResponseBody> {
    let (_, code, _) = error.classify();
    shared.metrics.local_error(code);
    tracing::debug!(%error, code, "answering with a local error");
    error.into_response(grpc)
}

/// What the traffic listener's checks decided for a request.
enum Planned<'a> {
    /// Forward it, as planned.
    Forward(Plan<'a>),
    /// Answered here (`Max-Forwards: 0`). Boxed: rare, and a response is large.
    Answered(Box<Response<ResponseBody>>),
}

/// How a traffic request is forwarded: what `failover::Call` takes besides the sidecar's state.
struct Plan<'a> {
    /// Its place under the concurrency limit, finished when the answer is known.
    admission: Admission,
    /// Its hash key, for hashing policies.
    key: Option<u64>,
    /// Whether it switches protocols.
    upgrade: bool,
    /// Forwarding fields its copies get on the way out (see [`prepare`]).
    forwarding: Option<PendingForwarding<'a>>,
}

/// The traffic listener's request path up to forwarding: the checks that need no replica,
/// admission (rate limit and adaptive shedding, before any routing work) and the head's
/// rewrite for the upstream. `arrived_ns` is the clock reading taken when it arrived.
fn plan_traffic<'a>(
    shared: &Shared,
    policy: &Policy,
    route: &Route,
    meta: &'a ConnMeta,
    parts: &mut Parts,
    client_can_upgrade: bool,
    arrived_ns: u64,
) -> Result<Planned<'a>, ProxyError> {
    admit(policy, parts)?;
    if let Some(answer) = max_forwards(parts) {
        return Ok(Planned::Answered(Box::new(answer)));
    }
    let admission = failover::admit(shared, policy, route, arrived_ns)?;
    let to_h2 = upstream_h2(policy.upstream_protocol, parts.version);
    // HTTP/2 has no Upgrade: an h2c-only replica answers the request as an ordinary one.
    let upgrade = !to_h2 && client_can_upgrade && wants_upgrade(parts.version, &parts.headers);
    let key = route_key(route, parts, meta.client);
    let forwarding = prepare(parts, meta, upgrade, to_h2)?;
    Ok(Planned::Forward(Plan {
        admission,
        key,
        upgrade,
        forwarding,
    }))
}

async fn proxy_peer(
    shared: &Shared,
    policy: &Policy,
    meta: &Arc<ConnMeta>,
    req: Request<ClientBody>,
    client_upgrade: Option<PendingUpgrade>,
    interim: Option<&Arc<Interim>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    admit(policy, &parts)?;
    if let Some(answer) = max_forwards(&mut parts) {
        return Ok(answer);
    }
    let endpoints = shared.endpoints();
    let local = endpoints.local().ok_or(ProxyError::NoLocalWorkload)?;
    let to_h2 = upstream_h2(policy.upstream_protocol, parts.version);
    let upgrade =
        !to_h2 && client_upgrade.is_some() && wants_upgrade(parts.version, &parts.headers);
    let client_h1 = parts.version != Version::HTTP_2;
    let forwarding = prepare(&mut parts, meta, upgrade, to_h2)?;
    let body = RequestBody::streaming(body, policy.max_body)
        .with_idle_timeout(policy.resilience.stream_idle_timeout);
    // A body already complete goes to the own HTTP/1 client with the head kept here, as a
    // replayable request does; no box for the request.
    let in_memory = (!to_h2 && !upgrade).then(|| body.in_memory()).flatten();
    let out = match in_memory {
        Some(bytes) => Outgoing::Replay(&parts, bytes),
        None => Outgoing::Owned(Box::new(Request::from_parts(parts, body))),
    };
    local.pool.set_response_limits(policy.response_limits);
    let relay = Relay {
        limits: policy.response_limits,
        interim,
        forwarding,
        fields_as_bytes: client_h1,
    };
    match attempt(local, out, upgrade, relay, clock::now_ns()).await {
        Ok((resp, guard, h1)) => respond(
            resp,
            guard,
            h1,
            client_upgrade,
            policy.resilience.stream_idle_timeout,
        ),
        Err(AttemptError::Failed(e)) => Err(e),
        Err(AttemptError::NotSent { error, .. }) => Err(ProxyError::Connect(error)),
    }
}

/// Stage 1: checks that need no replica.
fn admit(policy: &Policy, parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        // CONNECT would make the sidecar a tunnel to anywhere; TRACE echoes credentials back
        // (cross-site tracing). Neither is implemented (RFC 9110 9.1: 501).
        return Err(ProxyError::NotImplemented(
            if parts.method == Method::CONNECT {
                "CONNECT"
            } else {
                "TRACE"
            },
        ));
    }
    if parts.version == Version::HTTP_2 && !h2_field_values_are_trimmed(&parts.headers) {
        // RFC 9113 8.2.1: HTTP/1 parsers trim these, HTTP/2 does not; an intermediary must not
        // forward them.
        return Err(ProxyError::BadRequest(
            "a field value with leading or trailing whitespace",
        ));
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

fn h2_field_values_are_trimmed(headers: &http::HeaderMap) -> bool {
    headers.values().all(|v| {
        let b = v.as_bytes();
        !matches!(b.first(), Some(b' ' | b'\t')) && !matches!(b.last(), Some(b' ' | b'\t'))
    })
}

/// RFC 9110 7.6.2: an OPTIONS request with `Max-Forwards: 0` is answered here, as its final
/// recipient; with a larger value, the value is decremented. (TRACE is refused in [`admit`].)
fn max_forwards(parts: &mut Parts) -> Option<Response<ResponseBody>> {
    if parts.method != Method::OPTIONS {
        return None;
    }
    let n: u64 = parts
        .headers
        .get(MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if n == 0 {
        return Some(Response::new(ResponseBody::empty()));
    }
    parts.headers.insert(MAX_FORWARDS, HeaderValue::from(n - 1));
    None
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

/// Where the authority of a request's target comes from (RFC 9112 3.3, RFC 9113 8.3.1).
enum TargetAuthority {
    /// The URI: an absolute-form target, or HTTP/2's `:authority`.
    Uri(Authority),
    /// The (single, non-empty) Host field.
    Host,
    /// Neither: the address the client connected to ("the connection's incoming IP address").
    Connection(SocketAddr),
}

/// The authority of the request's target, refusing what RFC 9110 4.2.4 and RFC 9113 8.3.1 call
/// malformed: userinfo, and an HTTP/2 Host that is not the `:authority` or is repeated.
fn target_authority(parts: &Parts, local: SocketAddr) -> Result<TargetAuthority, ProxyError> {
    if parts.version == Version::HTTP_11 && parts.uri.authority().is_none() {
        // An HTTP/1.1 request in origin form: the sidecar's own HTTP/1 server admitted it only
        // with exactly one valid Host (no lookup needed on the most common path).
        return Ok(TargetAuthority::Host);
    }
    let host = parts.headers.get(HOST);
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("userinfo in the target's authority"));
        }
        if parts.version == Version::HTTP_2 && host.is_some() {
            let mut hosts = parts.headers.get_all(HOST).iter();
            let same = hosts
                .next()
                .is_some_and(|h| same_authority(h.as_bytes(), authority.as_str()));
            if !same || hosts.next().is_some() {
                return Err(ProxyError::BadRequest("Host differs from :authority"));
            }
        }
        return Ok(TargetAuthority::Uri(authority.clone()));
    }
    match host {
        Some(h) if !h.is_empty() => {
            if parts.version == Version::HTTP_2
                && (parts.headers.get_all(HOST).iter().count() > 1
                    || !datastream_http::headers::valid_host(h.as_bytes()))
            {
                return Err(ProxyError::BadRequest("invalid Host"));
            }
            Ok(TargetAuthority::Host)
        }
        _ => Ok(TargetAuthority::Connection(local)),
    }
}

/// Whether a Host value names the same authority as `:authority` (case-insensitive host, the
/// default port 80 of `http` implied).
fn same_authority(host: &[u8], authority: &str) -> bool {
    let strip = |a: &[u8]| -> Vec<u8> {
        let a = a.strip_suffix(b":80").unwrap_or(a);
        a.to_ascii_lowercase()
    };
    strip(host) == strip(authority.as_bytes())
}

/// Stage 3: rewrites the request for the upstream protocol (see [`upstream_h2`]): hop-by-hop
/// fields removed, forwarding fields and `Via` added; towards HTTP/2 the target's authority
/// goes into the URI (`:authority`) and `Host` is dropped; towards HTTP/1.1 the URI takes the
/// origin form, `Host` names the target's authority (rebuilt from an absolute-form target,
/// RFC 9112 3.2.2, or from the connection when the client sent none) and HTTP/2's split
/// `Cookie` fields become one line (RFC 9113 8.2.3).
///
/// Towards HTTP/1 without an upgrade, the forwarding fields of a request that carries none of
/// its own are returned rather than added, for the attempts to add on the way out (see
/// [`PendingForwarding`]).
fn prepare<'c>(
    parts: &mut Parts,
    conn: &'c ConnMeta,
    upgrade: bool,
    to_h2: bool,
) -> Result<Option<PendingForwarding<'c>>, ProxyError> {
    let from = parts.version;
    let target = target_authority(parts, conn.local)?;
    let te = strip_hop_by_hop(&mut parts.headers, upgrade, true);
    let forwarding = conn
        .forwarding
        .apply_or_defer(&mut parts.headers, from, !to_h2 && !upgrade);
    let path = match parts.uri.path_and_query() {
        Some(p) if p.as_str().starts_with(['/', '*']) => p.clone(),
        // `http://host?query` has an empty path, which origin form writes as "/".
        Some(p) => PathAndQuery::try_from(format!("/{}", p.as_str()))
            .unwrap_or_else(|_| PathAndQuery::from_static("/")),
        None => PathAndQuery::from_static("/"),
    };
    if to_h2 {
        let authority = match target {
            TargetAuthority::Uri(a) => a,
            TargetAuthority::Host => parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| connection_authority(conn.local)),
            TargetAuthority::Connection(local) => connection_authority(local),
        };
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
        match target {
            TargetAuthority::Uri(a) => {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(HOST, v);
                }
            }
            TargetAuthority::Host => {}
            TargetAuthority::Connection(local) => {
                if let Ok(v) = HeaderValue::from_str(&local.to_string()) {
                    parts.headers.insert(HOST, v);
                }
            }
        }
        if from == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        if te {
            // RFC 9110 10.1.4: TE applies to one connection, so Connection names it.
            parts.headers.insert(
                CONNECTION,
                HeaderValue::from_static(if upgrade { "upgrade, te" } else { "te" }),
            );
        }
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
    }
    Ok(forwarding)
}

/// The address a client connected to, as an authority.
fn connection_authority(local: SocketAddr) -> Authority {
    Authority::try_from(local.to_string()).unwrap_or_else(|_| Authority::from_static("localhost"))
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

/// Stage 4: the replica for this request at `now`, or none.
pub(super) fn select<'a>(
    route: &Route,
    set: &'a EndpointSet,
    key: Option<u64>,
    exclude: &[SocketAddr],
    now: u64,
) -> Option<&'a Arc<Endpoint>> {
    match &route.mode {
        Mode::Balance(b) => b.pick(set, key.unwrap_or(0), exclude, now),
        Mode::Affinity(a) => match key {
            Some(k) => balance::pick_hashed(set, a.algorithm, k, a.load_bound, exclude, now),
            None => a.keyless.pick(set, 0, exclude, now),
        },
        Mode::Primary { hold_down } => balance::pick_primary(set, *hold_down, exclude, now),
        // Broadcast requests go to every replica (see `failover`); a single pick takes the
        // first usable one.
        Mode::Broadcast { .. } => balance::pick_primary(set, Duration::ZERO, exclude, now),
    }
}

/// Stage 5: one attempt on `endpoint`, starting at `now` (a reading of the resilience clock).
/// A response's guard carries the reading taken when its headers arrived.
pub(super) async fn attempt(
    endpoint: &Arc<Endpoint>,
    out: Outgoing<'_>,
    upgrade: bool,
    relay: Relay<'_>,
    now: u64,
) -> Result<Attempted, AttemptError> {
    let mut guard = endpoint.start(now);
    let h2 = out.version() == Version::HTTP_2;
    if !h2
        && !upgrade
        && let Some(body) = out.in_memory()
    {
        // A body in memory: the own HTTP/1 client, driven by this task (written here rather
        // than in a function of its own: one level of future less on every request).
        // Idle connections the upstream closed are skipped (and dropped) by the pool.
        let conn = match endpoint.pool.take_idle_own() {
            Some(conn) => conn,
            None => match endpoint.pool.connect_own().await {
                Ok(conn) => {
                    guard.connected_at(clock::now_ns());
                    conn
                }
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
        let interim = relay.interim.map(|i| &**i);
        let sent = match out {
            Outgoing::Replay(parts, _) => {
                conn.send(
                    parts,
                    relay.forwarding,
                    &body,
                    relay.limits,
                    interim,
                    relay.fields_as_bytes,
                )
                .await
            }
            Outgoing::Owned(req) => {
                // A request of its own may have come back unsent from hyper's client with the
                // fields in its head; only a replayed head, kept by the caller, never has them.
                let (mut parts, _) = req.into_parts();
                if let Some(forwarding) = relay.forwarding {
                    forwarding.apply(&mut parts.headers);
                }
                conn.send(
                    &parts,
                    None,
                    &body,
                    relay.limits,
                    interim,
                    relay.fields_as_bytes,
                )
                .await
            }
        };
        return match sent {
            Ok(resp) => {
                guard.responded_at(clock::now_ns());
                Ok((resp.map(UpstreamBody::Own), guard, None))
            }
            Err(error) => {
                if !matches!(error, ClientError::HeadTooLarge { .. }) {
                    guard.failed(Failure::Transport);
                }
                Err(AttemptError::Failed(ProxyError::UpstreamH1(error)))
            }
        };
    }
    let mut req = out.into_request();
    // hyper's clients write the head from the map. (The request may come back unsent: `apply`
    // adds nothing to a head that has the fields already.)
    if let Some(forwarding) = relay.forwarding {
        forwarding.apply(req.headers_mut());
    }
    // Boxed: hyper's client futures are large, and the own client's path above is the common one.
    Box::pin(attempt_hyper(
        endpoint,
        req,
        h2,
        upgrade,
        guard,
        relay.interim,
    ))
    .await
}

/// Stage 5 through hyper's clients: streamed bodies, upgrades and HTTP/2.
async fn attempt_hyper(
    endpoint: &Arc<Endpoint>,
    mut req: Request<RequestBody>,
    h2: bool,
    upgrade: bool,
    mut guard: InflightGuard,
    interim: Option<&Arc<Interim>>,
) -> Result<Attempted, AttemptError> {
    if !h2 && let Some(interim) = interim.filter(|i| i.is_open()) {
        // 1xx answers reach hyper's HTTP/1 client only through this callback. (Its HTTP/2
        // client drops them: no hook.)
        let interim = Arc::clone(interim);
        hyper::ext::on_informational(&mut req, move |res| {
            interim.push(res.status(), res.headers().clone());
        });
    }
    // An HTTP/2 upstream may send content with its answer to HEAD, which its client rejects
    // mid-stream; the answer has none (RFC 9110 9.3.2), so its body is never read.
    let head = req.method() == Method::HEAD;
    // A stale pooled connection hands the request back unsent; then a fresh one is opened. The
    // bound keeps a pool full of dead connections from looping for long.
    for _ in 0..4 {
        let sender = match acquire(endpoint, h2, upgrade).await {
            // The shared HTTP/2 connection may have been set up for this request; either way
            // the latency sample starts once a connection is ready (see `connected_at`).
            Ok(s) => {
                guard.connected_at(clock::now_ns());
                s
            }
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
                guard.responded_at(clock::now_ns());
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
                    // A head over the limits is an answer the sidecar cannot relay, not a
                    // failure of the replica's.
                    if !error.is_user() && !error.is_parse_too_large() {
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
) -> Result<Response<ResponseBody>, ProxyError> {
    let status = resp.status();
    // The upstream leg's protocol, before the response is rewritten: an HTTP/2 answer may end
    // with trailers whatever its length says.
    let from_h2 = resp.version() == Version::HTTP_2;
    let (mut parts, body) = resp.into_parts();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // RFC 9110 7.8: a switch the client did not ask for, or one that does not say to
        // what, cannot be relayed.
        let (Some(client_upgrade), UpstreamBody::Hyper(body), true) =
            (client_upgrade, body, parts.headers.contains_key(UPGRADE))
        else {
            return Err(ProxyError::UpstreamProtocol(
                "101 Switching Protocols without an upgrade to switch to",
            ));
        };
        // Upgrades always go through hyper's client, which hands over the connection.
        let mut resp = Response::from_parts(parts, body);
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true, false);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    // A 426 names the protocols to upgrade to (RFC 9110 15.5.22).
    let keep_upgrade = status == StatusCode::UPGRADE_REQUIRED;
    strip_hop_by_hop(&mut parts.headers, keep_upgrade, false);
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, guard.into_completion(h1))
            .with_idle_timeout(idle)
            .with_trailers_hint(from_h2),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    const LOCAL: &str = "10.0.0.7:7080";

    /// RFC 9113 8.3.1: `:authority` wins, and a Host that differs from it, or a second Host,
    /// makes an HTTP/2 request malformed; userinfo never passes (RFC 9110 4.2.4).
    #[test]
    fn the_target_authority_follows_rfc_9112_and_9113() {
        let local = LOCAL.parse().unwrap();
        let h2 = |uri, hosts: &[&str]| target_authority(&parts(Version::HTTP_2, uri, hosts), local);
        assert!(
            matches!(h2("http://a.example/", &[]), Ok(TargetAuthority::Uri(a)) if a == "a.example")
        );
        assert!(h2("http://a.example/", &["A.example:80"]).is_ok());
        assert!(h2("http://a.example/", &["b.example"]).is_err());
        assert!(h2("http://a.example/", &["a.example", "a.example"]).is_err());
        assert!(h2("http://u@a.example/", &[]).is_err());
        let h1 =
            |uri, hosts: &[&str]| target_authority(&parts(Version::HTTP_11, uri, hosts), local);
        assert!(matches!(h1("/p", &["a"]), Ok(TargetAuthority::Host)));
        // HTTP/1.1 in origin form always has its Host (the server refused it otherwise), an
        // empty one included, which goes on as the client sent it.
        assert!(matches!(h1("/p", &[""]), Ok(TargetAuthority::Host)));
        let h10 = |hosts: &[&str]| target_authority(&parts(Version::HTTP_10, "/p", hosts), local);
        assert!(matches!(h10(&[""]), Ok(TargetAuthority::Connection(_))));
        assert!(matches!(h10(&[]), Ok(TargetAuthority::Connection(_))));
    }

    /// An HTTP/2 request going to an HTTP/1.1 replica gets Host from `:authority` (replacing
    /// the client's), and one going the other way gets `:authority` from Host, or from the
    /// connection when there is none (never a made-up name).
    #[test]
    fn prepare_rebuilds_host_and_authority() {
        let meta = ConnMeta {
            client: "10.0.0.9:5000".parse().unwrap(),
            local: LOCAL.parse().unwrap(),
            forwarding: datastream_http::headers::Forwarding::new("10.0.0.9:5000".parse().unwrap()),
            peer_identity: None,
        };
        let mut p = parts(Version::HTTP_2, "http://a.example/x?y", &["a.example"]);
        let pending = prepare(&mut p, &meta, false, false).unwrap();
        assert_eq!(p.uri, "/x?y");
        assert_eq!(p.headers[HOST], "a.example");
        assert!(p.headers.get("via").is_none(), "left to the own client");
        pending.expect("towards HTTP/1").apply(&mut p.headers);
        assert_eq!(p.headers["via"], "2 datastream");
        let mut p = parts(Version::HTTP_11, "/x", &["b.example"]);
        assert!(prepare(&mut p, &meta, false, true).unwrap().is_none());
        assert_eq!(
            p.headers["via"], "1.1 datastream",
            "in the head towards HTTP/2"
        );
        assert_eq!(p.uri, "http://b.example/x");
        assert!(p.headers.get(HOST).is_none());
        let mut p = parts(Version::HTTP_10, "/x", &[]);
        prepare(&mut p, &meta, false, true).unwrap();
        assert_eq!(p.uri.to_string(), format!("http://{LOCAL}/x"));
    }
}
