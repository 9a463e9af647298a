//! The Helm chart without a cluster: `helm lint`, the values schema, golden renders of
//! `helm template` with default and with full values, and each optional object, on and off.
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the goldens after an intended chart change, then review the
//! diff.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use datastream_e2e::{helm_command, repo, state_dir};

const KUBE_VERSION: &str = "1.36.3";

fn chart() -> PathBuf {
    repo().join("charts/datastream")
}

/// Runs the cluster's helm (built by `make cluster-up`); returns success, stdout and stderr.
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = helm_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart as release `datastream` in `datastream-system`, for Kubernetes
/// [`KUBE_VERSION`].
fn template(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["--kube-version", KUBE_VERSION];
    args.extend_from_slice(extra);
    template_offline(&args)
}

/// `helm template` with Helm's own idea of the cluster (no `--kube-version`).
fn template_offline(extra: &[&str]) -> (bool, String, String) {
    let chart = chart();
    let mut args = vec![
        "template",
        "datastream",
        chart.to_str().unwrap(),
        "--namespace",
        "datastream-system",
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// The documents of a render that must succeed.
fn render(extra: &[&str]) -> Vec<Value> {
    let (ok, out, err) = template(extra);
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    documents(&out)
}

fn full_values() -> String {
    chart()
        .join("tests/full-values.yaml")
        .to_string_lossy()
        .into_owned()
}

fn check_golden(name: &str, rendered: &str) {
    let path = chart().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if golden != rendered {
        let line = golden
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| golden.lines().count().min(rendered.lines().count()));
        panic!(
            "helm template differs from {} from line {}:\n  golden:   {:?}\n  rendered: {:?}\n\
             run `UPDATE_GOLDEN=1 cargo test -p datastream-e2e --test chart` and review the diff",
            path.display(),
            line + 1,
            golden.lines().nth(line),
            rendered.lines().nth(line)
        );
    }
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(rendered)
        .expect("helm renders YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The kinds of the rendered objects, for "nothing of this kind" assertions.
fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

/// Whether `selector.matchLabels` selects an object with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

/// Labels of the operator's pods and of the `helm test` pod in a render.
fn pod_labels(docs: &[Value]) -> (Value, Value) {
    let deploy = find(docs, "Deployment", "datastream-operator");
    let test = find(docs, "Pod", "datastream-test");
    (
        deploy["spec"]["template"]["metadata"]["labels"].clone(),
        test["metadata"]["labels"].clone(),
    )
}

#[test]
fn chart_lints_clean_with_default_and_full_values() {
    let chart = chart();
    let full = full_values();
    for extra in [vec![], vec!["-f", full.as_str()]] {
        let mut args = vec![
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--kube-version",
            KUBE_VERSION,
        ];
        args.extend_from_slice(&extra);
        let (ok, out, err) = helm(&args);
        assert!(ok, "helm lint {extra:?} failed:\n{out}{err}");
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
}

#[test]
fn default_render_matches_its_golden() {
    let (ok, out, err) = template(&[]);
    assert!(ok, "{err}");
    check_golden("default.yaml", &out);
}

#[test]
fn full_render_matches_its_golden() {
    let (ok, out, err) = template(&["-f", &full_values()]);
    assert!(ok, "{err}");
    check_golden("full.yaml", &out);
}

#[test]
fn values_schema_rejects_wrong_types() {
    // Each case sets one value to the wrong type or shape.
    let cases: &[(&str, &[&str])] = &[
        (
            "replicaCount as a string",
            &["--set-string", "replicaCount=two"],
        ),
        ("negative replicaCount", &["--set", "replicaCount=-1"]),
        (
            "leaderElection.enabled as a string",
            &["--set-string", "leaderElection.enabled=yes"],
        ),
        ("adminPort out of range", &["--set", "adminPort=70000"]),
        ("unknown log format", &["--set", "log.format=xml"]),
        (
            "malformed scrape interval",
            &["--set", "metrics.serviceMonitor.interval=soon"],
        ),
        (
            "nodeSelector value not a string",
            &["--set", "nodeSelector.zone=1"],
        ),
        ("tolerations not a list", &["--set", "tolerations=none"]),
        ("misspelled top-level value", &["--set", "replicas=2"]),
        (
            "unknown pull policy",
            &["--set", "image.pullPolicy=Sometimes"],
        ),
        ("empty image repository", &["--set", "image.repository="]),
        (
            "dashboard.enabled as a string",
            &["--set-string", "dashboard.enabled=true"],
        ),
    ];
    let mut accepted = vec![];
    for (what, args) in cases {
        let (ok, _, err) = template(args);
        if ok {
            accepted.push(*what);
        } else {
            assert!(
                err.contains("schema"),
                "{what}: failed for another reason: {err}"
            );
        }
    }
    assert!(accepted.is_empty(), "wrong values accepted: {accepted:?}");
}

#[test]
fn several_replicas_need_leader_election() {
    let (ok, _, err) = template(&[
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!ok);
    assert!(
        err.contains("replicaCount > 1 needs leaderElection.enabled=true"),
        "{err}"
    );
}

#[test]
fn operator_rbac_is_exactly_what_it_uses() {
    let (ok, out, err) = template(&[]);
    assert!(ok, "{err}");
    let docs = documents(&out);
    let role = find(&docs, "ClusterRole", "datastream-operator");
    let mut rules: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let list = |v: &Value| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!(
                "{} {} {}",
                list(&r["apiGroups"]),
                list(&r["resources"]),
                list(&r["verbs"])
            )
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            " persistentvolumeclaims get,list,watch,patch",
            " pods list,watch",
            " pods/status patch",
            " services,serviceaccounts get,list,watch,create,patch",
            "apps deployments get,list,watch,delete",
            "apps statefulsets get,list,watch,create,patch,delete",
            "datastream.dev datastreams get,list,watch",
            "datastream.dev datastreams/status get,patch",
            "discovery.k8s.io endpointslices get,list,watch",
            "events.k8s.io events create,patch",
            "networking.k8s.io networkpolicies get,list,watch,create,patch",
            "policy poddisruptionbudgets get,list,watch,create,patch,delete",
            "rbac.authorization.k8s.io roles,rolebindings get,list,watch,create,patch",
        ]
    );
    // Leases only in the release namespace, and only the operator's own for get/update.
    let lease_role = find(&docs, "Role", "datastream-operator-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], "datastream-system");
    let rules = lease_role["rules"].as_array().unwrap();
    assert_eq!(rules[0]["verbs"], json!(["create"]));
    assert_eq!(rules[1]["resourceNames"][0], "datastream-operator");
    assert_eq!(rules[1]["verbs"], json!(["get", "update"]));
}

#[test]
fn operator_pod_is_restricted_and_wired() {
    let (ok, out, err) = template(&["--set", "image.tag=dev"]);
    assert!(ok, "{err}");
    let docs = documents(&out);
    let deploy = find(&docs, "Deployment", "datastream-operator");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["image"], "ghcr.io/datastream-dev/datastream-operator:dev");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect=true"), "{args:?}");
    assert!(
        args.contains(&"--sidecar-image=ghcr.io/datastream-dev/datastream-sidecar:0.1.0"),
        "{args:?}"
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ]
    );
}

/// Workload identity is on by default with exactly the rights it uses: the signer's rights are
/// for its own signer name, the role it binds and the binding it keeps, by name; the sidecars'
/// role only files, reads and withdraws CSRs, and the chart leaves the binding's subjects to the
/// operator. Turned off, or in a namespace-scoped install, none of it is rendered and the
/// operator is told so.
#[test]
fn identity_rbac_is_named_and_off_without_cluster_scope() {
    let docs = render(&[]);
    let args = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment", "datastream-operator")["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let on = args(&docs);
    assert!(on.contains(&"--workload-signer=true".to_owned()), "{on:?}");
    assert!(
        on.contains(&"--trust-domain=cluster.local".to_owned()),
        "{on:?}"
    );
    assert!(
        on.contains(&"--certificate-lifetime-seconds=86400".to_owned()),
        "{on:?}"
    );
    let signer = find(&docs, "ClusterRole", "datastream-operator-signer");
    let rules = signer["rules"].as_array().unwrap();
    let by_resource = |resource: &str| {
        rules
            .iter()
            .find(|r| r["resources"][0] == resource)
            .unwrap_or_else(|| panic!("no rule for {resource}"))
    };
    assert_eq!(
        by_resource("certificatesigningrequests")["verbs"],
        json!(["get", "list", "watch"])
    );
    assert_eq!(
        by_resource("certificatesigningrequests/approval")["verbs"],
        json!(["patch"])
    );
    assert_eq!(
        by_resource("signers")["resourceNames"],
        json!(["datastream.dev/workload"])
    );
    assert_eq!(by_resource("signers")["verbs"], json!(["approve", "sign"]));
    assert_eq!(
        by_resource("clusterroles")["resourceNames"],
        json!(["datastream-operator-sidecar-certificates"])
    );
    assert_eq!(
        by_resource("clusterrolebindings")["resourceNames"],
        json!(["datastream-operator-sidecar-certificates"])
    );
    // Named after the release: an operator run outside the chart uses the default name and never
    // takes the chart's objects (nor the other way round).
    assert!(
        on.contains(
            &"--sidecar-certificate-role=datastream-operator-sidecar-certificates".to_owned()
        ),
        "{on:?}"
    );
    let sidecars = find(
        &docs,
        "ClusterRole",
        "datastream-operator-sidecar-certificates",
    );
    assert_eq!(
        sidecars["rules"],
        json!([{
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests"],
            "verbs": ["create", "get", "delete"],
        }])
    );
    let binding = find(
        &docs,
        "ClusterRoleBinding",
        "datastream-operator-sidecar-certificates",
    );
    assert!(binding.get("subjects").is_none(), "{binding}");
    let secret_role = find(&docs, "Role", "datastream-operator-identity");
    assert_eq!(
        secret_role["rules"][1]["resourceNames"],
        json!(["datastream-identity"])
    );

    for off in [
        vec!["--set", "identity.enabled=false"],
        vec!["--set", "watchNamespaces={shop}"],
    ] {
        let docs = render(&off);
        assert!(
            args(&docs).contains(&"--workload-signer=false".to_owned()),
            "{off:?}"
        );
        for doc in &docs {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            assert!(
                !name.contains("signer")
                    && !name.contains("certificates")
                    && !name.ends_with("-identity"),
                "{off:?} renders {name}"
            );
        }
    }
}

/// Every metric the Grafana dashboard queries is one the operator or the sidecar (any of its four
/// crates) registers, so that a renamed metric cannot leave a silently empty panel.
#[test]
fn dashboard_queries_only_registered_metrics() {
    let dashboard = std::fs::read_to_string(chart().join("dashboards/datastream.json")).unwrap();
    let json: Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let mut sources = String::new();
    for dir in [
        "sidecar/src",
        "http/src",
        "lb/src",
        "resilience/src",
        "operator/src",
    ] {
        collect_sources(&repo().join(dir), &mut sources);
    }
    let mut unknown = std::collections::BTreeSet::new();
    for (i, _) in dashboard.match_indices("datastream_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let Some(rest) = name
            .strip_prefix("datastream_sidecar_")
            .or_else(|| name.strip_prefix("datastream_operator_"))
        else {
            continue;
        };
        // prometheus-client appends _total to counters; histograms expose _bucket, _sum, _count.
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .fold(rest, |n, s| n.strip_suffix(s).unwrap_or(n));
        if !sources.contains(&format!("\"{base}\"")) {
            unknown.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody registers: {unknown:?}"
    );
}

fn collect_sources(dir: &std::path::Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

// === helm test pod ===

/// The `helm test` pod is part of the chart (a bare `tests/` in .helmignore once dropped
/// templates/tests/ with the golden files, and `helm test` then ran nothing and passed).
#[test]
fn helm_test_pod_is_packaged() {
    let docs = render(&[]);
    let pod = find(&docs, "Pod", "datastream-test");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(pod["spec"]["containers"][0]["args"][0], "probe");
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "ghcr.io/datastream-dev/datastream-demo-replica:0.1.0"
    );
}

// === Kubernetes versions ===

/// `helm template` needs no `--kube-version`. Without a cluster Helm checks Chart.yaml's kubeVersion
/// against a version built into its binary: v1.20.0 unless the build stamps another with the
/// Makefile's `-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor/Minor` flags, which `go install`
/// (our e2e/scripts/build-cluster.sh) and programs embedding Helm's packages do not. The range
/// admits exactly that version; the render is the same as for a supported cluster.
#[test]
fn template_renders_offline_without_kube_version() {
    for extra in [vec![], vec!["-f".to_owned(), full_values()]] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, offline, err) = template_offline(&extra);
        assert!(
            ok,
            "helm template {extra:?} without --kube-version failed:\n{err}"
        );
        let (ok, pinned, err) = template(&extra);
        assert!(ok, "{err}");
        assert_eq!(
            offline, pinned,
            "the offline render differs from {KUBE_VERSION}'s"
        );
    }
}

/// Unsupported versions are still refused (--kube-version keeps only major.minor.patch, so the
/// build and vendor suffixes of real clusters are checked by `real_kubernetes_1_20_is_refused`).
#[test]
fn kube_version_below_1_29_is_refused() {
    for (version, accepted) in [
        ("1.28.15", false),
        ("1.20.1", false),
        ("1.19.0", false),
        ("1.29.0", true),
        ("1.36.3", true),
        ("2.0.0", true),
    ] {
        let (ok, _, err) = template_offline(&["--kube-version", version]);
        assert_eq!(ok, accepted, "Kubernetes {version}: {err}");
        if !accepted {
            assert!(
                err.contains("chart requires kubeVersion: >=1.29.0-0"),
                "{version}: {err}"
            );
        }
    }
}

/// A real 1.20.0 API server passes Chart.yaml's range (which admits Helm's offline default) but
/// not the chart's own check: it serves no policy/v1. `helm template --validate` against a fake
/// API server that answers discovery like one (and like a 1.28 and an EKS 1.20.0 one).
#[test]
fn real_kubernetes_1_20_is_refused() {
    let guard = "DataStream needs Kubernetes >= 1.29; this cluster runs";
    for (version, policy, refusal) in [
        ("v1.20.0", "v1beta1", guard),
        ("v1.20.0+k3s1", "v1beta1", guard),
        ("v1.20.0-eks-1", "v1beta1", "chart requires kubeVersion"),
        ("v1.28.3", "v1", "chart requires kubeVersion"),
    ] {
        let (ok, _, err) = validate_against(version, policy);
        assert!(!ok && err.contains(refusal), "{version}: {err}");
    }
    // The control: the same server with policy/v1 gets past both checks (the render then fails
    // further on, where Helm validates the objects against the server's OpenAPI, which it lacks).
    let (_, _, err) = validate_against("v1.20.0", "v1");
    assert!(
        !err.contains(guard) && !err.contains("chart requires kubeVersion"),
        "{err}"
    );
}

/// `helm template --validate` against a fake API server of `version` serving policy/`policy`.
fn validate_against(version: &str, policy: &str) -> (bool, String, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let version = version.to_owned();
    let policy = format!("policy/{policy}");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or("/");
            let (status, body) = discovery(path.split('?').next().unwrap(), &version, &policy);
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = std::env::temp_dir().join(format!(
        "datastream-chart-{}-{}",
        std::process::id(),
        server.rsplit(':').next().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    let chart = chart();
    let out = Command::new(state_dir().join("bin/helm"))
        .args(["template", "datastream", chart.to_str().unwrap()])
        .args(["--namespace", "datastream-system", "--validate"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        // Discovery caches and Helm's state go to the scratch directory.
        .env("HOME", &dir)
        .env("KUBECACHEDIR", dir.join("kube-cache"))
        .env("HELM_CACHE_HOME", dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm/config"))
        .env("HELM_DATA_HOME", dir.join("helm/data"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The discovery answers of a minimal API server (legacy, unaggregated discovery).
fn discovery(path: &str, version: &str, policy: &str) -> (&'static str, String) {
    let resources = |group_version: &str, name: &str, kind: &str| {
        json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": name, "singularName": "", "namespaced": true, "kind": kind,
                           "verbs": ["get", "list", "create"]}],
        })
    };
    let group = |name: &str, group_version: &str| {
        let v = json!({"groupVersion": group_version, "version": group_version.rsplit('/').next()});
        json!({"name": name, "versions": [v.clone()], "preferredVersion": v})
    };
    let minor = version.split('.').nth(1).unwrap_or("0");
    let body = match path {
        "/version" => json!({"major": "1", "minor": minor, "gitVersion": version,
                             "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": []}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1",
                          "groups": [group("apps", "apps/v1"), group("policy", policy)]}),
        "/api/v1" => resources("v1", "pods", "Pod"),
        "/apis/apps/v1" => resources("apps/v1", "deployments", "Deployment"),
        p if p == format!("/apis/{policy}") => {
            resources(policy, "poddisruptionbudgets", "PodDisruptionBudget")
        }
        _ => {
            return (
                "404 Not Found",
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404})
                .to_string(),
            );
        }
    };
    ("200 OK", body.to_string())
}

// === images ===

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A digest replaces the tag: for the operator's own image, for the sidecar image it injects
/// (--sidecar-image) and for the test pod.
#[test]
fn image_digests_replace_tags() {
    let operator = format!("image.digest={DIGEST}");
    let sidecar = format!("sidecar.image.digest={DIGEST}");
    let test = format!("test.image.digest={DIGEST}");
    let docs = render(&[
        "--set",
        "image.tag=ignored",
        "--set",
        &operator,
        "--set",
        &sidecar,
        "--set",
        &test,
    ]);
    let pod = &find(&docs, "Deployment", "datastream-operator")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("ghcr.io/datastream-dev/datastream-operator@{DIGEST}")
    );
    assert!(
        c["args"].as_array().unwrap().contains(&json!(format!(
            "--sidecar-image=ghcr.io/datastream-dev/datastream-sidecar@{DIGEST}"
        ))),
        "{}",
        c["args"]
    );
    assert_eq!(
        find(&docs, "Pod", "datastream-test")["spec"]["containers"][0]["image"],
        format!("ghcr.io/datastream-dev/datastream-demo-replica@{DIGEST}")
    );
    // Without digests, tags (the appVersion by default).
    let docs = render(&[]);
    let c = &find(&docs, "Deployment", "datastream-operator")["spec"]["template"]["spec"]["containers"]
        [0];
    assert_eq!(
        c["image"],
        "ghcr.io/datastream-dev/datastream-operator:0.1.0"
    );
    assert!(c["args"].as_array().unwrap().contains(&json!(
        "--sidecar-image=ghcr.io/datastream-dev/datastream-sidecar:0.1.0"
    )));
}

// === disruption budget and topology spread ===

/// A PodDisruptionBudget (maxUnavailable 1 by default) exists only with more than one replica,
/// and selects the operator pods and not the `helm test` pod.
#[test]
fn disruption_budget_only_with_several_replicas() {
    assert!(!kinds(&render(&[])).contains(&"PodDisruptionBudget"));
    assert!(
        !kinds(&render(&[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.enabled=false"
        ]))
        .contains(&"PodDisruptionBudget")
    );

    let docs = render(&["--set", "replicaCount=2"]);
    let pdb = find(&docs, "PodDisruptionBudget", "datastream-operator");
    assert_eq!(pdb["metadata"]["namespace"], "datastream-system");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    let (operator, test) = pod_labels(&docs);
    assert!(selects(&pdb["spec"]["selector"], &operator), "{pdb}");
    assert!(!selects(&pdb["spec"]["selector"], &test), "{pdb}");

    let docs = render(&[
        "--set",
        "replicaCount=3",
        "--set",
        "podDisruptionBudget.minAvailable=2",
    ]);
    let spec = &find(&docs, "PodDisruptionBudget", "datastream-operator")["spec"];
    assert_eq!(spec["minAvailable"], 2);
    assert!(spec.get("maxUnavailable").is_none());
    let docs = render(&[
        "--set",
        "replicaCount=2",
        "--set",
        "podDisruptionBudget.maxUnavailable=50%",
    ]);
    let spec = &find(&docs, "PodDisruptionBudget", "datastream-operator")["spec"];
    assert_eq!(spec["maxUnavailable"], "50%");

    // A budget that could never allow an eviction is refused.
    let (ok, _, err) = template(&[
        "--set",
        "replicaCount=2",
        "--set",
        "podDisruptionBudget.minAvailable=2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("podDisruptionBudget.minAvailable (2) must be below replicaCount (2)"),
        "{err}"
    );
}

/// By default the operator pods prefer distinct nodes (and never wait for one); values replace
/// the constraints, and an entry without labelSelector gets the operator pods'.
#[test]
fn operator_pods_spread_over_nodes() {
    let spread = |docs: &[Value]| {
        find(docs, "Deployment", "datastream-operator")["spec"]["template"]["spec"]
            ["topologySpreadConstraints"]
            .clone()
    };
    let docs = render(&[]);
    let (operator, test) = pod_labels(&docs);
    let default = spread(&docs);
    assert_eq!(
        default,
        json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {
                "app.kubernetes.io/name": "datastream-operator",
                "app.kubernetes.io/instance": "datastream",
                "app.kubernetes.io/component": "operator",
            }},
        }])
    );
    assert!(selects(&default[0]["labelSelector"], &operator));
    assert!(!selects(&default[0]["labelSelector"], &test));

    let own = json!({"matchLabels": {"team": "platform"}});
    let custom = json!([
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
         "whenUnsatisfiable": "DoNotSchedule", "matchLabelKeys": ["pod-template-hash"]},
        {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
         "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": own},
    ]);
    let set = format!("topologySpreadConstraints={custom}");
    let rendered = spread(&render(&["--set-json", &set]));
    let mut expected = custom.clone();
    expected[0]["labelSelector"] = default[0]["labelSelector"].clone();
    assert_eq!(rendered, expected);

    let none = spread(&render(&["--set-json", "topologySpreadConstraints=[]"]));
    assert!(none.is_null(), "{none}");
}

