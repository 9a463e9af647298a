//! Choosing a replica for a request.
//!
//! Every function here is synchronous and allocation-free on the common path: it reads atomics
//! of an immutable [`EndpointSet`] and returns a reference into it. `exclude` lists endpoints
//! an earlier attempt of the same request already failed on, so that a retry (connect failures
//! here, policy-driven retries in the resilience layer) goes elsewhere.
//!
//! Selection first considers *eligible* endpoints (not down, not draining, not capped by slow
//! start). Only when none is, it falls back to draining and slow-start-capped ones, in the
//! manner of Kubernetes' terminating-endpoint fallback: a slower answer beats a 503.

pub mod hash;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use crate::endpoint::{Eligibility, Endpoint, EndpointSet};
use datastream_resilience::clock;

/// `localFirst` keeps the local replica while its cost is at most this multiple of the best
/// peer's: a local hop saves a network round trip, worth some extra queueing, not a lot.
pub const LOCAL_FIRST_FACTOR: f64 = 2.0;
/// Bounded-load factor for consistent hashing: an owner with more than this multiple of the
/// average in-flight load passes the key to the next candidate (Envoy's hash_balance_factor 125).
pub const HASH_BALANCE_FACTOR: f64 = 1.25;
/// Random draws p2c makes for an eligible pair before it scans (go-zero's pickTimes).
const P2C_DRAWS: usize = 3;

/// A balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Power of two choices over peak-EWMA latency weighted by in-flight requests.
    P2cEwma,
    /// Each eligible replica in turn.
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Consistent hashing on a ring of virtual nodes, with bounded load.
    RingHash,
    /// Consistent hashing with a Maglev table, with bounded load.
    Maglev,
}

/// A balancer for `balance` routes: a policy plus its state.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    local_first: bool,
    next: AtomicUsize,
}

/// Which consistent-hash table an `affinity` route uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashAlgorithm {
    /// [`hash::Ring`].
    RingHash,
    /// [`hash::Maglev`].
    Maglev,
}

// === impl Policy ===

impl Policy {
    /// All policies, in documentation order.
    pub const ALL: [Policy; 5] = [
        Policy::P2cEwma,
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::RingHash,
        Policy::Maglev,
    ];

    /// The policy's name as written in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Policy::P2cEwma => "p2c-ewma",
            Policy::RoundRobin => "round-robin",
            Policy::LeastRequest => "least-request",
            Policy::RingHash => "ring-hash",
            Policy::Maglev => "maglev",
        }
    }

    /// Parses a policy name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The hash table this policy implies for affinity routes (ring-hash unless maglev).
    pub fn hash_algorithm(self) -> HashAlgorithm {
        match self {
            Policy::Maglev => HashAlgorithm::Maglev,
            _ => HashAlgorithm::RingHash,
        }
    }
}

// === impl Balancer ===

impl Balancer {
    /// A balancer for `policy`; `local_first` prefers the local replica while it keeps up.
    pub fn new(policy: Policy, local_first: bool) -> Self {
        Self {
            policy,
            local_first,
            next: AtomicUsize::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an endpoint. `key` feeds the hashing policies (a balance route under ring-hash or
    /// maglev hashes the client address).
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        key: u64,
        exclude: &[SocketAddr],
    ) -> Option<&'a Arc<Endpoint>> {
        let now = clock::now_ns();
        let eps = set.endpoints();
        if self.local_first
            && let Some(local) = local_preferred(set, now, exclude)
        {
            return Some(local);
        }
        let picked = match self.policy {
            Policy::P2cEwma => {
                let share = inflight_share(eps, now, exclude);
                p2c(eps, now, exclude, true, |e| e.load.cost_per(now, share))
            }
            Policy::LeastRequest => {
                // Every replica with fewer requests in flight wins a comparison: none starves.
                p2c(eps, now, exclude, false, |e| f64::from(e.load.inflight()))
            }
            Policy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                round_robin(eps, start, now, exclude)
            }
            Policy::RingHash => {
                return pick_hashed(
                    set,
                    HashAlgorithm::RingHash,
                    key,
                    HASH_BALANCE_FACTOR,
                    exclude,
                );
            }
            Policy::Maglev => {
                return pick_hashed(
                    set,
                    HashAlgorithm::Maglev,
                    key,
                    HASH_BALANCE_FACTOR,
                    exclude,
                );
            }
        };
        picked.or_else(|| fallback(eps, now, exclude))
    }
}

/// The local replica, if `localFirst` should keep it: eligible and not much costlier than the
/// best eligible peer.
fn local_preferred<'a>(
    set: &'a EndpointSet,
    now: u64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    let local = set.local()?;
    if !usable(local, now, exclude) {
        return None;
    }
    let best_peer = set
        .endpoints()
        .iter()
        .filter(|e| !e.is_local() && usable(e, now, exclude))
        .map(|e| e.load.cost(now))
        .min_by(f64::total_cmp);
    match best_peer {
        Some(best) if local.load.cost(now) > best * LOCAL_FIRST_FACTOR => None,
        _ => Some(local),
    }
}

