//! Admission rules, checked locally: CEL rules with kube's CEL evaluator, and schema bounds with
//! a JSON-schema validator over the generated openAPIV3Schema. The e2e suite checks the same
//! specs against a real kube-apiserver.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;

fn valid() -> Value {
    json!({
        "apiVersion": "datastream.dev/v1alpha1",
        "kind": "DataStream",
        "metadata": { "name": "catalog", "namespace": "shop" },
        "spec": {
            "replicas": 3,
            "workload": { "image": "example.com/catalog:1", "port": 8080 },
            "traffic": {
                "routes": [
                    { "name": "by-key", "match": { "path": { "prefix": "/kv" } }, "mode": "affinity",
                      "affinity": { "key": { "pathSegment": 1 } } },
                    { "name": "writes", "match": { "methods": ["POST"], "headers": [{ "name": "x-tenant", "present": true }] },
                      "mode": "primary", "primary": { "holdDown": "5s" } },
                    { "name": "fanout", "match": { "path": { "exact": "/invalidate" } }, "mode": "broadcast",
                      "broadcast": { "quorum": 2 } }
                ],
                "loadBalancing": { "policy": "p2c-ewma", "localFirst": true },
                "failover": { "requestTimeout": "10s", "perTryTimeout": "2s" }
            }
        }
    })
}

/// Applies the defaults the apiserver would, by a round trip through the Rust types.
fn defaulted(object: &Value) -> DataStream {
    crate::admission::deserialize(object).expect("test object deserializes")
}

fn cel_errors(object: &Value) -> Vec<String> {
    crate::admission::cel_errors(object)
}

fn schema_errors(object: &Value) -> Vec<String> {
    crate::admission::schema_errors(object)
}

fn with(mut object: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in test object"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} is not a container"),
    }
    object
}

#[track_caller]
fn assert_cel_rejects(object: Value, message: &str) {
    let errors = cel_errors(&object);
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "expected a CEL error containing {message:?}, got {errors:?}"
    );
}

#[track_caller]
fn assert_schema_rejects(object: Value, path: &str) {
    let errors = schema_errors(&object);
    assert!(
        errors.iter().any(|e| e.starts_with(path)),
        "expected a schema error at {path}, got {errors:?}"
    );
}

#[test]
fn the_reference_spec_is_valid() {
    assert_eq!(cel_errors(&valid()), Vec::<String>::new());
    assert_eq!(schema_errors(&valid()), Vec::<String>::new());
}

#[test]
fn defaults_are_safe_without_any_traffic_policy() {
    let object = json!({
        "apiVersion": "datastream.dev/v1alpha1", "kind": "DataStream",
        "metadata": { "name": "minimal" },
        "spec": { "workload": { "image": "demo" } }
    });
    let ds = defaulted(&object);
    assert_eq!(ds.spec.replicas, 3);
    assert_eq!(ds.spec.workload.port, 8080);
    assert_eq!(ds.spec.workload.readiness_path, "/ready");
    assert_eq!(
        ds.spec.traffic.load_balancing.policy,
        LoadBalancingPolicy::P2cEwma
    );
    assert_eq!(ds.spec.traffic.failover.retries.attempts, 2);
    assert!(ds.spec.traffic.failover.circuit_breaker.enabled);
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    assert_eq!(schema_errors(&object), Vec::<String>::new());
}

#[test]
fn affinity_needs_a_key() {
    let object = with(
        valid(),
        "/spec/traffic/routes/0",
        json!({ "name": "by-key", "mode": "affinity" }),
    );
    assert_cel_rejects(object, "mode affinity needs affinity.key");
}

#[test]
fn affinity_key_needs_exactly_one_source() {
    let object = with(
        valid(),
        "/spec/traffic/routes/0/affinity/key",
        json!({ "header": "x-user", "queryParam": "user" }),
    );
    assert_cel_rejects(
        object,
        "affinity.key needs exactly one of header, queryParam or pathSegment",
    );
    let object = with(valid(), "/spec/traffic/routes/0/affinity/key", json!({}));
    assert_cel_rejects(
        object,
        "affinity.key needs exactly one of header, queryParam or pathSegment",
    );
}

