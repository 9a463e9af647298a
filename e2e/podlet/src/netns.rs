//! Pod network sandboxes: a named network namespace per pod with a veth into the cluster bridge.
//!
//! Layout for a pod whose uid starts with `abcd1234`: netns `dsp-abcd1234`, host-side veth `dsvabcd1234`
//! enslaved to the bridge, pod-side veth `eth0` with the pod IP and the cluster prefix (/16), `lo` up.
//! There is deliberately no default route: the only reachable network is the bridge's.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::process::Command;

/// Prefix of every pod network namespace name.
pub const NETNS_PREFIX: &str = "dsp-";
/// Prefix of every host-side veth name (IFNAMSIZ allows 15 characters: 3 + 8).
pub const VETH_PREFIX: &str = "dsv";

/// Names derived from a pod uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNames {
    /// Network namespace name.
    pub netns: String,
    /// Host-side veth name.
    pub veth: String,
}

impl SandboxNames {
    /// Names for the pod with `uid` (its first eight characters, dashes removed first).
    pub fn for_uid(uid: &str) -> Self {
        let short: String = uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        Self {
            netns: format!("{NETNS_PREFIX}{short}"),
            veth: format!("{VETH_PREFIX}{short}"),
        }
    }

    /// Path of the namespace's bind mount, which `setns` opens.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }
}

/// Runs `ip` with `args`, turning a non-zero exit into an error carrying its stderr.
pub async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().await?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the sandbox; removes a half-built leftover with the same names first so retries are safe.
pub async fn create(
    names: &SandboxNames,
    bridge: &str,
    ip_addr: Ipv4Addr,
    prefix: u8,
) -> anyhow::Result<()> {
    destroy(names).await;
    let ns = names.netns.as_str();
    let veth = names.veth.as_str();
    let addr = format!("{ip_addr}/{prefix}");
    ip(&["netns", "add", ns]).await?;
    let result = async {
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])
        .await?;
        ip(&["link", "set", veth, "master", bridge]).await?;
        ip(&["link", "set", veth, "up"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]).await?;
        ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        destroy(names).await;
    }
    result
}

/// Removes the sandbox; missing pieces are fine (deleting the netns also destroys its veth pair).
pub async fn destroy(names: &SandboxNames) {
    let _ = ip(&["link", "del", &names.veth]).await;
    let _ = ip(&["netns", "del", &names.netns]).await;
}

/// Names of existing pod network namespaces and host-side veths, for cleanup after a restart.
pub async fn leftovers() -> (Vec<String>, Vec<String>) {
    let netns = ip(&["netns", "list"])
        .await
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let links = ip(&["-o", "link", "show"])
        .await
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| n.starts_with(VETH_PREFIX))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (netns, links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_uid() {
        let n = SandboxNames::for_uid("3f2a9c1e-77aa-4b1c-9d0e-123456789abc");
        assert_eq!(n.netns, "dsp-3f2a9c1e");
        assert_eq!(n.veth, "dsv3f2a9c1e");
        assert!(n.veth.len() <= 15);
        assert_eq!(n.netns_path(), PathBuf::from("/var/run/netns/dsp-3f2a9c1e"));
    }
}
