//! A user's whole journey on the local cluster: CRDs with `kubectl apply -f crds/`, the operator
//! with `helm install` (its pod runs under the process kubelet with the chart's service account,
//! so the chart's RBAC is what authorizes it), the example DataStream, traffic through the
//! sidecars in every routing mode, disruptions under continuous traffic, a live policy change, a
//! leader takeover, garbage collection and `helm uninstall`.
//!
//! Issue 6's scenario 7 (at least ten invalid DataStreams rejected at admission with clear
//! messages) is `invalid_datastreams_are_rejected_at_admission` in `operator.rs`.
//!
//! The test dials pod IPs (it runs inside the cluster's netns); there is no kube-proxy, so no
//! ClusterIP is ever used. Every wait is bounded and dumps the namespace's state when it expires.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datastream_api::DataStream;
use datastream_api::v1alpha1::Phase;
use datastream_e2e::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const STREAM: &str = "demo";
const TRAFFIC_PORT: u16 = 7080;
const ADMIN_PORT: u16 = 7082;
const WORKLOAD_PORT: u16 = 8080;

// === helm ===

/// Runs the cluster's helm with the admin kubeconfig; fails the test when it fails.
#[track_caller]
fn helm_ok(args: &[&str]) -> String {
    let bin = state_dir().join("bin/helm");
    let out = Command::new(&bin)
        .env("KUBECONFIG", kubeconfig_path())
        .env("HELM_CACHE_HOME", state_dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", state_dir().join("helm/config"))
        .env("HELM_DATA_HOME", state_dir().join("helm/data"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helm {} failed:\n{stdout}{stderr}",
        args.join(" ")
    );
    stdout
}

/// A Helm release uninstalled when the test ends, even by a panic, so that its cluster-scoped
/// objects (ClusterRole, ClusterRoleBinding) never outlive the test's namespaces.
struct Release {
    name: String,
    namespace: String,
    installed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed && std::env::var_os("E2E_KEEP").is_none() {
            let _ = Command::new(state_dir().join("bin/helm"))
                .env("KUBECONFIG", kubeconfig_path())
                .args([
                    "uninstall",
                    &self.name,
                    "-n",
                    &self.namespace,
                    "--timeout",
                    "60s",
                ])
                .output();
        }
    }
}

/// The chart's values that point every image at the binaries the process kubelet maps.
fn local_images() -> Vec<String> {
    [
        "image.repository=localhost/datastream-operator",
        "image.tag=dev",
        "sidecar.image.repository=localhost/datastream-sidecar",
        "sidecar.image.tag=dev",
        "test.image.repository=localhost/datastream-demo-replica",
        "test.image.tag=dev",
    ]
    .iter()
    .flat_map(|v| ["--set".to_owned(), (*v).to_owned()])
    .collect()
}

// === HTTP with headers ===

/// One answer: status and the headers the scenarios look at.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    replica: Option<String>,
    error: Option<String>,
    body: String,
}

/// Sends one HTTP/1.1 request on a fresh connection (5 s bound).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Answer> {
    use http_body_util::BodyExt;
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))?;
        let response = sender.send_request(request).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (replica, error) = (header("x-replica-id"), header("x-datastream-error"));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Answer {
            status,
            replica,
            error,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))?
}

#[track_caller]
fn replica_of(answer: &anyhow::Result<Answer>) -> String {
    match answer {
        Ok(a) if a.status < 500 => a
            .replica
            .clone()
            .unwrap_or_else(|| panic!("answer without x-replica-id: {a:?}")),
        other => panic!("request failed: {other:?}"),
    }
}

// === cluster views ===

/// The stream's ready replicas: pod IPs from `status.endpoints`.
async fn endpoint_ips(streams: &Api<DataStream>) -> Vec<std::net::IpAddr> {
    let Ok(ds) = streams.get(STREAM).await else {
        return vec![];
    };
    ds.status
        .map(|s| s.endpoints)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .collect()
}

fn traffic(ip: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(ip, TRAFFIC_PORT)
}

/// Running pods of the stream by name, with their IPs.
async fn stream_pods(pods: &Api<Pod>) -> BTreeMap<String, Pod> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STREAM}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

/// Waits until the stream reports `n` ready replicas, Available, for its latest generation, with
/// every pod of the StatefulSet updated and no pod terminating.
async fn wait_ready(
    ns: &str,
    streams: &Api<DataStream>,
    pods: &Api<Pod>,
    n: i32,
    what: &str,
    timeout: Duration,
) {
    wait_for(ns, what, timeout, || async {
        let ds = streams.get(STREAM).await.ok()?;
        let status = ds.status.clone()?;
        let all = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STREAM}")))
            .await
            .ok()?;
        let settled = all.items.len() == n as usize;
        (status.ready_replicas == n
            && status.updated_replicas == n
            && status.endpoints.len() == n as usize
            && status.phase == Some(Phase::Available)
            && status.observed_generation == ds.metadata.generation
            && settled)
            .then_some(())
    })
    .await;
}