#[test]
fn mode_specific_settings_need_their_mode() {
    let object = with(valid(), "/spec/traffic/routes/1/mode", json!("balance"));
    assert_cel_rejects(object, "primary is only used by routes with mode primary");
    let object = with(valid(), "/spec/traffic/routes/2/mode", json!("balance"));
    assert_cel_rejects(
        object,
        "broadcast is only used by routes with mode broadcast",
    );
    let object = with(valid(), "/spec/traffic/routes/0/mode", json!("balance"));
    assert_cel_rejects(object, "affinity is only used by routes with mode affinity");
}

#[test]
fn per_try_timeout_must_be_below_request_timeout() {
    let object = with(
        valid(),
        "/spec/traffic/failover/perTryTimeout",
        json!("10s"),
    );
    assert_cel_rejects(
        object,
        "failover.perTryTimeout must be shorter than failover.requestTimeout",
    );
    let object = with(valid(), "/spec/traffic/failover/perTryTimeout", json!("1m"));
    assert_cel_rejects(
        object,
        "failover.perTryTimeout must be shorter than failover.requestTimeout",
    );
}

#[test]
fn connect_timeout_must_not_exceed_request_timeout() {
    let object = with(
        valid(),
        "/spec/traffic/failover/connectTimeout",
        json!("30s"),
    );
    assert_cel_rejects(
        object,
        "failover.connectTimeout must not exceed failover.requestTimeout",
    );
}

#[test]
fn retry_backoff_base_must_not_exceed_max() {
    let object = with(
        valid(),
        "/spec/traffic/failover/retries",
        json!({ "backoffBase": "2s", "backoffMax": "100ms" }),
    );
    assert_cel_rejects(
        object,
        "failover.retries.backoffBase must not exceed backoffMax",
    );
}

#[test]
fn health_check_timeout_must_not_exceed_interval() {
    let object = with(
        valid(),
        "/spec/traffic/failover/healthCheck",
        json!({ "interval": "1s", "timeout": "5s" }),
    );
    assert_cel_rejects(
        object,
        "failover.healthCheck.timeout must not exceed its interval",
    );
}

#[test]
fn quorum_must_not_exceed_replicas() {
    let message = "spec.replicas must be 0 or at least every traffic.routes[].broadcast.quorum";
    let object = with(valid(), "/spec/traffic/routes/2/broadcast/quorum", json!(4));
    assert_cel_rejects(object, message);
    // `kubectl scale --replicas=1` sends the same object with only spec.replicas changed: the
    // refusal says why and what to do first.
    let object = with(valid(), "/spec/replicas", json!(1));
    assert_cel_rejects(object.clone(), message);
    assert_cel_rejects(object, "to scale below a quorum, lower or remove");
    // Equal is reachable, and a stream scaled to zero runs no sidecar to miss its quorum.
    for replicas in [0, 2] {
        let object = with(valid(), "/spec/replicas", json!(replicas));
        assert_eq!(cel_errors(&object), Vec::<String>::new(), "{replicas}");
    }
}

#[test]
fn route_names_must_be_unique() {
    let object = with(valid(), "/spec/traffic/routes/1/name", json!("by-key"));
    assert_cel_rejects(object, "traffic.routes[].name must be unique");
}

#[test]
fn the_default_route_name_is_reserved() {
    let object = with(valid(), "/spec/traffic/routes/1/name", json!("default"));
    assert_cel_rejects(object, "'default' is reserved");
}

#[test]
fn path_match_needs_exactly_one_kind() {
    let object = with(
        valid(),
        "/spec/traffic/routes/0/match/path",
        json!({ "exact": "/a", "prefix": "/a" }),
    );
    assert_cel_rejects(object, "match.path needs exactly one of exact or prefix");
}

#[test]
fn header_match_needs_exactly_one_condition() {
    let object = with(
        valid(),
        "/spec/traffic/routes/1/match/headers/0",
        json!({ "name": "x-tenant" }),
    );
    assert_cel_rejects(
        object,
        "match.headers[] needs exactly one of exact, prefix or present",
    );
}

#[test]
fn workload_port_must_not_collide_with_the_sidecar() {
    let object = with(valid(), "/spec/workload/port", json!(7081));
    assert_cel_rejects(object, "workload.port must differ from the sidecar's ports");
}

