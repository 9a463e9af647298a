//! Admission rules of the workload's pod surface: volumes, mounts, ports, probes, security
//! overrides, pull secrets and topology spread.

use serde_json::{Value, json};

use super::{assert_cel_rejects, assert_schema_rejects, cel_errors, schema_errors, valid, with};

/// A stream that uses every field of the pod surface.
fn full() -> Value {
    let mut object = valid();
    let workload = object.pointer_mut("/spec/workload").unwrap();
    *workload = json!({
        "image": "example.com/catalog:1",
        "port": 8080,
        "volumeClaims": [{ "name": "data", "mountPath": "/var/lib/data", "size": "1Gi" }],
        "volumes": [
            { "name": "conf", "configMap": { "name": "catalog-conf", "items": [{ "key": "server.toml", "path": "conf/server.toml", "mode": 288 }], "defaultMode": 292 } },
            { "name": "tls", "secret": { "secretName": "catalog-tls", "defaultMode": 256, "optional": true } },
            { "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "64Mi" } },
            { "name": "bundle", "projected": { "sources": [
                { "configMap": { "name": "catalog-conf" } },
                { "secret": { "name": "catalog-tls", "items": [{ "key": "tls.crt", "path": "tls.crt" }] } },
                { "serviceAccountToken": { "audience": "vault", "expirationSeconds": 3600, "path": "token" } }
            ] } }
        ],
        "volumeMounts": [
            { "name": "conf", "mountPath": "/etc/catalog", "readOnly": true },
            { "name": "tls", "mountPath": "/etc/tls" },
            { "name": "tmp", "mountPath": "/tmp" },
            { "name": "bundle", "mountPath": "/var/run/bundle" },
            { "name": "data", "mountPath": "/var/lib/wal", "subPath": "wal" }
        ],
        "ports": [
            { "name": "metrics", "containerPort": 9100 },
            { "name": "gossip", "containerPort": 7946, "protocol": "UDP" },
            { "name": "gossip-tcp", "containerPort": 7946 }
        ],
        "livenessProbe": { "httpGet": { "path": "/healthz", "httpHeaders": [{ "name": "x-probe", "value": "1" }] }, "periodSeconds": 5, "failureThreshold": 3 },
        "startupProbe": { "exec": { "command": ["/bin/check", "--startup"] }, "failureThreshold": 60, "periodSeconds": 2 },
        "securityContext": { "runAsUser": 999, "readOnlyRootFilesystem": false, "capabilitiesAdd": ["IPC_LOCK"] },
        "pod": {
            "imagePullSecrets": [{ "name": "registry" }],
            "securityContext": { "runAsGroup": 999, "fsGroup": 999, "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [5] },
            "topologySpreadConstraints": [
                { "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 2 },
                { "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway" }
            ]
        }
    });
    object
}

fn set(pointer: &str, value: Value) -> Value {
    with(full(), pointer, value)
}

#[test]
fn every_field_of_the_pod_surface_is_accepted() {
    let object = full();
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    assert_eq!(schema_errors(&object), Vec::<String>::new());
}

#[test]
fn a_volume_has_exactly_one_source() {
    assert_cel_rejects(
        set("/spec/workload/volumes/0", json!({ "name": "conf" })),
        "workload.volumes[] must set exactly one of configMap, secret, emptyDir or projected",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/volumes/2",
            json!({ "name": "tmp", "emptyDir": {}, "secret": { "secretName": "s" } }),
        ),
        "exactly one of configMap, secret, emptyDir or projected",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/volumes/3/projected/sources/0",
            json!({ "configMap": { "name": "a" }, "secret": { "name": "b" } }),
        ),
        "projected.sources[] must set exactly one of configMap, secret or serviceAccountToken",
    );
}

#[test]
fn volume_names_must_not_clash_with_claims_or_the_token_volume() {
    assert_cel_rejects(
        set("/spec/workload/volumes/2/name", json!("data")),
        "workload.volumes[].name must differ from every workload.volumeClaims[].name",
    );
    assert_cel_rejects(
        set("/spec/workload/volumes/2/name", json!("kube-api-access-x1")),
        "must not start with kube-api-access-",
    );
    assert_schema_rejects(
        set("/spec/workload/volumes/2/name", json!("Tmp")),
        "/spec/workload/volumes/2/name",
    );
}

#[test]
fn mounts_name_a_volume_at_a_free_plain_path() {
    assert_cel_rejects(
        set("/spec/workload/volumeMounts/0/name", json!("nowhere")),
        "workload.volumeMounts[].name must name one of workload.volumes[] or workload.volumeClaims[]",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/volumeMounts/0/mountPath",
            json!("/var/lib/data"),
        ),
        "workload.volumeMounts[].mountPath must differ from every workload.volumeClaims[].mountPath",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/volumeMounts/0/mountPath",
            json!("/etc/../root"),
        ),
        "workload.volumeMounts[].mountPath must not contain '..'",
    );
    assert_cel_rejects(
        set("/spec/workload/volumeMounts/4/subPath", json!("../other")),
        "workload.volumeMounts[].subPath must not contain '..'",
    );
    assert_schema_rejects(
        set("/spec/workload/volumeMounts/4/subPath", json!("/abs")),
        "/spec/workload/volumeMounts/4/subPath",
    );
    assert_schema_rejects(
        set("/spec/workload/volumeMounts/0/mountPath", json!("etc")),
        "/spec/workload/volumeMounts/0/mountPath",
    );
}

