//! `balance` routes: power of two choices, least request and round robin, with the local
//! replica kept while it keeps up (`localFirst`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::{HASH_BALANCE_FACTOR, HashAlgorithm, Policy, pick_hashed};
use crate::endpoint::{Eligibility, Endpoint, EndpointSet};

/// `localFirst` keeps the local replica while its cost is at most this multiple of the best
/// peer's: a local hop saves a network round trip, worth some extra queueing, not a lot.
pub const LOCAL_FIRST_FACTOR: f64 = 2.0;
/// Random draws p2c makes for an eligible pair before it scans (go-zero's pickTimes).
const P2C_DRAWS: usize = 3;

/// A balancer for `balance` routes: a policy plus its state.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    local_first: bool,
    next: AtomicUsize,
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
    #[inline]
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an endpoint at `now` (a reading of the resilience clock). `key` feeds the hashing
    /// policies (a balance route under ring-hash or maglev hashes the client address).
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        key: u64,
        exclude: &[SocketAddr],
        now: u64,
    ) -> Option<&'a Arc<Endpoint>> {
        let eps = set.endpoints();
        if self.local_first
            && let Some(local) = local_preferred(set, now, exclude)
        {
            return Some(local);
        }
        let picked = match self.policy {
            Policy::P2cEwma => {
                let usable = Usable::of(eps, now, exclude);
                let share = inflight_share(eps, &usable);
                p2c(eps, now, &usable, true, |e| e.load.cost_per(now, share))
            }
            Policy::LeastRequest => {
                // Every replica with fewer requests in flight wins a comparison: none starves.
                // No in-flight share to compute, so only the drawn endpoints are judged.
                let usable = Usable::on_demand(now, exclude);
                p2c(eps, now, &usable, false, |e| f64::from(e.load.inflight()))
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
                    now,
                );
            }
            Policy::Maglev => {
                return pick_hashed(
                    set,
                    HashAlgorithm::Maglev,
                    key,
                    HASH_BALANCE_FACTOR,
                    exclude,
                    now,
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
fn inflight_share(eps: &[Arc<Endpoint>], usable: &Usable<'_>) -> f64 {
    let (total, n) = eps
        .iter()
        .enumerate()
        .filter(|&(i, _)| usable.at(eps, i))
        .fold((0u64, 0u32), |(t, n), (_, e)| {
            (t + u64::from(e.load.inflight()), n + 1)
        });
    if n == 0 {
        1.0
    } else {
        total as f64 / f64::from(n)
    }
}

/// Which endpoints of a set are usable at one clock reading. p2c-ewma judges them all once
/// per pick (the in-flight share needs every one, and the draws then read the result); a pick
/// that needs no share judges only the endpoints it draws.
struct Usable<'a> {
    /// Bit `i`: endpoint `i` is usable, for `i` below `judged`.
    first: u64,
    /// How many of the first endpoints `first` holds (at most 64); later ones are judged when
    /// asked.
    judged: usize,
    now: u64,
    exclude: &'a [SocketAddr],
}

impl<'a> Usable<'a> {
    /// Every endpoint judged now (the first 64 into bits).
    fn of(eps: &[Arc<Endpoint>], now: u64, exclude: &'a [SocketAddr]) -> Self {
        let first = eps
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, e)| usable(e, now, exclude))
            .fold(0u64, |bits, (i, _)| bits | 1 << i);
        Self {
            first,
            judged: eps.len().min(64),
            now,
            exclude,
        }
    }

    /// Each endpoint judged when asked.
    fn on_demand(now: u64, exclude: &'a [SocketAddr]) -> Self {
        Self {
            first: 0,
            judged: 0,
            now,
            exclude,
        }
    }

    #[inline]
    fn at(&self, eps: &[Arc<Endpoint>], i: usize) -> bool {
        if i < self.judged {
            self.first >> i & 1 == 1
        } else {
            usable(&eps[i], self.now, self.exclude)
        }
    }
}

