//! From the pod spec to what the runtime enforces (pure): the user and groups a container runs as,
//! its capabilities, its argv and its cgroup limits, with the kubelet's checks and messages.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};

use crate::images::ImageDefaults;
use crate::runtime::{capabilities, resolve_image_user};

/// The identity and privileges of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// `supplementalGroups` and `fsGroup`.
    pub additional_gids: Vec<u32>,
    /// `HOME` when the container does not set it: the user's home in the image, or `/`.
    pub home: String,
    /// Capabilities after `add`/`drop`.
    pub capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
}

/// Merges the pod's and the container's security context (the container's wins field by field)
/// with the image's user, and applies `runAsNonRoot` as the kubelet does.
pub fn resolve(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    image_user: Option<&str>,
    rootfs: &Path,
) -> Result<Identity, String> {
    let run_as_user = container
        .and_then(|c| c.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let run_as_group = container
        .and_then(|c| c.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    let non_root = container
        .and_then(|c| c.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let image = resolve_image_user(image_user, rootfs)?;
    let id =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"));
    let uid = match run_as_user {
        Some(u) => id(u, "runAsUser")?,
        None => image.uid,
    };
    if non_root {
        if run_as_user == Some(0) {
            return Err("container's runAsUser breaks non-root policy".into());
        }
        if run_as_user.is_none() && image.named {
            return Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({}), cannot verify user is non-root",
                image_user.unwrap_or_default()
            ));
        }
        if uid == 0 {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
    }
    let gid = match (run_as_group, run_as_user) {
        (Some(g), _) => id(g, "runAsGroup")?,
        // A runAsUser without runAsGroup gets that user's primary group from the image, or 0.
        (None, Some(_)) => passwd_entry(rootfs, uid).map(|e| e.1).unwrap_or(0),
        (None, None) => image.gid,
    };
    let mut additional_gids = Vec::new();
    for g in pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod.and_then(|p| p.fs_group))
    {
        let g = id(g, "supplemental group")?;
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    let caps = container.and_then(|c| c.capabilities.as_ref());
    let list = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: passwd_entry(rootfs, uid)
            .map(|e| e.0)
            .unwrap_or_else(|| "/".into()),
        capabilities: capabilities(
            &list(caps.and_then(|c| c.add.as_ref())),
            &list(caps.and_then(|c| c.drop.as_ref())),
        ),
        no_new_privileges: container.and_then(|c| c.allow_privilege_escalation) == Some(false),
        read_only_root: container.and_then(|c| c.read_only_root_filesystem) == Some(true),
    })
}

/// Home directory and primary group of `uid` in the image's `/etc/passwd`.
fn passwd_entry(rootfs: &Path, uid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid)
            .then(|| Some((f.get(5)?.to_string(), f.get(3)?.parse().ok()?)))?
    })
}

/// The process a container runs: `command` replaces the image's entrypoint (and drops its cmd),
/// `args` replaces its cmd.
pub fn argv(command: &[String], args: &[String], image: &ImageDefaults) -> Vec<String> {
    let (entry, default_args) = if command.is_empty() {
        (image.entrypoint.clone(), image.cmd.clone())
    } else {
        (command.to_vec(), Vec::new())
    };
    let rest = if args.is_empty() {
        default_args
    } else {
        args.to_vec()
    };
    entry.into_iter().chain(rest).collect()
}

/// cgroup limits from `resources`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// `limits.memory` in bytes.
    pub memory_limit: Option<i64>,
    /// `limits.cpu` in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// `requests.cpu` (or the limit, as the API defaults it) in millicores.
    pub cpu_request_millis: Option<i64>,
}

impl Resources {
    /// Reads a container's `resources`.
    pub fn of(container: &Container) -> Result<Self, String> {
        let r = container.resources.as_ref();
        let get = |limits: bool, name: &str| {
            r.and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .and_then(|m| m.get(name))
            .map(|q| q.0.clone())
        };
        let memory_limit = get(true, "memory").map(|q| parse_bytes(&q)).transpose()?;
        let cpu_limit_millis = get(true, "cpu").map(|q| parse_millis(&q)).transpose()?;
        let cpu_request_millis = get(false, "cpu")
            .map(|q| parse_millis(&q))
            .transpose()?
            .or(cpu_limit_millis);
        Ok(Self {
            memory_limit,
            cpu_limit_millis,
            cpu_request_millis,
        })
    }
}