/// The first `lastError` any sidecar of `ips` reports in its admin `/config`.
async fn sidecar_config_error(ips: &[std::net::IpAddr]) -> Option<String> {
    for ip in ips {
        let a = send(SocketAddr::new(*ip, ADMIN_PORT), "GET", "/config", &[], "")
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&a.body).ok()?;
        if let Some(error) = json["lastError"].as_str().filter(|e| !e.is_empty()) {
            return Some(error.to_owned());
        }
    }
    None
}

/// Whether every sidecar of `ips` runs the policy of DataStream generation `generation`.
async fn sidecars_at_generation(ips: &[std::net::IpAddr], generation: i64) -> bool {
    for ip in ips {
        let Ok(a) = send(SocketAddr::new(*ip, ADMIN_PORT), "GET", "/config", &[], "").await else {
            return false;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&a.body) else {
            return false;
        };
        let source = json["source"].as_str().unwrap_or_default();
        if !source.ends_with(&format!("generation {generation}")) {
            return false;
        }
    }
    true
}

// === continuous traffic ===

/// A request of the background load: name, path and headers.
type LoadRequest = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The idempotent requests of the background load, one per routing mode that reads.
const LOAD_REQUESTS: [LoadRequest; 3] = [
    ("balance GET /", "/", &[]),
    ("primary GET /", "/", &[("x-consistency", "strong")]),
    ("affinity GET /kv/load", "/kv/load", &[]),
];

/// One request of the background load that did not succeed.
#[derive(Debug, Clone)]
struct Failure {
    at: Duration,
    sidecar: SocketAddr,
    request: &'static str,
    outcome: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {:?} {} via sidecar {}: {}",
            self.at, self.request, self.sidecar, self.outcome
        )
    }
}

/// Idempotent requests sent without pause by two workers to the sidecars the stream lists as
/// ready (refreshed every 200 ms, as an endpoints-aware client or kube-proxy would), counting
/// every transport error and every 5xx.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
    started: Instant,
}

