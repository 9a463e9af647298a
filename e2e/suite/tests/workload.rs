//! The workload's pod surface on the local cluster: ConfigMap, Secret, `emptyDir` and projected
//! volumes, extra mounts and ports, liveness and startup probes, security overrides, pull
//! secrets and topology spread. The API server must accept the pod template the operator
//! renders from them, the pods must run with them (files readable where the workload looks,
//! probes passing), the operator must not rewrite the children once they are applied, and every
//! invalid use must be refused at admission with a message naming the field.

use std::time::Duration;

use datastream_api::v1alpha1::{DataStream, Phase};
use datastream_e2e::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const STREAM: &str = "surface";

fn objects() -> String {
    r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: surface-conf
data:
  greeting: hello from a ConfigMap
  other: not projected
---
apiVersion: v1
kind: Secret
metadata:
  name: surface-creds
stringData:
  password: s3cret
"#
    .to_owned()
}

fn stream_yaml(liveness_path: &str) -> String {
    format!(
        r#"apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata:
  name: {STREAM}
spec:
  replicas: 2
  workload:
    image: {DEMO_IMAGE}
    port: 8080
    env:
      - name: POD_NAME
        valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }}
      - name: DATA_DIR
        value: /var/lib/surface/kv
    volumeClaims:
      - name: data
        mountPath: /var/lib/surface
        size: 16Mi
    volumes:
      - name: conf
        configMap:
          name: surface-conf
          items: [{{ key: greeting, path: conf/greeting.txt }}]
      - name: creds
        secret: {{ secretName: surface-creds, defaultMode: 256 }}
      - name: scratch
        emptyDir: {{ sizeLimit: 8Mi }}
      - name: bundle
        projected:
          sources:
            - configMap: {{ name: surface-conf, items: [{{ key: other, path: other.txt }}] }}
            - serviceAccountToken: {{ audience: surface-test, expirationSeconds: 3600, path: token }}
    volumeMounts:
      - {{ name: conf, mountPath: /etc/surface, readOnly: true }}
      - {{ name: creds, mountPath: /etc/surface-creds }}
      - {{ name: scratch, mountPath: /var/cache/surface }}
      - {{ name: bundle, mountPath: /etc/surface-bundle }}
      - {{ name: data, mountPath: /var/log/surface, subPath: logs }}
    ports:
      - {{ name: metrics, containerPort: 9100 }}
    livenessProbe:
      httpGet: {{ path: {liveness_path} }}
      periodSeconds: 1
      failureThreshold: 2
    startupProbe:
      tcpSocket: {{}}
      periodSeconds: 1
      failureThreshold: 30
    securityContext:
      readOnlyRootFilesystem: false
    pod:
      imagePullSecrets: [{{ name: surface-registry }}]
      securityContext: {{ fsGroupChangePolicy: OnRootMismatch }}
      topologySpreadConstraints:
        - {{ maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway }}
  sidecar:
    image: {SIDECAR_IMAGE}
"#
    )
}

async fn running_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STREAM}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn wait_available(ns: &str, streams: &Api<DataStream>, what: &str) {
    wait_for(ns, what, Duration::from_secs(180), || async {
        let ds = streams.get(STREAM).await.ok()?;
        let status = ds.status?;
        (status.observed_generation == ds.metadata.generation
            && status.phase == Some(Phase::Available)
            && status.ready_replicas == 2
            && status.updated_replicas == 2
            && status.current_revision == status.update_revision)
            .then_some(())
    })
    .await;
}

