//! The container runtime: an OCI bundle per container, run by `runc`.
//!
//! Every container gets `<pod dir>/<container>/`: an overlay `rootfs` whose lower layer is the image's
//! unpacked root file system (shared by every container of that image and never written) and whose
//! upper layer is the container's own, and a `config.json` written from the pod spec by
//! [`runtime_spec`]. `runc run` stays in the foreground as the podlet's child: its exit status is the
//! container's (128 + signal when killed) and it removes the container's cgroups when it ends.
//! `runc events` watches the memory cgroup so that an OOM kill is reported as `OOMKilled`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// A bind mount of a prepared volume (or pod file such as `/etc/hosts`) into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Directory or file prepared by the podlet.
    pub source: PathBuf,
    /// `mountPath` inside the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The capabilities containerd gives a container before `securityContext.capabilities` applies.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Everything [`runtime_spec`] needs: the pod spec's view of one container, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRun {
    /// Host name (the pod's name).
    pub hostname: String,
    /// The pod's network namespace (`/var/run/netns/dsp-...`).
    pub netns_path: PathBuf,
    /// Program and arguments (Kubernetes `command`/`args` over the image's entrypoint/cmd).
    pub args: Vec<String>,
    /// Environment as `NAME=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// Supplementary groups (`supplementalGroups`, `fsGroup`).
    pub additional_gids: Vec<u32>,
    /// Capabilities (`CAP_*`) in the bounding, effective and permitted sets.
    pub capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// Volume and pod-file mounts, in order.
    pub mounts: Vec<BindMount>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<i64>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// `resources.requests.cpu` in millicores.
    pub cpu_request_millis: Option<i64>,
    /// cgroup path below each v1 hierarchy's root.
    pub cgroups_path: String,
}

/// CFS period the CPU limit is expressed in (the kubelet's default).
const CPU_PERIOD_MICROS: u64 = 100_000;

/// The OCI runtime configuration (`config.json`) of one container, checked against the runtime
/// spec's types.
pub fn runtime_spec(run: &ContainerRun) -> anyhow::Result<oci_spec::runtime::Spec> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &run.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(
            json!({"destination": m.target, "type": "bind", "source": m.source,
                           "options": options}),
        );
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = run.memory_limit {
        // No swap beyond the limit, as the kubelet configures it.
        resources["memory"] = json!({"limit": limit, "swap": limit});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(millis) = run.cpu_limit_millis {
        // At least 1 ms per period, the kernel's minimum quota.
        let quota = (millis * CPU_PERIOD_MICROS as i64 / 1000).max(1000);
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(CPU_PERIOD_MICROS));
    }
    if let Some(millis) = run.cpu_request_millis {
        cpu.insert("shares".into(), json!((millis * 1024 / 1000).max(2)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = serde_json::Value::Object(cpu);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": run.read_only_root},
        "hostname": run.hostname,
        "process": {
            "terminal": false,
            "user": {"uid": run.uid, "gid": run.gid, "additionalGids": run.additional_gids},
            "args": run.args,
            "env": run.env,
            "cwd": run.cwd,
            "capabilities": {
                "bounding": run.capabilities,
                "effective": run.capabilities,
                "permitted": run.capabilities,
            },
            // Containers inherit the runtime's hard limit, as under containerd.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": open_files_limit(), "soft": open_files_limit()}],
            "noNewPrivileges": run.no_new_privileges,
        },
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": run.netns_path},
            ],
            "cgroupsPath": run.cgroups_path,
            "resources": resources,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    });
    serde_json::from_value(spec).context("the runtime spec does not type-check")
}

/// The podlet's own hard limit on open files: what containers get (a container cannot be given more
/// than `fs.nr_open`, and the podlet's limit is known to fit).
fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

