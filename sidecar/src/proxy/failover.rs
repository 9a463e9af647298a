//! The traffic listener's path from an admitted request to a replica's answer, with the
//! resilience layer in it: rate limiting and shedding at admission, the request deadline,
//! per-try timeouts, retries on other replicas under the retry budget, outlier ejection, the
//! adaptive breaker and request caps at selection, and the `broadcast` fan-out.
//!
//! The building blocks ([`attempt`], [`select`], [`respond`]) are the core's, in
//! [`super::forward`]; this module decides how many attempts there are and where they go.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;

use super::ResponseBody;
use super::error::ProxyError;
use super::forward::{
    AttemptError, Attempted, MAX_CONNECT_ATTEMPTS, Outgoing, Relay, attempt, rebuild, respond,
    select,
};
use crate::policy::Policy;
use crate::route::{Mode, Route};
use crate::state::Shared;
use datastream_http::app::Interim;
use datastream_http::body::{
    BodyTooLarge, ClientBody, RequestBody, RequestBodyError, UpstreamBody, upstream_headers,
};
use datastream_http::h1::PendingUpgrade;
use datastream_http::headers::PendingForwarding;
use datastream_http::stream::EndSignal;
use datastream_lb::endpoint::{Endpoint, EndpointSet};
use datastream_resilience::Settings;
use datastream_resilience::broadcast::{self, ACKS_HEADER};
use datastream_resilience::budget::RetryKind;
use datastream_resilience::clock;
use datastream_resilience::deadline::Deadline;
use datastream_resilience::outlier::{EjectReason, Verdict};
use datastream_resilience::retry::{self, BufferError, Outcome, Replay, RetryPolicy, RetryReason};
use datastream_resilience::shed::Admission;

/// What one traffic request is routed with.
pub(super) struct Call<'a> {
    /// The sidecar's state.
    pub shared: &'a Arc<Shared>,
    /// The policy the request started under.
    pub policy: &'a Policy,
    /// Its route.
    pub route: &'a Route,
    /// The endpoint set it started with.
    pub set: &'a Arc<EndpointSet>,
    /// Its hash key, for hashing policies.
    pub key: Option<u64>,
    /// Whether it asks for a protocol upgrade.
    pub upgrade: bool,
    /// The relay of interim answers to its client, if the client can get them.
    pub interim: Option<&'a Arc<Interim>>,
    /// Forwarding fields its copies get on the way out (see `forward::prepare`).
    pub forwarding: Option<PendingForwarding<'a>>,
    /// Whether its client speaks HTTP/1 (the answer's fields may then travel as bytes).
    pub client_h1: bool,
    /// The latest clock reading the request path took (0: none yet), handed back with the
    /// answer so that the caller need not read the clock again.
    pub last_ns: AtomicU64,
}

impl<'a> Call<'a> {
    /// What its attempts relay to the client, within which limits.
    fn relay(&self) -> Relay<'a> {
        Relay {
            limits: self.policy.response_limits,
            interim: self.interim,
            forwarding: self.forwarding,
            fields_as_bytes: self.client_h1,
        }
    }
}

/// The request body, as far as retries are concerned.
enum Source {
    /// Buffered: every attempt sends a copy.
    Replay(Bytes),
    /// Streamed: sent once (a request handed back unsent still carries it).
    Once(Option<ClientBody>),
}

/// Admission checks of the resilience layer: the route's rate limit (429), then the adaptive
/// concurrency limit (503 `overloaded`). The admission must be finished when the answer is
/// known.
pub(super) fn admit(
    shared: &Shared,
    policy: &Policy,
    route: &Route,
    now: u64,
) -> Result<Admission, ProxyError> {
    if let Some(bucket) = &route.resilience.rate_limit
        && let Err(limited) = bucket.try_acquire(now)
    {
        route.resilience.metrics.rate_limited.inc();
        return Err(ProxyError::RateLimited {
            retry_after_secs: limited.retry_after_secs(),
        });
    }
    shared
        .resilience
        .shedder
        .try_admit(now, &policy.resilience.shed)
        .map_err(|e| {
            shared.metrics.resilience.shed.inc();
            ProxyError::Overloaded(e)
        })
}