pub(super) fn usable(e: &Endpoint, now: u64, exclude: &[SocketAddr]) -> bool {
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
    usable: &Usable<'_>,
    probe: bool,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    let picked = p2c_draw(eps, now, usable, probe, &cost);
    if probe && let Some(e) = picked {
        e.load.picked(now);
    }
    picked
}

fn p2c_draw<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    usable: &Usable<'_>,
    probe: bool,
    cost: &impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    match eps.len() {
        0 => return None,
        1 => return eps.first().filter(|_| usable.at(eps, 0)),
        _ => {}
    }
    for _ in 0..P2C_DRAWS {
        let (a, b) = draw_pair(eps.len());
        let (ea, eb) = (&eps[a], &eps[b]);
        match (usable.at(eps, a), usable.at(eps, b)) {
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
        .enumerate()
        .filter(|&(i, _)| usable.at(eps, i))
        .map(|(_, e)| e)
        .min_by(|a, b| cost(a).total_cmp(&cost(b)))
}

thread_local! {
    /// Each thread's generator for p2c's draws. A draw must differ from one request to the
    /// next, not be secret: the thread's CSPRNG (ChaCha) would refill a block every few dozen
    /// draws, on every request's path.
    static DRAWS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Two distinct indices below `n` (at least 2), uniformly.
fn draw_pair(n: usize) -> (usize, usize) {
    // An index is the high half of a 64-bit draw times the bound (Lemire's multiply-shift):
    // no division, and a bias of at most n / 2^64, far below anything a balancer can see.
    let below = |draw: u64, bound: usize| ((u128::from(draw) * bound as u128) >> 64) as usize;
    DRAWS.with_borrow_mut(|rng| {
        let a = below(rng.next_u64(), n);
        let mut b = below(rng.next_u64(), n - 1);
        if b >= a {
            b += 1;
        }
        (a, b)
    })
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

/// When nothing is eligible: a draining, slow-start-capped or busy probation endpoint still
/// serves (Kubernetes' terminating-endpoint fallback: a slower answer beats a 503); when even
/// those are missing, [`panic_pick`].
pub(super) fn fallback<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    eps.iter()
        .filter(|e| !exclude.contains(&e.addr()) && still_serves(e.eligibility(now)))
        .min_by_key(|e| e.load.inflight())
        .or_else(|| panic_pick(eps, now, exclude))
}

/// Whether an endpoint that is not eligible can still take a request when nothing else can.
pub(super) fn still_serves(eligibility: Eligibility) -> bool {
    matches!(
        eligibility,
        Eligibility::Draining | Eligibility::SlowStartFull { .. } | Eligibility::Probation
    )
}

/// Panic routing: every replica is down or ejected, so the one expected back soonest is tried
/// anyway (Envoy's panic threshold taken to its end). A connect attempt is cheap and, when it
/// fails, provably sent nothing; answering 503 from memory would turn away a replica that is
/// already back.
pub(super) fn panic_pick<'a>(
    eps: &'a [Arc<Endpoint>],
    now: u64,
    exclude: &[SocketAddr],
) -> Option<&'a Arc<Endpoint>> {
    eps.iter()
        .filter(|e| !exclude.contains(&e.addr()))
        .min_by_key(|e| match e.eligibility(now) {
            Eligibility::Down { retry_in_ms } | Eligibility::Ejected { retry_in_ms, .. } => {
                retry_in_ms
            }
            _ => 0,
        })
}

#[cfg(test)]
mod draw_tests {
    use super::draw_pair;

    #[test]
    fn draw_pair_gives_distinct_indices_in_range_every_pair_about_equally() {
        for n in [2usize, 3, 7] {
            let mut seen = vec![0u32; n * n];
            let draws = 6_000 * n * (n - 1);
            for _ in 0..draws {
                let (a, b) = draw_pair(n);
                assert!(a < n && b < n && a != b, "{a}, {b} of {n}");
                seen[a * n + b] += 1;
            }
            // 6,000 expected per ordered pair; 10% is more than ten standard deviations.
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    let got = seen[a * n + b];
                    assert!(
                        (5_400..=6_600).contains(&got),
                        "pair ({a}, {b}) of {n}: {got}"
                    );
                }
            }
        }
    }
}