#[test]
fn reserved_pod_labels_are_rejected() {
    let object = with(
        valid(),
        "/spec/workload/pod",
        json!({ "labels": { "app.kubernetes.io/name": "x" } }),
    );
    assert_cel_rejects(object, "pod.labels must not set app.kubernetes.io/* labels");
}

#[test]
fn load_shedding_bounds_must_be_ordered() {
    let object = with(
        valid(),
        "/spec/traffic/limits",
        json!({ "loadShedding": { "minConcurrency": 100, "maxConcurrency": 10 } }),
    );
    assert_cel_rejects(object, "minConcurrency must not exceed maxConcurrency");
}

#[test]
fn schema_bounds_reject_out_of_range_numbers() {
    assert_schema_rejects(with(valid(), "/spec/replicas", json!(-1)), "/spec/replicas");
    assert_schema_rejects(
        with(valid(), "/spec/replicas", json!(1001)),
        "/spec/replicas",
    );
    assert_schema_rejects(
        with(valid(), "/spec/workload/port", json!(70000)),
        "/spec/workload/port",
    );
    let object = with(
        valid(),
        "/spec/traffic/failover/outlierDetection",
        json!({ "maxEjectedPercent": 150 }),
    );
    assert_schema_rejects(
        object,
        "/spec/traffic/failover/outlierDetection/maxEjectedPercent",
    );
    let object = with(
        valid(),
        "/spec/traffic/failover/retries",
        json!({ "budgetRatio": 1.5 }),
    );
    assert_schema_rejects(object, "/spec/traffic/failover/retries/budgetRatio");
    let object = with(
        valid(),
        "/spec/traffic/failover/retries",
        json!({ "attempts": 11 }),
    );
    assert_schema_rejects(object, "/spec/traffic/failover/retries/attempts");
}

#[test]
fn schema_rejects_unknown_enum_values() {
    assert_schema_rejects(
        with(
            valid(),
            "/spec/traffic/loadBalancing/policy",
            json!("random"),
        ),
        "/spec/traffic/loadBalancing/policy",
    );
    assert_schema_rejects(
        with(valid(), "/spec/traffic/routes/0/mode", json!("sticky")),
        "/spec/traffic/routes/0/mode",
    );
    assert_schema_rejects(
        with(
            valid(),
            "/spec/traffic/routes/1/match/methods",
            json!(["FETCH"]),
        ),
        "/spec/traffic/routes/1/match/methods/0",
    );
}

#[test]
fn schema_rejects_malformed_durations_and_paths() {
    for bad in ["10", "1.5s", "-1s", "ten seconds", "10 s", ""] {
        let object = with(valid(), "/spec/traffic/failover/requestTimeout", json!(bad));
        assert_schema_rejects(object, "/spec/traffic/failover/requestTimeout");
    }
    assert_schema_rejects(
        with(
            valid(),
            "/spec/traffic/routes/0/match/path",
            json!({ "prefix": "kv" }),
        ),
        "/spec/traffic/routes/0/match/path/prefix",
    );
    assert_schema_rejects(
        with(valid(), "/spec/workload/readinessPath", json!("ready")),
        "/spec/workload/readinessPath",
    );
    assert_schema_rejects(
        with(valid(), "/spec/traffic/routes/0/name", json!("By Key")),
        "/spec/traffic/routes/0/name",
    );
}

#[test]
fn schema_requires_an_image() {
    let object = with(valid(), "/spec/workload", json!({ "port": 8080 }));
    assert_schema_rejects(object, "/spec/workload");
}

