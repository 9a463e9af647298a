//! The balancing algorithms by name, as configuration spells them.

use serde::Serialize;

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

/// Which consistent-hash table an `affinity` route uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashAlgorithm {
    /// [`Ring`](super::hash::Ring).
    RingHash,
    /// [`Maglev`](super::hash::Maglev).
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
