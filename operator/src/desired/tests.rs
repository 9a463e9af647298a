//! Golden tests: the children of representative DataStreams, compared with checked-in YAML.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p datastream-operator desired`.

use std::path::PathBuf;

use datastream_api::v1alpha1::DataStream;

use super::*;

fn settings() -> Settings {
    Settings {
        sidecar_image: "example.com/datastream-sidecar:0.1.0".into(),
    }
}

fn stream(yaml: &str) -> DataStream {
    let mut ds: DataStream = serde_yaml::from_str(yaml).expect("fixture parses");
    ds.metadata.uid = Some("5b3e1f6c-0000-4000-8000-000000000001".into());
    ds
}

fn render(children: &Children) -> String {
    crate::render::to_yaml(children)
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/desired/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}", path.display()));
    pretty_assertions::assert_eq!(expected, actual, "children differ from {}", path.display());
}

const MINIMAL: &str = r#"
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: catalog, namespace: shop }
spec:
  workload: { image: example.com/catalog:1.0 }
"#;

const FULL: &str = r#"
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: ledger, namespace: bank }
spec:
  replicas: 1
  workload:
    image: example.com/ledger:2.3
    imagePullPolicy: IfNotPresent
    command: [/bin/ledger]
    args: [--listen, "127.0.0.1:9000"]
    env: [{ name: MODE, value: strict }]
    resources: { requests: { cpu: 250m, memory: 128Mi } }
    port: 9000
    readinessPath: /healthz
    pod:
      labels: { team: payments }
      annotations: { prometheus.io/scrape: "true" }
      nodeSelector: { disk: ssd }
      tolerations: [{ key: dedicated, operator: Equal, value: ledger, effect: NoSchedule }]
      priorityClassName: high
      terminationGracePeriodSeconds: 60
  sidecar:
    image: example.com/custom-sidecar:dev
    logLevel: debug
    resources: { limits: { memory: 64Mi } }
  traffic:
    loadBalancing: { policy: least-request }
"#;

const STATEFUL: &str = r#"
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: kv, namespace: store }
spec:
  replicas: 3
  workload:
    image: example.com/kv:3.1
    volumeClaims:
      - { name: data, mountPath: /var/lib/kv, size: 10Gi, storageClassName: fast }
      - { name: wal, mountPath: /var/lib/kv-wal, size: 512Mi, accessModes: [ReadWriteOncePod] }
    volumeClaimRetention: { whenScaled: Delete }
  rollout: { maxUnavailable: 2, minReadySeconds: 5 }
"#;

#[test]
fn stateful_stream_children() {
    golden(
        "stateful.yaml",
        &render(&children(&stream(STATEFUL), &settings())),
    );
}

#[test]
fn replicas_have_stable_names_and_claims() {
    let c = children(&stream(STATEFUL), &settings());
    let spec = c.stateful_set.spec.unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("kv-peers"));
    let templates = spec.volume_claim_templates.unwrap();
    let names: Vec<_> = templates
        .iter()
        .map(|t| t.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["data", "wal"]);
    assert_eq!(claim_name("data", "kv", 2), "data-kv-2");
    let claims: Vec<String> = replica_claim_names(&stream(STATEFUL)).collect();
    assert_eq!(
        claims,
        [
            "data-kv-0",
            "data-kv-1",
            "data-kv-2",
            "wal-kv-0",
            "wal-kv-1",
            "wal-kv-2"
        ]
    );
    let retention = spec.persistent_volume_claim_retention_policy.unwrap();
    assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    let pod = spec.template.spec.unwrap();
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    assert_eq!(mounts[0].mount_path, "/var/lib/kv");
    assert_eq!(mounts[1].name, "wal");
    assert!(
        pod.containers[1].volume_mounts.is_none(),
        "the sidecar mounts no data"
    );
}

#[test]
fn growing_a_volume_or_changing_retention_does_not_roll_pods() {
    let before = stream(STATEFUL);
    let mut after = before.clone();
    after.spec.workload.volume_claims[0].size = "20Gi".into();
    after.spec.workload.volume_claim_retention = None;
    assert_eq!(
        pod_config_hash(&before, &settings()),
        pod_config_hash(&after, &settings())
    );
    let mut moved = before.clone();
    moved.spec.workload.volume_claims[0].mount_path = "/data".into();
    assert_ne!(
        pod_config_hash(&before, &settings()),
        pod_config_hash(&moved, &settings())
    );
}

#[test]
fn minimal_stream_children() {
    golden(
        "minimal.yaml",
        &render(&children(&stream(MINIMAL), &settings())),
    );
}

#[test]
fn full_stream_children() {
    golden("full.yaml", &render(&children(&stream(FULL), &settings())));
}

#[test]
fn one_replica_gets_no_disruption_budget() {
    assert!(children(&stream(FULL), &settings()).pdb.is_none());
    assert!(children(&stream(MINIMAL), &settings()).pdb.is_some());
}

#[test]
fn every_child_is_owned_and_labelled() {
    let ds = stream(MINIMAL);
    let c = children(&ds, &settings());
    let metas = [
        &c.stateful_set.metadata,
        &c.client_service.metadata,
        &c.peer_service.metadata,
        &c.service_account.metadata,
        &c.role.metadata,
        &c.role_binding.metadata,
        &c.pdb.as_ref().unwrap().metadata,
        &c.network_policy.metadata,
    ];
    for meta in metas {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "DataStream");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.labels.as_ref().unwrap()[MANAGED_BY_LABEL], MANAGER);
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
    }
    let pod_labels = c
        .stateful_set
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(pod_labels[MANAGED_BY_LABEL], MANAGER);
}

#[test]
fn traffic_changes_do_not_roll_pods() {
    let before = stream(MINIMAL);
    let mut after = before.clone();
    after.spec.traffic.load_balancing.policy =
        datastream_api::v1alpha1::LoadBalancingPolicy::RoundRobin;
    after.spec.replicas = 7;
    assert_eq!(
        pod_config_hash(&before, &settings()),
        pod_config_hash(&after, &settings())
    );
    assert_eq!(
        children(&before, &settings())
            .stateful_set
            .spec
            .unwrap()
            .template,
        children(&after, &settings())
            .stateful_set
            .spec
            .unwrap()
            .template
    );
    let mut image = before.clone();
    image.spec.workload.image = "example.com/catalog:1.1".into();
    assert_ne!(
        pod_config_hash(&before, &settings()),
        pod_config_hash(&image, &settings())
    );
}

#[test]
fn containers_are_locked_down() {
    let c = children(&stream(MINIMAL), &settings());
    let pod = c.stateful_set.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    for container in &pod.containers {
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{}",
            container.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{}",
            container.name
        );
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
    }
}

#[test]
fn sidecar_role_is_least_privilege() {
    let c = children(&stream(MINIMAL), &settings());
    let rules = c.role.rules.unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["catalog".to_owned()][..])
    );
    for rule in &rules {
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
    }
}