/// Ends an admission at `now`: its latency feeds the concurrency limit.
pub(super) fn finish(shared: &Shared, policy: &Policy, admission: Admission, now: u64) {
    admission.finish(now, &policy.resilience.shed);
    let limit = shared.resilience.shedder.limit();
    shared
        .metrics
        .resilience
        .concurrency_limit
        .set(i64::from(limit));
}

/// The clock reading taken when the answer of a forwarded request was known (the response
/// headers' arrival, usually), so that the caller need not read the clock again; now, when
/// the request path took none.
pub(super) fn answered_ns(call: &Call<'_>) -> u64 {
    match call.last_ns.load(Ordering::Relaxed) {
        0 => clock::now_ns(),
        n => n,
    }
}

/// Forwards a prepared request within its deadlines (see [`Deadline`]): the caller's
/// `grpc-timeout` / `x-datastream-deadline-ms`, counted from now, and the route's (or the
/// policy's) request timeout, counted from the end of the request body. `arrived` is the clock
/// reading taken when the request arrived.
pub(super) async fn forward(
    call: &Call<'_>,
    parts: Parts,
    body: ClientBody,
    client_upgrade: Option<PendingUpgrade>,
    arrived: u64,
) -> Result<Response<ResponseBody>, ProxyError> {
    let s = &call.policy.resilience;
    let timeout = call.route.resilience.timeout.unwrap_or(s.request_timeout);
    let mut deadline = Deadline::new(arrived, &parts.headers);
    let policy = RetryPolicy {
        non_idempotent: call.route.resilience.retry_non_idempotent,
        ..s.retry.clone()
    };
    let broadcast = matches!(call.route.mode, Mode::Broadcast { .. });
    if broadcast && call.upgrade {
        return Err(ProxyError::BadRequest(
            "a broadcast route cannot switch protocols",
        ));
    }
    let repeatable = !call.upgrade
        && (broadcast
            || (policy.attempts > 0
                && (policy.non_idempotent || retry::is_idempotent(&parts.method))));
    // A request that may be sent more than once has its (small) body in memory first; the
    // caller's deadline bounds the wait for it.
    let source = if repeatable {
        let mut limit = s.replay_limit.min(call.policy.max_body.unwrap_or(u64::MAX));
        if let Mode::Broadcast { max_body, .. } = call.route.mode {
            limit = max_body.min(call.policy.max_body.unwrap_or(u64::MAX));
        }
        match retry::replay_plan(&parts.headers, body.is_end_stream(), limit) {
            Replay::Empty => Source::Replay(Bytes::new()),
            Replay::Buffer(_) => {
                Source::Replay(read_whole(body, limit, s.stream_idle_timeout, deadline).await?)
            }
            Replay::Stream if broadcast => {
                Source::Replay(read_whole(body, limit, s.stream_idle_timeout, deadline).await?)
            }
            Replay::Stream => Source::Once(Some(body)),
        }
    } else {
        Source::Once(Some(body))
    };
    let streaming = matches!(&source, Source::Once(Some(b)) if !b.is_end_stream());
    // Reading the body took time; otherwise the arrival reading is still good.
    let ready = match &source {
        Source::Replay(b) if !b.is_empty() => clock::now_ns(),
        _ => arrived,
    };
    let end = if streaming {
        Some(EndSignal::new())
    } else {
        deadline.body_ended(ready, timeout);
        None
    };
    let expired = match (end, &call.route.mode) {
        // A broadcast (its body is always read first): one timer at the earlier deadline.
        // Boxed, as the other rare paths: the common path's future (allocated once per
        // request) stays small.
        (_, Mode::Broadcast { quorum, .. }) => {
            let Source::Replay(bytes) = source else {
                unreachable!("broadcast bodies are read first")
            };
            let fan_out = Box::pin(fan_out(call, parts, bytes, deadline, *quorum));
            tokio::time::timeout_at(clock::instant_at(deadline.at_ns()), fan_out)
                .await
                .map_err(|_| ())
        }
        // The common case, a body already complete: every wait in `with_retries` ends by the
        // deadline (each attempt's timer does, and the waits between attempts are bounded by
        // it), so the deadline needs no timer of its own; awaited here, not through another
        // level of future.
        (None, _) => {
            let r = Retrying {
                policy,
                deadline,
                end: None,
            };
            Ok(with_retries(call, r, parts, source, client_upgrade, ready).await)
        }
        // Boxed: only streamed request bodies take this path.
        (Some(end), _) => {
            Box::pin(async {
                let r = Retrying {
                    policy,
                    deadline,
                    end: Some(end.clone()),
                };
                let work = with_retries(call, r, parts, source, client_upgrade, ready);
                tokio::select! {
                    biased;
                    result = work => Ok(result),
                    () = streaming_expiry(deadline.caller_ns(), &end, timeout) => Err(()),
                }
            })
            .await
        }
    };
    expired.unwrap_or_else(|()| Err(deadline_passed(call)))
}

