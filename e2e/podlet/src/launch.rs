//! Starting a container process inside its pod's namespaces.
//!
//! The podlet re-executes itself as `datastream-podlet container-init <spec.json>`. That helper is a fresh,
//! single-threaded process, so it may join the pod's network namespace, unshare a private mount and UTS
//! namespace, bind-mount the container's volumes, set the pod's host name, and finally `exec` the
//! container's program: the pid the podlet records is the container's main process.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

/// Name of the hidden subcommand that runs [`container_init`].
pub const INIT_SUBCOMMAND: &str = "container-init";

/// A bind mount of a prepared volume into the container's view of the file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Directory or file prepared by the podlet.
    pub source: PathBuf,
    /// `mountPath` inside the container.
    pub target: PathBuf,
    /// Remount read-only after binding.
    pub read_only: bool,
}

/// Everything the helper needs to become the container process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Bind mount of the pod's network namespace (`/var/run/netns/dsp-...`).
    pub netns_path: PathBuf,
    /// Host name of the pod (its name, as in Kubernetes).
    pub hostname: String,
    /// Volume mounts in spec order.
    pub mounts: Vec<BindMount>,
    /// `workingDir`, if set.
    pub working_dir: Option<PathBuf>,
    /// Program to exec.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Complete environment.
    pub env: Vec<(String, String)>,
    /// `securityContext.readOnlyRootFilesystem`: every mount except writable volumes (`emptyDir`,
    /// `hostPath`, `persistentVolumeClaim` not marked read-only), `/proc`, `/sys` and `/dev` is remounted
    /// read-only in the container's mount namespace.
    #[serde(default)]
    pub read_only_root: bool,
}

/// Writes `spec` to `spec_path` (mode 0600: it holds the environment, secrets included) and spawns the
/// helper with stdout and stderr appended to `log_path`. The child leads its own process group so that
/// signals reach everything the container started.
pub fn spawn(
    spec: &LaunchSpec,
    spec_path: &Path,
    log_path: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(spec_path)
        .with_context(|| format!("writing {}", spec_path.display()))?;
    serde_json::to_writer(&mut f, spec)?;
    drop(f);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    // `/proc/self/exe` is the running podlet even after `cargo build` replaced the file on disk.
    let child = tokio::process::Command::new("/proc/self/exe")
        .arg(INIT_SUBCOMMAND)
        .arg(spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .spawn()
        .context("spawning the container helper")?;
    Ok(child)
}

/// Body of the helper process: enters the pod's namespaces and execs the container program.
/// Returns only on failure (the error is printed to the container log by the caller).
pub fn container_init(spec_path: &Path) -> anyhow::Error {
    match enter_and_exec(spec_path) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn enter_and_exec(spec_path: &Path) -> anyhow::Result<std::convert::Infallible> {
    let raw =
        std::fs::read(spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    // The spec holds secrets; nobody needs it once read.
    let _ = std::fs::remove_file(spec_path);
    let spec: LaunchSpec = serde_json::from_slice(&raw).context("parsing the launch spec")?;

    let netns = File::open(&spec.netns_path)
        .with_context(|| format!("opening {}", spec.netns_path.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("joining the pod network namespace")?;
    drop(netns);
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .context("unsharing mount and UTS namespaces")?;
    // Keep our mounts from propagating back to the host, as `ip netns exec` does.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    // A fresh sysfs shows the pod's interfaces under /sys/class/net; failing that is harmless.
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
        let _ = mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
    nix::unistd::sethostname(&spec.hostname).context("setting the host name")?;
    for m in &spec.mounts {
        bind(m).with_context(|| {
            format!("mounting {} at {}", m.source.display(), m.target.display())
        })?;
    }
    if spec.read_only_root {
        make_root_read_only(&spec.mounts);
    }
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.current_dir(spec.working_dir.as_deref().unwrap_or(Path::new("/")));
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!("exec {}", spec.program.display())))
}

/// Remounts every mount point read-only (this namespace only), keeping its nosuid/nodev/noexec flags.
/// Failures are reported on the container's stderr and do not stop the container.
fn make_root_read_only(mounts: &[BindMount]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        eprintln!(
            "datastream-podlet container-init: cannot read mountinfo; root file system left writable"
        );
        return;
    };
    for (mount_point, options) in info.lines().filter_map(parse_mountinfo_line) {
        let target = Path::new(&mount_point);
        if stays_writable(target, mounts) {
            continue;
        }
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (name, flag) in [
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
        ] {
            if options.split(',').any(|o| o == name) {
                flags |= flag;
            }
        }
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            eprintln!("datastream-podlet container-init: cannot make {mount_point} read-only: {e}");
        }
    }
}

/// Whether the mount at `target` keeps its flags under `readOnlyRootFilesystem`: kernel file systems,
/// and writable volumes (with whatever is mounted below them).
fn stays_writable(target: &Path, mounts: &[BindMount]) -> bool {
    let kernel = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| target.starts_with(p));
    kernel
        || mounts
            .iter()
            .any(|m| !m.read_only && target.starts_with(&m.target))
}

/// Mount point (unescaped) and per-mount options of one `/proc/self/mountinfo` line.
pub fn parse_mountinfo_line(line: &str) -> Option<(String, String)> {
    let mut fields = line.split(' ');
    let mount_point = fields.nth(4)?;
    let options = fields.next()?;
    Some((unescape_octal(mount_point), options.to_owned()))
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes in mountinfo.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = digits
        {
            let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bind(m: &BindMount) -> anyhow::Result<()> {
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target)?;
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !m.target.exists() {
            File::create(&m.target)?;
        }
    }
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        let spec = LaunchSpec {
            netns_path: "/var/run/netns/dsp-1".into(),
            hostname: "web-0".into(),
            mounts: vec![BindMount {
                source: "/a".into(),
                target: "/b".into(),
                read_only: true,
            }],
            working_dir: Some("/w".into()),
            program: "/bin/true".into(),
            args: vec!["x".into()],
            env: vec![("A".into(), "1".into())],
            read_only_root: true,
        };
        let back: LaunchSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn read_only_root_spares_writable_volumes_only() {
        let mount = |target: &str, read_only| BindMount {
            source: "/tmp/hostpath_pv/x".into(),
            target: target.into(),
            read_only,
        };
        let mounts = [mount("/data", false), mount("/config", true)];
        assert!(stays_writable(Path::new("/data"), &mounts));
        assert!(stays_writable(Path::new("/proc/sys"), &mounts));
        assert!(!stays_writable(Path::new("/config"), &mounts));
        assert!(!stays_writable(Path::new("/"), &mounts));
        assert!(!stays_writable(Path::new("/database"), &mounts));
    }

    #[test]
    fn mountinfo_lines() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space rw,nosuid,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            parse_mountinfo_line(line),
            Some((
                "/mnt/with space".to_string(),
                "rw,nosuid,noatime".to_string()
            ))
        );
        assert_eq!(parse_mountinfo_line("short line"), None);
        assert_eq!(unescape_octal("a\\134b"), "a\\b");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }
}