/// A file as the workload container sees it, through its mount namespace. (Paths must not cross
/// a symlink such as `/var/run`: an absolute link under `/proc/PID/root` resolves against the
/// reader's root, not the container's.)
fn read_in_container(pod: &Pod, path: &str) -> std::io::Result<String> {
    let pid = container_pid(pod, "workload");
    std::fs::read_to_string(format!("/proc/{pid}/root{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_runs_with_its_volumes_ports_probes_and_security_settings() {
    let client = client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-surface");
    let _operator = Operator::start("surface-0", &ns.name);
    let streams: Api<DataStream> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let apply = |yaml: String| {
        let out = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(out.ok, "kubectl apply: {}", out.stderr);
    };
    apply(objects());
    apply(stream_yaml("/ready"));
    wait_available(&ns.name, &streams, "2 replicas available").await;

    // The API server stored the template as rendered: every field reached it.
    let template = sets
        .get(STREAM)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let volumes: Vec<_> = template
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["conf", "creds", "scratch", "bundle"]);
    assert_eq!(
        template.image_pull_secrets.as_ref().unwrap()[0].name,
        "surface-registry"
    );
    assert_eq!(
        template.topology_spread_constraints.as_ref().unwrap()[0]
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/instance"],
        STREAM
    );
    let workload = &template.containers[0];
    let ports: Vec<_> = workload
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [8080, 9100]);
    assert_eq!(
        workload
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(false)
    );

    // The workload sees every volume where it was mounted.
    for pod in running_pods(&pods).await {
        let name = pod.metadata.name.clone().unwrap();
        let read = |path: &str| {
            read_in_container(&pod, path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"))
        };
        assert_eq!(
            read("/etc/surface/conf/greeting.txt"),
            "hello from a ConfigMap"
        );
        assert_eq!(read("/etc/surface-creds/password"), "s3cret");
        assert_eq!(read("/etc/surface-bundle/other.txt"), "not projected");
        let token = read("/etc/surface-bundle/token");
        assert_eq!(token.split('.').count(), 3, "{name}: a JWT");
        let pid = container_pid(&pod, "workload");
        let scratch = format!("/proc/{pid}/root/var/cache/surface/probe");
        std::fs::write(&scratch, "writable").expect("emptyDir is writable");
        let log = format!("/proc/{pid}/root/var/log/surface/probe");
        std::fs::write(&log, "writable").expect("the claim's subPath is writable");
        assert!(
            std::fs::write(format!("/proc/{pid}/root/etc/surface/x"), "no").is_err(),
            "{name}: a ConfigMap volume is read-only"
        );
        assert_eq!(container_restarts(&pod, "workload"), 0, "{name}");
    }

    // Nothing to correct: the operator writes nothing while the stream is steady, although the
    // API server defaulted fields in every one of these (modes, probe thresholds, protocols).
    let since = audit_now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let writes = audited_writes(&ns.name, &OPERATOR_WRITTEN_RESOURCES, &since);
    assert!(
        writes.is_empty(),
        "a steady stream caused {} writes: {writes:#?}",
        writes.len()
    );
    for pod in running_pods(&pods).await {
        let pod = pods.get(&pod.metadata.name.unwrap()).await.unwrap();
        assert_eq!(
            container_restarts(&pod, "workload"),
            0,
            "a passing liveness probe restarted the workload"
        );
    }

    // A liveness probe that fails restarts the workload: the probe reaches the kubelet as
    // written, on the workload port.
    apply(stream_yaml("/no-such-path"));
    wait_for(
        &ns.name,
        "a workload restarted by its liveness probe",
        Duration::from_secs(120),
        || async {
            running_pods(&pods)
                .await
                .iter()
                .any(|p| container_restarts(p, "workload") > 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pod_surface_specs_are_rejected_at_admission() {
    client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-invalid-surface");
    let valid = stream_yaml("/ready");
    let dry_run = |yaml: &str| {
        kubectl_stdin(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(yaml),
        )
    };
    let out = dry_run(&valid);
    assert!(out.ok, "the valid stream must pass: {}", out.stderr);
    // (case, text replaced, replacement, what the message must name)
    let cases: &[AdmissionCase<'_>] = &[
        (
            "a volume with two sources",
            "        emptyDir: { sizeLimit: 8Mi }\n",
            "        emptyDir: { sizeLimit: 8Mi }\n        secret: { secretName: x }\n",
            "workload.volumes[] must set exactly one of",
        ),
        (
            "a volume named like a claim",
            "      - name: scratch\n",
            "      - name: data\n",
            "workload.volumes[].name must differ from every workload.volumeClaims[].name",
        ),
        (
            "a mount of no volume",
            "{ name: creds, mountPath",
            "{ name: nothing, mountPath",
            "workload.volumeMounts[].name must name one of",
        ),
        (
            "a mount over a claim",
            "mountPath: /var/cache/surface",
            "mountPath: /var/lib/surface",
            "workload.volumeMounts[].mountPath must differ from every workload.volumeClaims[].mountPath",
        ),
        (
            "a subPath escaping its volume",
            "subPath: logs",
            "subPath: ../../etc",
            "workload.volumeMounts[].subPath must not contain '..'",
        ),
        (
            "a file escaping its volume",
            "path: conf/greeting.txt",
            "path: ../greeting.txt",
            "spec.workload.volumes[0].configMap.items[0].path",
        ),
        (
            "a secret mode above 0777",
            "defaultMode: 256",
            "defaultMode: 4096",
            "spec.workload.volumes[1].secret.defaultMode",
        ),
        (
            "a port taken by the sidecar",
            "containerPort: 9100",
            "containerPort: 7081",
            "workload.ports[].containerPort must differ from workload.port",
        ),
        (
            "a port named like the operator's",
            "name: metrics",
            "name: admin",
            "workload.ports[].name must not be workload, traffic, peer or admin",
        ),
        (
            "a probe without an action",
            "      httpGet: { path: /ready }\n",
            "",
            "workload probes (livenessProbe, startupProbe) must set exactly one of",
        ),
        (
            "a probe every 0 seconds",
            "      periodSeconds: 1\n      failureThreshold: 2\n",
            "      periodSeconds: 0\n      failureThreshold: 2\n",
            "spec.workload.livenessProbe.periodSeconds",
        ),
        (
            "root while runAsNonRoot",
            "      readOnlyRootFilesystem: false\n",
            "      readOnlyRootFilesystem: false\n      runAsUser: 0\n",
            "is 0 while runAsNonRoot is true",
        ),
        (
            "a broad capability",
            "      readOnlyRootFilesystem: false\n",
            "      readOnlyRootFilesystem: false\n      capabilitiesAdd: [SYS_ADMIN]\n",
            "spec.workload.securityContext.capabilitiesAdd[0]",
        ),
        (
            "minDomains without DoNotSchedule",
            "whenUnsatisfiable: ScheduleAnyway }",
            "whenUnsatisfiable: ScheduleAnyway, minDomains: 2 }",
            "minDomains needs whenUnsatisfiable: DoNotSchedule",
        ),
        (
            "a pull secret that is no name",
            "name: surface-registry",
            "name: Surface_Registry",
            "spec.workload.pod.imagePullSecrets[0].name",
        ),
        (
            "an emptyDir limit that is no quantity",
            "sizeLimit: 8Mi",
            "sizeLimit: plenty",
            "workload.volumes[].emptyDir.sizeLimit must be a positive quantity",
        ),
    ];
    let failures = admission_failures(&ns.name, &valid, cases);
    assert!(failures.is_empty(), "{failures:#?}");
}