/// Counts a request whose deadline passed before it was answered, and the error it gets.
fn deadline_passed(call: &Call<'_>) -> ProxyError {
    call.route.resilience.metrics.timeouts.inc();
    // Whatever was read last is older than this.
    call.last_ns.store(0, Ordering::Relaxed);
    ProxyError::Timeout
}

/// `work`, or `None` when the clock passes `bound_ns` first. The work is polled before the
/// bound's timer, as a timer around a whole request polls the request first: at the same
/// instant, the work wins.
async fn bounded<F: Future>(bound_ns: Option<u64>, work: F) -> Option<F::Output> {
    match bound_ns {
        Some(at) => tokio::time::timeout_at(clock::instant_at(at), work)
            .await
            .ok(),
        None => Some(work.await),
    }
}

async fn streaming_expiry(caller_ns: Option<u64>, end: &EndSignal, timeout: Duration) {
    let own = async {
        end.ended().await;
        tokio::time::sleep(timeout).await;
    };
    match caller_ns {
        Some(at) => tokio::select! {
            () = tokio::time::sleep_until(clock::instant_at(at)) => {}
            () = own => {}
        },
        None => own.await,
    }
}

/// The request head `with_retries` keeps for its attempts. When it is done with it, the header
/// map goes back to the thread's spare maps for the next head parsed, instead of being freed
/// here and allocated again there.
struct KeptHead(Option<Parts>);

impl std::ops::Deref for KeptHead {
    type Target = Option<Parts>;

    fn deref(&self) -> &Option<Parts> {
        &self.0
    }
}

impl std::ops::DerefMut for KeptHead {
    fn deref_mut(&mut self) -> &mut Option<Parts> {
        &mut self.0
    }
}

impl Drop for KeptHead {
    fn drop(&mut self) {
        if let Some(parts) = &mut self.0 {
            datastream_http::h1::give_header_map(std::mem::take(&mut parts.headers));
        }
    }
}

/// How a request is retried: its policy, its deadlines, and the signal its streamed body fires
/// at its end.
struct Retrying {
    policy: RetryPolicy,
    deadline: Deadline,
    end: Option<EndSignal>,
}