#[test]
fn durations_parse_like_the_schema_accepts() {
    assert_eq!(
        parse_duration("250ms").unwrap(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        parse_duration("1m30s").unwrap(),
        std::time::Duration::from_secs(90)
    );
    assert_eq!(
        parse_duration("2h").unwrap(),
        std::time::Duration::from_secs(7200)
    );
    // The parser and the schema accept exactly the same strings: what admission lets through,
    // the sidecar parses, and what the sidecar refuses, admission refuses.
    let long = "1h".repeat(17);
    let cases = [
        ("0s", true),
        ("0ms", true),
        ("999999999ms", true),
        ("999999999s", true),
        ("9999999m", true),
        ("99999h", true),
        ("1h30m15s250ms", true),
        ("1000000000ms", false),
        ("1000000000s", false),
        ("10000000m", false),
        ("100000h", false),
        ("99999999999h", false),
        ("4294967296ms", false),
        ("0000000001h", false),
        (&long[..32], true),
        (&long, false),
        ("", false),
        ("10", false),
        ("s", false),
        ("1.5s", false),
        ("-1s", false),
        ("1d", false),
        ("1us", false),
        ("10 s", false),
        ("1h ", false),
    ];
    for (text, ok) in cases {
        let parsed = parse_duration(text);
        assert_eq!(parsed.is_ok(), ok, "parse_duration({text:?}) = {parsed:?}");
        let object = with(
            valid(),
            "/spec/traffic/failover/requestTimeout",
            json!(text),
        );
        let refused = schema_errors(&object)
            .iter()
            .any(|e| e.starts_with("/spec/traffic/failover/requestTimeout"));
        assert_eq!(refused, !ok, "schema on {text:?}");
    }
    assert!(matches!(
        parse_duration("99999999999h"),
        Err(DurationError::Range(_))
    ));
    assert!(matches!(
        parse_duration("ten"),
        Err(DurationError::Syntax(_))
    ));
}

#[test]
fn no_admitted_duration_overflows_go() {
    // The API server's CEL `duration()` is Go's time.Duration: at most 2^63-1 ns (about 2562047h).
    // The largest total the pattern admits within the length limit, by dynamic programming over
    // the text length: each part is the largest number the pattern allows before a unit.
    let parts: [(u128, usize); 4] = [
        (999_999_999 * 1_000_000, 11),     // 999999999ms
        (999_999_999 * 1_000_000_000, 10), // 999999999s
        (9_999_999 * 60_000_000_000, 8),   // 9999999m
        (99_999 * 3_600_000_000_000, 6),   // 99999h
    ];
    let mut best = vec![0u128; DURATION_MAX_LEN + 1];
    for len in 1..=DURATION_MAX_LEN {
        best[len] = best[len - 1];
        for (nanos, width) in parts {
            if width <= len {
                best[len] = best[len].max(best[len - width] + nanos);
            }
        }
    }
    assert!(
        best[DURATION_MAX_LEN] < i64::MAX as u128,
        "{} ns admitted",
        best[DURATION_MAX_LEN]
    );
}

#[test]
fn durations_the_sidecar_needs_positive_are_positive() {
    let cases = [
        (
            with(valid(), "/spec/traffic/routes/0/timeout", json!("0s")),
            "traffic.routes[].timeout must be more than 0",
        ),
        (
            with(
                valid(),
                "/spec/traffic/failover",
                json!({ "connectTimeout": "0s", "requestTimeout": "0ms" }),
            ),
            "failover.requestTimeout must be more than 0",
        ),
        (
            with(valid(), "/spec/traffic/failover/perTryTimeout", json!("0s")),
            "failover.perTryTimeout must be more than 0",
        ),
        (
            with(
                valid(),
                "/spec/traffic/failover/outlierDetection",
                json!({ "interval": "0s" }),
            ),
            "failover.outlierDetection.interval must be more than 0",
        ),
        (
            with(
                valid(),
                "/spec/traffic/failover/healthCheck",
                json!({ "interval": "0s", "timeout": "0s" }),
            ),
            "failover.healthCheck.interval must be more than 0",
        ),
        (
            with(
                valid(),
                "/spec/traffic/failover/circuitBreaker",
                json!({ "window": "0m" }),
            ),
            "failover.circuitBreaker.window must be more than 0",
        ),
    ];
    for (object, message) in cases {
        assert_eq!(schema_errors(&object), Vec::<String>::new(), "{message}");
        assert_cel_rejects(object, message);
    }
    // Zero stays allowed where it means something: no stream idle timeout, no hold-down.
    let object = with(
        valid(),
        "/spec/traffic/failover/streamIdleTimeout",
        json!("0s"),
    );
    let object = with(
        object,
        "/spec/traffic/routes/1/primary/holdDown",
        json!("0s"),
    );
    assert_eq!(cel_errors(&object), Vec::<String>::new());
}

#[test]
fn load_bound_is_off_or_at_least_one() {
    for bound in [0.5, 0.99, 0.01] {
        let object = with(
            valid(),
            "/spec/traffic/routes/0/affinity/loadBound",
            json!(bound),
        );
        assert_cel_rejects(
            object,
            "affinity.loadBound must be 0 (no bound) or between 1 and 10",
        );
    }
    for bound in [json!(0), json!(0.0), json!(1), json!(1.25), json!(10)] {
        let object = with(
            valid(),
            "/spec/traffic/routes/0/affinity/loadBound",
            bound.clone(),
        );
        assert_eq!(cel_errors(&object), Vec::<String>::new(), "{bound}");
        assert_eq!(schema_errors(&object), Vec::<String>::new(), "{bound}");
    }
    let object = with(
        valid(),
        "/spec/traffic/routes/0/affinity/loadBound",
        json!(10.5),
    );
    assert_schema_rejects(object, "/spec/traffic/routes/0/affinity/loadBound");
}

#[test]
fn header_match_values_are_header_values() {
    for field in ["exact", "prefix"] {
        let at = format!("/spec/traffic/routes/1/match/headers/0/{field}");
        for bad in ["a\nb", "a\rb", "\u{0}", "x\u{7f}", "\u{1b}[0m"] {
            let object = with(valid(), &at, json!(bad));
            assert_schema_rejects(object, &at);
        }
        for good in ["acme", "a\tb", "caf\u{e9}", "", "a b; q=0.5"] {
            let object = with(valid(), &at, json!(good));
            assert_eq!(schema_errors(&object), Vec::<String>::new(), "{good:?}");
        }
    }
}

#[test]
fn the_full_traffic_reference_is_valid() {
    let object = crate::admission::full_traffic_reference();
    assert_eq!(
        crate::admission::admission_errors(&object),
        Vec::<String>::new()
    );
    assert_eq!(cel_errors(&object), Vec::<String>::new());
}

#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd = serde_json::to_value(DataStream::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = vec![];
    walk("", &schema["properties"]["spec"], &mut missing);
    walk("", &schema["properties"]["status"], &mut missing);
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "fields without a description"
    );
}