#[test]
fn projected_files_stay_inside_their_volume_with_valid_modes() {
    // A path pattern rather than a CEL rule: CEL over every item of every source of every
    // volume exceeds the API server's cost budget.
    for path in [
        "../../etc/passwd",
        "a/../../b",
        "..",
        "a/..",
        "/etc/x",
        "a//b",
        "a/",
    ] {
        assert_schema_rejects(
            set(
                "/spec/workload/volumes/0/configMap/items/0/path",
                json!(path),
            ),
            "/spec/workload/volumes/0/configMap/items/0/path",
        );
        assert_schema_rejects(
            set(
                "/spec/workload/volumes/3/projected/sources/2/serviceAccountToken/path",
                json!(path),
            ),
            "/spec/workload/volumes/3/projected/sources/2/serviceAccountToken/path",
        );
    }
    for path in [
        "conf/server.toml",
        ".hidden",
        "a/./b",
        "..data",
        "x/...",
        "a.b/c..d",
    ] {
        let object = set(
            "/spec/workload/volumes/0/configMap/items/0/path",
            json!(path),
        );
        assert_eq!(schema_errors(&object), Vec::<String>::new(), "{path}");
    }
    assert_schema_rejects(
        set("/spec/workload/volumes/1/secret/defaultMode", json!(512)),
        "/spec/workload/volumes/1/secret/defaultMode",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/volumes/3/projected/sources/2/serviceAccountToken/expirationSeconds",
            json!(60),
        ),
        "/spec/workload/volumes/3/projected/sources/2/serviceAccountToken/expirationSeconds",
    );
    for limit in ["lots", "0", "-1Mi"] {
        assert_cel_rejects(
            set("/spec/workload/volumes/2/emptyDir/sizeLimit", json!(limit)),
            "workload.volumes[].emptyDir.sizeLimit must be a positive quantity",
        );
    }
    assert_schema_rejects(
        set(
            "/spec/workload/volumes/2/emptyDir/medium",
            json!("HugePages"),
        ),
        "/spec/workload/volumes/2/emptyDir/medium",
    );
}

#[test]
fn extra_ports_leave_the_operators_ports_and_names_alone() {
    for port in [8080, 7080, 7081, 7082] {
        assert_cel_rejects(
            set("/spec/workload/ports/0/containerPort", json!(port)),
            "workload.ports[].containerPort must differ from workload.port and from the sidecar's ports",
        );
    }
    for name in ["workload", "admin", "peer", "traffic"] {
        assert_cel_rejects(
            set("/spec/workload/ports/0/name", json!(name)),
            "workload.ports[].name must not be workload, traffic, peer or admin",
        );
    }
    assert_cel_rejects(
        set("/spec/workload/ports/0/containerPort", json!(7946)),
        "workload.ports[].containerPort must not repeat a port with the same protocol",
    );
    for name in ["9100", "a--b"] {
        assert_cel_rejects(
            set("/spec/workload/ports/0/name", json!(name)),
            "workload.ports[].name must contain a letter and no '--'",
        );
    }
    assert_schema_rejects(
        set("/spec/workload/ports/0/name", json!("much-too-long-name")),
        "/spec/workload/ports/0/name",
    );
    assert_schema_rejects(
        set("/spec/workload/ports/0/protocol", json!("QUIC")),
        "/spec/workload/ports/0/protocol",
    );
}