/// Attempts until one answers acceptably or no retry is allowed. `started_ns` is the clock
/// reading the caller took at the request's start, reused rather than read again.
///
/// Without a streamed body (`r.end` is `None`) the deadline is final and bounds every wait
/// here: each attempt's timeout is at most the time left, and a hedge or a backoff that the
/// deadline overtakes ends the request as a timeout. With a streamed body the caller bounds the
/// whole call instead.
async fn with_retries(
    call: &Call<'_>,
    r: Retrying,
    mut parts: Parts,
    mut source: Source,
    mut client_upgrade: Option<PendingUpgrade>,
    started_ns: u64,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Retrying {
        policy,
        deadline,
        end,
    } = r;
    let s = &call.policy.resilience;
    let budget = &call.shared.resilience.budget;
    // Where the waits between attempts end at the latest (a clock reading); `None` when the
    // caller bounds them.
    let bound = end.is_none().then_some(deadline.at_ns());
    let now = started_ns;
    budget.configure(s.budget);
    budget.deposit(now);
    call.set
        .ejections()
        .set_panic_threshold(s.outlier.panic_threshold_percent);
    deadline.propagate(now, &mut parts.headers);
    let method = parts.method.clone();
    let mut parts = KeptHead(Some(parts));
    // The body's signal, kept to learn whether a failed attempt was the client's doing.
    let watch = end.clone();
    let mut end = end;
    // A request a failed connection handed back unsent, ready for the next replica.
    let mut unsent_req: Option<Box<Request<RequestBody>>> = None;
    let mut exclude: Vec<SocketAddr> = Vec::new();
    let (mut retries, mut unsent) = (0u32, 0usize);
    let mut last_error: Option<ProxyError> = None;
    let mut is_retry = false;
    let mut now = now;
    loop {
        let endpoint = match pick(call, &exclude, now) {
            Ok(e) => e,
            Err(e) => return Err(last_error.unwrap_or(e)),
        };
        let req = match (unsent_req.take(), &mut source) {
            (Some(r), _) => Outgoing::Owned(r),
            (None, Source::Replay(bytes)) => match &*parts {
                Some(p) => Outgoing::Replay(p, bytes.clone()),
                None => return Err(last_error.unwrap_or(ProxyError::Timeout)),
            },
            (None, Source::Once(body)) => match (parts.take(), body.take()) {
                (Some(p), Some(b)) => {
                    let mut body = RequestBody::streaming(b, call.policy.max_body)
                        .with_idle_timeout(s.stream_idle_timeout);
                    if let Some(end) = end.take() {
                        body = body.with_end_signal(end);
                    }
                    Outgoing::Owned(Box::new(Request::from_parts(p, body)))
                }
                _ => return Err(last_error.unwrap_or(ProxyError::Timeout)),
            },
        };
        // The last possible try gets whatever time is left (a per-try timeout would only turn
        // a slow success into a 504), and so does a streamed body, which is sent only once;
        // earlier ones get the per-try timeout.
        let per_try = if retries >= policy.attempts || !matches!(source, Source::Replay(_)) {
            None
        } else {
            s.per_try_timeout
        };
        let limit = deadline.attempt_timeout(now, per_try);
        endpoint.pool.set_connect_timeout(s.connect_timeout);
        endpoint
            .pool
            .set_response_limits(call.policy.response_limits);
        let slot = endpoint.pending.try_acquire(None);
        let attempt_started = now;
        let hedge = if is_retry {
            None
        } else {
            hedge_delay(call, &method, &source, deadline, now)
        };
        let (endpoint, result) = match (hedge, &source, &*parts) {
            (Some(delay), Source::Replay(bytes), Some(p)) => {
                let copy = Outgoing::Replay(p, bytes.clone());
                let hedge = Box::pin(hedged(
                    call, &policy, endpoint, req, copy, delay, limit, &exclude,
                ));
                let Some(h) = bounded(bound, hedge).await else {
                    return Err(deadline_passed(call));
                };
                if let Some(other) = h.2 {
                    exclude.push(other.addr());
                }
                (h.0, h.1)
            }
            _ => {
                let expires = clock::instant_at(now.saturating_add(duration_ns(limit)));
                let tried = attempt(endpoint, req, call.upgrade, call.relay(), now);
                (endpoint, tokio::time::timeout_at(expires, tried).await)
            }
        };
        drop(slot);
        // An answer's guard holds the reading taken when its headers arrived.
        now = match &result {
            Ok(Ok((_, guard, _))) => guard.answered_ns(),
            _ => clock::now_ns(),
        };
        call.last_ns.store(now, Ordering::Relaxed);
        if s.hedge.is_some()
            && let Ok(Ok(_)) = &result
        {
            let took = clock::since(attempt_started, now);
            call.route.resilience.latency.record(took);
        }
        let (outcome, reply) = match result {
            Err(_) => {
                record(
                    call.shared,
                    s,
                    call.set,
                    endpoint,
                    Verdict::Timeout,
                    None,
                    now,
                );
                last_error = Some(ProxyError::Timeout);
                (Outcome::PerTryTimeout, None)
            }
            Ok(Ok((mut resp, guard, h1))) => {
                let status = resp.status();
                let verdict = verdict_of(status);
                let hint = pause_hint(status, &mut resp);
                record(call.shared, s, call.set, endpoint, verdict, hint, now);
                if is_retry {
                    budget.record_retry(verdict == Verdict::Success);
                }
                if !policy.retries_status(status) {
                    return respond(
                        resp,
                        guard,
                        h1,
                        client_upgrade.take(),
                        s.stream_idle_timeout,
                    );
                }
                (Outcome::Status(status), Some((resp, guard, h1)))
            }
            Ok(Err(AttemptError::NotSent { back, error, news })) => {
                if news {
                    record(
                        call.shared,
                        s,
                        call.set,
                        endpoint,
                        Verdict::Failure,
                        None,
                        now,
                    );
                }
                unsent_req = back;
                last_error = Some(ProxyError::Connect(error));
                (Outcome::NotSent, None)
            }
            Ok(Err(AttemptError::Failed(error))) => {
                if let Some(failure) = watch.as_ref().and_then(EndSignal::failure) {
                    // The client's body broke the exchange; the replica is not to blame.
                    return Err(ProxyError::from_body_failure(failure, call.policy, s));
                }
                if !error.blames_upstream() {
                    return Err(error);
                }
                record(
                    call.shared,
                    s,
                    call.set,
                    endpoint,
                    Verdict::Failure,
                    None,
                    now,
                );
                last_error = Some(error);
                (Outcome::Reset, None)
            }
        };
        if is_retry && reply.is_none() {
            budget.record_retry(false);
        }
        let replayable = matches!(source, Source::Replay(_)) || unsent_req.is_some();
        let next = Attempts {
            retries,
            unsent,
            replayable,
        };
        match decide(
            call, &policy, &method, outcome, endpoint, next, &exclude, deadline,
        ) {
            Some((reason, backoff)) => {
                // The held response (a retryable status) is dropped: the retry replaces it.
                drop(reply);
                exclude.push(endpoint.addr());
                if reason == RetryReason::NotSent {
                    unsent += 1;
                } else {
                    retries += 1;
                }
                is_retry = true;
                tracing::debug!(
                    endpoint = endpoint.name(),
                    reason = reason.as_str(),
                    backoff_ms = backoff.as_millis() as u64,
                    "retrying on another replica"
                );
                if !backoff.is_zero() {
                    if bounded(bound, tokio::time::sleep(backoff)).await.is_none() {
                        return Err(deadline_passed(call));
                    }
                    now = clock::now_ns();
                }
            }
            None => {
                return match reply {
                    Some((resp, guard, h1)) => respond(
                        resp,
                        guard,
                        h1,
                        client_upgrade.take(),
                        s.stream_idle_timeout,
                    ),
                    None => Err(last_error.take().unwrap_or(ProxyError::Timeout)),
                };
            }
        }
    }
}

