//! Support for the end-to-end suite: the local cluster's client and kubectl, operator processes,
//! bounded waits that print the cluster's state when they expire, and a small HTTP client.
//!
//! The suite must run inside the cluster's network namespace (`make e2e` does that): the
//! apiserver and every pod IP are reachable only there. It fails, never skips, when the cluster
//! is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Root of the repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The cluster's state directory (`e2e/.state`).
pub fn state_dir() -> PathBuf {
    repo().join("e2e/.state")
}

/// Path of the admin kubeconfig written by `make cluster-up`.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir().join("kubeconfig"))
}

/// A client for the local cluster, or a clear error saying how to start it.
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| {
        format!(
            "no kubeconfig at {}: run `make cluster-up` first",
            path.display()
        )
    })?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .context("the local apiserver does not answer: is the cluster up, and is this running inside `ip netns exec dse2e`?")?;
    Ok(client)
}

/// Output of one kubectl run.
#[derive(Debug)]
pub struct Output {
    /// Exit status was zero.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the cluster's kubectl with the admin kubeconfig.
pub fn kubectl(args: &[&str]) -> Output {
    kubectl_stdin(args, None)
}

/// Runs kubectl with `stdin` piped in.
pub fn kubectl_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let bin = state_dir().join("bin/kubectl");
    let mut command = Command::new(&bin);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args);
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs kubectl and fails the test with its stderr when it fails.
#[track_caller]
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(out.ok, "kubectl {} failed: {}", args.join(" "), out.stderr);
    out.stdout
}