/// Capabilities after `securityContext.capabilities`: the default set, minus `drop` (`ALL` drops
/// everything), plus `add`.
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let canonical = |c: &str| {
        let upper = c.to_ascii_uppercase();
        if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    let drop: Vec<String> = drop.iter().map(|c| canonical(c)).collect();
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in add.iter().map(|c| canonical(c)) {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// A user as the image or the security context names it, resolved to IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Whether the image gave a name rather than a number (`runAsNonRoot` cannot be verified then,
    /// unless `runAsUser` is set).
    pub named: bool,
}

/// Resolves an image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against its `/etc/passwd`
/// and `/etc/group`; an empty user is root.
pub fn resolve_image_user(user: Option<&str>, rootfs: &Path) -> Result<ResolvedUser, String> {
    let user = user.unwrap_or("").trim();
    if user.is_empty() {
        return Ok(ResolvedUser {
            uid: 0,
            gid: 0,
            named: false,
        });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field)?.parse().ok())
    };
    let (uid, named, passwd_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, false, None),
        Err(_) => {
            let uid = lookup("etc/passwd", u, 2)
                .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?;
            (uid, true, lookup("etc/passwd", u, 3))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", g, 2)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
        None => passwd_gid.unwrap_or(0),
    };
    Ok(ResolvedUser { uid, gid, named })
}

/// Paths of one container's bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `<pod dir>/<container>`.
    pub dir: PathBuf,
    /// The runc container ID.
    pub id: String,
}