impl Load {
    fn start(streams: Api<DataStream>, initial: Vec<std::net::IpAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(initial));
        let sent = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = vec![];
        {
            let (stop, targets) = (stop.clone(), targets.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ips = endpoint_ips(&streams).await;
                    if !ips.is_empty() {
                        *targets.lock().unwrap() = ips;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        for worker in 0..2usize {
            let (stop, targets, sent, failures) = (
                stop.clone(),
                targets.clone(),
                sent.clone(),
                failures.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let kinds = LOAD_REQUESTS;
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    let sidecar = {
                        let t = targets.lock().unwrap();
                        traffic(t[i % t.len()])
                    };
                    let (name, path, headers) = kinds[i % kinds.len()];
                    i += 1;
                    let outcome = match send(sidecar, "GET", path, headers, "").await {
                        // 404 is the workload's real answer for a key it does not hold.
                        Ok(a) if a.status < 500 => None,
                        Ok(a) => Some(format!(
                            "status {} error {:?} body {:?}",
                            a.status, a.error, a.body
                        )),
                        Err(e) => Some(format!("{e:#}")),
                    };
                    match outcome {
                        None => *sent.lock().unwrap().entry(name.to_owned()).or_default() += 1,
                        Some(outcome) => failures.lock().unwrap().push(Failure {
                            at: started.elapsed(),
                            sidecar,
                            request: name,
                            outcome,
                        }),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load {
            stop,
            tasks,
            sent,
            failures,
            started,
        }
    }

    /// Succeeded and failed requests so far.
    fn counts(&self) -> (u64, usize) {
        (
            self.sent.lock().unwrap().values().sum(),
            self.failures.lock().unwrap().len(),
        )
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs one disruption under load and asserts that no request failed during it (and for a
/// settling time after it), printing the figures.
async fn assert_no_failures(
    load: &Load,
    what: &str,
    before: (u64, usize),
    report: &mut Vec<String>,
) {
    let (ok, failed) = load.counts();
    let new: Vec<String> = load.failures.lock().unwrap()[before.1..]
        .iter()
        .map(ToString::to_string)
        .collect();
    let line = format!(
        "{what}: {} requests succeeded, {} failed",
        ok - before.0,
        failed - before.1
    );
    eprintln!(
        "journey: {line} (load running {:?})",
        load.started.elapsed()
    );
    report.push(line);
    assert!(
        new.is_empty(),
        "{what}: {} failed requests, first ones: {:#?}",
        new.len(),
        &new[..new.len().min(10)]
    );
}

// === the journey ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_whole_journey() {
    let client = client().await.expect("local cluster");
    let mut report: Vec<String> = vec![];

    // 1. CRDs with kubectl, the operator with helm (its pod runs with the chart's RBAC).
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &repo().join("crds").to_string_lossy(),
    ]);
    kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "--timeout=60s",
        "crd/datastreams.datastream.dev",
    ]);
    // The operator this test installs watches every namespace: DataStreams of a concurrent
    // suite or benchmark would be reconciled by it too (and slow it down). Say so up front.
    let foreign = kubectl_ok(&[
        "get",
        "dst",
        "-A",
        "--no-headers",
        "-o",
        "custom-columns=NS:.metadata.namespace",
    ]);
    let foreign: BTreeSet<&str> = foreign
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if !foreign.is_empty() {
        eprintln!(
            "journey: WARNING: DataStreams exist in {foreign:?}; the operator installed here will reconcile them too (run the journey alone)"
        );
    }
    let ops = TestNamespace::create("e2e-journey-op");
    let app = TestNamespace::create("e2e-journey-app");
    let release = format!("dsj-{}", &ops.name[ops.name.len() - 6..]);
    let chart = repo().join("charts/datastream");
    let mut install = vec![
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &ops.name,
    ];
    let images = local_images();
    install.extend(images.iter().map(String::as_str));
    let test_ns = format!("test.namespace={}", app.name);
    install.extend(["--set", test_ns.as_str()]);
    let installed = Instant::now();
    let mut guard = Release {
        name: release.clone(),
        namespace: ops.name.clone(),
        installed: true,
    };
    helm_ok(&install);
    let operator_name = format!("{release}-datastream-operator");
    let op_pods: Api<Pod> = Api::namespaced(client.clone(), &ops.name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ops.name);
    // Operator pods whose container runs, by name, with their Ready condition.
    let operator_pods = || async {
        op_pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| {
                        let s = p.status.as_ref();
                        s.and_then(|s| s.container_statuses.as_ref())
                            .is_some_and(|c| {
                                c.iter()
                                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                            })
                    })
                    .map(|p| {
                        let ready = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        (p.metadata.name.unwrap_or_default(), ready)
                    })
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default()
    };
    // The operator pod holds the Lease: it authenticated with its service account, passed its
    // start-up check (list DataStreams) and may reconcile.
    wait_for(
        &ops.name,
        "the operator pod to run and hold the leader Lease",
        Duration::from_secs(120),
        || async {
            let names = operator_pods().await;
            let holder = leases
                .get_opt(&operator_name)
                .await
                .ok()??
                .spec?
                .holder_identity?;
            names.contains_key(&holder).then_some(())
        },
    )
    .await;
    report.push(format!(
        "helm install: operator pod running and leading {:?} after helm install",
        installed.elapsed()
    ));
    // Readiness (/readyz: watches synced) is recorded here and asserted at the end, so that a
    // readiness bug does not hide the rest of the journey.
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    let mut operator_ready = false;
    while Instant::now() < ready_deadline && !operator_ready {
        operator_ready = operator_pods().await.values().all(|r| *r);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.push(format!(
        "operator pod Ready (/readyz) within 30 s of leading: {operator_ready}"
    ));
    let sa = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        &ops.name,
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "jsonpath={.items[*].spec.serviceAccountName}",
    ]);
    assert_eq!(
        sa.trim(),
        operator_name,
        "the operator pod runs as the chart's service account"
    );

    // 2. The example becomes Available; kubectl shows its columns and events.
    let streams: Api<DataStream> = Api::namespaced(client.clone(), &app.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app.name);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), &app.name);
    kubectl_ok(&[
        "apply",
        "-n",
        &app.name,
        "-f",
        &repo()
            .join("examples/datastream-demo.yaml")
            .to_string_lossy(),
    ]);
    let applied = Instant::now();
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "the example DataStream Available with 3 ready replicas",
        Duration::from_secs(180),
    )
    .await;
    report.push(format!(
        "example DataStream Available {:?} after kubectl apply",
        applied.elapsed()
    ));
    let table = kubectl_ok(&["get", "dst", "-n", &app.name]);
    eprintln!("$ kubectl get dst\n{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "POLICY", "STATUS", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], [STREAM, "3", "3", "p2c-ewma", "Available"]);
    let wide = kubectl_ok(&["get", "dst", "-n", &app.name, "-o", "wide"]);
    assert!(wide.contains("REASON"), "{wide}");
    let described = kubectl_ok(&["describe", "dst", STREAM, "-n", &app.name]);
    assert!(
        described.contains("Events:") && described.contains("Created"),
        "{described}"
    );

    // `helm test` sends a request through every sidecar of the example, by pod IP.
    helm_ok(&["test", &release, "-n", &ops.name, "--timeout", "120s"]);

    // 3. Routing modes through the sidecars.
    let ips = endpoint_ips(&streams).await;
    assert_eq!(ips.len(), 3);
    let sidecars: Vec<SocketAddr> = ips.iter().map(|ip| traffic(*ip)).collect();
    let replicas: BTreeSet<String> = stream_pods(&pods).await.into_keys().collect();

    // Every sidecar learns the replicas from the peer EndpointSlices, like the operator's status;
    // wait until each one lists all three as eligible before judging the spread.
    let converged = Instant::now();
    for ip in &ips {
        let admin = SocketAddr::new(*ip, ADMIN_PORT);
        wait_for(
            &app.name,
            "every sidecar listing 3 eligible replicas (/endpoints)",
            Duration::from_secs(30),
            || async move {
                let a = send(admin, "GET", "/endpoints", &[], "").await.ok()?;
                let json: serde_json::Value = serde_json::from_str(&a.body).ok()?;
                let eligible = json["endpoints"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["eligibility"]["state"] == "eligible")
                    .count();
                (eligible == 3).then_some(())
            },
        )
        .await;
    }
    report.push(format!(
        "sidecars listed all 3 replicas as eligible {:?} after the stream reported Available",
        converged.elapsed()
    ));

    // A sidecar that cannot apply the example's policy says why in /config (lastError) and keeps
    // its previous one. Routing modes it does not support yet are recorded as missing (the test
    // fails at the end), and the rest of the journey runs without them so that it still measures
    // everything else.
    let mut missing: Vec<String> = vec![];
    let mut broadcast_supported = true;
    let generation = streams
        .get(STREAM)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let rejected = sidecar_config_error(&ips).await;
    assert!(
        rejected.is_some() || sidecars_at_generation(&ips, generation).await,
        "the sidecars do not run the example's policy (generation {generation})"
    );
    if let Some(error) = rejected
        .as_ref()
        .filter(|e| !(e.contains("broadcast") && e.contains("not supported")))
    {
        panic!("the sidecars rejected the example's traffic policy: {error}");
    }
    if let Some(error) = rejected.filter(|e| e.contains("broadcast") && e.contains("not supported"))
    {
        missing.push(format!(
            "broadcast route: the sidecar rejects the example's policy: {error}"
        ));
        broadcast_supported = false;
        kubectl_ok(&[
            "patch",
            "dst",
            STREAM,
            "-n",
            &app.name,
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/traffic/routes/0/name","value":"kv-write"},{"op":"remove","path":"/spec/traffic/routes/0"}]"#,
        ]);
        let generation = streams
            .get(STREAM)
            .await
            .unwrap()
            .metadata
            .generation
            .unwrap();
        wait_for(
            &app.name,
            "every sidecar applying the example without its broadcast route",
            Duration::from_secs(30),
            || {
                let ips = ips.clone();
                async move { sidecars_at_generation(&ips, generation).await.then_some(()) }
            },
        )
        .await;
    }

    // balance: requests entering one sidecar spread over every replica. Six at a time, as
    // concurrent clients would send them: a load-aware policy (p2c-ewma) spreads by load.
    let mut spread: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let batch =
            futures::future::join_all((0..6).map(|_| send(sidecars[0], "GET", "/", &[], ""))).await;
        for answer in &batch {
            *spread.entry(replica_of(answer)).or_default() += 1;
        }
    }
    eprintln!("journey: balance spread over 180 requests: {spread:?}");
    report.push(format!(
        "balance: 180 requests (6 concurrent) through one sidecar spread {spread:?}"
    ));
    if spread.keys().cloned().collect::<BTreeSet<_>>() != replicas {
        // What the balancing sidecar knew about each replica (estimates, in-flight counts,
        // eligibility, failures) and why its TLS handshakes failed, if any did.
        let admin = SocketAddr::new(ips[0], ADMIN_PORT);
        let endpoints = send(admin, "GET", "/endpoints", &[], "")
            .await
            .map(|a| a.body)
            .unwrap_or_else(|e| format!("no /endpoints: {e}"));
        let refusals: Vec<String> = send(admin, "GET", "/metrics", &[], "")
            .await
            .map(|a| {
                a.body
                    .lines()
                    .filter(|l| {
                        l.contains("peer_tls")
                            || l.contains("endpoint_failures")
                            || l.contains("endpoint_requests")
                    })
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        missing.push(format!(
            "balance: requests through one sidecar reached only {spread:?} of {replicas:?}; \
             its /endpoints: {endpoints}; its TLS, request and failure counters: {refusals:?}"
        ));
    }

    // broadcast: a write reaches every replica (each workload answers for the key directly).
    if broadcast_supported {
        let put = send(sidecars[1], "PUT", "/kv/user-42", &[], "v1")
            .await
            .unwrap();
        assert!(put.status < 300, "broadcast PUT: {put:?}");
        for ip in &ips {
            let direct = SocketAddr::new(*ip, WORKLOAD_PORT);
            wait_for(
                &app.name,
                "the broadcast write on every replica",
                Duration::from_secs(10),
                || async move {
                    let a = send(direct, "GET", "/kv/user-42", &[], "").await.ok()?;
                    (a.status == 200 && a.body == "v1").then_some(())
                },
            )
            .await;
        }
        report.push("broadcast: one PUT through a sidecar stored the key on all 3 replicas".into());
    } else {
        // Without broadcast, store the key on every replica directly so affinity reads find it.
        for ip in &ips {
            let a = send(
                SocketAddr::new(*ip, WORKLOAD_PORT),
                "PUT",
                "/kv/user-42",
                &[],
                "v1",
            )
            .await
            .unwrap();
            assert!(a.status < 300, "{a:?}");
        }
    }

    // affinity: a key is served by one replica whichever sidecar the request enters; keys spread.
    let mut owners = BTreeSet::new();
    for _ in 0..5 {
        for s in &sidecars {
            let a = send(*s, "GET", "/kv/user-42", &[], "").await;
            assert_eq!(a.as_ref().unwrap().body, "v1");
            owners.insert(replica_of(&a));
        }
    }
    assert_eq!(owners.len(), 1, "key user-42 served by {owners:?}");
    let mut key_owners = BTreeSet::new();
    for k in 0..24 {
        key_owners.insert(replica_of(
            &send(sidecars[k % 3], "GET", &format!("/kv/key-{k}"), &[], "").await,
        ));
    }
    assert!(
        key_owners.len() >= 2,
        "24 keys all landed on {key_owners:?}"
    );
    report.push(format!(
        "affinity: key user-42 on one replica from all sidecars; 24 keys over {} replicas",
        key_owners.len()
    ));

    // primary: every sidecar sends strong reads to the same replica; it fails over on deletion.
    let primary_of = |sidecars: Vec<SocketAddr>| async move {
        let mut seen = BTreeSet::new();
        for s in &sidecars {
            for _ in 0..5 {
                seen.insert(replica_of(
                    &send(*s, "GET", "/", &[("x-consistency", "strong")], "").await,
                ));
            }
        }
        seen
    };
    let seen = primary_of(sidecars.clone()).await;
    assert_eq!(seen.len(), 1, "primary requests answered by {seen:?}");
    let primary = seen.into_iter().next().unwrap();
    kubectl_ok(&["delete", "pod", &primary, "-n", &app.name, "--wait=false"]);
    let deleted = Instant::now();
    let survivors: Vec<SocketAddr> = stream_pods(&pods)
        .await
        .values()
        .filter(|p| p.metadata.name.as_deref() != Some(&primary))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .map(traffic)
        .collect();
    let new_primary = wait_for(
        &app.name,
        "a new primary after deleting the old one",
        Duration::from_secs(30),
        || {
            let survivors = survivors.clone();
            let primary = primary.clone();
            async move {
                let a = send(survivors[0], "GET", "/", &[("x-consistency", "strong")], "")
                    .await
                    .ok()?;
                a.replica.filter(|r| *r != primary && a.status < 500)
            }
        },
    )
    .await;
    let failover = deleted.elapsed();
    // Every surviving sidecar settles on one primary (a replacement pod may join meanwhile).
    let agreed = wait_for(
        &app.name,
        "surviving sidecars agreeing on one primary",
        Duration::from_secs(30),
        || {
            let survivors = survivors.clone();
            async move {
                let mut seen = BTreeSet::new();
                for s in &survivors {
                    for _ in 0..5 {
                        let a = send(*s, "GET", "/", &[("x-consistency", "strong")], "")
                            .await
                            .ok()?;
                        seen.insert(a.replica.filter(|_| a.status < 500)?);
                    }
                }
                (seen.len() == 1).then(|| seen.into_iter().next().unwrap())
            }
        },
    )
    .await;
    assert_ne!(agreed, primary, "the deleted pod cannot stay primary");
    let agreed = primary_of(survivors.clone()).await;
    assert_eq!(
        agreed,
        BTreeSet::from([new_primary.clone()]),
        "surviving sidecars disagree on the primary"
    );
    report.push(format!(
        "primary: {primary} deleted, {new_primary} serving strong reads after {failover:?}"
    ));
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 replicas again after the primary's deletion",
        Duration::from_secs(120),
    )
    .await;

    // 4. Disruptions under continuous idempotent traffic: zero failed requests each.
    // Warm the affinity key on every replica so the load's reads find it.
    let ips = endpoint_ips(&streams).await;
    assert!(
        send(traffic(ips[0]), "PUT", "/kv/load", &[], "x")
            .await
            .unwrap()
            .status
            < 300
    );
    let load = Load::start(streams.clone(), ips);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (base, failed) = load.counts();
    assert!(
        base > 20 && failed == 0,
        "load does not run cleanly before any disruption: {base} ok, {failed} failed"
    );

    // delete a pod
    let before = load.counts();
    let victim = stream_pods(&pods).await.into_keys().next().unwrap();
    kubectl_ok(&["delete", "pod", &victim, "-n", &app.name, "--wait=false"]);
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 replicas after deleting a pod",
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_failures(&load, &format!("delete pod {victim}"), before, &mut report).await;

    // kill a workload process (SIGKILL, as a crash): the podlet restarts it
    let before = load.counts();
    let (victim, pod) = stream_pods(&pods).await.into_iter().next().unwrap();
    let pid = container_pid(&pod, "workload");
    let restarts = |p: &Pod| container_restarts(p, "workload");
    let restarts_before = restarts(&pod);
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_for(
        &app.name,
        "the killed workload restarted and ready again",
        Duration::from_secs(90),
        || async {
            let p = pods.get(&victim).await.ok()?;
            let ready = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (restarts(&p) > restarts_before && ready).then_some(())
        },
    )
    .await;
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 ready replicas after the workload restart",
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_failures(
        &load,
        &format!("kill -9 the workload process of {victim}"),
        before,
        &mut report,
    )
    .await;

    // roll out a new workload version
    let before = load.counts();
    // StatefulSet pods keep their names across a rollout: a replaced pod is a new uid.
    let uids = |pods: BTreeMap<String, Pod>| -> BTreeSet<String> {
        pods.into_values().filter_map(|p| p.metadata.uid).collect()
    };
    let old_pods: BTreeSet<String> = uids(stream_pods(&pods).await);
    kubectl_ok(&[
        "patch",
        "dst",
        STREAM,
        "-n",
        &app.name,
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/workload/env/-","value":{"name":"DEMO_VERSION","value":"v2"}}]"#,
    ]);
    wait_for(
        &app.name,
        "the rollout to replace every pod",
        Duration::from_secs(240),
        || {
            let old_pods = old_pods.clone();
            let (streams, pods) = (streams.clone(), pods.clone());
            async move {
                let now: BTreeSet<String> = uids(stream_pods(&pods).await);
                let ds = streams.get(STREAM).await.ok()?;
                let s = ds.status?;
                (now.is_disjoint(&old_pods)
                    && s.updated_replicas == 3
                    && s.ready_replicas == 3
                    && s.observed_generation == ds.metadata.generation)
                    .then_some(())
            }
        },
    )
    .await;
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 ready replicas after the rollout",
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_failures(
        &load,
        "rolling out a new workload version (3 pods replaced)",
        before,
        &mut report,
    )
    .await;

    // scale 3 -> 5 -> 2
    for n in [5, 2] {
        let before = load.counts();
        kubectl_ok(&[
            "scale",
            "dst",
            STREAM,
            "-n",
            &app.name,
            &format!("--replicas={n}"),
        ]);
        wait_ready(
            &app.name,
            &streams,
            &pods,
            n,
            &format!("{n} ready replicas after kubectl scale"),
            Duration::from_secs(180),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_no_failures(
            &load,
            &format!("kubectl scale dst --replicas={n}"),
            before,
            &mut report,
        )
        .await;
    }
    let sent = load.sent.lock().unwrap().clone();
    let (total_ok, total_failed) = load.counts();
    load.stop().await;
    // Nothing failed between the disruptions either.
    assert_eq!(
        total_failed, 0,
        "failed requests outside the measured disruptions"
    );
    report.push(format!(
        "load: {total_ok} requests, {total_failed} failed over all disruptions"
    ));
    report.push(format!("load totals by request kind: {sent:?}"));

    // 5. A traffic-policy change reaches every sidecar without a restart.
    let before_pods: BTreeMap<String, (String, i32)> = stream_pods(&pods)
        .await
        .into_iter()
        .map(|(n, p)| {
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (n, (p.metadata.uid.unwrap(), restarts))
        })
        .collect();
    let admin: Vec<SocketAddr> = endpoint_ips(&streams)
        .await
        .into_iter()
        .map(|ip| SocketAddr::new(ip, ADMIN_PORT))
        .collect();
    let changed = Instant::now();
    kubectl_ok(&[
        "patch",
        "dst",
        STREAM,
        "-n",
        &app.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"traffic":{"loadBalancing":{"policy":"round-robin"}}}}"#,
    ]);
    let generation = streams
        .get(STREAM)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let reached: Arc<Mutex<BTreeMap<SocketAddr, Duration>>> = Arc::default();
    wait_for(
        &app.name,
        "the new policy on every sidecar (admin /config)",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            let reached = reached.clone();
            async move {
                for a in &admin {
                    if reached.lock().unwrap().contains_key(a) {
                        continue;
                    }
                    let Ok(config) = send(*a, "GET", "/config", &[], "").await else {
                        continue;
                    };
                    let Ok(json) = serde_json::from_str::<serde_json::Value>(&config.body) else {
                        continue;
                    };
                    let policy = json["traffic"]["loadBalancing"]["policy"]
                        .as_str()
                        .unwrap_or_default();
                    let source = json["source"].as_str().unwrap_or_default();
                    if policy == "round-robin"
                        && source.ends_with(&format!("generation {generation}"))
                    {
                        reached.lock().unwrap().insert(*a, changed.elapsed());
                    }
                }
                (reached.lock().unwrap().len() == admin.len()).then_some(())
            }
        },
    )
    .await;
    let reached = reached.lock().unwrap().clone();
    let slowest = reached.values().max().copied().unwrap();
    eprintln!("journey: policy change reached each sidecar after {reached:?}");
    let after_pods: BTreeMap<String, (String, i32)> = stream_pods(&pods)
        .await
        .into_iter()
        .map(|(n, p)| {
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (n, (p.metadata.uid.unwrap(), restarts))
        })
        .collect();
    assert_eq!(
        before_pods, after_pods,
        "a traffic-policy change must not restart or replace pods"
    );
    report.push(format!("policy change (p2c-ewma -> round-robin, generation {generation}) on all {} sidecars after {slowest:?} (target < 2 s); no pod restarted", admin.len()));
    assert!(
        slowest < Duration::from_secs(2),
        "policy propagation took {slowest:?}, target under 2 s"
    );

    // 6. Two operator replicas: delete the leader's pod, the other takes over within the lease.
    let mut upgrade = vec![
        "upgrade",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &ops.name,
        "--reuse-values",
        "--set",
        "replicaCount=2",
    ];
    upgrade.extend(images.iter().map(String::as_str));
    helm_ok(&upgrade);
    let leader = wait_for(
        &ops.name,
        "two running operator pods and a leader among them",
        Duration::from_secs(120),
        || async {
            let names = operator_pods().await;
            let holder = leases
                .get_opt(&operator_name)
                .await
                .ok()??
                .spec?
                .holder_identity?;
            (names.len() == 2 && names.contains_key(&holder)).then_some(holder)
        },
    )
    .await;
    kubectl_ok(&["delete", "pod", &leader, "-n", &ops.name, "--wait=false"]);
    let killed = Instant::now();
    kubectl_ok(&["scale", "dst", STREAM, "-n", &app.name, "--replicas=3"]);
    let new_leader = wait_for(
        &ops.name,
        "the standby to take the Lease and reconcile a scale",
        Duration::from_secs(40),
        || {
            let (leases, stateful_sets, leader, operator_name) = (
                leases.clone(),
                stateful_sets.clone(),
                leader.clone(),
                operator_name.clone(),
            );
            async move {
                let holder = leases
                    .get_opt(&operator_name)
                    .await
                    .ok()??
                    .spec?
                    .holder_identity?;
                let replicas = stateful_sets.get(STREAM).await.ok()?.spec?.replicas?;
                (holder != leader && !holder.is_empty() && replicas == 3).then_some(holder)
            }
        },
    )
    .await;
    let takeover = killed.elapsed();
    report.push(format!("leader {leader} deleted; {new_leader} took the Lease and reconciled a scale after {takeover:?} (lease 15 s)"));
    assert!(
        takeover < Duration::from_secs(15 + 10),
        "takeover took {takeover:?}"
    );
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 replicas reconciled by the new leader",
        Duration::from_secs(120),
    )
    .await;

    // A crash rather than a deletion: the leader's process is SIGKILLed, so it cannot release the
    // Lease. Whoever takes over (the standby once the Lease expires, or the restarted process
    // renewing its own identity) must reconcile a change within the lease time.
    wait_for(
        &ops.name,
        "two running operator pods again",
        Duration::from_secs(120),
        || async { (operator_pods().await.len() == 2).then_some(()) },
    )
    .await;
    let leader_pod = op_pods.get(&new_leader).await.unwrap();
    let pid_file = state_dir()
        .join("run/pods")
        .join(leader_pod.metadata.uid.as_deref().unwrap())
        .join("operator.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = pid.split_whitespace().next().unwrap().to_owned();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let crashed = Instant::now();
    kubectl_ok(&["scale", "dst", STREAM, "-n", &app.name, "--replicas=2"]);
    let holder = wait_for(
        &ops.name,
        "a leader reconciling after the leader's process crashed",
        Duration::from_secs(40),
        || {
            let (leases, stateful_sets, operator_name) =
                (leases.clone(), stateful_sets.clone(), operator_name.clone());
            async move {
                let replicas = stateful_sets.get(STREAM).await.ok()?.spec?.replicas?;
                let holder = leases
                    .get_opt(&operator_name)
                    .await
                    .ok()??
                    .spec?
                    .holder_identity?;
                (replicas == 2).then_some(holder)
            }
        },
    )
    .await;
    let recovered = crashed.elapsed();
    let who = if holder == new_leader {
        "its restarted process"
    } else {
        "the standby"
    };
    report.push(format!("leader process {new_leader} SIGKILLed; {who} ({holder}) reconciled a scale after {recovered:?} (lease 15 s)"));
    assert!(
        recovered < Duration::from_secs(15 + 10),
        "recovery after a crash took {recovered:?}"
    );
    wait_ready(
        &app.name,
        &streams,
        &pods,
        2,
        "2 replicas reconciled after the crash",
        Duration::from_secs(120),
    )
    .await;

    // A frozen leader (SIGSTOP: alive, holding the Lease, renewing nothing) is the case the Lease
    // exists for: the standby must take over once the Lease expires, and reconcile.
    wait_for(
        &ops.name,
        "two running operator pods after the crash",
        Duration::from_secs(120),
        || async { (operator_pods().await.len() == 2).then_some(()) },
    )
    .await;
    let frozen_name = wait_for(
        &ops.name,
        "the current leader",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt(&operator_name)
                .await
                .ok()??
                .spec?
                .holder_identity
                .filter(|h| !h.is_empty())
        },
    )
    .await;
    let frozen_pod = op_pods.get(&frozen_name).await.unwrap();
    let pid_file = state_dir()
        .join("run/pods")
        .join(frozen_pod.metadata.uid.as_deref().unwrap())
        .join("operator.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = pid.split_whitespace().next().unwrap().to_owned();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let frozen = Instant::now();
    kubectl_ok(&["scale", "dst", STREAM, "-n", &app.name, "--replicas=3"]);
    let standby = wait_for(
        &ops.name,
        "the standby to take the Lease from a frozen leader and reconcile",
        Duration::from_secs(45),
        || {
            let (leases, stateful_sets, operator_name, frozen_name) = (
                leases.clone(),
                stateful_sets.clone(),
                operator_name.clone(),
                frozen_name.clone(),
            );
            async move {
                let holder = leases
                    .get_opt(&operator_name)
                    .await
                    .ok()??
                    .spec?
                    .holder_identity?;
                let replicas = stateful_sets.get(STREAM).await.ok()?.spec?.replicas?;
                (holder != frozen_name && !holder.is_empty() && replicas == 3).then_some(holder)
            }
        },
    )
    .await;
    let took = frozen.elapsed();
    // Thawed, the old leader finds the Lease taken and steps down (its process exits and restarts).
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    report.push(format!("leader {frozen_name} frozen (SIGSTOP); standby {standby} took the Lease after expiry and reconciled a scale after {took:?} (lease 15 s)"));
    assert!(
        took < Duration::from_secs(15 + 10),
        "takeover from a frozen leader took {took:?}"
    );
    wait_ready(
        &app.name,
        &streams,
        &pods,
        3,
        "3 replicas reconciled by the standby",
        Duration::from_secs(120),
    )
    .await;

    // 8. Deleting the DataStream removes every child.
    kubectl_ok(&["delete", "dst", STREAM, "-n", &app.name, "--wait=false"]);
    let kinds = "statefulsets,controllerrevisions,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies";
    wait_for(
        &app.name,
        "every child of the DataStream garbage-collected",
        Duration::from_secs(120),
        || async {
            let left = kubectl(&[
                "get",
                kinds,
                "-n",
                &app.name,
                "-l",
                &format!("app.kubernetes.io/instance={STREAM}"),
                "-o",
                "name",
            ]);
            (left.ok && left.stdout.trim().is_empty()).then_some(())
        },
    )
    .await;
    report.push("DataStream deleted: StatefulSet, ControllerRevisions, pods, Services, ServiceAccount, Role, RoleBinding, PDB and NetworkPolicy all garbage-collected".into());

    // 9. helm uninstall leaves no operator object; the CRD stays.
    helm_ok(&[
        "uninstall",
        &release,
        "-n",
        &ops.name,
        "--wait",
        "--timeout",
        "120s",
    ]);
    guard.installed = false;
    let instance = format!("app.kubernetes.io/instance={release}");
    wait_for(&ops.name, "no object of the release left", Duration::from_secs(60), || async {
        let namespaced = kubectl(&["get", "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,configmaps", "-n", &ops.name, "-l", &instance, "-o", "name"]);
        let cluster = kubectl(&["get", "clusterroles,clusterrolebindings", "-l", &instance, "-o", "name"]);
        (namespaced.ok && cluster.ok && namespaced.stdout.trim().is_empty() && cluster.stdout.trim().is_empty()).then_some(())
    })
    .await;
    kubectl_ok(&["get", "crd", "datastreams.datastream.dev"]);
    report.push("helm uninstall: no chart object left (Deployment, pods, ServiceAccount, ClusterRole, ClusterRoleBinding, Lease Role, Service); the CRD stays".into());

    eprintln!("===== journey report =====");
    for line in &report {
        eprintln!("- {line}");
    }
    for line in &missing {
        eprintln!("- MISSING: {line}");
    }
    assert!(
        missing.is_empty(),
        "scenarios missing a sidecar feature: {missing:#?}"
    );
    assert!(
        operator_ready,
        "the operator pod never reported Ready (/readyz) although it reconciled"
    );
}
