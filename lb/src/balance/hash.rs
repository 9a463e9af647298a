//! Consistent hashing for `affinity` routes: a hash ring and a Maglev table, both built from
//! endpoint names (not positions), so a replica that leaves only moves its own keys.

/// Virtual nodes per endpoint on the ring. Fixed, so adding a replica never reshuffles the
/// points of the others.
pub const RING_VNODES: u32 = 160;
/// Maglev lookup table size: prime, and Envoy's default.
pub const MAGLEV_TABLE_SIZE: usize = 65_537;

/// 64-bit FNV-1a followed by a SplitMix64 finaliser: stable across processes and Rust versions
/// (unlike `DefaultHasher`), which matters because every sidecar must map a key to the same
/// replica.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash ring of virtual nodes.
#[derive(Debug)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
    endpoints: usize,
}

/// A Maglev lookup table.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

// === impl Ring ===

impl Ring {
    /// Builds the ring for endpoints of these names; a candidate index is a position in `names`.
    pub fn new<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let endpoints = names.len();
        let mut points = Vec::with_capacity(endpoints * RING_VNODES as usize);
        for (i, name) in names.enumerate() {
            for v in 0..RING_VNODES {
                points.push((hash_bytes(name.as_bytes(), u64::from(v)), i as u32));
            }
        }
        points.sort_unstable();
        Self { points, endpoints }
    }

    /// Endpoint indices in the order a key tries them: its owner first, then the next distinct
    /// endpoints clockwise.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        let mut seen: u64 = 0;
        let mut seen_big: Vec<usize> = Vec::new();
        let mut found = 0;
        let wanted = self.endpoints;
        (0..n)
            .map(move |i| self.points[(start + i) % n].1 as usize)
            .filter(move |&idx| {
                if found >= wanted {
                    return false;
                }
                let fresh = if idx < 64 {
                    let bit = 1u64 << idx;
                    let fresh = seen & bit == 0;
                    seen |= bit;
                    fresh
                } else if seen_big.contains(&idx) {
                    false
                } else {
                    seen_big.push(idx);
                    true
                };
                found += usize::from(fresh);
                fresh
            })
    }
}

// === impl Maglev ===

impl Maglev {
    /// Builds the table for endpoints of these names (Maglev paper, section 3.4); an entry is a
    /// position in `names`.
    pub fn new<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let m = MAGLEV_TABLE_SIZE as u64;
        let n = names.len();
        if n == 0 {
            return Self { table: Vec::new() };
        }
        let perms: Vec<(u64, u64)> = names
            .map(|name| {
                let name = name.as_bytes();
                let offset = hash_bytes(name, 0xaaaa) % m;
                let skip = hash_bytes(name, 0x5555) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == MAGLEV_TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// The owner of `key` and, for fallback, the owners of rehashed keys: a deterministic
    /// sequence per key, so fallbacks are stable too.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.table.len().max(1) as u64;
        (0..16u64).filter_map(move |k| {
            let h = if k == 0 { key } else { mix(key ^ k) };
            self.table.get((h % m) as usize).map(|&i| i as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replica names in the order an endpoint set keeps them (by ordinal).
    fn names(ids: &[u16]) -> Vec<String> {
        ids.iter().map(|p| format!("replica-{p}")).collect()
    }

    fn iter(names: &[String]) -> impl ExactSizeIterator<Item = &str> {
        names.iter().map(String::as_str)
    }

    fn owners(names: &[String], lookup: impl Fn(u64) -> usize, keys: &[u64]) -> Vec<String> {
        keys.iter().map(|&k| names[lookup(k)].clone()).collect()
    }

    fn keys() -> Vec<u64> {
        (0..10_000u64)
            .map(|i| hash_bytes(format!("user-{i}").as_bytes(), 0))
            .collect()
    }

    #[test]
    fn ring_moves_only_the_keys_of_a_departed_replica() {
        let before = names(&[1, 2, 3, 4, 5]);
        let after = names(&[1, 2, 4, 5]);
        let (rb, ra) = (Ring::new(iter(&before)), Ring::new(iter(&after)));
        let keys = keys();
        let ob = owners(&before, |k| rb.candidates(k).next().unwrap(), &keys);
        let oa = owners(&after, |k| ra.candidates(k).next().unwrap(), &keys);
        for (b, a) in ob.iter().zip(&oa) {
            if b != "replica-3" {
                assert_eq!(b, a, "a key of a remaining replica moved");
            }
        }
        // Spread: every replica owns a fair share (expected 2000 each out of 10000).
        for p in [1, 2, 3, 4, 5] {
            let n = ob.iter().filter(|o| **o == format!("replica-{p}")).count();
            assert!((1200..2800).contains(&n), "replica-{p} owns {n} keys");
        }
    }

    #[test]
    fn ring_candidates_list_each_endpoint_once() {
        let ring = Ring::new(iter(&names(&[1, 2, 3])));
        let mut c: Vec<usize> = ring.candidates(42).collect();
        assert_eq!(c.len(), 3);
        c.sort_unstable();
        assert_eq!(c, vec![0, 1, 2]);
    }

    #[test]
    fn maglev_is_balanced_and_moves_few_keys() {
        let before = names(&[1, 2, 3, 4, 5]);
        let after = names(&[1, 2, 4, 5]);
        let (mb, ma) = (Maglev::new(iter(&before)), Maglev::new(iter(&after)));
        let keys = keys();
        let ob = owners(&before, |k| mb.candidates(k).next().unwrap(), &keys);
        let oa = owners(&after, |k| ma.candidates(k).next().unwrap(), &keys);
        let stayers = ob.iter().filter(|b| *b != "replica-3").count();
        let moved = ob
            .iter()
            .zip(&oa)
            .filter(|(b, a)| *b != "replica-3" && b != a)
            .count();
        assert!(
            moved * 100 < stayers * 5,
            "{moved} of {stayers} keys of remaining replicas moved"
        );
        for p in [1, 2, 3, 4, 5] {
            let n = ob.iter().filter(|o| **o == format!("replica-{p}")).count();
            assert!((1700..2300).contains(&n), "replica-{p} owns {n} keys");
        }
    }
}