#[test]
fn a_probe_has_exactly_one_action_and_sane_timing() {
    assert_cel_rejects(
        set(
            "/spec/workload/livenessProbe",
            json!({ "periodSeconds": 5 }),
        ),
        "workload probes (livenessProbe, startupProbe) must set exactly one of httpGet, tcpSocket, grpc or exec",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/startupProbe",
            json!({ "tcpSocket": {}, "grpc": { "port": 9000 } }),
        ),
        "must set exactly one of httpGet, tcpSocket, grpc or exec",
    );
    assert_schema_rejects(
        set("/spec/workload/livenessProbe/periodSeconds", json!(0)),
        "/spec/workload/livenessProbe/periodSeconds",
    );
    assert_schema_rejects(
        set("/spec/workload/startupProbe/exec/command", json!([])),
        "/spec/workload/startupProbe/exec/command",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/livenessProbe/httpGet/path",
            json!("healthz"),
        ),
        "/spec/workload/livenessProbe/httpGet/path",
    );
}

#[test]
fn running_as_root_needs_run_as_non_root_false() {
    assert_cel_rejects(
        set("/spec/workload/securityContext/runAsUser", json!(0)),
        "workload.securityContext.runAsUser (or pod.securityContext.runAsUser) is 0 while runAsNonRoot is true",
    );
    // The pod-level UID applies where the container does not set one.
    let mut object = full();
    object
        .pointer_mut("/spec/workload/securityContext")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("runAsUser");
    let object = with(
        object,
        "/spec/workload/pod/securityContext/runAsUser",
        json!(0),
    );
    assert_cel_rejects(object.clone(), "is 0 while runAsNonRoot is true");
    let object = with(
        object,
        "/spec/workload/pod/securityContext/runAsNonRoot",
        json!(false),
    );
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    let object = with(
        set("/spec/workload/securityContext/runAsUser", json!(0)),
        "/spec/workload/securityContext/runAsNonRoot",
        json!(false),
    );
    assert_eq!(cel_errors(&object), Vec::<String>::new());
}

#[test]
fn only_narrow_capabilities_can_be_added_back() {
    for capability in ["SYS_ADMIN", "ALL", "NET_ADMIN"] {
        assert_schema_rejects(
            set(
                "/spec/workload/securityContext/capabilitiesAdd",
                json!([capability]),
            ),
            "/spec/workload/securityContext/capabilitiesAdd/0",
        );
    }
    assert_cel_rejects(
        set(
            "/spec/workload/securityContext/capabilitiesAdd",
            json!(["IPC_LOCK", "IPC_LOCK"]),
        ),
        "capabilitiesAdd must not repeat a capability",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/pod/securityContext/fsGroupChangePolicy",
            json!("Never"),
        ),
        "/spec/workload/pod/securityContext/fsGroupChangePolicy",
    );
}

#[test]
fn topology_spread_is_checked_like_the_scheduler_would() {
    assert_cel_rejects(
        set(
            "/spec/workload/pod/topologySpreadConstraints/1/minDomains",
            json!(2),
        ),
        "pod.topologySpreadConstraints[].minDomains needs whenUnsatisfiable: DoNotSchedule",
    );
    assert_cel_rejects(
        set(
            "/spec/workload/pod/topologySpreadConstraints/1",
            json!({ "maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule" }),
        ),
        "pod.topologySpreadConstraints must not repeat a topologyKey",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/pod/topologySpreadConstraints/0/maxSkew",
            json!(0),
        ),
        "/spec/workload/pod/topologySpreadConstraints/0/maxSkew",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/pod/topologySpreadConstraints/0/topologyKey",
            json!("not a key"),
        ),
        "/spec/workload/pod/topologySpreadConstraints/0/topologyKey",
    );
    assert_schema_rejects(
        set(
            "/spec/workload/pod/imagePullSecrets/0/name",
            json!("Registry!"),
        ),
        "/spec/workload/pod/imagePullSecrets/0/name",
    );
}

#[test]
fn volume_names_starting_with_datastream_are_the_operators() {
    assert_cel_rejects(
        set(
            "/spec/workload/volumes/2",
            json!({ "name": "datastream-client-tls", "emptyDir": {} }),
        ),
        "workload.volumes[].name must not start with datastream-",
    );
}

#[test]
fn client_tls_names_a_secret() {
    let object = with(
        full(),
        "/spec/sidecar",
        json!({ "clientTls": { "secretName": "catalog.tls-2" } }),
    );
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    assert_eq!(schema_errors(&object), Vec::<String>::new());
    for bad in ["Catalog_TLS", "-tls", "tls."] {
        let object = with(
            full(),
            "/spec/sidecar",
            json!({ "clientTls": { "secretName": bad } }),
        );
        assert_cel_rejects(object, "sidecar.clientTls.secretName must be a Secret name");
    }
    let object = with(full(), "/spec/sidecar", json!({ "clientTls": {} }));
    assert_schema_rejects(object, "/spec/sidecar/clientTls");
}