#[test]
fn crd_names_and_subresources() {
    let crd = DataStream::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["dst".to_owned()]));
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["datastream".to_owned()])
    );
    let version = &crd.spec.versions[0];
    let scale = version
        .subresources
        .as_ref()
        .unwrap()
        .scale
        .as_ref()
        .unwrap();
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Replicas",
            "Ready",
            "Policy",
            "Status",
            "Reason",
            "Degraded",
            "Policy-Current",
            "Policy-Accepted",
            "mTLS",
            "Age"
        ]
    );
}

fn with_claims(claims: Value) -> Value {
    with(valid(), "/spec/workload/volumeClaims", claims)
}

#[test]
fn a_stateful_spec_is_valid() {
    let object = with_claims(json!([
        { "name": "data", "mountPath": "/var/lib/data", "size": "10Gi", "storageClassName": "fast" },
        { "name": "wal", "mountPath": "/var/lib/wal", "size": "512Mi", "accessModes": ["ReadWriteOncePod"] }
    ]));
    let object = with(object, "/spec/rollout", json!({ "maxUnavailable": 2 }));
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    assert_eq!(schema_errors(&object), Vec::<String>::new());
}

#[test]
fn claim_sizes_must_be_positive_quantities() {
    for size in ["ten", "0", "-1Gi", "10GB"] {
        let object = with_claims(json!([{ "name": "data", "mountPath": "/data", "size": size }]));
        assert_cel_rejects(
            object,
            "workload.volumeClaims[].size must be a positive quantity such as 10Gi",
        );
    }
}

#[test]
fn claim_mount_paths_must_be_unique_absolute_and_plain() {
    let object = with_claims(json!([
        { "name": "a", "mountPath": "/data", "size": "1Gi" },
        { "name": "b", "mountPath": "/data", "size": "1Gi" }
    ]));
    assert_cel_rejects(object, "workload.volumeClaims[].mountPath must be unique");
    let object = with_claims(json!([{ "name": "a", "mountPath": "/data/../etc", "size": "1Gi" }]));
    assert_cel_rejects(object, "must not contain '..'");
    for path in ["data", "/", "/data/", "/a:b"] {
        let object = with_claims(json!([{ "name": "a", "mountPath": path, "size": "1Gi" }]));
        assert_schema_rejects(object, "/spec/workload/volumeClaims/0/mountPath");
    }
}

