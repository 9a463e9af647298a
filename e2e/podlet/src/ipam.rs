//! Pod IP allocation inside the node's pod CIDR.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// Network address (host bits cleared).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    /// Addresses usable by pods: without the network address, the first host (the gateway/bridge by
    /// convention) and the broadcast address.
    pub fn pod_range(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u64 << (32 - u32::from(self.prefix));
        (2..size.saturating_sub(1)).map(move |off| Ipv4Addr::from(base + off as u32))
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if prefix > 30 {
            return Err(format!(
                "{s:?}: prefix must be at most /30 to leave room for pods"
            ));
        }
        let network = Ipv4Addr::from(u32::from(ip) & Self::mask(prefix));
        if network != ip {
            return Err(format!(
                "{s:?}: host bits set (network is {network}/{prefix})"
            ));
        }
        Ok(Self { network, prefix })
    }
}

/// Hands out pod IPs from a CIDR, lowest free first.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Cidr,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// An allocator with every pod address of `cidr` free.
    pub fn new(cidr: Ipv4Cidr) -> Self {
        Self {
            cidr,
            used: BTreeSet::new(),
        }
    }

    /// Allocates `preferred` when it is free and in range (a pod keeps its IP across podlet restarts),
    /// otherwise the lowest free address. `None` when the range is exhausted.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = preferred
            && self.cidr.pod_range().any(|c| c == ip)
            && self.used.insert(ip)
        {
            return Some(ip);
        }
        let ip = self.cidr.pod_range().find(|ip| !self.used.contains(ip))?;
        self.used.insert(ip);
        Some(ip)
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains("10.244.1.77".parse().unwrap()));
        assert!(!c.contains("10.244.2.1".parse().unwrap()));
        assert!("10.244.1.5/24".parse::<Ipv4Cidr>().is_err());
        assert!("10.244.1.0".parse::<Ipv4Cidr>().is_err());
        assert_eq!(c.to_string(), "10.244.1.0/24");
    }

    #[test]
    fn allocates_lowest_free_skipping_gateway_and_broadcast() {
        let mut ipam = Ipam::new("10.244.1.0/24".parse().unwrap());
        assert_eq!(ipam.allocate(None), Some("10.244.1.2".parse().unwrap()));
        assert_eq!(ipam.allocate(None), Some("10.244.1.3".parse().unwrap()));
        ipam.release("10.244.1.2".parse().unwrap());
        assert_eq!(ipam.allocate(None), Some("10.244.1.2".parse().unwrap()));
        let all: Vec<_> = std::iter::from_fn(|| ipam.allocate(None)).collect();
        assert_eq!(all.len(), 251);
        assert_eq!(all.last(), Some(&"10.244.1.254".parse().unwrap()));
    }

    #[test]
    fn preferred_address_kept_when_free() {
        let mut ipam = Ipam::new("10.244.1.0/24".parse().unwrap());
        let want: Ipv4Addr = "10.244.1.40".parse().unwrap();
        assert_eq!(ipam.allocate(Some(want)), Some(want));
        assert_eq!(
            ipam.allocate(Some(want)),
            Some("10.244.1.2".parse().unwrap())
        );
        assert_eq!(
            ipam.allocate(Some("10.9.9.9".parse().unwrap())),
            Some("10.244.1.3".parse().unwrap())
        );
        assert_eq!(
            ipam.allocate(Some("10.244.1.255".parse().unwrap())),
            Some("10.244.1.4".parse().unwrap())
        );
    }
}
