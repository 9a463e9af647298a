//! The workload's pod surface (`spec.workload` volumes, mounts, ports, probes and security
//! overrides, `spec.workload.pod` pull secrets, pod security and topology spread) turned into the
//! Kubernetes types of the pod template. Admission has already checked every rule the API server
//! would apply to them, so these are plain conversions plus the operator's defaults.

use std::collections::BTreeMap;

use datastream_api::v1alpha1::{
    ContainerSecurity, ImagePullSecret, KeyToPath as ApiKeyToPath, PodSecurity, PodVolume,
    Projection, TopologySpread, WorkloadProbe, WorkloadSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource,
    ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, KeyToPath, LocalObjectReference,
    PodSecurityContext, Probe, ProjectedVolumeSource, SeccompProfile, SecretProjection,
    SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, TCPSocketAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// UID and GID every container runs as unless overridden (the sidecar always does).
pub const NON_ROOT_ID: i64 = 65532;

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The restricted container settings (the Pod Security Standards' `restricted` profile).
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// The sidecar's settings: restricted, and pinned to its own UID and GID so that a pod-level
/// override meant for the workload never changes who the sidecar runs as.
pub fn sidecar_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        ..restricted_container_security()
    }
}

/// The workload container's settings: restricted, with the user's overrides field by field.
pub fn workload_security(overrides: Option<&ContainerSecurity>) -> SecurityContext {
    let mut security = restricted_container_security();
    let Some(o) = overrides else {
        return security;
    };
    security.run_as_user = o.run_as_user;
    security.run_as_group = o.run_as_group;
    if let Some(v) = o.run_as_non_root {
        security.run_as_non_root = Some(v);
    }
    if let Some(v) = o.read_only_root_filesystem {
        security.read_only_root_filesystem = Some(v);
    }
    if let Some(v) = o.allow_privilege_escalation {
        security.allow_privilege_escalation = Some(v);
    }
    if let (false, Some(capabilities)) = (
        o.capabilities_add.is_empty(),
        security.capabilities.as_mut(),
    ) {
        capabilities.add = Some(
            o.capabilities_add
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
        );
    }
    security
}

/// The pod's settings: non-root with UID, GID and fsGroup 65532, with the user's overrides.
pub fn pod_security(overrides: Option<&PodSecurity>) -> PodSecurityContext {
    let o = overrides.cloned().unwrap_or_default();
    PodSecurityContext {
        run_as_non_root: Some(o.run_as_non_root.unwrap_or(true)),
        run_as_user: Some(o.run_as_user.unwrap_or(NON_ROOT_ID)),
        run_as_group: Some(o.run_as_group.unwrap_or(NON_ROOT_ID)),
        fs_group: Some(o.fs_group.unwrap_or(NON_ROOT_ID)),
        fs_group_change_policy: o.fs_group_change_policy.map(|p| p.as_str().to_owned()),
        supplemental_groups: (!o.supplemental_groups.is_empty()).then_some(o.supplemental_groups),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

fn items(items: &[ApiKeyToPath]) -> Option<Vec<KeyToPath>> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|i| KeyToPath {
                key: i.key.clone(),
                path: i.path.clone(),
                mode: i.mode,
            })
            .collect()
    })
}

fn projection(source: &Projection) -> VolumeProjection {
    VolumeProjection {
        config_map: source.config_map.as_ref().map(|c| ConfigMapProjection {
            name: c.name.clone(),
            items: items(&c.items),
            optional: c.optional,
        }),
        secret: source.secret.as_ref().map(|s| SecretProjection {
            name: s.name.clone(),
            items: items(&s.items),
            optional: s.optional,
        }),
        service_account_token: source.service_account_token.as_ref().map(|t| {
            ServiceAccountTokenProjection {
                audience: t.audience.clone(),
                expiration_seconds: t.expiration_seconds,
                path: t.path.clone(),
            }
        }),
        ..VolumeProjection::default()
    }
}