/// What one attempt produced: its answer, or a per-try timeout.
type AttemptResult = Result<Result<Attempted, AttemptError>, tokio::time::error::Elapsed>;

/// When to hedge this request: only an idempotent read with a replayable body on a route with
/// hedging, once the route's latency record knows its percentile, and only if a hedge sent then
/// could still finish before the deadline.
fn hedge_delay(
    call: &Call<'_>,
    method: &Method,
    source: &Source,
    deadline: Deadline,
    now: u64,
) -> Option<Duration> {
    let config = call.policy.resilience.hedge.as_ref()?;
    if call.upgrade
        || !matches!(*method, Method::GET | Method::HEAD)
        || !matches!(source, Source::Replay(_))
    {
        return None;
    }
    let delay = call.route.resilience.latency.hedge_delay(config)?;
    deadline
        .can_start(now, delay, Duration::ZERO)
        .then_some(delay)
}

/// Sends `req` to `first`; if it has not answered after `delay`, sends `copy` to another
/// replica (charged to the retry budget) and keeps the first acceptable answer, cancelling
/// the other attempt. Returns the replica whose answer is returned, that answer, and the
/// other replica when both failed (its failure is already recorded).
#[allow(clippy::too_many_arguments)]
async fn hedged<'a>(
    call: &Call<'a>,
    policy: &RetryPolicy,
    first: &'a Arc<Endpoint>,
    req: Outgoing<'_>,
    copy: Outgoing<'_>,
    delay: Duration,
    limit: Duration,
    exclude: &[SocketAddr],
) -> (&'a Arc<Endpoint>, AttemptResult, Option<&'a Arc<Endpoint>>) {
    let a = tokio::time::timeout(
        limit,
        attempt(first, req, false, call.relay(), clock::now_ns()),
    );
    tokio::pin!(a);
    tokio::select! {
        r = &mut a => return (first, r, None),
        _ = tokio::time::sleep(delay) => {}
    }
    let now = clock::now_ns();
    let mut others = exclude.to_vec();
    others.push(first.addr());
    let Ok(second) = pick(call, &others, now) else {
        return (first, a.await, None);
    };
    let metrics = &call.route.resilience.metrics;
    if let Err(refusal) =
        call.shared
            .resilience
            .budget
            .withdraw(now, RetryKind::Repeat, call.set.len())
    {
        metrics.refused(refusal);
        return (first, a.await, None);
    }
    metrics.retry(RetryReason::Hedge);
    let b = tokio::time::timeout(limit, attempt(second, copy, false, call.relay(), now));
    tokio::pin!(b);
    let acceptable = |r: &AttemptResult| matches!(r, Ok(Ok((resp, _, _))) if !policy.retries_status(resp.status()));
    let (winner, result, loser, pending_first) = tokio::select! {
        r = &mut a => (first, r, second, false),
        r = &mut b => (second, r, first, true),
    };
    if acceptable(&result) {
        return (winner, result, None);
    }
    // The earlier answer is not usable: wait for the other attempt, and count the failure.
    record_result(call, winner, &result);
    let other = if pending_first { a.await } else { b.await };
    (loser, other, Some(winner))
}

