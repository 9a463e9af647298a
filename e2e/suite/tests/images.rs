//! The release images (`make images`, `scripts/build-images.sh`) are what the local cluster runs:
//! their layout matches `images/*.Dockerfile`, the same commit gives the same digests, and the
//! containers the process kubelet starts from them under runc run as UID 65532 on a read-only root
//! with no capabilities, inside the memory limit of the pod spec.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use datastream_e2e::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// The three product images and their Dockerfiles.
const IMAGES: [(&str, &str); 3] = [
    ("datastream-operator", "images/operator.Dockerfile"),
    ("datastream-sidecar", "images/sidecar.Dockerfile"),
    ("datastream-demo-replica", "images/demo-replica.Dockerfile"),
];

fn images_dir() -> PathBuf {
    repo().join("target/images")
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the e2e runner builds the images first: scripts/build-images.sh)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The single image of a layout: its manifest and its configuration.
fn manifest_and_config(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let index = json(&layout.join("index.json"));
    let digests: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "{}: tags must name one manifest: {digests:?}",
        layout.display()
    );
    let manifest = json(&blob(layout, digests[0]));
    let config = json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    (manifest, config)
}

/// Regular files of the image's layers (`tar` lists them), without the leading `./`.
fn layer_files(layout: &Path, manifest: &serde_json::Value) -> Vec<String> {
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(layout, layer["digest"].as_str().unwrap());
        let out = Command::new("tar")
            .args(["-tzvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -tzvf {}", path.display());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with('-') {
                files.push(format!(
                    "/{} {} {}",
                    fields[5].trim_start_matches("./"),
                    fields[0],
                    fields[1]
                ));
            }
        }
    }
    files.sort();
    files
}

/// What a Dockerfile's final stage puts in the image: files (as "`/path`"), user, ports, entrypoint.
fn dockerfile_final_stage(path: &str) -> (Vec<String>, String, Vec<String>, Vec<String>) {
    let text = repo_file(path);
    let final_stage = text.rsplit("\nFROM scratch").next().unwrap();
    let (mut files, mut user, mut ports, mut entrypoint) = (vec![], String::new(), vec![], vec![]);
    for line in final_stage.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("COPY") => {
                let args: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = args.split_last().unwrap();
                for source in sources {
                    let name = source.rsplit('/').next().unwrap();
                    files.push(if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        dest.to_string()
                    });
                }
            }
            Some("USER") => user = words[1].to_owned(),
            Some("EXPOSE") => ports = words[1..].iter().map(|p| format!("{p}/tcp")).collect(),
            Some("ENTRYPOINT") => {
                entrypoint =
                    serde_json::from_str(line.trim_start_matches("ENTRYPOINT").trim()).unwrap()
            }
            _ => {}
        }
    }
    files.sort();
    (files, user, ports, entrypoint)
}