/// One of `workload.volumes` as a pod volume.
pub fn volume(v: &PodVolume) -> Volume {
    Volume {
        name: v.name.clone(),
        config_map: v.config_map.as_ref().map(|c| ConfigMapVolumeSource {
            name: c.name.clone(),
            items: items(&c.items),
            default_mode: c.default_mode,
            optional: c.optional,
        }),
        secret: v.secret.as_ref().map(|s| SecretVolumeSource {
            secret_name: Some(s.secret_name.clone()),
            items: items(&s.items),
            default_mode: s.default_mode,
            optional: s.optional,
        }),
        empty_dir: v.empty_dir.as_ref().map(|e| EmptyDirVolumeSource {
            medium: e.medium.map(|_| "Memory".to_owned()),
            size_limit: e.size_limit.clone().map(Quantity),
        }),
        projected: v.projected.as_ref().map(|p| ProjectedVolumeSource {
            sources: Some(p.sources.iter().map(projection).collect()),
            default_mode: p.default_mode,
        }),
        ..Volume::default()
    }
}

/// The workload container's mounts: each claim at its `mountPath`, then `volumeMounts`.
pub fn workload_mounts(workload: &WorkloadSpec) -> Option<Vec<VolumeMount>> {
    let claims = workload.volume_claims.iter().map(|claim| VolumeMount {
        name: claim.name.clone(),
        mount_path: claim.mount_path.clone(),
        ..VolumeMount::default()
    });
    let extra = workload.volume_mounts.iter().map(|m| VolumeMount {
        name: m.name.clone(),
        mount_path: m.mount_path.clone(),
        sub_path: m.sub_path.clone(),
        read_only: m.read_only,
        ..VolumeMount::default()
    });
    let mounts: Vec<VolumeMount> = claims.chain(extra).collect();
    (!mounts.is_empty()).then_some(mounts)
}

/// The workload container's ports: `workload` (the port the sidecar forwards to), then `ports`.
pub fn workload_ports(workload: &WorkloadSpec) -> Vec<ContainerPort> {
    std::iter::once(super::port("workload", workload.port))
        .chain(workload.ports.iter().map(|p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.container_port,
            protocol: Some(p.protocol.map_or("TCP", |p| p.as_str()).to_owned()),
            ..ContainerPort::default()
        }))
        .collect()
}

/// A liveness or startup probe; a probe without a port probes `workload.port`.
pub fn probe(p: &WorkloadProbe, workload_port: i32) -> Probe {
    let port = |port: Option<i32>| IntOrString::Int(port.unwrap_or(workload_port));
    Probe {
        http_get: p.http_get.as_ref().map(|h| HTTPGetAction {
            path: Some(h.path.clone()),
            port: port(h.port),
            scheme: h.scheme.map(|s| s.as_str().to_owned()),
            http_headers: (!h.http_headers.is_empty()).then(|| {
                h.http_headers
                    .iter()
                    .map(|h| HTTPHeader {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect()
            }),
            host: None,
        }),
        tcp_socket: p.tcp_socket.as_ref().map(|t| TCPSocketAction {
            port: port(t.port),
            host: None,
        }),
        grpc: p.grpc.as_ref().map(|g| GRPCAction {
            port: g.port.unwrap_or(workload_port),
            service: g.service.clone(),
        }),
        exec: p.exec.as_ref().map(|e| ExecAction {
            command: Some(e.command.clone()),
        }),
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        timeout_seconds: p.timeout_seconds,
        failure_threshold: p.failure_threshold,
        termination_grace_period_seconds: p.termination_grace_period_seconds,
        success_threshold: None,
    }
}

/// Pull secrets as the pod lists them.
pub fn image_pull_secrets(secrets: &[ImagePullSecret]) -> Option<Vec<LocalObjectReference>> {
    (!secrets.is_empty()).then(|| {
        secrets
            .iter()
            .map(|s| LocalObjectReference {
                name: s.name.clone(),
            })
            .collect()
    })
}

/// A topology spread constraint; one without a selector counts the stream's own replicas.
pub fn topology_spread(
    t: &TopologySpread,
    stream_pods: &BTreeMap<String, String>,
) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: t.max_skew,
        topology_key: t.topology_key.clone(),
        when_unsatisfiable: t.when_unsatisfiable.as_str().to_owned(),
        min_domains: t.min_domains,
        label_selector: Some(t.label_selector.clone().unwrap_or_else(|| LabelSelector {
            match_labels: Some(stream_pods.clone()),
            match_expressions: None,
        })),
        node_affinity_policy: t.node_affinity_policy.map(|p| p.as_str().to_owned()),
        node_taints_policy: t.node_taints_policy.map(|p| p.as_str().to_owned()),
        match_label_keys: None,
    }
}
