//! Golden tests: the children of representative DataStreams, compared with checked-in YAML.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p datastream-operator desired`.

use std::path::PathBuf;

use datastream_api::v1alpha1::DataStream;

use super::*;

fn settings() -> Settings {
    Settings {
        sidecar_image: "example.com/datastream-sidecar:0.1.0".into(),
        identity: None,
    }
}

fn stream(yaml: &str) -> DataStream {
    let mut ds: DataStream = serde_saphyr::from_str(yaml).expect("fixture parses");
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
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["catalog".to_owned()][..])
    );
    for rule in &rules[..2] {
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
    }
    // The policy report: patch the status of the stream's own pods, by name, nothing else.
    assert_eq!(
        rules[2].resources.as_deref(),
        Some(&["pods/status".to_owned()][..])
    );
    assert_eq!(rules[2].verbs, ["patch"]);
    let three = children(&stream(STATEFUL), &settings());
    assert_eq!(
        three.role.rules.unwrap()[2].resource_names.as_deref(),
        Some(&["kv-0".to_owned(), "kv-1".to_owned(), "kv-2".to_owned()][..])
    );
}

const POD_SURFACE: &str = r#"
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: search, namespace: shop }
spec:
  replicas: 3
  workload:
    image: example.com/search:7
    port: 9200
    volumeClaims:
      - { name: data, mountPath: /var/lib/search, size: 10Gi }
    volumes:
      - { name: conf, configMap: { name: search-conf, items: [{ key: search.yml, path: search.yml }], defaultMode: 292 } }
      - { name: tls, secret: { secretName: search-tls, defaultMode: 256 } }
      - { name: tmp, emptyDir: { medium: Memory, sizeLimit: 64Mi } }
      - name: bundle
        projected:
          sources:
            - { configMap: { name: search-conf } }
            - { serviceAccountToken: { audience: vault, expirationSeconds: 3600, path: token } }
    volumeMounts:
      - { name: conf, mountPath: /etc/search, readOnly: true }
      - { name: tls, mountPath: /etc/tls }
      - { name: tmp, mountPath: /tmp }
      - { name: bundle, mountPath: /var/run/bundle }
      - { name: data, mountPath: /var/log/search, subPath: logs }
    ports:
      - { name: transport, containerPort: 9300 }
      - { name: metrics, containerPort: 9114, protocol: TCP }
    livenessProbe: { httpGet: { path: /_cluster/health }, periodSeconds: 10, failureThreshold: 6 }
    startupProbe: { tcpSocket: {}, periodSeconds: 2, failureThreshold: 90 }
    securityContext: { runAsUser: 1000, readOnlyRootFilesystem: false, capabilitiesAdd: [IPC_LOCK] }
    pod:
      imagePullSecrets: [{ name: registry }]
      securityContext: { runAsGroup: 1000, fsGroup: 1000, fsGroupChangePolicy: OnRootMismatch }
      topologySpreadConstraints:
        - { maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule }
        - maxSkew: 2
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector: { matchLabels: { tier: search } }
"#;

#[test]
fn pod_surface_children() {
    golden(
        "pod-surface.yaml",
        &render(&children(&stream(POD_SURFACE), &settings())),
    );
}

#[test]
fn the_pod_surface_reaches_the_workload_and_leaves_the_sidecar_alone() {
    let c = children(&stream(POD_SURFACE), &settings());
    let pod = c.stateful_set.spec.unwrap().template.spec.unwrap();
    let (workload, sidecar) = (&pod.containers[0], &pod.containers[1]);

    // Overrides replace only the fields they set; the rest stays restricted.
    let security = workload.security_context.clone().unwrap();
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(security.read_only_root_filesystem, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    assert_eq!(capabilities.add.unwrap(), ["IPC_LOCK"]);
    let pod_security = pod.security_context.clone().unwrap();
    assert_eq!(pod_security.run_as_group, Some(1000));
    assert_eq!(pod_security.run_as_user, Some(65532), "default kept");
    assert_eq!(pod_security.fs_group, Some(1000));

    // The sidecar keeps its own identity and mounts nothing of the workload's.
    let sidecar_security = sidecar.security_context.clone().unwrap();
    assert_eq!(sidecar_security.run_as_user, Some(65532));
    assert_eq!(sidecar_security.run_as_group, Some(65532));
    assert_eq!(sidecar_security.read_only_root_filesystem, Some(true));
    assert!(sidecar_security.capabilities.unwrap().add.is_none());
    assert!(sidecar.volume_mounts.is_none());

    // Claims first, then the extra mounts; every mount names a pod volume or a claim.
    let mounts: Vec<_> = workload
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts[0], ("data", "/var/lib/search"));
    assert_eq!(mounts[5], ("data", "/var/log/search"));
    let volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["conf", "tls", "tmp", "bundle"]);

    // Probes without a port probe the workload port.
    let startup = workload.startup_probe.clone().unwrap();
    assert_eq!(startup.tcp_socket.unwrap().port, IntOrString::Int(9200));
    let liveness = workload.liveness_probe.clone().unwrap();
    assert_eq!(liveness.http_get.unwrap().port, IntOrString::Int(9200));
    assert!(sidecar.startup_probe.is_none());

    let ports: Vec<_> = workload
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("workload", 9200), ("transport", 9300), ("metrics", 9114)]
    );

    // A spread without a selector counts the stream's own replicas.
    let spread = pod.topology_spread_constraints.unwrap();
    assert_eq!(
        spread[0]
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap(),
        selector_labels("search")
    );
    assert_eq!(
        spread[1]
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap()["tier"],
        "search"
    );
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
}

