//! The pure half of reconciliation: a DataStream's spec in, the child objects it needs out.
//!
//! Nothing here talks to the API server, so every object the operator applies can be checked by
//! golden tests. The objects carry only the fields the operator owns (server-side apply semantics):
//! whatever Kubernetes defaults stays out of them.

use std::collections::BTreeMap;

use datastream_api::v1alpha1::{
    DataStream, SIDECAR_ADMIN_PORT, SIDECAR_PEER_PORT, SIDECAR_TRAFFIC_PORT,
};
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

/// Value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGER: &str = "datastream-operator";
/// Value of `app.kubernetes.io/name` on everything the operator creates.
pub const APP_NAME: &str = "datastream";
/// Label holding the owning DataStream's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label marking objects created by this operator.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Pod-template annotation fingerprinting every setting that needs a pod restart.
pub const POD_CONFIG_HASH: &str = "datastream.dev/pod-config-hash";
/// Name of the workload container in every pod.
pub const WORKLOAD_CONTAINER: &str = "workload";
/// Name of the sidecar container in every pod.
pub const SIDECAR_CONTAINER: &str = "sidecar";
/// Port the client Service exposes.
pub const CLIENT_SERVICE_PORT: i32 = 80;

/// Settings of the operator installation that shape the children (not part of any DataStream).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Sidecar image used when a DataStream does not override it.
    pub sidecar_image: String,
    /// The sidecars' workload identity, when the operator signs their certificates.
    pub identity: Option<SidecarIdentity>,
}

/// What the sidecars need to get and check workload certificates (see docs/identity.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarIdentity {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// PEM bundle of the trust anchors. It is part of the pod template, so a new anchor rolls
    /// the pods one at a time (Linkerd's model); during a rotation the bundle holds both.
    pub trust_anchors_pem: String,
    /// Certificate lifetime the sidecars ask for, in seconds (`None`: the sidecar's default).
    pub certificate_lifetime_seconds: Option<u64>,
}

/// Everything the operator applies for one DataStream. `pdb` is `None` when the stream has a
/// single replica: a PodDisruptionBudget there would block node drains forever.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The replicas: workload + sidecar per pod, each with a stable identity (`<name>-<ordinal>`)
    /// and its own volume claims.
    pub stateful_set: StatefulSet,
    /// The client Service, to the sidecars' traffic port.
    pub client_service: Service,
    /// The headless peer Service, whose EndpointSlices list the ready replicas for the sidecars.
    pub peer_service: Service,
    /// Identity of the sidecars.
    pub service_account: ServiceAccount,
    /// What the sidecars may read.
    pub role: Role,
    /// Grants `role` to `service_account`.
    pub role_binding: RoleBinding,
    /// Keeps all but one replica up during voluntary disruptions.
    pub pdb: Option<PodDisruptionBudget>,
    /// Admits the peer port only from the stream's own pods.
    pub network_policy: NetworkPolicy,
}

impl Children {
    /// Every child as the JSON object the operator applies, in apply order (RBAC and Services
    /// before the replicas, which need them the moment they start).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        fn json<K: serde::Serialize>(object: &K) -> serde_json::Value {
            serde_json::to_value(object).expect("Kubernetes objects serialize")
        }
        let mut objects = vec![
            json(&self.service_account),
            json(&self.role),
            json(&self.role_binding),
            json(&self.peer_service),
            json(&self.client_service),
            json(&self.network_policy),
            json(&self.stateful_set),
        ];
        objects.extend(self.pdb.as_ref().map(json));
        objects
    }
}

/// Names of a DataStream's children, derived from the stream's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet, client Service, PodDisruptionBudget.
    pub base: String,
    /// Headless peer Service and NetworkPolicy.
    pub peers: String,
    /// ServiceAccount, Role and RoleBinding of the sidecars.
    pub sidecar: String,
}

impl Names {
    /// Child names for the stream called `name`.
    pub fn of(name: &str) -> Self {
        Names {
            base: name.to_owned(),
            peers: format!("{name}-peers"),
            sidecar: format!("{name}-sidecar"),
        }
    }
}

/// Labels that select a stream's pods (stable for the stream's whole life: selectors are immutable).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The serialized label selector, as `status.selector` exposes it for scaling.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        component.to_owned(),
    );
    labels.insert("app.kubernetes.io/part-of".to_owned(), APP_NAME.to_owned());
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels
}