impl Bundle {
    /// The bundle of `container` in `pod_dir`; its runc ID joins the pod UID and the name.
    pub fn new(pod_dir: &Path, pod_uid: &str, container: &str) -> Self {
        Self {
            dir: pod_dir.join("containers").join(container),
            id: format!("{pod_uid}-{container}"),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The container's init process id, as `runc run --pid-file` records it.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("init.pid")
    }

    /// Mounts a fresh overlay of `image_rootfs` (the container's writes go to its own upper layer,
    /// discarded on restart as a container's are) and writes `config.json`.
    pub fn prepare(
        &self,
        image_rootfs: &Path,
        spec: &oci_spec::runtime::Spec,
    ) -> anyhow::Result<()> {
        self.release();
        let _ = std::fs::remove_dir_all(&self.dir);
        let (upper, work, rootfs) = (self.dir.join("upper"), self.dir.join("work"), self.rootfs());
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image_rootfs.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .with_context(|| {
            format!(
                "mounting the overlay root file system at {}",
                rootfs.display()
            )
        })?;
        // It holds the environment, secrets included.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.dir.join("config.json"))
            .context("writing config.json")?;
        serde_json::to_writer(file, spec).context("writing config.json")?;
        Ok(())
    }

    /// Unmounts the overlay (the upper layer is removed with the pod directory).
    pub fn release(&self) {
        let rootfs = self.rootfs();
        if let Err(e) = umount2(&rootfs, MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
            && e != nix::errno::Errno::ENOENT
        {
            tracing::warn!(dir = %rootfs.display(), error = %e, "unmounting the container root failed");
        }
    }
}

/// The `runc` binary and its state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    /// State directory (`runc --root`).
    pub root: PathBuf,
}

/// A started container.
#[derive(Debug)]
pub struct Started {
    /// The foreground `runc run`: its exit status is the container's.
    pub runc: tokio::process::Child,
    /// The container's init process (in the host's PID namespace).
    pub pid: u32,
    /// Set when the memory cgroup reported an OOM kill.
    pub oom: Arc<AtomicBool>,
}

/// How a container that never ran failed (runc's own message, from the container log).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl Runc {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// Starts the prepared bundle with stdout and stderr appended to `log`, and waits until the
    /// container's init process exists (or runc gave up, with its reason).
    pub async fn start(&self, bundle: &Bundle, log: &Path) -> Result<Started, StartError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| StartError(format!("{what}: {e}"));
        // A container of the same ID left behind by a crash would make `runc run` fail.
        self.delete(&bundle.id).await;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail("creating the log directory", &e))?;
        }
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .map_err(|e| fail("opening the container log", &e))?;
        let err = out
            .try_clone()
            .map_err(|e| fail("opening the container log", &e))?;
        let log_len_before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let pid_file = bundle.pid_file();
        let _ = std::fs::remove_file(&pid_file);
        let mut runc = self
            .command()
            .arg("run")
            .arg("--bundle")
            .arg(&bundle.dir)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--no-new-keyring")
            .arg(&bundle.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Signals for the podlet (Ctrl-C in a terminal) must not reach runc: the podlet stops
            // containers itself.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| fail("running runc", &e))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse::<u32>()
            {
                break pid;
            }
            if let Ok(Some(status)) = runc.try_wait() {
                let said = read_from(log, log_len_before);
                return Err(StartError(format!(
                    "runc exited ({status}) before the container started: {}",
                    said.trim()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = runc.start_kill();
                return Err(StartError(
                    "runc did not start the container within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let oom = Arc::new(AtomicBool::new(false));
        self.watch_oom(&bundle.id, oom.clone());
        Ok(Started { runc, pid, oom })
    }

    /// Follows `runc events` for the container and raises `oom` on an OOM notification. The
    /// stream ends with the container.
    fn watch_oom(&self, id: &str, oom: Arc<AtomicBool>) {
        let child = self
            .command()
            .args(["events", "--interval", "1h", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut child) = child else {
            tracing::warn!(
                container = id,
                "runc events failed to start; OOM kills will show as Error"
            );
            return;
        };
        let Some(stdout) = child.stdout.take() else {
            return;
        };
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if serde_json::from_str::<serde_json::Value>(&line)
                    .is_ok_and(|v| v["type"] == "oom")
                {
                    oom.store(true, Ordering::SeqCst);
                }
            }
            let _ = child.wait().await;
        });
    }

    /// Forgets a stopped container (and kills one that still runs).
    pub async fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Every container runc knows of under this state directory.
    pub async fn list(&self) -> Vec<String> {
        match self.command().args(["list", "-q"]).output().await {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b[(offset as usize).min(b.len())..]).into_owned())
        .unwrap_or_default()
}

/// Unmounts everything mounted at or below `dir`: container overlays and memory-backed `emptyDir`s
/// (after a pod ends, or a podlet crash).
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        if let Some(mount_point) = line.split(' ').nth(4)
            && Path::new(mount_point).starts_with(dir)
        {
            let _ = umount2(mount_point, MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> ContainerRun {
        ContainerRun {
            hostname: "web-0".into(),
            netns_path: "/var/run/netns/dsp-1".into(),
            args: vec!["/usr/local/bin/x".into(), "serve".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 65532,
            gid: 65532,
            additional_gids: vec![65532],
            capabilities: capabilities(&[], &["ALL".into()]),
            no_new_privileges: true,
            read_only_root: true,
            mounts: vec![BindMount {
                source: "/state/vol".into(),
                target: "/data".into(),
                read_only: false,
            }],
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(250),
            cgroups_path: "/datastream-podlet/uid-x".into(),
        }
    }

    #[test]
    fn spec_carries_the_pod_settings() {
        let spec = serde_json::to_value(runtime_spec(&run()).unwrap()).unwrap();
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["user"]["uid"], 65532);
        assert_eq!(spec["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 256);
        let net = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], "/var/run/netns/dsp-1");
        let data = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()
            .clone();
        assert_eq!(data["options"], json!(["rbind", "rprivate"]));
    }

    #[test]
    fn unknown_capabilities_do_not_type_check() {
        let mut r = run();
        r.capabilities = capabilities(&["NET_ADMIN".into(), "NOT_A_CAP".into()], &["ALL".into()]);
        assert!(runtime_spec(&r).is_err());
        r.capabilities = capabilities(&["net_admin".into()], &["ALL".into()]);
        assert_eq!(r.capabilities, ["CAP_NET_ADMIN"]);
        assert!(runtime_spec(&r).is_ok());
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let caps = capabilities(&[], &["NET_RAW".into(), "cap_kill".into()]);
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 2);
        assert!(!caps.iter().any(|c| c == "CAP_NET_RAW" || c == "CAP_KILL"));
        assert!(capabilities(&[], &["all".into()]).is_empty());
    }

    #[test]
    fn image_users_resolve_against_the_image_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "nonroot:x:65532:65533:nonroot:/nonexistent:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "data:x:700:\n").unwrap();
        let r = |u: Option<&str>| resolve_image_user(u, dir.path());
        assert_eq!(
            r(None).unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                named: false
            }
        );
        assert_eq!(r(Some("65532:65532")).unwrap().gid, 65532);
        assert_eq!(
            r(Some("1000")).unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 0,
                named: false
            }
        );
        assert_eq!(
            r(Some("nonroot")).unwrap(),
            ResolvedUser {
                uid: 65532,
                gid: 65533,
                named: true
            }
        );
        assert_eq!(r(Some("nonroot:data")).unwrap().gid, 700);
        assert!(
            r(Some("ghost"))
                .unwrap_err()
                .contains("not in the image's /etc/passwd")
        );
        assert!(r(Some("1:ghost")).is_err());
    }
}