// === NetworkPolicy ===

/// Off by default. On: the operator pods (not the test pod) accept nothing but the admin port
/// from the listed sources (none by default), and dial only the API server and DNS.
#[test]
fn network_policy_is_off_by_default_and_least_privilege_when_on() {
    assert!(!kinds(&render(&[])).contains(&"NetworkPolicy"));

    let dns = json!({
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }],
    });
    let docs = render(&["--set", "networkPolicy.enabled=true"]);
    let np = find(&docs, "NetworkPolicy", "datastream-operator");
    let (operator, test) = pod_labels(&docs);
    assert!(selects(&np["spec"]["podSelector"], &operator), "{np}");
    assert!(!selects(&np["spec"]["podSelector"], &test), "{np}");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["ingress"], json!([]));
    assert_eq!(
        np["spec"]["egress"],
        json!([
            {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
            dns,
        ])
    );

    let monitoring = json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    }]);
    let from = format!("networkPolicy.ingress.from={monitoring}");
    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "adminPort=9090",
        "--set-json",
        &from,
        "--set-json",
        r#"networkPolicy.egress.apiServer.cidrs=["172.18.0.2/32","fd00::2/128"]"#,
        "--set-json",
        "networkPolicy.egress.apiServer.ports=[6443]",
        "--set-json",
        "networkPolicy.egress.dns.to=[]",
        "--set-json",
        r#"networkPolicy.extraEgress=[{"ports":[{"port":3128}]}]"#,
    ]);
    let np = find(&docs, "NetworkPolicy", "datastream-operator");
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"from": monitoring, "ports": [{"port": 9090, "protocol": "TCP"}]}])
    );
    assert_eq!(
        np["spec"]["egress"],
        json!([
            {
                "ports": [{"port": 6443, "protocol": "TCP"}],
                "to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}, {"ipBlock": {"cidr": "fd00::2/128"}}],
            },
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"ports": [{"port": 3128}]},
        ])
    );
}