#[test]
fn claim_names_and_modes_are_checked() {
    let object = with_claims(json!([{ "name": "Data_1", "mountPath": "/data", "size": "1Gi" }]));
    assert_schema_rejects(object, "/spec/workload/volumeClaims/0/name");
    let object = with_claims(json!([
        { "name": "a", "mountPath": "/data", "size": "1Gi", "accessModes": ["ReadWriteOnce", "ReadWriteOnce"] }
    ]));
    assert_cel_rejects(object, "accessModes must not repeat a mode");
    let object = with_claims(json!([
        { "name": "a", "mountPath": "/data", "size": "1Gi", "accessModes": ["WriteOnly"] }
    ]));
    assert_schema_rejects(object, "/spec/workload/volumeClaims/0/accessModes/0");
    let object = with(
        valid(),
        "/spec/workload/volumeClaimRetention",
        json!({ "whenScaled": "Archive" }),
    );
    assert_schema_rejects(object, "/spec/workload/volumeClaimRetention/whenScaled");
    let object = with(valid(), "/spec/rollout", json!({ "maxUnavailable": 0 }));
    assert_schema_rejects(object, "/spec/rollout/maxUnavailable");
}

#[test]
fn stream_names_leave_room_for_ordinals_and_revision_labels() {
    let object = with(valid(), "/metadata/name", json!("a".repeat(53)));
    assert_cel_rejects(object, "metadata.name must be at most 52 characters");
    let object = with(valid(), "/metadata/name", json!("a".repeat(52)));
    assert_eq!(cel_errors(&object), Vec::<String>::new());
}

#[test]
fn stream_names_are_service_names_that_cannot_collide() {
    for name in ["1catalog", "cat.alog", "catalog-", "-catalog"] {
        let object = with(valid(), "/metadata/name", json!(name));
        assert_cel_rejects(object, "metadata.name must be a DNS-1035 label");
    }
    // Stream `catalog`'s peer Service is `catalog-peers`: no stream may be called that.
    let object = with(valid(), "/metadata/name", json!("catalog-peers"));
    assert_cel_rejects(object, "metadata.name must not end in -peers");
    for name in ["c", "catalog-2", "peers", "catalog-peersx", "a1-b2"] {
        let object = with(valid(), "/metadata/name", json!(name));
        assert_eq!(cel_errors(&object), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn a_claim_cannot_go_below_what_its_replicas_claims_have() {
    let object = with_claims(json!([{ "name": "data", "mountPath": "/data", "size": "1Gi" }]));
    let status = |size: &str| json!({ "volumeClaims": [{ "name": "data", "size": size }] });
    // Before any claim exists, any size goes.
    assert_eq!(cel_errors(&object), Vec::<String>::new());
    assert_cel_rejects(
        with(object.clone(), "/status", status("2Gi")),
        "spec.workload.volumeClaims[].size cannot be smaller than status.volumeClaims[].size",
    );
    // Equal (in another unit) or above is fine: a growth the class refused can be taken back.
    assert_eq!(
        cel_errors(&with(object.clone(), "/status", status("1024Mi"))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors(&with(object, "/status", status("512Mi"))),
        Vec::<String>::new()
    );
}

/// The operator keeps every DataStream of the cluster in memory, so the inline size of the type
/// is paid 10,000 times at 10,000 streams: the rarely set parts of the workload (probes, pod
/// overrides, security and resources) are boxed, and this keeps a new inline field from undoing it.
#[test]
fn a_stream_without_optional_parts_stays_small_in_memory() {
    let workload = std::mem::size_of::<WorkloadSpec>();
    let stream = std::mem::size_of::<DataStream>();
    println!("WorkloadSpec {workload} bytes, DataStream {stream} bytes");
    assert!(workload <= 320, "WorkloadSpec is {workload} bytes inline");
    assert!(stream <= 1_600, "DataStream is {stream} bytes inline");
}

mod pod;
