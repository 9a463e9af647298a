//! Resolution of the replica identity reported by `/` and `/whoami`.

/// Fallback used when neither a flag, `POD_NAME` nor a hostname is available.
pub const FALLBACK_IDENTITY: &str = "demo-replica";

/// Picks the replica identity: explicit flag first, then the pod name (set through the downward API),
/// then the host name. Blank values are ignored so that an empty env var does not erase the identity.
pub fn resolve(
    flag: Option<&str>,
    pod_name: Option<&str>,
    hostname: impl FnOnce() -> Option<String>,
) -> String {
    let non_blank = |s: &str| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_owned())
    };
    flag.and_then(non_blank)
        .or_else(|| pod_name.and_then(non_blank))
        .or_else(|| hostname().as_deref().and_then(non_blank))
        .unwrap_or_else(|| FALLBACK_IDENTITY.to_owned())
}

/// Reads the kernel host name (the UTS namespace's, which is what a pod would see).
pub fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_pod_name_and_hostname() {
        let id = resolve(Some("r-1"), Some("pod-a"), || Some("host".into()));
        assert_eq!(id, "r-1");
    }

    #[test]
    fn pod_name_used_without_flag() {
        assert_eq!(
            resolve(None, Some("pod-a"), || Some("host".into())),
            "pod-a"
        );
    }

    #[test]
    fn blank_values_fall_through_to_hostname() {
        assert_eq!(
            resolve(Some("  "), Some(""), || Some("host\n".into())),
            "host"
        );
    }

    #[test]
    fn fallback_when_nothing_known() {
        assert_eq!(resolve(None, None, || None), FALLBACK_IDENTITY);
    }
}