// === PrometheusRule ===

/// Off by default. On: exactly the alerts of docs/operations.md ("Suggested alerts"), parsed from
/// both sides: names, expressions, `for`, labels and annotations, with the doc's comments as the
/// description annotations.
#[test]
fn prometheus_rule_has_exactly_the_documented_alerts() {
    assert!(!kinds(&render(&[])).contains(&"PrometheusRule"));

    let docs = render(&[
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=prometheus",
    ]);
    let rule = find(&docs, "PrometheusRule", "datastream-alerts");
    assert_eq!(rule["metadata"]["namespace"], "datastream-system");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let chart_groups = rule["spec"]["groups"].as_array().expect("spec.groups");

    let doc_groups = documented_alerts();
    assert!(
        doc_groups.len() == 1 && doc_groups[0]["rules"].as_array().unwrap().len() >= 10,
        "docs/operations.md's alerts were not found"
    );
    assert_eq!(chart_groups.len(), doc_groups.len());
    for (chart, doc) in chart_groups.iter().zip(&doc_groups) {
        assert_eq!(chart["name"], doc["name"]);
        let names = |g: &Value| -> Vec<String> {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["alert"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(chart), names(doc), "the alerts differ");
        for (c, d) in chart["rules"]
            .as_array()
            .unwrap()
            .iter()
            .zip(doc["rules"].as_array().unwrap())
        {
            assert_eq!(c, d, "alert {} differs from docs/operations.md", d["alert"]);
        }
    }
}

/// The rule groups of the YAML block under "## Suggested alerts" in docs/operations.md, each
/// alert's comment lines joined into its `description` annotation.
fn documented_alerts() -> Vec<Value> {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let section = doc
        .split("\n## Suggested alerts\n")
        .nth(1)
        .expect("docs/operations.md has a \"Suggested alerts\" section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a yaml block in \"Suggested alerts\"");
    let mut descriptions: Vec<(String, Vec<&str>)> = vec![];
    for line in block.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            descriptions.push((name.trim().to_owned(), vec![]));
        } else if let (Some(comment), Some((_, lines))) =
            (line.strip_prefix('#'), descriptions.last_mut())
        {
            lines.push(comment.trim());
        }
    }
    let parsed: Value = serde_saphyr::from_str(block).expect("the doc's alerts are YAML");
    let mut groups = parsed["groups"].as_array().expect("groups").clone();
    for group in &mut groups {
        for rule in group["rules"].as_array_mut().expect("rules") {
            let (_, lines) = descriptions
                .iter()
                .find(|(name, _)| rule["alert"] == name.as_str())
                .unwrap();
            if !lines.is_empty() {
                rule["annotations"]["description"] = json!(lines.join(" "));
            }
        }
    }
    groups
}