/// The layouts hold what the Dockerfiles would build (same files, user, ports and entrypoint), as
/// static executables, with the OCI labels naming this commit.
#[test]
fn release_layouts_match_the_dockerfiles_and_name_this_commit() {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .unwrap();
    let revision = String::from_utf8_lossy(&revision.stdout).trim().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    // The loader check below can tell: the host's shell is dynamically linked.
    assert!(has_interpreter(&std::fs::read("/bin/sh").unwrap()));
    for (name, dockerfile) in IMAGES {
        let layout = images_dir().join(name);
        let (manifest, config) = manifest_and_config(&layout);
        let (want_files, want_user, want_ports, want_entrypoint) =
            dockerfile_final_stage(dockerfile);
        let files = layer_files(&layout, &manifest);
        let paths: Vec<&str> = files.iter().map(|f| f.split(' ').next().unwrap()).collect();
        assert_eq!(paths, want_files, "{name}: files differ from {dockerfile}");
        for f in &files {
            assert!(f.ends_with(" 0/0"), "{name}: {f} must belong to root");
        }
        let binary = files
            .iter()
            .find(|f| f.contains("/usr/local/bin/"))
            .unwrap();
        assert!(binary.contains("-r-xr-xr-x"), "{name}: {binary}");
        let c = &config["config"];
        assert_eq!(c["User"], want_user, "{name}: user");
        let mut ports: Vec<String> = c["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        ports.sort();
        let mut want_ports = want_ports;
        want_ports.sort();
        assert_eq!(ports, want_ports, "{name}: exposed ports");
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!(want_entrypoint),
            "{name}"
        );
        let labels = &c["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], version);
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            revision.as_str()
        );
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/datastream-dev/datastream"
        );
        // An empty base image has no loader: the binary must be static.
        let rootfs = tempdir(name);
        let unpacked = Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:dev", layout.display()))
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            unpacked.status.success(),
            "{}",
            String::from_utf8_lossy(&unpacked.stderr)
        );
        let elf = std::fs::read(rootfs.join(format!("usr/local/bin/{name}"))).unwrap();
        assert!(
            !has_interpreter(&elf),
            "{name} needs a dynamic loader (PT_INTERP)"
        );
        std::fs::remove_dir_all(&rootfs).unwrap();
    }
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-images-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Building the images again from the same commit (another time, directory and umask) gives the
/// same manifest digests.
#[test]
fn the_same_commit_gives_the_same_digests() {
    let first = std::fs::read_to_string(images_dir().join("digests")).unwrap();
    let out = tempdir("rebuild");
    let built = Command::new("bash")
        .arg("-c")
        .arg("umask 077 && exec scripts/build-images.sh --skip-cargo --out \"$0\"")
        .arg(&out)
        .current_dir(repo())
        .env("TMPDIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let second = std::fs::read_to_string(out.join("digests")).unwrap();
    assert_eq!(first, second, "digests changed between two builds");
    assert_eq!(second.lines().count(), IMAGES.len());
    // The archives too, byte for byte.
    for (name, _) in IMAGES {
        let a = std::fs::read(images_dir().join(format!("{name}.oci.tar"))).unwrap();
        let b = std::fs::read(out.join(format!("{name}.oci.tar"))).unwrap();
        assert!(a == b, "{name}.oci.tar differs between builds");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `/proc/<pid>/status` fields of a container's init process.
fn proc_status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The mount options of `/` as the process sees it.
fn root_mount_options(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .map(|f| f[5].to_owned())
        .expect("a root mount")
}

/// The memory cgroup limit of a process, as its container sees it (cgroup v1: runc mounts the
/// container's own memory cgroup at `/sys/fs/cgroup/memory`).
fn memory_limit(pid: i32) -> u64 {
    let file = format!("/proc/{pid}/root/sys/fs/cgroup/memory/memory.limit_in_bytes");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// The workload and the sidecar of a DataStream's pod run as UID/GID 65532 with no capabilities,
/// no privilege escalation and a read-only root file system, and the pod spec's memory limit is
/// enforced: the workload asked to hold more than its limit is OOM-killed and restarted, and the
/// pod status says `OOMKilled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_unprivileged_inside_their_limits() {
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-images");
    let _operator = Operator::start("images-0", &ns.name);
    let manifest = format!(
        r#"apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata:
  name: limited
spec:
  replicas: 1
  workload:
    image: {DEMO_IMAGE}
    port: 8080
    readinessPath: /ready
    resources:
      requests: {{ memory: 32Mi, cpu: 100m }}
      limits: {{ memory: 64Mi, cpu: 500m }}
  sidecar:
    image: {SIDECAR_IMAGE}
"#
    );
    let applied = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
    assert!(applied.ok, "{}", applied.stderr);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = wait_for(
        &ns.name,
        "limited-0 Ready",
        Duration::from_secs(120),
        || async {
            let p = pods.get_opt("limited-0").await.ok()??;
            let ready = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(p)
        },
    )
    .await;
    for (container, limit) in [("workload", 64u64 << 20), ("sidecar", 256 << 20)] {
        let pid = container_pid(&pod, container);
        let status = proc_status(pid);
        assert_eq!(status["Uid"], "65532\t65532\t65532\t65532", "{container}");
        assert_eq!(status["Gid"], "65532\t65532\t65532\t65532", "{container}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status[set], "0000000000000000", "{container}: {set}");
        }
        assert_eq!(status["NoNewPrivs"], "1", "{container}");
        let options = root_mount_options(pid);
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{container}: / is mounted {options}"
        );
        assert_eq!(memory_limit(pid), limit, "{container}: memory limit");
        // The image's static binary, not a file of the host, is what runs.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.starts_with("/usr/local/bin/"),
            "{container} runs {}",
            exe.display()
        );
    }

    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let first_pid = container_pid(&pod, "workload");
    // 128 MiB against a 64 MiB limit: the kernel kills the process while it allocates, so the
    // request fails rather than answers.
    let grown = http_request(
        "POST",
        &format!("http://{ip}:8080/admin/memory"),
        &[("content-type", "application/json")],
        r#"{"mib":128}"#,
    )
    .await;
    assert!(
        !matches!(grown, Ok((200, _))),
        "the workload held 128 MiB under a 64 MiB limit: {grown:?}"
    );
    let terminated = wait_for(
        &ns.name,
        "the workload's OOMKilled termination",
        Duration::from_secs(60),
        || async {
            let p = pods.get_opt("limited-0").await.ok()??;
            let cs = p
                .status?
                .container_statuses?
                .into_iter()
                .find(|c| c.name == "workload")?;
            let last = cs.last_state?.terminated?;
            (cs.restart_count >= 1).then_some(last)
        },
    )
    .await;
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(terminated.exit_code, 137);
    assert!(
        !Path::new(&format!("/proc/{first_pid}")).exists(),
        "the killed workload process is gone"
    );
    kubectl_ok(&["delete", "dst", "limited", "-n", &ns.name, "--wait=true"]);
}