/// Records a finished attempt that will not be processed further.
fn record_result(call: &Call<'_>, endpoint: &Endpoint, result: &AttemptResult) {
    let verdict = match result {
        Err(_) => Verdict::Timeout,
        Ok(Ok((resp, _, _))) => verdict_of(resp.status()),
        Ok(Err(AttemptError::Failed(e))) if !e.blames_upstream() => return,
        Ok(Err(AttemptError::NotSent { news: false, .. })) => return,
        Ok(Err(_)) => Verdict::Failure,
    };
    let s = &call.policy.resilience;
    record(
        call.shared,
        s,
        call.set,
        endpoint,
        verdict,
        None,
        clock::now_ns(),
    );
}

/// How many attempts a request has made, and whether it can be sent again.
#[derive(Clone, Copy)]
struct Attempts {
    retries: u32,
    unsent: usize,
    replayable: bool,
}

/// Whether to retry after `outcome` on `endpoint`, and after what backoff.
#[allow(clippy::too_many_arguments)]
fn decide(
    call: &Call<'_>,
    policy: &RetryPolicy,
    method: &Method,
    outcome: Outcome,
    endpoint: &Endpoint,
    done: Attempts,
    exclude: &[SocketAddr],
    deadline: Deadline,
) -> Option<(RetryReason, Duration)> {
    let reason = policy.classify(method, outcome)?;
    let kind = if reason == RetryReason::NotSent {
        if done.unsent + 1 >= MAX_CONNECT_ATTEMPTS {
            return None;
        }
        RetryKind::Unsent
    } else {
        if done.retries >= policy.attempts || !done.replayable {
            return None;
        }
        RetryKind::Repeat
    };
    let now = clock::now_ns();
    let backoff = match kind {
        // Nothing reached a replica: go to the next one at once.
        RetryKind::Unsent => Duration::ZERO,
        RetryKind::Repeat => policy.backoff.jittered(done.retries + 1),
    };
    // The fastest replica still to try sets what a retry needs at least.
    let expected = call
        .set
        .endpoints()
        .iter()
        .filter(|e| e.addr() != endpoint.addr() && !exclude.contains(&e.addr()))
        .map(|e| e.load.rtt_ns(now))
        .min_by(f64::total_cmp)
        .map_or(Duration::ZERO, |ns| Duration::from_nanos(ns as u64));
    if !deadline.can_start(now, backoff, expected) {
        return None;
    }
    let metrics = &call.route.resilience.metrics;
    if let Err(refusal) = call
        .shared
        .resilience
        .budget
        .withdraw(now, kind, call.set.len())
    {
        metrics.refused(refusal);
        return None;
    }
    metrics.retry(reason);
    Some((reason, backoff))
}