fn meta(ds: &DataStream, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: ds.metadata.namespace.clone(),
        labels: Some(labels(&ds.name_any_or_empty(), component)),
        owner_references: ds.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

trait NameOrEmpty {
    fn name_any_or_empty(&self) -> String;
}

impl NameOrEmpty for DataStream {
    fn name_any_or_empty(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
}

/// Builds every child of `ds`.
pub fn children(ds: &DataStream, settings: &Settings) -> Children {
    let name = ds.name_any_or_empty();
    let names = Names::of(&name);
    Children {
        stateful_set: stateful_set(ds, &names, settings),
        client_service: client_service(ds, &names),
        peer_service: peer_service(ds, &names),
        service_account: ServiceAccount {
            metadata: meta(ds, &names.sidecar, "sidecar"),
            ..ServiceAccount::default()
        },
        role: role(ds, &names),
        role_binding: role_binding(ds, &names),
        pdb: (ds.spec.replicas > 1).then(|| pdb(ds, &names)),
        network_policy: network_policy(ds, &names),
    }
}

/// Fingerprint of every setting that needs new pods. The traffic policy is deliberately left out:
/// sidecars watch it and apply changes live, so editing it must never roll the pods.
/// Claim sizes and retention are left out too: growing a volume resizes the claims in place, and
/// retention is a StatefulSet setting; neither needs a new pod.
pub fn pod_config_hash(ds: &DataStream, settings: &Settings) -> String {
    let mut hasher = Sha256::new();
    let mut workload = ds.spec.workload.clone();
    workload.volume_claim_retention = None;
    for claim in &mut workload.volume_claims {
        claim.size.clear();
    }
    let workload = serde_json::to_vec(&workload).expect("workload serializes");
    let sidecar = serde_json::to_vec(&ds.spec.sidecar).expect("sidecar serializes");
    hasher.update(&workload);
    hasher.update([0]);
    hasher.update(&sidecar);
    hasher.update([0]);
    hasher.update(settings.sidecar_image.as_bytes());
    // Only when on, so that turning identity on changes the hash and every other hash stays put.
    if let Some(identity) = &settings.identity {
        hasher.update([0]);
        hasher.update(identity.trust_domain.as_bytes());
        hasher.update([0]);
        hasher.update(identity.trust_anchors_pem.as_bytes());
        hasher.update([0]);
        hasher.update(
            identity
                .certificate_lifetime_seconds
                .unwrap_or(0)
                .to_le_bytes(),
        );
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The sidecar's identity settings: the trust domain and anchors, and the ServiceAccount whose
/// identity it proves, from the pod spec itself.
fn identity_env(identity: Option<&SidecarIdentity>) -> Vec<EnvVar> {
    let Some(identity) = identity else {
        return Vec::new();
    };
    let mut env = vec![
        field_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value_env("DATASTREAM_TRUST_DOMAIN", identity.trust_domain.clone()),
        value_env(
            "DATASTREAM_TRUST_ANCHORS",
            identity.trust_anchors_pem.clone(),
        ),
    ];
    if let Some(seconds) = identity.certificate_lifetime_seconds {
        env.push(value_env(
            "DATASTREAM_CERTIFICATE_LIFETIME_SECONDS",
            seconds.to_string(),
        ));
    }
    env
}

/// The pod volume of the client TLS Secret (mounted in the sidecar only).
pub const CLIENT_TLS_VOLUME: &str = "datastream-client-tls";
/// Where the sidecar reads the client TLS certificate and key.
pub const CLIENT_TLS_DIR: &str = "/var/run/secrets/datastream.dev/client-tls";

fn client_tls_volume(tls: &datastream_api::v1alpha1::ClientTls) -> Volume {
    Volume {
        name: CLIENT_TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls.secret_name.clone()),
            // Only the pair the sidecar reads (a cert-manager Secret also holds ca.crt).
            items: Some(
                ["tls.crt", "tls.key"]
                    .into_iter()
                    .map(|key| KeyToPath {
                        key: key.to_owned(),
                        path: key.to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub(crate) fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn default_sidecar_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("32Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("256Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Name of replica `ordinal`'s claim from the volume claim `claim` (the StatefulSet controller's
/// naming: `<claim>-<statefulset>-<ordinal>`).
pub fn claim_name(claim: &str, stream: &str, ordinal: i32) -> String {
    format!("{claim}-{stream}-{ordinal}")
}

/// Names of the claims of the stream's current replicas (ordinals below `spec.replicas`).
pub fn replica_claim_names(ds: &DataStream) -> impl Iterator<Item = String> + '_ {
    let stream = ds.name_any_or_empty();
    ds.spec
        .workload
        .volume_claims
        .iter()
        .flat_map(move |claim| {
            let stream = stream.clone();
            (0..ds.spec.replicas).map(move |ordinal| claim_name(&claim.name, &stream, ordinal))
        })
}

fn claim_templates(ds: &DataStream, name: &str) -> Vec<PersistentVolumeClaim> {
    ds.spec
        .workload
        .volume_claims
        .iter()
        .map(|claim| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim.name.clone()),
                labels: Some(labels(name, "storage")),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(
                    claim
                        .access_modes
                        .iter()
                        .map(|m| m.as_str().to_owned())
                        .collect(),
                ),
                storage_class_name: claim.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(claim.size.clone()),
                    )])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        })
        .collect()
}

fn stateful_set(ds: &DataStream, names: &Names, settings: &Settings) -> StatefulSet {
    let name = &names.base;
    let spec = &ds.spec;
    let overrides = spec.workload.pod.as_deref().cloned().unwrap_or_default();

    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(name, "replica"));
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(POD_CONFIG_HASH.to_owned(), pod_config_hash(ds, settings));

    let workload = Container {
        name: WORKLOAD_CONTAINER.to_owned(),
        image: Some(spec.workload.image.clone()),
        image_pull_policy: spec
            .workload
            .image_pull_policy
            .map(|p| p.as_str().to_owned()),
        command: (!spec.workload.command.is_empty()).then(|| spec.workload.command.clone()),
        args: (!spec.workload.args.is_empty()).then(|| spec.workload.args.clone()),
        env: (!spec.workload.env.is_empty()).then(|| spec.workload.env.clone()),
        resources: spec.workload.resources.as_deref().cloned(),
        ports: Some(pod::workload_ports(&spec.workload)),
        volume_mounts: pod::workload_mounts(&spec.workload),
        liveness_probe: spec
            .workload
            .liveness_probe
            .as_ref()
            .map(|p| pod::probe(p, spec.workload.port)),
        startup_probe: spec
            .workload
            .startup_probe
            .as_ref()
            .map(|p| pod::probe(p, spec.workload.port)),
        security_context: Some(pod::workload_security(
            spec.workload.security_context.as_deref(),
        )),
        ..Container::default()
    };

    let sidecar = Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(
            spec.sidecar
                .image
                .clone()
                .unwrap_or_else(|| settings.sidecar_image.clone()),
        ),
        args: Some(vec!["kubernetes".to_owned()]),
        env: Some(
            [
                value_env("DATASTREAM_NAME", name.clone()),
                value_env("DATASTREAM_PEER_SERVICE", names.peers.clone()),
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
                field_env("POD_IP", "status.podIP"),
                value_env("WORKLOAD_PORT", spec.workload.port.to_string()),
                value_env(
                    "WORKLOAD_READINESS_PATH",
                    spec.workload.readiness_path.clone(),
                ),
                value_env(
                    "DATASTREAM_LOG",
                    spec.sidecar.log_level.unwrap_or_default().as_str(),
                ),
            ]
            .into_iter()
            .chain(identity_env(settings.identity.as_ref()))
            .chain(
                spec.sidecar
                    .client_tls
                    .as_ref()
                    .map(|_| value_env("DATASTREAM_CLIENT_TLS_DIR", CLIENT_TLS_DIR)),
            )
            .collect(),
        ),
        ports: Some(vec![
            port("traffic", SIDECAR_TRAFFIC_PORT),
            port("peer", SIDECAR_PEER_PORT),
            port("admin", SIDECAR_ADMIN_PORT),
        ]),
        readiness_probe: Some(admin_probe("/ready", 2, 2)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        resources: Some(
            spec.sidecar
                .resources
                .as_deref()
                .cloned()
                .unwrap_or_else(default_sidecar_resources),
        ),
        security_context: Some(pod::sidecar_security()),
        volume_mounts: spec.sidecar.client_tls.as_ref().map(|_| {
            vec![VolumeMount {
                name: CLIENT_TLS_VOLUME.to_owned(),
                mount_path: CLIENT_TLS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };

    let rollout = spec.rollout.clone().unwrap_or_default();
    let retention = spec.workload.volume_claim_retention.unwrap_or_default();
    StatefulSet {
        metadata: meta(ds, name, "replica"),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                match_expressions: None,
            },
            // The headless peer Service governs the set: every replica gets the stable DNS name
            // `<name>-<ordinal>.<name>-peers`, and its EndpointSlices are what the sidecars watch.
            service_name: Some(names.peers.clone()),
            // Scaling creates or removes replicas at once rather than one by one (a replica that
            // never gets ready must not block the others); updates still roll one at a time.
            pod_management_policy: Some("Parallel".to_owned()),
            // Highest ordinal first, one at a time (or `maxUnavailable`), each waiting until the
            // replaced replica is ready again: its sidecar's readiness includes the workload's.
            // maxUnavailable is sent only when it says more than one: the API server drops the
            // field unless the MaxUnavailableStatefulSet gate is on (beta, off by default through
            // 1.36), and one at a time is what a StatefulSet does without it.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: rollout.max_unavailable.filter(|n| *n > 1).map(|n| {
                    RollingUpdateStatefulSetStrategy {
                        max_unavailable: Some(IntOrString::Int(n)),
                        partition: None,
                    }
                }),
            }),
            min_ready_seconds: rollout.min_ready_seconds,
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.when_deleted.as_str().to_owned()),
                    when_scaled: Some(retention.when_scaled.as_str().to_owned()),
                },
            ),
            volume_claim_templates: (!spec.workload.volume_claims.is_empty())
                .then(|| claim_templates(ds, name)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.sidecar.clone()),
                    automount_service_account_token: Some(true),
                    containers: vec![workload, sidecar],
                    security_context: Some(pod::pod_security(overrides.security_context.as_ref())),
                    volumes: {
                        let volumes: Vec<Volume> = spec
                            .workload
                            .volumes
                            .iter()
                            .map(pod::volume)
                            .chain(spec.sidecar.client_tls.as_ref().map(client_tls_volume))
                            .collect();
                        (!volumes.is_empty()).then_some(volumes)
                    },
                    image_pull_secrets: pod::image_pull_secrets(&overrides.image_pull_secrets),
                    topology_spread_constraints: (!overrides
                        .topology_spread_constraints
                        .is_empty())
                    .then(|| {
                        let own = selector_labels(name);
                        overrides
                            .topology_spread_constraints
                            .iter()
                            .map(|t| pod::topology_spread(t, &own))
                            .collect()
                    }),
                    termination_grace_period_seconds: overrides
                        .termination_grace_period_seconds
                        .or(Some(30)),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    affinity: overrides.affinity.clone(),
                    priority_class_name: overrides.priority_class_name.clone(),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn service_port(name: &str, number: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn client_service(ds: &DataStream, names: &Names) -> Service {
    Service {
        metadata: meta(ds, &names.base, "client"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&names.base)),
            ports: Some(vec![service_port("http", CLIENT_SERVICE_PORT, "traffic")]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn peer_service(ds: &DataStream, names: &Names) -> Service {
    Service {
        metadata: meta(ds, &names.peers, "peers"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(&names.base)),
            ports: Some(vec![service_port("peer", SIDECAR_PEER_PORT, "peer")]),
            // Only ready replicas are peers: an unready one must not get routed traffic.
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn role(ds: &DataStream, names: &Names) -> Role {
    Role {
        metadata: meta(ds, &names.sidecar, "sidecar"),
        rules: Some(vec![
            // Sidecars read their own stream only: resourceNames confines list/watch to a
            // metadata.name field selector on this one object.
            PolicyRule {
                api_groups: Some(vec![datastream_api::GROUP.to_owned()]),
                resources: Some(vec!["datastreams".to_owned()]),
                resource_names: Some(vec![names.base.clone()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".to_owned()]),
                resources: Some(vec!["endpointslices".to_owned()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
            // Each sidecar reports on its own pod whether it accepted the policy: the replicas'
            // pods only, by name, and only their status.
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods/status".to_owned()]),
                resource_names: Some(
                    (0..ds.spec.replicas.max(1))
                        .map(|ordinal| format!("{}-{ordinal}", names.base))
                        .collect(),
                ),
                verbs: vec!["patch".to_owned()],
                ..PolicyRule::default()
            },
        ]),
    }
}

fn role_binding(ds: &DataStream, names: &Names) -> RoleBinding {
    RoleBinding {
        metadata: meta(ds, &names.sidecar, "sidecar"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names.sidecar.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: names.sidecar.clone(),
            namespace: ds.metadata.namespace.clone(),
            api_group: None,
        }]),
    }
}

fn pdb(ds: &DataStream, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(ds, &names.base, "replica"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.base)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn network_policy(ds: &DataStream, names: &Names) -> NetworkPolicy {
    let tcp = |port: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(port.to_owned())),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    };
    NetworkPolicy {
        metadata: meta(ds, &names.peers, "peers"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.base)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                // Peer traffic is trusted only from the stream's own sidecars.
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(&names.base)),
                            match_expressions: None,
                        }),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp("peer")]),
                },
                // Clients reach the traffic port; kubelets and Prometheus reach the admin port.
                // The workload port is not listed, so nothing outside the pod reaches it.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp("traffic"), tcp("admin")]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

mod pod;

#[cfg(test)]
mod tests;