/// The average number of requests in flight over the usable endpoints: the unit p2c-ewma
/// counts a replica's in-flight requests in (see [`Load::cost_per`](crate::endpoint::Load::cost_per)).
fn inflight_share(eps: &[Arc<Endpoint>], now: u64, exclude: &[SocketAddr]) -> f64 {
    let (total, n) = eps
        .iter()
        .filter(|e| usable(e, now, exclude))
        .fold((0u64, 0u32), |(t, n), e| {
            (t + u64::from(e.load.inflight()), n + 1)
        });
    if n == 0 {
        1.0
    } else {
        total as f64 / f64::from(n)
    }
}

fn usable(e: &Endpoint, now: u64, exclude: &[SocketAddr]) -> bool {
    e.is_eligible(now) && !exclude.contains(&e.addr())
}

/// Power of two choices: draw two distinct endpoints, keep the cheaper.
///
/// With `probe`, the loser of a pair is taken instead when it is idle and has not been picked
/// for [`FORCE_PICK`](crate::endpoint::FORCE_PICK) (go-zero's `forcePick`): a latency estimate
/// only changes when requests complete, so a replica that loses every comparison would keep
/// its old figure and never be seen to recover. It costs at most one request a second per
/// avoided replica.
fn p2c<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    exclude: &[SocketAddr],
    probe: bool,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    let picked = p2c_draw(eps, now, exclude, probe, &cost);
    if probe && let Some(e) = picked {
        e.load.picked(now);
    }
    picked
}

fn p2c_draw<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    exclude: &[SocketAddr],
    probe: bool,
    cost: &impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    match eps.len() {
        0 => return None,
        1 => return eps.first().filter(|e| usable(e, now, exclude)),
        _ => {}
    }
    let mut rng = rand::rng();
    for _ in 0..P2C_DRAWS {
        let a = rng.random_range(0..eps.len());
        let mut b = rng.random_range(0..eps.len() - 1);
        if b >= a {
            b += 1;
        }
        let (ea, eb) = (&eps[a], &eps[b]);
        match (usable(ea, now, exclude), usable(eb, now, exclude)) {
            (true, true) => {
                let (win, lose) = if cost(eb) < cost(ea) {
                    (eb, ea)
                } else {
                    (ea, eb)
                };
                if probe && lose.load.claim_probe(now) {
                    return Some(lose);
                }
                return Some(win);
            }
            (true, false) => return Some(ea),
            (false, true) => return Some(eb),
            (false, false) => {}
        }
    }
    // Most endpoints are unusable: the cheapest usable one, if any.
    eps.iter()
        .filter(|e| usable(e, now, exclude))
        .min_by(|a, b| cost(a).total_cmp(&cost(b)))
}

fn round_robin<'a>(
    eps: &'a [Arc<Endpoint>],
    start: usize,
    now: u64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    let n = eps.len();
    (0..n)
        .map(|i| &eps[(start + i) % n])
        .find(|e| usable(e, now, exclude))
}

/// When nothing is eligible: a draining or slow-start-capped endpoint still serves.
fn fallback<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    eps.iter()
        .filter(|e| !exclude.contains(&e.addr()))
        .filter(|e| {
            matches!(
                e.eligibility(now),
                Eligibility::Draining | Eligibility::SlowStartFull { .. }
            )
        })
        .min_by_key(|e| e.load.inflight())
}

/// Consistent hashing with bounded load: the key's first candidate that is usable and below
/// `load_bound` times the average in-flight load (0 disables the bound); else its first usable
/// candidate.
pub fn pick_hashed<'a>(
    set: &'a EndpointSet,
    algorithm: HashAlgorithm,
    key: u64,
    load_bound: f64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    let now = clock::now_ns();
    let eps = set.endpoints();
    if eps.is_empty() {
        return None;
    }
    let (total, usable_count) = eps
        .iter()
        .filter(|e| usable(e, now, exclude))
        .fold((0u64, 0u64), |(t, n), e| {
            (t + u64::from(e.load.inflight()), n + 1)
        });
    if usable_count == 0 {
        return fallback(eps, now, exclude);
    }
    let cap = if load_bound > 0.0 {
        (load_bound * (total + 1) as f64 / usable_count as f64).ceil() as u32
    } else {
        u32::MAX
    };
    let mut first_usable = None;
    let candidates = match algorithm {
        HashAlgorithm::RingHash => Candidates::Ring(set.ring().candidates(key)),
        HashAlgorithm::Maglev => Candidates::Maglev(set.maglev().candidates(key)),
    };
    for i in candidates {
        let e = &eps[i];
        if !usable(e, now, exclude) {
            continue;
        }
        if e.load.inflight() < cap {
            return Some(e);
        }
        first_usable.get_or_insert(e);
    }
    first_usable.or_else(|| {
        // Maglev's probe sequence is finite: scan in ring order for anything usable.
        set.ring()
            .candidates(key)
            .map(|i| &eps[i])
            .find(|e| usable(e, now, exclude))
    })
}

/// Either table's candidate sequence, without boxing.
enum Candidates<R, M> {
    Ring(R),
    Maglev(M),
}