#[test]
fn every_pod_surface_field_rolls_the_pods() {
    let before = stream(POD_SURFACE);
    let hash = |ds: &DataStream| pod_config_hash(ds, &settings());
    let mut changed = before.clone();
    changed.spec.workload.volume_mounts[0].read_only = Some(false);
    assert_ne!(hash(&before), hash(&changed));
    let mut changed = before.clone();
    changed
        .spec
        .workload
        .pod
        .as_mut()
        .unwrap()
        .topology_spread_constraints[0]
        .max_skew = 2;
    assert_ne!(hash(&before), hash(&changed));
}

/// With the signer on, the sidecar learns its trust domain, the anchors and its ServiceAccount
/// from the pod spec, and new anchors change the pod template (so they roll out); without it
/// nothing about identity appears and the template hash is what it was.
#[test]
fn sidecar_identity_settings_reach_the_pod_and_roll_it_when_they_change() {
    let ds = stream(MINIMAL);
    let env_of = |settings: &Settings| {
        let sts = children(&ds, settings).stateful_set;
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let sidecar = pod
            .containers
            .into_iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .unwrap();
        sidecar.env.unwrap_or_default()
    };
    let off = settings();
    assert!(
        env_of(&off)
            .iter()
            .all(|e| !e.name.contains("TRUST") && e.name != "POD_SERVICE_ACCOUNT")
    );
    let mut on = settings();
    on.identity = Some(SidecarIdentity {
        trust_domain: "cluster.local".into(),
        trust_anchors_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
        certificate_lifetime_seconds: Some(3600),
    });
    let env = env_of(&on);
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(
        value("DATASTREAM_TRUST_DOMAIN").value.as_deref(),
        Some("cluster.local")
    );
    assert!(
        value("DATASTREAM_TRUST_ANCHORS")
            .value
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        value("DATASTREAM_CERTIFICATE_LIFETIME_SECONDS")
            .value
            .as_deref(),
        Some("3600")
    );
    let sa = value("POD_SERVICE_ACCOUNT")
        .value_from
        .unwrap()
        .field_ref
        .unwrap();
    assert_eq!(sa.field_path, "spec.serviceAccountName");

    let hash_off = pod_config_hash(&ds, &off);
    let hash_on = pod_config_hash(&ds, &on);
    assert_ne!(hash_off, hash_on);
    let mut rotated = on.clone();
    rotated
        .identity
        .as_mut()
        .unwrap()
        .trust_anchors_pem
        .push_str("B\n");
    assert_ne!(pod_config_hash(&ds, &rotated), hash_on);
}

/// `sidecar.clientTls` mounts the named Secret's pair read-only into the sidecar alone, tells the
/// sidecar where it is, and, being part of the sidecar spec, rolls the pods when it changes.
#[test]
fn client_tls_mounts_the_secret_into_the_sidecar_only() {
    let plain = stream(MINIMAL);
    let mut tls = plain.clone();
    tls.spec.sidecar.client_tls = Some(datastream_api::v1alpha1::ClientTls {
        secret_name: "orders-tls".into(),
    });
    let sts = children(&tls, &settings()).stateful_set;
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let sidecar = pod
        .containers
        .iter()
        .find(|c| c.name == SIDECAR_CONTAINER)
        .unwrap();
    let mounts = sidecar.volume_mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(
        (
            mounts[0].name.as_str(),
            mounts[0].mount_path.as_str(),
            mounts[0].read_only
        ),
        (CLIENT_TLS_VOLUME, CLIENT_TLS_DIR, Some(true))
    );
    let env = sidecar.env.clone().unwrap();
    let dir = env
        .iter()
        .find(|e| e.name == "DATASTREAM_CLIENT_TLS_DIR")
        .unwrap();
    assert_eq!(dir.value.as_deref(), Some(CLIENT_TLS_DIR));
    let workload = pod
        .containers
        .iter()
        .find(|c| c.name == WORKLOAD_CONTAINER)
        .unwrap();
    assert!(
        workload
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != CLIENT_TLS_VOLUME),
        "the workload does not see the key"
    );
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == CLIENT_TLS_VOLUME)
        .unwrap();
    let secret = volume.secret.unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("orders-tls"));
    let keys: Vec<String> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(keys, ["tls.crt", "tls.key"]);
    assert_ne!(
        pod_config_hash(&plain, &settings()),
        pod_config_hash(&tls, &settings())
    );
}
