//! Routes that go to an owner: the key's replica under consistent hashing with bounded load
//! (`affinity`, and `balance` under ring-hash or maglev), and the primary (`primary`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::HashAlgorithm;
use super::balancer::{fallback, still_serves, usable};
use crate::endpoint::{Eligibility, Endpoint, EndpointSet};

/// Bounded-load factor for consistent hashing: an owner with more than this multiple of the
/// average in-flight load passes the key to the next candidate (Envoy's hash_balance_factor 125).
pub const HASH_BALANCE_FACTOR: f64 = 1.25;
/// Consistent hashing with bounded load at `now`: the key's first candidate that is usable and
/// below `load_bound` times the average in-flight load (0 disables the bound); else its first
/// usable candidate.
pub fn pick_hashed<'a>(
    set: &'a EndpointSet,
    algorithm: HashAlgorithm,
    key: u64,
    load_bound: f64,
    exclude: &[SocketAddr],
    now: u64,
) -> Option<&'a Arc<Endpoint>> {
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
        // The key's own order still decides, since its owner holds its data: the first
        // candidate that serves at all, else the first one (panic routing, see `fallback`).
        let order = || {
            set.ring()
                .candidates(key)
                .map(|i| &eps[i])
                .filter(|e| !exclude.contains(&e.addr()))
        };
        return order()
            .find(|e| still_serves(e.eligibility(now)))
            .or_else(|| order().next());
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
    now: u64,
) -> Option<&'a Arc<Endpoint>> {
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