/// Selects a replica, passing over those at their request caps, a local workload failing its
/// health check, and those whose adaptive breaker drops this attempt.
fn pick<'a>(
    call: &Call<'a>,
    exclude: &[SocketAddr],
    now: u64,
) -> Result<&'a Arc<Endpoint>, ProxyError> {
    let s = &call.policy.resilience;
    let mut skipped: Vec<SocketAddr> = Vec::new();
    loop {
        let candidate = if skipped.is_empty() {
            select(call.route, call.set, call.key, exclude, now)
        } else {
            let both: Vec<SocketAddr> = exclude.iter().chain(&skipped).copied().collect();
            select(call.route, call.set, call.key, &both, now)
        };
        let Some(e) = candidate else {
            return Err(if skipped.is_empty() {
                ProxyError::NoHealthyEndpoints
            } else {
                ProxyError::CircuitOpen
            });
        };
        let at_cap = s
            .max_concurrent_per_replica
            .is_some_and(|max| e.load.inflight() >= max)
            || s.max_pending_per_replica
                .is_some_and(|max| e.pending.held() >= max);
        if at_cap {
            e.resilience_metrics.capacity_skips.inc();
        } else if e.is_local() && call.shared.resilience.local_workload_failing() {
            // The active check says the workload is not ready: peers serve instead.
        } else if e.breaker.allow(now, rand::random, &s.breaker).is_err() {
            e.resilience_metrics.breaker_drops.inc();
        } else {
            return Ok(e);
        }
        skipped.push(e.addr());
    }
}

/// Feeds one attempt's verdict to the replica's breaker and outlier detector and to the
/// budget's correlation check, ejecting the replica when the detector says so.
fn record(
    shared: &Shared,
    s: &Settings,
    set: &EndpointSet,
    endpoint: &Endpoint,
    verdict: Verdict,
    pause: Option<Duration>,
    now: u64,
) {
    let accepted = verdict == Verdict::Success;
    endpoint.breaker.record(now, accepted, &s.breaker);
    let id = endpoint.name_hash();
    shared.resilience.budget.record_attempt(now, id, !accepted);
    if let Some(reason) = endpoint.outlier.record(now, verdict, &s.outlier) {
        // Replicas whose ejection is over give their slot back before the cap is checked.
        for e in set.endpoints() {
            let _ = e.outlier.state(now);
        }
        if endpoint.outlier.eject(now, reason, &s.outlier) {
            endpoint.resilience_metrics.ejected(reason);
            tracing::warn!(
                endpoint = endpoint.name(),
                address = %endpoint.addr(),
                ?reason,
                "replica ejected"
            );
        }
    } else if let Some(pause) = pause
        && endpoint.outlier.pause(now, pause, &s.outlier)
    {
        endpoint.resilience_metrics.ejected(EjectReason::RetryAfter);
        tracing::info!(
            endpoint = endpoint.name(),
            pause_ms = pause.as_millis() as u64,
            "replica asked for a pause with Retry-After"
        );
    }
}

/// How a status counts for outlier detection and the breaker.
fn verdict_of(status: StatusCode) -> Verdict {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Verdict::Overloaded
    } else if status.is_server_error() {
        Verdict::Failure
    } else {
        Verdict::Success
    }
}