/// Prints what a human would look at when a wait expires.
pub fn dump_state(namespace: &str) {
    eprintln!("===== cluster state of namespace {namespace} =====");
    for args in [
        vec![
            "get",
            "dst,deploy,rs,pods,svc,endpointslices,pdb,networkpolicy",
            "-o",
            "wide",
            "-n",
            namespace,
        ],
        vec!["describe", "dst", "-n", namespace],
        vec!["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
        vec!["get", "nodes", "-o", "wide"],
    ] {
        let out = kubectl(&args);
        eprintln!("$ kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr);
    }
    if let Ok(entries) = std::fs::read_dir(state_dir().join("logs/pods")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{namespace}_")) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {name} (last lines) ---");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` printing the
/// namespace's state.
pub async fn wait_for<T, F, Fut>(namespace: &str, what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > timeout {
            dump_state(namespace);
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace created for one test and deleted when dropped.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Creates a fresh namespace named `prefix-<random>`.
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
        kubectl_ok(&["create", "namespace", &name]);
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// A built binary of the workspace: `target/debug/<name>`, or `$E2E_BIN_DIR/<name>` (benchmarks
/// point it at `target/release`).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// An operator running as a local process with the admin kubeconfig.
pub struct Operator {
    child: Child,
    /// Its admin address (`/healthz`, `/readyz`, `/metrics`).
    pub admin: String,
    /// Its leader-election identity.
    pub identity: String,
}

/// Image name the process kubelet maps to the sidecar binary.
pub const SIDECAR_IMAGE: &str = "localhost/datastream-sidecar:dev";
/// Image name the process kubelet maps to the demo replica binary.
pub const DEMO_IMAGE: &str = "localhost/datastream-demo-replica:dev";

/// How to start an operator process beyond its identity.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Kubeconfig to use instead of the admin one (for example one that goes through a
    /// [`BlackHoleProxy`]).
    pub kubeconfig: Option<PathBuf>,
    /// Offset of the process's wall clock, in libfaketime's form (`+30s`, `-30s`); the
    /// monotonic clock is left alone, as skew between machines leaves it.
    pub clock_offset: Option<String>,
    /// More command-line arguments.
    pub args: Vec<String>,
    /// The operator binary to run instead of the build under test (a benchmark comparing builds).
    pub binary: Option<PathBuf>,
}

/// libfaketime's preload for multi-threaded programs (Debian's `faketime` package).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Operator {
    /// Starts an operator electing its leader through a Lease in `lease_namespace`.
    pub fn start(identity: &str, lease_namespace: &str) -> Self {
        Self::start_with(identity, lease_namespace, &OperatorOptions::default())
    }

    /// Starts an operator with `options`.
    pub fn start_with(identity: &str, lease_namespace: &str, options: &OperatorOptions) -> Self {
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(state_dir().join(format!("logs/operator-{identity}.log")))
            .unwrap();
        let mut command = Command::new(
            options
                .binary
                .clone()
                .unwrap_or_else(|| binary("datastream-operator")),
        );
        command
            .env(
                "KUBECONFIG",
                options.kubeconfig.clone().unwrap_or_else(kubeconfig_path),
            )
            .args([
                "--sidecar-image",
                SIDECAR_IMAGE,
                "--admin-addr",
                &admin,
                "--lease-namespace",
                lease_namespace,
            ])
            .args([
                "--identity",
                identity,
                "--log",
                "info,datastream_operator=debug",
            ])
            .args(&options.args);
        if let Some(offset) = &options.clock_offset {
            assert!(
                Path::new(LIBFAKETIME).exists(),
                "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/install-deps.sh does)"
            );
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", offset)
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("operator starts");
        Operator {
            child,
            admin,
            identity: identity.to_owned(),
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stops the process (SIGSTOP), as a stalled VM or an overloaded node would.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(&format!("http://{}/metrics", self.admin), &[]).await?;
        if status != 200 {
            bail!("metrics answered {status}");
        }
        Ok(body)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A TCP proxy on loopback in front of the apiserver that can black-hole its connections: once
/// cut, it keeps every connection open but forwards nothing in either direction (bytes are read
/// and dropped), as a network partition that neither resets nor closes looks to both ends. It can
/// also cut only the requests (client to apiserver), as an asymmetric partition does: watches
/// keep delivering events while every new request hangs.
pub struct BlackHoleProxy {
    /// Its listening address.
    pub addr: std::net::SocketAddr,
    /// 0: forwarding; 1: cut both ways; 2: requests cut.
    cut: std::sync::Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHoleProxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (request_side, mut from, mut to) in [
                    (true, client_read, server_write),
                    (false, server_read, client_write),
                ] {
                    let flag = flag.clone();
                    let dropping = move || match flag.load(Ordering::SeqCst) {
                        1 => true,
                        2 => request_side,
                        _ => false,
                    };
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if dropping() {
                                continue;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Never close while cut: a partition sends no FIN either.
                        while dropping() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        BlackHoleProxy { addr, cut, task }
    }

    /// Stops forwarding, on every connection, open or new.
    pub fn cut(&self) {
        self.cut.store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops forwarding requests (client to apiserver) only; answers and watch events still flow.
    pub fn cut_requests(&self) {
        self.cut.store(2, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes a copy of the admin kubeconfig that reaches the apiserver through this proxy (the
    /// apiserver's certificate names 127.0.0.1) and returns its path.
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
        let server = apiserver_url();
        assert!(text.contains(&server), "{server} not in the kubeconfig");
        let path = state_dir().join(format!("run/kubeconfig-{name}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            text.replace(&server, &format!("https://{}", self.addr)),
        )
        .unwrap();
        path
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apiserver's URL in the admin kubeconfig (`https://host:port`).
pub fn apiserver_url() -> String {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("server:"))
        .map(|url| url.trim().to_owned())
        .expect("a server in the kubeconfig")
}

/// The apiserver's address, from the admin kubeconfig.
pub fn apiserver_addr() -> std::net::SocketAddr {
    apiserver_url()
        .trim_start_matches("https://")
        .parse()
        .expect("the kubeconfig's server is https://IP:PORT")
}

/// Every write (create, update, patch, delete) the apiserver's audit log records after `since`
/// in `namespace`, with its user agent, resource and the time the apiserver received it, in
/// order of arrival.
pub fn audited_writes_by_agent(namespace: &str, since: &str) -> Vec<AuditedWrite> {
    let mut writes: Vec<AuditedWrite> = writes_in(namespace, since)
        .map(|e| AuditedWrite {
            user_agent: e["userAgent"].as_str().unwrap_or_default().to_owned(),
            verb: e["verb"].as_str().unwrap_or_default().to_owned(),
            resource: e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: e["objectRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            code: e["responseStatus"]["code"].as_u64().unwrap_or_default(),
            received: e["requestReceivedTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    writes.sort_by(|a, b| a.received.cmp(&b.received));
    writes
}

/// One write in the audit log.
#[derive(Clone, Debug)]
pub struct AuditedWrite {
    /// The client's User-Agent (the operator's names its replica).
    pub user_agent: String,
    /// create, update, patch or delete.
    pub verb: String,
    /// The resource's plural.
    pub resource: String,
    /// The object's name.
    pub name: String,
    /// The response's status code.
    pub code: u64,
    /// When the apiserver received it (RFC 3339, microseconds, UTC: sorts as text).
    pub received: String,
}

/// Completed write requests (create, update, patch, delete) in `namespace` that the apiserver
/// received after `since`, as audit events.
fn writes_in(namespace: &str, since: &str) -> impl Iterator<Item = serde_json::Value> {
    let (namespace, since) = (namespace.to_owned(), since.to_owned());
    read_audit_log()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(move |e| e["objectRef"]["namespace"] == namespace.as_str())
        .filter(move |e| {
            e["requestReceivedTimestamp"].as_str().unwrap_or_default() > since.as_str()
        })
}

fn read_audit_log() -> Vec<serde_json::Value> {
    let path = state_dir().join("logs/audit.log");
    let mut text = String::new();
    // The apiserver rotates the log at 200 MB into audit-<time>.log: read the rotated one too.
    if let Ok(entries) = std::fs::read_dir(state_dir().join("logs")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("audit-") && name.ends_with(".log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    text.push_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
    );
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .collect()
}

/// Installs (or updates) the DataStream CRD as a user would, server-side, and waits until the
/// API serves it.
pub fn install_crd() {
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &repo().join("crds/datastream.yaml").to_string_lossy(),
    ]);
    kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "--timeout=60s",
        "crd/datastreams.datastream.dev",
    ]);
}

/// The cluster's helm (built by `make cluster-up`), with its state directories kept out of the
/// user's home.
pub fn helm_command() -> Command {
    let bin = state_dir().join("bin/helm");
    assert!(
        bin.exists(),
        "{} is missing: `make cluster-up` builds it",
        bin.display()
    );
    let mut command = Command::new(bin);
    command
        .env("HELM_CACHE_HOME", state_dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", state_dir().join("helm/config"))
        .env("HELM_DATA_HOME", state_dir().join("helm/data"));
    command
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 GET (or other request) and returns the status and body.
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    http_request("GET", url, headers, "").await
}

/// Sends one HTTP/1.1 request with a 5 s timeout.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let answer = http_exchange(method, url, headers, body).await?;
    Ok((answer.status, answer.body))
}

/// What one HTTP request got back.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response header fields.
    pub headers: http::HeaderMap,
    /// Body, as text.
    pub body: String,
}

impl Answer {
    /// A header field's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// Sends one HTTP/1.1 request with a 5 s timeout and returns the whole answer.
pub async fn http_exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("url without host")?.clone();
    let fut = async {
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        request = request.header("host", authority.as_str());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender
            .send_request(request.body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))?)
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("request timed out")?
}

/// The process id of a pod's container on the process kubelet (`run/pods/<uid>/<name>.pid`
/// holds `<pid> <start time>`; the start time guards against pid reuse).
pub fn container_pid(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> i32 {
    let uid = pod.metadata.uid.clone().expect("pods have a uid");
    let pid_file = state_dir()
        .join("run/pods")
        .join(&uid)
        .join(format!("{container}.pid"));
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{} holds no pid", pid_file.display()))
}

/// How often a pod's container has restarted, per its status.
pub fn container_restarts(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// Resources the operator writes in a stream's namespace (events aside).
pub const OPERATOR_WRITTEN_RESOURCES: [&str; 10] = [
    "datastreams",
    "statefulsets",
    "deployments",
    "persistentvolumeclaims",
    "services",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "poddisruptionbudgets",
    "networkpolicies",
];

/// Write requests (create/update/patch/delete) recorded in the apiserver's audit log for
/// `namespace` on the resources in `resources`, after `since`.
pub fn audited_writes(namespace: &str, resources: &[&str], since: &str) -> Vec<serde_json::Value> {
    writes_in(namespace, since)
        .filter(|e| resources.contains(&e["objectRef"]["resource"].as_str().unwrap_or_default()))
        // The operator authenticates as the admin user here; controllers have their own users.
        .filter(|e| e["user"]["username"] == "kubernetes-admin")
        // Token requests are the process kubelet's, not the operator's.
        .filter(|e| {
            e["objectRef"]["subresource"].is_null() || e["objectRef"]["subresource"] == "status"
        })
        .collect()
}

/// The current time as the audit log writes it (RFC 3339, UTC).
pub fn audit_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ts = k8s_openapi::jiff::Timestamp::from_nanosecond(now.as_nanos() as i128).unwrap();
    ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Reads a YAML file of the repository.
pub fn repo_file(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(repo().join(path.as_ref())).unwrap()
}

/// One invalid variant of a valid manifest: `(what, text replaced, replacement, text the API
/// server's refusal must contain)`.
pub type AdmissionCase<'a> = (&'a str, &'a str, &'a str, &'a str);

/// Applies every variant of `valid` in `cases` with a server-side dry run in `namespace` and
/// returns what went wrong: variants accepted, or refused with a message that does not contain
/// the expected text (so that it names the field). A case whose replacement does not change the
/// manifest panics: it would test nothing.
pub fn admission_failures(
    namespace: &str,
    valid: &str,
    cases: &[AdmissionCase<'_>],
) -> Vec<String> {
    let mut failures = vec![];
    for (what, from, to, names) in cases {
        let yaml = valid.replacen(from, to, 1);
        assert_ne!(yaml, valid, "case {what} did not change the spec");
        let out = kubectl_stdin(
            &["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
            Some(&yaml),
        );
        if out.ok {
            failures.push(format!("{what}: accepted"));
        } else if !out.stderr.contains(names) {
            failures.push(format!(
                "{what}: message does not name {names:?}: {}",
                out.stderr
            ));
        }
    }
    failures
}