impl<R: Iterator<Item = usize>, M: Iterator<Item = usize>> Iterator for Candidates<R, M> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Ring(r) => r.next(),
            Candidates::Maglev(m) => m.next(),
        }
    }
}

/// `primary` mode: the first endpoint in name order that is usable and has had no failure for
/// `hold_down` (so a recovered primary takes back only once it has been quiet that long); if
/// all usable ones failed recently, the first usable one.
pub fn pick_primary<'a>(
    set: &'a EndpointSet,
    hold_down: Duration,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    let now = clock::now_ns();
    let eps = set.endpoints();
    // Slow start limits how fast load moves onto a replica; a primary takes all of it anyway.
    let up = |e: &Endpoint| {
        !exclude.contains(&e.addr())
            && matches!(
                e.eligibility(now),
                Eligibility::Eligible | Eligibility::SlowStartFull { .. }
            )
    };
    eps.iter()
        .find(|e| up(e) && e.health.since_failure(now).is_none_or(|d| d >= hold_down))
        .or_else(|| eps.iter().find(|e| up(e)))
        .or_else(|| fallback(eps, now, exclude))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::metrics::LbMetrics;
    use crate::endpoint::{EndpointSpec, Failure};

    fn set(n: u16, local: Option<u16>) -> EndpointSet {
        let specs: Vec<EndpointSpec> = (1..=n)
            .map(|p| {
                let addr: SocketAddr = ([127, 0, 0, 1], p).into();
                EndpointSpec {
                    addr,
                    name: format!("r{p}"),
                    local: local == Some(p),
                    serving: true,
                }
            })
            .collect();
        EndpointSet::build(&EndpointSet::default(), &specs, 1, &LbMetrics::default())
    }

    fn counts(set: &EndpointSet, b: &Balancer, n: usize) -> Vec<usize> {
        let mut c = vec![0; set.len()];
        for i in 0..n {
            let e = b.pick(set, i as u64, &[]).expect("a pick");
            c[set
                .endpoints()
                .iter()
                .position(|x| Arc::ptr_eq(x, e))
                .unwrap()] += 1;
        }
        c
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.name()), Some(p));
        }
        assert_eq!(Policy::parse("random"), None);
    }

    #[test]
    fn round_robin_is_exact_and_skips_down_endpoints() {
        let s = set(3, None);
        let b = Balancer::new(Policy::RoundRobin, false);
        assert_eq!(counts(&s, &b, 300), vec![100, 100, 100]);
        s.endpoints()[1].health.failure(Failure::Connect);
        let c = counts(&s, &b, 300);
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], 300);
    }

    #[test]
    fn p2c_avoids_the_slow_endpoint() {
        let s = set(3, None);
        for (e, ms) in s.endpoints().iter().zip([2, 2, 40]) {
            e.load.observe(Duration::from_millis(ms));
        }
        let c = counts(&s, &Balancer::new(Policy::P2cEwma, false), 3000);
        assert_eq!(c[2], 0, "the slow endpoint never wins a pair: {c:?}");
    }

    #[test]
    fn least_request_follows_inflight() {
        let s = set(2, None);
        let _held = [s.endpoints()[0].start(), s.endpoints()[0].start()];
        let c = counts(&s, &Balancer::new(Policy::LeastRequest, false), 100);
        assert_eq!(c, vec![0, 100]);
    }

    #[test]
    fn local_first_keeps_local_until_it_is_much_slower() {
        let s = set(3, Some(2));
        let b = Balancer::new(Policy::P2cEwma, true);
        assert_eq!(counts(&s, &b, 50)[1], 50);
        for (e, ms) in s.endpoints().iter().zip([5, 50, 5]) {
            e.load.observe(Duration::from_millis(ms));
        }
        assert_eq!(counts(&s, &b, 50)[1], 0);
    }

    #[test]
    fn hashing_respects_bounded_load() {
        let s = set(3, None);
        let owner = pick_hashed(&s, HashAlgorithm::RingHash, 7, HASH_BALANCE_FACTOR, &[]).unwrap();
        let _held: Vec<_> = (0..10).map(|_| owner.start()).collect();
        let other = pick_hashed(&s, HashAlgorithm::RingHash, 7, HASH_BALANCE_FACTOR, &[]).unwrap();
        assert!(
            !Arc::ptr_eq(owner, other),
            "an overloaded owner passes the key on"
        );
    }

    #[test]
    fn primary_fails_over_and_takes_back_after_hold_down() {
        let s = set(3, None);
        let eps = s.endpoints();
        let hold = Duration::from_millis(50);
        assert!(Arc::ptr_eq(pick_primary(&s, hold, &[]).unwrap(), &eps[0]));
        eps[0].health.failure(Failure::Transport);
        // Not down (one transport failure), but within hold-down: the next one serves.
        assert!(Arc::ptr_eq(pick_primary(&s, hold, &[]).unwrap(), &eps[1]));
        std::thread::sleep(hold);
        assert!(Arc::ptr_eq(pick_primary(&s, hold, &[]).unwrap(), &eps[0]));
    }
}