// === values schema of the newer settings ===

/// Wrong values of the chart's newer settings are refused by the schema, with an error naming
/// the value.
#[test]
fn values_schema_refuses_wrong_new_values_by_name() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "/image/digest",
            "a tag as digest",
            &["--set", "image.digest=latest"],
        ),
        (
            "/sidecar/image/digest",
            "a short digest",
            &["--set", "sidecar.image.digest=sha256:abc"],
        ),
        (
            "/test/image/digest",
            "upper-case hex",
            &[
                "--set",
                "test.image.digest=sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            ],
        ),
        (
            "/topologySpreadConstraints/0/whenUnsatisfiable",
            "misspelled whenUnsatisfiable",
            &[
                "--set-json",
                r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"k","whenUnsatisfiable":"Schedule"}]"#,
            ],
        ),
        (
            "/topologySpreadConstraints/0",
            "no topologyKey",
            &[
                "--set-json",
                r#"topologySpreadConstraints=[{"maxSkew":1,"whenUnsatisfiable":"ScheduleAnyway"}]"#,
            ],
        ),
        (
            "/topologySpreadConstraints/0/maxSkew",
            "maxSkew 0",
            &[
                "--set-json",
                r#"topologySpreadConstraints=[{"maxSkew":0,"topologyKey":"k","whenUnsatisfiable":"ScheduleAnyway"}]"#,
            ],
        ),
        (
            "/podDisruptionBudget/maxUnavailable",
            "maxUnavailable 0 (blocks every drain)",
            &["--set", "podDisruptionBudget.maxUnavailable=0"],
        ),
        (
            "/podDisruptionBudget/minAvailable",
            "minAvailable 100%",
            &["--set", "podDisruptionBudget.minAvailable=100%"],
        ),
        (
            "/podDisruptionBudget/unhealthyPodEvictionPolicy",
            "unknown eviction policy",
            &[
                "--set",
                "podDisruptionBudget.unhealthyPodEvictionPolicy=Never",
            ],
        ),
        (
            "/podDisruptionBudget",
            "misspelled key",
            &["--set", "podDisruptionBudget.maxUnavailble=1"],
        ),
        (
            "/networkPolicy/enabled",
            "enabled as a string",
            &["--set-string", "networkPolicy.enabled=true"],
        ),
        (
            "/networkPolicy/ingress/from/0",
            "misspelled peer selector",
            &[
                "--set-json",
                r#"networkPolicy.ingress.from=[{"namespaceSelectr":{}}]"#,
            ],
        ),
        (
            "/networkPolicy/ingress/from/0",
            "empty peer",
            &["--set-json", "networkPolicy.ingress.from=[{}]"],
        ),
        (
            "/networkPolicy/egress/apiServer/cidrs/0",
            "an address without prefix length",
            &[
                "--set-json",
                r#"networkPolicy.egress.apiServer.cidrs=["10.0.0.1"]"#,
            ],
        ),
        (
            "/networkPolicy/egress/apiServer/cidrs/0",
            "an IPv4 prefix length over 32",
            &[
                "--set-json",
                r#"networkPolicy.egress.apiServer.cidrs=["10.0.0.0/33"]"#,
            ],
        ),
        (
            "/networkPolicy/egress/apiServer/ports/0",
            "port 0",
            &["--set-json", "networkPolicy.egress.apiServer.ports=[0]"],
        ),
        (
            "/networkPolicy/egress/apiServer/ports",
            "no API server port",
            &["--set-json", "networkPolicy.egress.apiServer.ports=[]"],
        ),
        (
            "/networkPolicy/extraEgress/0/ports/0/protocol",
            "ICMP",
            &[
                "--set-json",
                r#"networkPolicy.extraEgress=[{"ports":[{"protocol":"ICMP"}]}]"#,
            ],
        ),
        (
            "/metrics/prometheusRule/enabled",
            "enabled as a string",
            &["--set-string", "metrics.prometheusRule.enabled=yes"],
        ),
        (
            "/metrics/prometheusRule/labels/release",
            "label value not a string",
            &["--set", "metrics.prometheusRule.labels.release=1"],
        ),
    ];
    let mut wrong = vec![];
    for (path, what, args) in cases {
        let (ok, _, err) = template(args);
        if ok || !err.contains("schema") || !err.contains(&format!("at '{path}'")) {
            wrong.push(format!(
                "{what}: expected a schema error at {path}, got: {err}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And the values they stand for are accepted.
    for args in [
        vec![
            "--set",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        vec![
            "--set",
            "sidecar.image.digest=sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ],
        vec!["--set", "podDisruptionBudget.maxUnavailable=100%"],
        vec![
            "--set",
            "replicaCount=3",
            "--set",
            "podDisruptionBudget.minAvailable=0",
        ],
        vec![
            "--set-json",
            r#"networkPolicy.egress.apiServer.cidrs=["0.0.0.0/0","::/0","2001:db8::/32"]"#,
        ],
    ] {
        let (ok, _, err) = template(&args);
        assert!(ok, "{args:?}: {err}");
    }
}

#[test]
fn a_namespace_scoped_install_gets_roles_in_each_namespace_and_no_cluster_role() {
    let (ok, out, err) = template(&["--set", "watchNamespaces={shop,bank}"]);
    assert!(ok, "{err}");
    let docs = documents(&out);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "a namespace-scoped install must not need cluster-wide RBAC"
    );
    let (_, cluster_wide, _) = template(&[]);
    let cluster_docs = documents(&cluster_wide);
    let cluster_role = find(&cluster_docs, "ClusterRole", "datastream-operator");
    for ns in ["shop", "bank"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert_eq!(
            role["rules"], cluster_role["rules"],
            "the same rules in {ns}"
        );
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(binding["roleRef"]["kind"], "Role");
        assert_eq!(binding["subjects"][0]["namespace"], "datastream-system");
    }
    let deployment = find(&docs, "Deployment", "datastream-operator");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--watch-namespaces=shop,bank"), "{args}");
    // Not a list of namespace names: refused by the schema.
    let (ok, _, err) = template(&["--set", "watchNamespaces={Shop}"]);
    assert!(!ok && err.contains("watchNamespaces"), "{err}");
}
