//! End-to-end tests of the podlet against the real local cluster (`make cluster-up`).
//!
//! Run inside the sandbox namespace, where pod IPs are reachable over the bridge:
//! `ip netns exec dse2e cargo test -p datastream-podlet --features cluster-tests`.
//! They fail (never skip) when the cluster is unreachable. Every wait is bounded and dumps the state of
//! the namespace and the podlet log tail when it expires.
#![cfg(feature = "cluster-tests")]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, Event, HTTPGetAction, Namespace,
    ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Probe, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::net::TcpStream;

const IMAGE: &str = "registry.example/e2e/datastream-demo-replica:dev";
/// The shell image `scripts/build-images.sh --test-images` builds from Debian's static busybox.
const SHELL_IMAGE: &str = "registry.example/e2e/datastream-e2e-busybox:test";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn client() -> Client {
    let path = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("e2e/.state/kubeconfig"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cluster not available: cannot read {}: {e} (run `make cluster-up`)",
            path.display()
        )
    });
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!(
            "cluster not reachable: {e} (run `make cluster-up`; run the tests inside netns dse2e)"
        )
    });
    client
}

/// A fresh namespace per test.
struct TestNs {
    client: Client,
    name: String,
}

impl TestNs {
    async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        // Pods need the default ServiceAccount (created asynchronously by the controller manager).
        let sa =
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &name);
        wait_for(
            &name,
            client,
            "default service account",
            Duration::from_secs(30),
            || async { sa.get_opt("default").await.ok().flatten().map(|_| ()) },
        )
        .await;
        Self {
            client: client.clone(),
            name,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl TestNs {
    /// Deletes the namespace at the end of a passing test (a failing one leaves it for inspection, and
    /// the panic message names it) and waits until its pods are gone, so tests do not pile up pods.
    async fn delete(self) {
        let api = Api::<Namespace>::all(self.client.clone());
        api.delete(&self.name, &DeleteParams::default())
            .await
            .unwrap();
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.name);
        wait_for(
            &self.name,
            &self.client,
            "namespace pods deleted",
            Duration::from_secs(60),
            || async {
                pods.list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

/// Polls `f` every 250 ms until it yields `Some`, or panics after `limit` with a dump of the namespace.
async fn wait_for<T, F, Fut>(ns: &str, client: &Client, what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            dump(client, ns).await;
            panic!(
                "timed out after {limit:?} waiting for {what} (namespace {ns} left for inspection)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn dump(client: &Client, ns: &str) {
    eprintln!("===== state of namespace {ns}");
    if let Ok(pods) = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        for p in pods {
            eprintln!(
                "pod {} deleting={} status={}",
                p.metadata.name.unwrap_or_default(),
                p.metadata.deletion_timestamp.is_some(),
                serde_json::to_string(&p.status).unwrap_or_default()
            );
        }
    }
    if let Ok(slices) = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        for s in slices {
            eprintln!(
                "endpointslice {} {}",
                s.metadata.name.unwrap_or_default(),
                serde_json::to_string(&s.endpoints).unwrap_or_default()
            );
        }
    }
    let log = repo_root().join("e2e/.state/logs/podlet.log");
    if let Ok(text) = std::fs::read_to_string(&log) {
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("===== tail {}", log.display());
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
    }
}

/// One HTTP/1.1 request; returns status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "request timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn demo_container() -> Container {
    Container {
        name: "replica".into(),
        image: Some(IMAGE.into()),
        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Option<IpAddr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// The container's init process, from the podlet's pid file (`run/pods/<uid>/<container>.pid`).
fn container_pid(p: &Pod) -> Option<u32> {
    let uid = p.metadata.uid.as_deref()?;
    let name = &p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .name;
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.state/run/pods")
        .join(uid)
        .join(format!("{name}.pid"));
    let text = std::fs::read_to_string(file).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    PathBuf::from(format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// Ready/not-ready addresses of the EndpointSlices of `service`.
async fn slice_addresses(ns: &TestNs, service: &str) -> (Vec<String>, Vec<String>) {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = ns
        .api::<EndpointSlice>()
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let (mut ready, mut unready) = (Vec::new(), Vec::new());
    for ep in slices.iter().flat_map(|s| s.endpoints.iter().flatten()) {
        let ok = ep
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(false);
        for a in &ep.addresses {
            if ok {
                ready.push(a.clone())
            } else {
                unready.push(a.clone())
            }
        }
    }
    ready.sort();
    unready.sort();
    (ready, unready)
}

#[tokio::test]
async fn deployment_pods_run_serve_and_follow_readiness_and_deletion() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-e2e").await;
    let deploy = Deployment {
        metadata: ObjectMeta {
            name: Some("demo".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels("demo")),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("demo")),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![demo_container()],
                    termination_grace_period_seconds: Some(5),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("demo".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels("demo")),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    ns.api::<Service>()
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();

    let pods_api = ns.api::<Pod>();
    let lp = ListParams::default().labels("app=demo");
    let pods = wait_for(
        &ns.name,
        &client,
        "2 Running+Ready demo pods",
        Duration::from_secs(90),
        || async {
            let pods = pods_api.list(&lp).await.ok()?.items;
            let live: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let all_ok = live.len() == 2
                && live.iter().all(|p| {
                    is_ready(p)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            all_ok.then_some(live)
        },
    )
    .await;
    let mut ips = Vec::new();
    for p in &pods {
        let ip = pod_ip(p).expect("pod IP");
        assert!(
            ip.to_string().starts_with("10.244.1."),
            "pod IP {ip} outside 10.244.1.0/24"
        );
        assert_eq!(
            p.status.as_ref().unwrap().host_ip.as_deref(),
            Some("10.244.0.1")
        );
        ips.push(ip.to_string());
    }
    ips.sort();
    assert_ne!(ips[0], ips[1], "pods share an IP");

    let got = wait_for(
        &ns.name,
        &client,
        "EndpointSlice listing both pods as ready",
        Duration::from_secs(60),
        || async {
            let (ready, _) = slice_addresses(&ns, "demo").await;
            (ready == ips).then_some(ready)
        },
    )
    .await;
    assert_eq!(got, ips);

    for p in &pods {
        let addr = SocketAddr::new(pod_ip(p).unwrap(), 8080);
        let (status, body) = http(addr, "GET", "/whoami", "").await.expect("GET /whoami");
        assert_eq!(status, 200);
        assert_eq!(body.trim(), p.metadata.name.as_deref().unwrap());
    }

    // Readiness: make one replica fail /ready; it must leave the ready endpoints, then come back.
    let sick = &pods[0];
    let sick_ip = pod_ip(sick).unwrap();
    let (status, _) = http(
        SocketAddr::new(sick_ip, 8080),
        "POST",
        "/admin/fault",
        r#"{"status":503}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let healthy_ip = pod_ip(&pods[1]).unwrap().to_string();
    wait_for(
        &ns.name,
        &client,
        "unready pod dropped from ready endpoints",
        Duration::from_secs(60),
        || async {
            let (ready, unready) = slice_addresses(&ns, "demo").await;
            (ready == vec![healthy_ip.clone()] && unready == vec![sick_ip.to_string()])
                .then_some(())
        },
    )
    .await;
    let sick_name = sick.metadata.name.clone().unwrap();
    let now = pods_api.get(&sick_name).await.unwrap();
    assert!(
        !is_ready(&now),
        "pod still Ready after its readiness probe failed"
    );
    let (status, _) = http(SocketAddr::new(sick_ip, 8080), "DELETE", "/admin/fault", "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    wait_for(
        &ns.name,
        &client,
        "recovered pod back in ready endpoints",
        Duration::from_secs(60),
        || async {
            let (ready, _) = slice_addresses(&ns, "demo").await;
            (ready == ips).then_some(())
        },
    )
    .await;

    // Deletion: the podlet stops the process and finalises; the ReplicaSet replaces the pod.
    let victim = pods[1].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    let victim_pid = container_pid(&victim).expect("a pid file for the running container");
    assert!(
        PathBuf::from(format!("/proc/{victim_pid}")).exists(),
        "container process {victim_pid} not running"
    );
    pods_api
        .delete(&victim_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &ns.name,
        &client,
        "deleted pod finalised by the podlet",
        Duration::from_secs(60),
        || async {
            pods_api
                .get_opt(&victim_name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        !PathBuf::from(format!("/proc/{victim_pid}")).exists(),
        "process {victim_pid} outlived its pod"
    );
    wait_for(
        &ns.name,
        &client,
        "replacement pod Running+Ready",
        Duration::from_secs(90),
        || async {
            let pods = pods_api.list(&lp).await.ok()?.items;
            let ready: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                .collect();
            (ready.len() == 2
                && ready
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(victim_name.as_str())))
            .then_some(())
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn exited_container_is_restarted_with_backoff() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-restart").await;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("crasher".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "replica".into(),
                image: Some(IMAGE.into()),
                // An invalid flag makes the demo replica exit with status 1 right away.
                args: Some(vec!["--fail-rate".into(), "2".into()]),
                ..Default::default()
            }],
            restart_policy: Some("Always".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = ns.api::<Pod>();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let status = wait_for(
        &ns.name,
        &client,
        "two restarts and CrashLoopBackOff",
        Duration::from_secs(60),
        || async {
            let p = api.get("crasher").await.ok()?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            let waiting = cs.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            (cs.restart_count >= 2 && waiting == "CrashLoopBackOff").then_some(cs)
        },
    )
    .await;
    let last = status.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    ns.delete().await;
}

#[tokio::test]
async fn pod_environment_volumes_and_service_account_token() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-env").await;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "greeting".to_string(),
            "hello-from-configmap".to_string(),
        )])),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "echo NS=$(cat {sa_dir}/namespace); \
         test -s {sa_dir}/token && echo TOKEN=present; \
         grep -q 'BEGIN CERTIFICATE' {sa_dir}/ca.crt && echo CA=present; \
         echo CFG=$(cat /etc/podlet-test/greeting); \
         echo GREETING=$GREETING POD_IP=$POD_IP HOST=$KUBERNETES_SERVICE_HOST PORT=$KUBERNETES_SERVICE_PORT; \
         echo HOSTNAME=$(hostname) PWD=$(pwd); \
         echo ROUTES=$(ip -4 route | tr '\\n' ';'); \
         touch /tmp/podlet-ro-check 2>/dev/null && echo ROOT=rw || echo ROOT=ro; \
         touch /scratch/file && echo SCRATCH=rw; \
         echo FAST=$(grep ' /fast ' /proc/mounts | cut -d' ' -f3) $(grep ' /fast ' /proc/mounts | grep -o 'size=[0-9]*k'); \
         echo DONE; sleep 3600"
    );
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("envcheck".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "check".into(),
                image: Some(SHELL_IMAGE.into()),
                command: Some(vec!["sh".into(), "-c".into(), script]),
                working_dir: Some("/tmp".into()),
                env: Some(vec![
                    EnvVar {
                        name: "GREETING".into(),
                        value_from: Some(EnvVarSource {
                            config_map_key_ref: Some(ConfigMapKeySelector {
                                name: "settings".into(),
                                key: "greeting".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    field_env("POD_IP", "status.podIP"),
                ]),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "settings".into(),
                        mount_path: "/etc/podlet-test".into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "scratch".into(),
                        mount_path: "/scratch".into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "fast".into(),
                        mount_path: "/fast".into(),
                        ..Default::default()
                    },
                ]),
                security_context: Some(SecurityContext {
                    read_only_root_filesystem: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "settings".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "settings".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "scratch".into(),
                    empty_dir: Some(Default::default()),
                    ..Default::default()
                },
                Volume {
                    name: "fast".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".into()),
                        size_limit: Some(Quantity("4Mi".into())),
                    }),
                    ..Default::default()
                },
            ]),
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = ns.api::<Pod>();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let running = wait_for(
        &ns.name,
        &client,
        "envcheck Running",
        Duration::from_secs(60),
        || async {
            let p = api.get("envcheck").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        },
    )
    .await;
    let ip = pod_ip(&running).unwrap().to_string();
    let log = repo_root().join(format!(
        "e2e/.state/logs/pods/{}_envcheck_check.log",
        ns.name
    ));
    let text = wait_for(
        &ns.name,
        &client,
        "container output in its log file",
        Duration::from_secs(30),
        || async {
            let t = std::fs::read_to_string(&log).ok()?;
            t.contains("DONE").then_some(t)
        },
    )
    .await;
    let expect = [
        format!("NS={}", ns.name),
        "TOKEN=present".to_string(),
        "CA=present".to_string(),
        "CFG=hello-from-configmap".to_string(),
        format!("GREETING=hello-from-configmap POD_IP={ip} HOST=10.244.0.1 PORT=6443"),
        "HOSTNAME=envcheck PWD=/tmp".to_string(),
        "ROOT=ro".to_string(),
        "SCRATCH=rw".to_string(),
        // A memory-backed emptyDir is a tmpfs of its sizeLimit.
        "FAST=tmpfs size=4096k".to_string(),
    ];
    for line in expect {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in container log:\n{text}"
        );
    }
    let routes = text
        .lines()
        .find(|l| l.starts_with("ROUTES="))
        .unwrap_or_default();
    assert!(routes.contains("10.244.0.0/16 dev eth0"), "{routes}");
    assert!(
        !routes.contains("default"),
        "pod must have no default route: {routes}"
    );
    api.delete("envcheck", &DeleteParams::default())
        .await
        .unwrap();
    ns.delete().await;
}

#[tokio::test]
async fn failing_liveness_probe_restarts_the_container() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-liveness").await;
    let mut c = demo_container();
    c.readiness_probe = None;
    // Nothing listens on 9999, so every liveness check fails once the initial delay is over.
    c.liveness_probe = Some(Probe {
        tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
            port: IntOrString::Int(9999),
            host: None,
        }),
        initial_delay_seconds: Some(1),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Default::default()
    });
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("unlively".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![c],
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = ns.api::<Pod>();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let first_pid = wait_for(
        &ns.name,
        &client,
        "unlively running",
        Duration::from_secs(30),
        || async { container_pid(&api.get("unlively").await.ok()?) },
    )
    .await;
    let status = wait_for(
        &ns.name,
        &client,
        "restart after liveness failure",
        Duration::from_secs(60),
        || async {
            let p = api.get("unlively").await.ok()?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            (cs.restart_count >= 1 && cs.last_state.as_ref()?.terminated.is_some()).then_some(cs)
        },
    )
    .await;
    // The demo replica exits cleanly on the SIGTERM the podlet sends; it is restarted all the same.
    let last = status.last_state.unwrap().terminated.unwrap();
    let uid = api.get("unlively").await.unwrap().metadata.uid.unwrap();
    assert_eq!(
        last.container_id.as_deref(),
        Some(format!("runc://{uid}-{}", status.name).as_str())
    );
    assert!(
        !PathBuf::from(format!("/proc/{first_pid}")).exists(),
        "killed process {first_pid} still exists"
    );
    ns.delete().await;
}

/// A 1 MiB ReadWriteOnce claim; `class: None` leaves the class to the DefaultStorageClass admission.
fn claim(name: &str, class: Option<&str>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: class.map(Into::into),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity("1Mi".into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod running `script` with claim `claim_name` mounted at `/data` (and its sub-directory `nested`
/// at `/nested`), under a read-only root file system: the claim must stay writable.
fn claim_pod(name: &str, claim_name: &str, script: &str, node: Option<&str>) -> Pod {
    let mount = |path: &str, sub: Option<&str>| VolumeMount {
        name: "data".into(),
        mount_path: path.into(),
        sub_path: sub.map(Into::into),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(Into::into),
            containers: vec![Container {
                name: "main".into(),
                image: Some(SHELL_IMAGE.into()),
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                volume_mounts: Some(vec![mount("/data", None), mount("/nested", Some("nested"))]),
                security_context: Some(SecurityContext {
                    read_only_root_filesystem: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Waits for `marker` in the log of container `main` of `pod` and returns the log.
async fn pod_log_with(ns: &TestNs, pod: &str, marker: &str) -> String {
    let log = repo_root().join(format!("e2e/.state/logs/pods/{}_{pod}_main.log", ns.name));
    wait_for(
        &ns.name,
        &ns.client,
        &format!("{marker:?} in {}", log.display()),
        Duration::from_secs(60),
        || async {
            let t = std::fs::read_to_string(&log).ok()?;
            t.contains(marker).then_some(t)
        },
    )
    .await
}

async fn delete_pod_and_wait(ns: &TestNs, name: &str) {
    let api = ns.api::<Pod>();
    let _ = api.delete(name, &DeleteParams::default()).await;
    wait_for(
        &ns.name,
        &ns.client,
        &format!("pod {name} deleted"),
        Duration::from_secs(60),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// Waits until claim `name` is Bound and returns it with its PersistentVolume.
async fn bound_claim(ns: &TestNs, name: &str) -> (PersistentVolumeClaim, PersistentVolume) {
    let claims = ns.api::<PersistentVolumeClaim>();
    let pvc = wait_for(
        &ns.name,
        &ns.client,
        &format!("claim {name} Bound"),
        Duration::from_secs(60),
        || async {
            let c = claims.get(name).await.ok()?;
            (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
        },
    )
    .await;
    let volume = pvc.spec.as_ref().unwrap().volume_name.clone().unwrap();
    let pv = Api::<PersistentVolume>::all(ns.client.clone())
        .get(&volume)
        .await
        .unwrap();
    (pvc, pv)
}

/// The directory behind a provisioned volume, which must live under `e2e/.state/volumes`.
fn volume_dir(pv: &PersistentVolume) -> PathBuf {
    let path = PathBuf::from(&pv.spec.as_ref().unwrap().host_path.as_ref().unwrap().path);
    assert!(
        path.starts_with("/tmp/hostpath_pv"),
        "{} not made by the HostPath provisioner",
        path.display()
    );
    let real = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let state = repo_root()
        .join("e2e/.state/volumes")
        .canonicalize()
        .unwrap();
    assert!(
        real.starts_with(&state),
        "volume data at {} is outside {}",
        real.display(),
        state.display()
    );
    real
}

/// Deletes claim `name` and waits until it, its PersistentVolume (reclaim policy Delete) and the
/// volume's directory are gone, so no test leaves cluster-scoped objects or data behind.
async fn delete_claim_and_volume(ns: &TestNs, name: &str, pv: Option<(&str, PathBuf)>) {
    let claims = ns.api::<PersistentVolumeClaim>();
    let _ = claims.delete(name, &DeleteParams::default()).await;
    wait_for(
        &ns.name,
        &ns.client,
        &format!("claim {name} deleted (pvc-protection finalizer removed)"),
        Duration::from_secs(60),
        || async { claims.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    let Some((pv_name, dir)) = pv else { return };
    let pvs = Api::<PersistentVolume>::all(ns.client.clone());
    wait_for(
        &ns.name,
        &ns.client,
        &format!("PersistentVolume {pv_name} deleted (reclaim policy Delete)"),
        Duration::from_secs(60),
        || async { pvs.get_opt(pv_name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        !dir.exists(),
        "{} still exists after its volume was deleted",
        dir.display()
    );
}

/// Warning events about `object` (any kind) with `reason`, as `kubectl describe` lists them.
async fn events_for(ns: &TestNs, object: &str, reason: &str) -> Vec<Event> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={object}"));
    ns.api::<Event>()
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn claim_data_survives_the_pod_that_wrote_it() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-pvc").await;
    ns.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim("data", None))
        .await
        .unwrap();
    let (pvc, pv) = bound_claim(&ns, "data").await;
    assert_eq!(
        pvc.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("standard"),
        "the default StorageClass was not applied"
    );
    let pv_spec = pv.spec.as_ref().unwrap();
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    let dir = volume_dir(&pv);

    let pods = ns.api::<Pod>();
    let writer = claim_pod(
        "writer",
        "data",
        "echo written-by-$(hostname) > /data/message && echo nested-ok > /nested/file \
         && echo WROTE || echo WRITE-FAILED; sleep 3600",
        None,
    );
    pods.create(&PostParams::default(), &writer).await.unwrap();
    let log = pod_log_with(&ns, "writer", "WROTE").await;
    assert!(!log.contains("WRITE-FAILED"), "{log}");
    assert_eq!(
        std::fs::read_to_string(dir.join("message")).unwrap(),
        "written-by-writer\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("nested/file")).unwrap(),
        "nested-ok\n",
        "subPath nested was not a directory of the claim"
    );
    delete_pod_and_wait(&ns, "writer").await;
    assert!(
        dir.join("message").exists(),
        "pod deletion removed claim data"
    );

    // A new pod with the same claim (as a StatefulSet's replacement pod) sees the data.
    let reader = claim_pod(
        "reader",
        "data",
        "echo GOT=$(cat /data/message) NESTED=$(cat /nested/file); echo READ; sleep 3600",
        None,
    );
    pods.create(&PostParams::default(), &reader).await.unwrap();
    let log = pod_log_with(&ns, "reader", "READ").await;
    assert!(
        log.lines()
            .any(|l| l == "GOT=written-by-writer NESTED=nested-ok"),
        "second pod does not see the first pod's data:\n{log}"
    );
    delete_pod_and_wait(&ns, "reader").await;
    let pv_name = pv.metadata.name.clone().unwrap();
    delete_claim_and_volume(&ns, "data", Some((&pv_name, dir))).await;
    ns.delete().await;
}

#[tokio::test]
async fn pods_wait_for_claims_that_are_not_bound() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-pvc-wait").await;
    let claims = ns.api::<PersistentVolumeClaim>();
    let pods = ns.api::<Pod>();

    // A class nothing provisions: the claim stays Pending, and the scheduler keeps the pod Pending
    // (immediate binding: it never reaches a node).
    claims
        .create(
            &PostParams::default(),
            &claim("nowhere", Some("no-such-class")),
        )
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &claim_pod("stuck", "nowhere", "echo STARTED; sleep 3600", None),
    )
    .await
    .unwrap();
    let why = wait_for(
        &ns.name,
        &client,
        "stuck pod Unschedulable because of its claim",
        Duration::from_secs(60),
        || async {
            let p = pods.get("stuck").await.ok()?;
            let cond = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable"))
                .then_some(cond.message.unwrap_or_default())
        },
    )
    .await;
    assert!(
        why.contains("unbound immediate PersistentVolumeClaims"),
        "scheduler's reason: {why}"
    );
    let failed = wait_for(
        &ns.name,
        &client,
        "ProvisioningFailed event on claim nowhere",
        Duration::from_secs(60),
        || async {
            let evs = events_for(&ns, "nowhere", "ProvisioningFailed").await;
            evs.into_iter().next()
        },
    )
    .await;
    assert!(
        failed
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("\"no-such-class\" not found"),
        "{failed:?}"
    );
    let p = pods.get("stuck").await.unwrap();
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let c = claims.get("nowhere").await.unwrap();
    assert_eq!(
        c.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // A pod bound to the node directly (no scheduler) whose claim does not exist yet: the podlet keeps
    // it ContainerCreating with the reason and a FailedMount event, then starts it once the claim
    // appears and binds.
    pods.create(
        &PostParams::default(),
        &claim_pod(
            "early",
            "later",
            "touch /data/x && echo STARTED; sleep 3600",
            Some("e2e-node-0"),
        ),
    )
    .await
    .unwrap();
    let expected = "waiting for PersistentVolumeClaim \"later\" to be bound (it does not exist)";
    wait_for(
        &ns.name,
        &client,
        "early pod waiting for its claim",
        Duration::from_secs(60),
        || async {
            let p = pods.get("early").await.ok()?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            let w = cs.state?.waiting?;
            (w.reason.as_deref() == Some("ContainerCreating")
                && w.message.as_deref() == Some(expected))
            .then_some(())
        },
    )
    .await;
    let mount_events = wait_for(
        &ns.name,
        &client,
        "FailedMount event on pod early",
        Duration::from_secs(30),
        || async {
            let evs = events_for(&ns, "early", "FailedMount").await;
            (!evs.is_empty()).then_some(evs)
        },
    )
    .await;
    assert_eq!(mount_events[0].type_.as_deref(), Some("Warning"));
    assert!(
        mount_events[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(expected),
        "{:?}",
        mount_events[0]
    );
    let p = pods.get("early").await.unwrap();
    assert!(
        pod_ip(&p).is_none(),
        "a pod waiting for volumes has no sandbox"
    );

    claims
        .create(&PostParams::default(), &claim("later", None))
        .await
        .unwrap();
    let (_, pv) = bound_claim(&ns, "later").await;
    let dir = volume_dir(&pv);
    pod_log_with(&ns, "early", "STARTED").await;
    assert!(dir.join("x").exists());

    delete_pod_and_wait(&ns, "early").await;
    delete_pod_and_wait(&ns, "stuck").await;
    let pv_name = pv.metadata.name.clone().unwrap();
    delete_claim_and_volume(&ns, "later", Some((&pv_name, dir))).await;
    delete_claim_and_volume(&ns, "nowhere", None).await;
    ns.delete().await;
}

#[tokio::test]
async fn stateful_set_pod_keeps_its_claim_and_expandable_claims_grow() {
    let client = client().await;
    let ns = TestNs::new(&client, "podlet-sts").await;
    // Every start appends a line, so the second pod's output shows the first one's too.
    let mut pod = claim_pod(
        "unused",
        "unused",
        "echo boot-$(date +%s%N) >> /data/boots && echo BOOTS=$(wc -l < /data/boots); sleep 3600",
        None,
    );
    let mut pod_spec = pod.spec.take().unwrap();
    pod_spec.volumes = None; // from the volumeClaimTemplate
    let mut template = claim("data", Some("standard-expandable"));
    template.metadata.name = Some("data".into());
    let sts = StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels("web")),
                ..Default::default()
            },
            service_name: Some("web".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("web")),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![template]),
            ..Default::default()
        }),
        ..Default::default()
    };
    ns.api::<StatefulSet>()
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    let (_, pv) = bound_claim(&ns, "data-web-0").await;
    let dir = volume_dir(&pv);
    pod_log_with(&ns, "web-0", "BOOTS=1").await;
    let first_uid = ns.api::<Pod>().get("web-0").await.unwrap().metadata.uid;

    // The StatefulSet controller recreates web-0 with the same claim.
    ns.api::<Pod>()
        .delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    let log = pod_log_with(&ns, "web-0", "BOOTS=2").await;
    let second = ns.api::<Pod>().get("web-0").await.unwrap();
    assert_ne!(second.metadata.uid, first_uid, "web-0 was not recreated");
    assert_eq!(
        std::fs::read_to_string(dir.join("boots"))
            .unwrap()
            .lines()
            .count(),
        2,
        "{log}"
    );

    // allowVolumeExpansion: the apiserver accepts a larger request (nothing resizes a HostPath
    // directory, so status.capacity stays); on the default class it refuses.
    let grow = |size: &str| {
        Patch::Merge(serde_json::json!({
            "spec": { "resources": { "requests": { "storage": size } } }
        }))
    };
    let claims = ns.api::<PersistentVolumeClaim>();
    let grown = claims
        .patch("data-web-0", &PatchParams::default(), &grow("2Mi"))
        .await
        .unwrap();
    assert_eq!(
        grown.spec.unwrap().resources.unwrap().requests.unwrap()["storage"],
        Quantity("2Mi".into())
    );
    claims
        .create(&PostParams::default(), &claim("fixed", None))
        .await
        .unwrap();
    let (_, fixed_pv) = bound_claim(&ns, "fixed").await;
    let fixed_dir = volume_dir(&fixed_pv);
    let err = claims
        .patch("fixed", &PatchParams::default(), &grow("2Mi"))
        .await
        .expect_err("a claim of class standard must not grow");
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403),
        "{err}"
    );

    ns.api::<StatefulSet>()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    delete_pod_and_wait(&ns, "web-0").await;
    let pv_name = pv.metadata.name.clone().unwrap();
    delete_claim_and_volume(&ns, "data-web-0", Some((&pv_name, dir))).await;
    let fixed_name = fixed_pv.metadata.name.clone().unwrap();
    delete_claim_and_volume(&ns, "fixed", Some((&fixed_name, fixed_dir))).await;
    ns.delete().await;
}