fn split_quantity(q: &str) -> (&str, &str) {
    let at = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    q.split_at(at)
}

/// A quantity such as `64Mi`, `1G`, `1.5Gi` or `1e9` in bytes (rounded up).
pub fn parse_bytes(q: &str) -> Result<i64, String> {
    let (number, suffix) = split_quantity(q.trim());
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid memory quantity {q:?}"))?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "m" => 1e-3,
        s if s.starts_with(['e', 'E']) => 10f64.powi(
            s[1..]
                .parse()
                .map_err(|_| format!("invalid memory quantity {q:?}"))?,
        ),
        _ => return Err(format!("invalid memory quantity {q:?}")),
    };
    Ok((n * scale).ceil() as i64)
}

/// A CPU quantity such as `500m`, `1` or `0.25` in millicores.
pub fn parse_millis(q: &str) -> Result<i64, String> {
    let (number, suffix) = split_quantity(q.trim());
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid cpu quantity {q:?}"))?;
    match suffix {
        "m" => Ok(n.ceil() as i64),
        "" => Ok((n * 1000.0).ceil() as i64),
        _ => Err(format!("invalid cpu quantity {q:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Capabilities;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn restricted_pods_run_as_the_image_user_without_capabilities() {
        let fs = rootfs();
        let pod = PodSecurityContext {
            run_as_non_root: Some(true),
            fs_group: Some(65532),
            supplemental_groups: Some(vec![4000]),
            ..Default::default()
        };
        let container = SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        };
        let id = resolve(Some(&pod), Some(&container), Some("65532:65532"), fs.path()).unwrap();
        assert_eq!((id.uid, id.gid), (65532, 65532));
        assert_eq!(id.additional_gids, [4000, 65532]);
        assert_eq!(id.home, "/nonexistent");
        assert!(id.capabilities.is_empty());
        assert!(id.no_new_privileges && id.read_only_root);
    }

    #[test]
    fn run_as_non_root_is_checked_as_the_kubelet_does() {
        let fs = rootfs();
        let non_root = PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        let e = resolve(Some(&non_root), None, None, fs.path()).unwrap_err();
        assert_eq!(e, "container has runAsNonRoot and image will run as root");
        let e = resolve(Some(&non_root), None, Some("nonroot"), fs.path()).unwrap_err();
        assert!(e.contains("non-numeric user (nonroot)"), "{e}");
        let as_root = SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        };
        assert!(resolve(Some(&non_root), Some(&as_root), Some("65532"), fs.path()).is_err());
        // runAsUser makes a named image user verifiable; the group comes from the image's passwd.
        let as_user = SecurityContext {
            run_as_user: Some(65532),
            ..Default::default()
        };
        let id = resolve(Some(&non_root), Some(&as_user), Some("nonroot"), fs.path()).unwrap();
        assert_eq!((id.uid, id.gid), (65532, 65532));
        // Without the policy, root is fine and keeps the default capabilities.
        let id = resolve(None, None, None, fs.path()).unwrap();
        assert_eq!((id.uid, id.home.as_str()), (0, "/root"));
        assert_eq!(
            id.capabilities.len(),
            crate::runtime::DEFAULT_CAPABILITIES.len()
        );
    }

    #[test]
    fn command_and_args_follow_kubernetes_semantics() {
        let image = ImageDefaults {
            entrypoint: vec!["/bin/server".into()],
            cmd: vec!["--port=1".into()],
            ..Default::default()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&[], &[], &image), s(&["/bin/server", "--port=1"]));
        assert_eq!(
            argv(&[], &s(&["probe"]), &image),
            s(&["/bin/server", "probe"])
        );
        assert_eq!(argv(&s(&["sh", "-c"]), &[], &image), s(&["sh", "-c"]));
        assert_eq!(
            argv(&s(&["sh"]), &s(&["-c", "x"]), &image),
            s(&["sh", "-c", "x"])
        );
        assert!(argv(&[], &[], &ImageDefaults::default()).is_empty());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1e3").unwrap(), 1000);
        assert_eq!(parse_bytes("128974848").unwrap(), 128_974_848);
        assert!(parse_bytes("12XB").is_err());
        assert_eq!(parse_millis("250m").unwrap(), 250);
        assert_eq!(parse_millis("2").unwrap(), 2000);
        assert_eq!(parse_millis("0.1").unwrap(), 100);
        assert!(parse_millis("1Gi").is_err());
    }
}