/// A `Retry-After` in seconds on a 503 or 429: the replica asks to be left alone that long.
fn pause_hint(status: StatusCode, resp: &mut Response<UpstreamBody>) -> Option<Duration> {
    if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let secs: u64 = upstream_headers(resp)
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Reads a request body into memory, up to `limit` bytes, within the caller's deadline and
/// the stream idle timeout.
async fn read_whole(
    body: ClientBody,
    limit: u64,
    idle: Option<Duration>,
    deadline: Deadline,
) -> Result<Bytes, ProxyError> {
    let body = RequestBody::streaming(body, None).with_idle_timeout(idle);
    let read = retry::buffer(body, limit);
    let read = match deadline.caller_ns() {
        Some(at) => tokio::time::timeout_at(clock::instant_at(at), read)
            .await
            .map_err(|_| ProxyError::Timeout)?,
        None => read.await,
    };
    read.map_err(|e| match e {
        BufferError::TooLarge { limit } => ProxyError::BodyTooLarge(BodyTooLarge { limit }),
        BufferError::Read(RequestBodyError::Client(e)) => ProxyError::ClientBody(e),
        BufferError::Read(RequestBodyError::Idle(idle)) => ProxyError::ClientIdle(idle),
        BufferError::Read(RequestBodyError::TooLarge(e)) => ProxyError::BodyTooLarge(e),
    })
}

/// `broadcast` mode: the request goes to every ready replica; the first success is answered
/// once `quorum` replicas succeeded.
async fn fan_out(
    call: &Call<'_>,
    mut parts: Parts,
    bytes: Bytes,
    deadline: Deadline,
    quorum: Option<u32>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let now = clock::now_ns();
    deadline.propagate(now, &mut parts.headers);
    // The copies travel into tasks of their own, which cannot borrow the pending fields.
    if let Some(forwarding) = call.forwarding {
        forwarding.apply(&mut parts.headers);
    }
    let local_failing = call.shared.resilience.local_workload_failing();
    let mut targets: Vec<Arc<Endpoint>> = call
        .set
        .endpoints()
        .iter()
        .filter(|e| e.is_eligible(now) && !(e.is_local() && local_failing))
        .cloned()
        .collect();
    if targets.is_empty() {
        // Panic routing, as for single picks: every replica is down or ejected, so all are
        // tried rather than none.
        targets = call.set.endpoints().to_vec();
    }
    let needed = broadcast::quorum(quorum, targets.len());
    let per_try = deadline.attempt_timeout(now, call.policy.resilience.per_try_timeout);
    let settings = Arc::new(call.policy.resilience.clone());
    let limits = call.policy.response_limits;
    let attempts: Vec<_> = targets
        .into_iter()
        .map(|endpoint| {
            // Each copy travels into its own task, so it owns its head.
            let req = Outgoing::Owned(Box::new(rebuild(&parts, bytes.clone())));
            let shared = Arc::clone(call.shared);
            let set = Arc::clone(call.set);
            let s = Arc::clone(&settings);
            async move {
                let relay = Relay {
                    limits,
                    interim: None,
                    forwarding: None,
                    // The chosen answer gets the acknowledgement count in its map.
                    fields_as_bytes: false,
                };
                let result =
                    tokio::time::timeout(per_try, attempt(&endpoint, req, false, relay, now)).await;
                let now = clock::now_ns();
                // `None`: nothing to hold against the replica (the client's fault, or a
                // connect failure that was old news).
                let (verdict, answer) = match result {
                    Ok(Ok((resp, guard, h1))) => (
                        Some(verdict_of(resp.status())),
                        respond(resp, guard, h1, None, s.stream_idle_timeout),
                    ),
                    Ok(Err(AttemptError::NotSent { error, news, .. })) => (
                        news.then_some(Verdict::Failure),
                        Err(ProxyError::Connect(error)),
                    ),
                    Ok(Err(AttemptError::Failed(e))) => {
                        (e.blames_upstream().then_some(Verdict::Failure), Err(e))
                    }
                    Err(_) => (Some(Verdict::Timeout), Err(ProxyError::Timeout)),
                };
                if let Some(verdict) = verdict {
                    record(&shared, &s, &set, &endpoint, verdict, None, now);
                }
                answer
            }
        })
        .collect();
    let metrics = &call.route.resilience.metrics;
    let ok = |r: &Result<Response<ResponseBody>, ProxyError>| matches!(r, Ok(resp) if resp.status().is_success());
    match broadcast::fan_out(attempts, needed, ok).await {
        Ok((Ok(mut resp), acks)) => {
            metrics.broadcast_ok.inc();
            resp.headers_mut()
                .insert(ACKS_HEADER, HeaderValue::from(acks));
            Ok(resp)
        }
        Ok((Err(e), _)) => Err(e),
        Err((error, _)) => {
            metrics.broadcast_failed.inc();
            tracing::debug!(%error, "broadcast failed");
            Err(ProxyError::Broadcast(error))
        }
    }
}

/// A duration in nanoseconds, saturating.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
