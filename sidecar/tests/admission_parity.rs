//! Admission parity: every value the sidecar's policy compilation refuses is refused by the
//! DataStream CRD (its schema or CEL rules) at admission, so a stream the API server admitted
//! always runs.
//!
//! Two angles:
//! - **Every rule** ([`Rule::ALL`], with an exhaustive `match`, so a new rule does not compile
//!   until it has cases here): specs that break it, each refused by the sidecar with that rule
//!   on that field, and refused at admission.
//! - **Every field**: starting from a reference stream that sets every field of `spec.traffic`,
//!   each field (and each pair of fields of one section) takes values derived from its schema
//!   (bounds and one past them, every enum value, durations zero, huge and malformed, header
//!   and path edge cases, absent); whatever admission accepts, the sidecar compiles.
//!
//! Admission is evaluated locally by `datastream_api::admission` (the generated schema with a
//! JSON-schema validator, the CEL rules with kube's evaluator); the e2e suite checks the CRD
//! against a real API server.

use std::collections::BTreeSet;

use datastream_api::admission::{
    admission_errors, deserialize, full_traffic_reference, open_api_schema,
};
use datastream_api::v1alpha1::{DURATION_MAX_LEN, DURATION_PATTERN};
use datastream_sidecar::config::compile::{PolicyError, Rule, compile_policy};
use datastream_sidecar::metrics::Metrics;
use serde_json::{Value, json};

/// A spec that breaks one rule: edits of the reference (`Value::Null` removes the field), and
/// the field the sidecar must name.
struct Case {
    edits: Vec<(&'static str, Value)>,
    field: String,
}

fn case<const N: usize>(field: &str, edits: [(&'static str, Value); N]) -> Case {
    Case {
        edits: edits.into(),
        field: field.to_owned(),
    }
}

/// Every duration field of `spec.traffic` in the reference, with the sidecar's name for it.
const DURATIONS: &[(&str, &str)] = &[
    (
        "/spec/traffic/routes/0/timeout",
        "traffic.routes[0] (by-user).timeout",
    ),
    (
        "/spec/traffic/routes/3/primary/holdDown",
        "traffic.routes[3] (writes).primary.holdDown",
    ),
    (
        "/spec/traffic/failover/connectTimeout",
        "traffic.failover.connectTimeout",
    ),
    (
        "/spec/traffic/failover/requestTimeout",
        "traffic.failover.requestTimeout",
    ),
    (
        "/spec/traffic/failover/perTryTimeout",
        "traffic.failover.perTryTimeout",
    ),
    (
        "/spec/traffic/failover/streamIdleTimeout",
        "traffic.failover.streamIdleTimeout",
    ),
    (
        "/spec/traffic/failover/retries/backoffBase",
        "traffic.failover.retries.backoffBase",
    ),
    (
        "/spec/traffic/failover/retries/backoffMax",
        "traffic.failover.retries.backoffMax",
    ),
    (
        "/spec/traffic/failover/outlierDetection/interval",
        "traffic.failover.outlierDetection.interval",
    ),
    (
        "/spec/traffic/failover/outlierDetection/baseEjectionTime",
        "traffic.failover.outlierDetection.baseEjectionTime",
    ),
    (
        "/spec/traffic/failover/healthCheck/interval",
        "traffic.failover.healthCheck.interval",
    ),
    (
        "/spec/traffic/failover/healthCheck/timeout",
        "traffic.failover.healthCheck.timeout",
    ),
    (
        "/spec/traffic/failover/circuitBreaker/window",
        "traffic.failover.circuitBreaker.window",
    ),
    (
        "/spec/traffic/failover/hedging/minDelay",
        "traffic.failover.hedging.minDelay",
    ),
    (
        "/spec/traffic/limits/loadShedding/latencyTarget",
        "traffic.limits.loadShedding.latencyTarget",
    ),
];

/// Specs that break `rule`. The `match` is exhaustive: a new rule needs cases here.
fn cases(rule: Rule) -> Vec<Case> {
    let r0 = "traffic.routes[0] (by-user)";
    match rule {
        Rule::RouteName => vec![
            case(
                "traffic.routes[0] (default).name",
                [("/spec/traffic/routes/0/name", json!("default"))],
            ),
            case(
                "traffic.routes[0] ().name",
                [("/spec/traffic/routes/0/name", json!(""))],
            ),
        ],
        Rule::DuplicateRouteName => vec![case(
            "traffic.routes[1] (by-user).name",
            [("/spec/traffic/routes/1/name", json!("by-user"))],
        )],
        Rule::PathNotAbsolute => vec![
            case(
                &format!("{r0}.match.path.prefix"),
                [("/spec/traffic/routes/0/match/path/prefix", json!("kv"))],
            ),
            case(
                &format!("{r0}.match.path.prefix"),
                [("/spec/traffic/routes/0/match/path/prefix", json!(""))],
            ),
            case(
                "traffic.routes[3] (writes).match.path.exact",
                [("/spec/traffic/routes/3/match/path/exact", json!("write"))],
            ),
        ],
        Rule::PathMatchKind => vec![
            case(
                &format!("{r0}.match.path"),
                [(
                    "/spec/traffic/routes/0/match/path",
                    json!({ "exact": "/kv", "prefix": "/kv" }),
                )],
            ),
            case(
                &format!("{r0}.match.path"),
                [("/spec/traffic/routes/0/match/path", json!({}))],
            ),
        ],
        Rule::HeaderName => vec![
            case(
                &format!("{r0}.match.headers[0].name"),
                [(
                    "/spec/traffic/routes/0/match/headers/0/name",
                    json!("x tenant"),
                )],
            ),
            case(
                &format!("{r0}.match.headers[0].name"),
                [("/spec/traffic/routes/0/match/headers/0/name", json!(""))],
            ),
            case(
                &format!("{r0}.match.headers[0].name"),
                [(
                    "/spec/traffic/routes/0/match/headers/0/name",
                    json!("x-tenänt"),
                )],
            ),
            case(
                &format!("{r0}.affinity.key.header"),
                [(
                    "/spec/traffic/routes/0/affinity/key/header",
                    json!("x:user"),
                )],
            ),
        ],
        Rule::HeaderValue => vec![
            case(
                &format!("{r0}.match.headers[0].exact"),
                [(
                    "/spec/traffic/routes/0/match/headers/0/exact",
                    json!("a\nb"),
                )],
            ),
            case(
                &format!("{r0}.match.headers[0].exact"),
                [(
                    "/spec/traffic/routes/0/match/headers/0/exact",
                    json!("acme\u{7f}"),
                )],
            ),
        ],
        Rule::HeaderMatchKind => vec![
            case(
                &format!("{r0}.match.headers[0]"),
                [(
                    "/spec/traffic/routes/0/match/headers/0",
                    json!({ "name": "x-tenant" }),
                )],
            ),
            case(
                &format!("{r0}.match.headers[0]"),
                [(
                    "/spec/traffic/routes/0/match/headers/0",
                    json!({ "name": "x-tenant", "exact": "a", "present": true }),
                )],
            ),
        ],
        Rule::AffinityMissing => vec![case(
            "traffic.routes[1] (by-query).affinity",
            [("/spec/traffic/routes/1/affinity", Value::Null)],
        )],
        Rule::AffinityKeySource => [
            json!({}),
            json!({ "header": "x-user", "queryParam": "user" }),
            json!({ "queryParam": "" }),
            json!({ "pathSegment": -1 }),
        ]
        .into_iter()
        .map(|key| {
            case(
                "traffic.routes[1] (by-query).affinity.key",
                [("/spec/traffic/routes/1/affinity/key", key)],
            )
        })
        .collect(),
        Rule::LoadBound => [json!(0.5), json!(0.999), json!(10.5), json!(-1)]
            .into_iter()
            .map(|bound| {
                case(
                    &format!("{r0}.affinity.loadBound"),
                    [("/spec/traffic/routes/0/affinity/loadBound", bound)],
                )
            })
            .collect(),
        Rule::Quorum => [0, -1]
            .into_iter()
            .map(|q| {
                case(
                    "traffic.routes[4] (fanout).broadcast.quorum",
                    [("/spec/traffic/routes/4/broadcast/quorum", json!(q))],
                )
            })
            .collect(),
        Rule::NegativeBytes => vec![
            case(
                "traffic.routes[4] (fanout).broadcast.maxBodyBytes",
                [("/spec/traffic/routes/4/broadcast/maxBodyBytes", json!(-1))],
            ),
            case(
                "traffic.limits.maxRequestBodyBytes",
                [("/spec/traffic/limits/maxRequestBodyBytes", json!(-1))],
            ),
        ],
        Rule::RateLimit => vec![
            case(
                &format!("{r0}.rateLimit"),
                [(
                    "/spec/traffic/routes/0/rateLimit",
                    json!({ "requestsPerSecond": 0, "burst": 10 }),
                )],
            ),
            case(
                "traffic.limits.rateLimit",
                [(
                    "/spec/traffic/limits/rateLimit",
                    json!({ "requestsPerSecond": 10, "burst": 0 }),
                )],
            ),
        ],
        Rule::DurationSyntax => duration_cases(&["ten", "1.5s", "10", "1d", "-1s", ""]),
        Rule::DurationRange => duration_cases(&[
            "99999999999h",
            "100000h",
            "1000000000ms",
            "10000000m",
            &"1ms".repeat(11),
        ]),
        Rule::ZeroDuration => vec![
            case(
                &format!("{r0}.timeout"),
                [("/spec/traffic/routes/0/timeout", json!("0s"))],
            ),
            case(
                "traffic.failover.requestTimeout",
                [
                    ("/spec/traffic/failover/requestTimeout", json!("0s")),
                    ("/spec/traffic/failover/connectTimeout", json!("0s")),
                    ("/spec/traffic/failover/perTryTimeout", Value::Null),
                ],
            ),
            case(
                "traffic.failover.perTryTimeout",
                [("/spec/traffic/failover/perTryTimeout", json!("0ms"))],
            ),
            case(
                "traffic.failover.outlierDetection.interval",
                [(
                    "/spec/traffic/failover/outlierDetection/interval",
                    json!("0s"),
                )],
            ),
            case(
                "traffic.failover.healthCheck.interval",
                [
                    ("/spec/traffic/failover/healthCheck/interval", json!("0s")),
                    ("/spec/traffic/failover/healthCheck/timeout", json!("0s")),
                ],
            ),
            case(
                "traffic.failover.circuitBreaker.window",
                [("/spec/traffic/failover/circuitBreaker/window", json!("0h"))],
            ),
        ],
        Rule::PerTryTimeout => ["10s", "1m"]
            .into_iter()
            .map(|t| {
                case(
                    "traffic.failover.perTryTimeout",
                    [("/spec/traffic/failover/perTryTimeout", json!(t))],
                )
            })
            .collect(),
        Rule::ConnectTimeout => vec![case(
            "traffic.failover.connectTimeout",
            [("/spec/traffic/failover/connectTimeout", json!("11s"))],
        )],
        Rule::Backoff => vec![case(
            "traffic.failover.retries.backoffBase",
            [("/spec/traffic/failover/retries/backoffBase", json!("1s"))],
        )],
        Rule::BudgetRatio => [json!(1.5), json!(-0.1)]
            .into_iter()
            .map(|ratio| {
                case(
                    "traffic.failover.retries.budgetRatio",
                    [("/spec/traffic/failover/retries/budgetRatio", ratio)],
                )
            })
            .collect(),
        Rule::HealthCheckTimeout => vec![case(
            "traffic.failover.healthCheck.timeout",
            [("/spec/traffic/failover/healthCheck/timeout", json!("3s"))],
        )],
        Rule::BreakerK => [json!(0.5), json!(11)]
            .into_iter()
            .map(|k| {
                case(
                    "traffic.failover.circuitBreaker.k",
                    [("/spec/traffic/failover/circuitBreaker/k", k)],
                )
            })
            .collect(),
        Rule::SheddingBounds => vec![case(
            "traffic.limits.loadShedding.minConcurrency",
            [(
                "/spec/traffic/limits/loadShedding/minConcurrency",
                json!(20000),
            )],
        )],
    }
}

/// One case per duration field and value.
fn duration_cases(values: &[&str]) -> Vec<Case> {
    let mut cases = vec![];
    for &(pointer, field) in DURATIONS {
        for &value in values {
            cases.push(case(field, [(pointer, json!(value))]));
        }
    }
    cases
}

#[test]
fn the_reference_stream_is_admitted_and_compiles() {
    let object = full_traffic_reference();
    assert_eq!(admission_errors(&object), Vec::<String>::new());
    compile(&object).expect("the reference compiles");
}

#[test]
fn every_rule_of_the_sidecar_is_enforced_at_admission() {
    let mut failures = vec![];
    for &rule in Rule::ALL {
        let cases = cases(rule);
        assert!(!cases.is_empty(), "{rule:?} has no case");
        for case in cases {
            let mut object = full_traffic_reference();
            for (pointer, value) in &case.edits {
                set(&mut object, pointer, value.clone());
            }
            let what = format!("{rule:?} at {} with {:?}", case.field, case.edits);
            match compile(&object) {
                Ok(_) => failures.push(format!("{what}: the sidecar compiles it")),
                Err(errors) => {
                    if !errors
                        .iter()
                        .any(|e| e.rule == rule && e.field == case.field)
                    {
                        failures.push(format!("{what}: the sidecar says {errors:?}"));
                    }
                }
            }
            let admission = admission_errors(&object);
            if admission.is_empty() {
                failures.push(format!("{what}: admitted"));
            } else {
                println!("{what}\n    admission: {}", admission.join("; "));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn whatever_admission_accepts_the_sidecar_compiles() {
    let reference = full_traffic_reference();
    let mut leaves = vec![];
    collect_leaves(&reference["spec"]["traffic"], "/spec/traffic", &mut leaves);
    let mut checked = 0;
    let mut failures = vec![];
    let mut check = |edits: &[(&str, Value)]| {
        let mut object = reference.clone();
        for (pointer, value) in edits {
            set(&mut object, pointer, value.clone());
        }
        if admission_errors(&object).is_empty() {
            checked += 1;
            if let Err(errors) = compile(&object) {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                failures.push(format!("admitted {edits:?}, refused: {errors:?}"));
            }
        }
    };
    // One field at a time, every probe, and absent.
    for pointer in &leaves {
        for value in probes(schema_at(pointer)) {
            check(&[(pointer, value)]);
        }
        check(&[(pointer, Value::Null)]);
    }
    // Two fields of one section at a time (cross-field rules), with fewer probes each.
    for (i, a) in leaves.iter().enumerate() {
        for b in &leaves[i + 1..] {
            if parent(a) != parent(b) {
                continue;
            }
            for va in few_probes(schema_at(a)) {
                for vb in few_probes(schema_at(b)) {
                    check(&[(a, va.clone()), (b, vb)]);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked > 500, "only {checked} admitted variants checked");
}

#[test]
fn the_reference_sets_every_traffic_field() {
    // The sweep above only varies fields the reference sets.
    let mut in_schema = BTreeSet::new();
    schema_leaves(
        &open_api_schema()["properties"]["spec"]["properties"]["traffic"],
        "traffic",
        &mut in_schema,
    );
    let mut in_reference = BTreeSet::new();
    let mut leaves = vec![];
    collect_leaves(
        &full_traffic_reference()["spec"]["traffic"],
        "/spec/traffic",
        &mut leaves,
    );
    for pointer in leaves {
        let path: Vec<&str> = pointer
            .trim_start_matches("/spec/")
            .split('/')
            .map(|t| if t.parse::<usize>().is_ok() { "[]" } else { t })
            .collect();
        in_reference.insert(path.join(".").replace(".[]", "[]"));
    }
    let missing: Vec<_> = in_schema.difference(&in_reference).collect();
    assert!(
        missing.is_empty(),
        "full_traffic_reference() leaves out {missing:?}"
    );
}

fn compile(object: &Value) -> Result<(), Vec<PolicyError>> {
    let ds = deserialize(object).expect("the test object fits the API types");
    compile_policy(&ds.spec.traffic, 1, "test", &Metrics::new()).map(|_| ())
}

/// Sets (or with `Value::Null` removes) the value at `pointer`.
fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let target = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the test object"));
    match (target, value) {
        (Value::Object(map), Value::Null) => {
            map.remove(key);
        }
        (Value::Object(map), value) => {
            map.insert(key.to_owned(), value);
        }
        (Value::Array(items), Value::Null) => {
            items.remove(key.parse::<usize>().expect("an index"));
        }
        (Value::Array(items), value) => items[key.parse::<usize>().expect("an index")] = value,
        _ => panic!("{parent} is not a container"),
    }
}

fn parent(pointer: &str) -> &str {
    pointer.rsplit_once('/').map_or("", |(p, _)| p)
}

/// JSON pointers of every scalar, array and object in `value` (containers too: they can be
/// emptied or left out).
fn collect_leaves(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let child = format!("{at}/{k}");
                out.push(child.clone());
                collect_leaves(v, &child, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let child = format!("{at}/{i}");
                out.push(child.clone());
                collect_leaves(v, &child, out);
            }
        }
        _ => {}
    }
}

/// Dotted paths (`[]` for list items) of every scalar field in a schema.
fn schema_leaves(schema: &Value, at: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            schema_leaves(v, &format!("{at}.{k}"), out);
        }
    } else if let Some(items) = schema.get("items") {
        schema_leaves(items, &format!("{at}[]"), out);
    } else {
        out.insert(at.to_owned());
    }
}

/// The schema of the field at `pointer`.
fn schema_at(pointer: &str) -> &'static Value {
    let mut node = open_api_schema();
    for token in pointer.trim_start_matches('/').split('/') {
        node = if token.parse::<usize>().is_ok() {
            &node["items"]
        } else {
            &node["properties"][token]
        };
    }
    assert!(!node.is_null(), "no schema for {pointer}");
    node
}

/// Values to try in a field, from its schema: its bounds and one past them, every enum value,
/// the values where the sidecar's own checks turn, and malformed ones.
fn probes(schema: &Value) -> Vec<Value> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let mut v = values.clone();
        v.push(json!("bogus"));
        return v;
    }
    let min = schema.get("minimum").and_then(Value::as_f64);
    let max = schema.get("maximum").and_then(Value::as_f64);
    match schema["type"].as_str() {
        Some("string") if schema["pattern"] == DURATION_PATTERN => [
            "0s",
            "0ms",
            "1ms",
            "1s",
            "10s",
            "1m",
            "1h",
            "99999h",
            "9999999m",
            "999999999s",
            "999999999ms",
            "100000h",
            "1000000000ms",
            "99999999999h",
            // At the length limit, and past it.
            &"1h".repeat(DURATION_MAX_LEN / 2),
            &"1h".repeat(DURATION_MAX_LEN / 2 + 1),
            "ten",
            "1.5s",
            "-1s",
            "",
        ]
        .iter()
        .map(|s| json!(s))
        .collect(),
        Some("string") => {
            let max_len = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(64) as usize;
            let tchars =
                "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
            [
                String::new(),
                " ".into(),
                "a".into(),
                "default".into(),
                "x-tenant".into(),
                "X-Tenant".into(),
                "x tenant".into(),
                "x:tenant".into(),
                "x-tenänt".into(),
                tchars.into(),
                "a\tb".into(),
                "a\nb".into(),
                "a\u{7f}".into(),
                "café".into(),
                "/".into(),
                "/a".into(),
                "/a b".into(),
                "/a?b".into(),
                "a/b".into(),
                "a".repeat(max_len),
                format!("/{}", "a".repeat(max_len - 1)),
                "a".repeat(max_len + 1),
            ]
            .into_iter()
            .map(Value::String)
            .collect()
        }
        Some("integer") => {
            let mut v: Vec<i64> = vec![-1, 0, 1, 2, 3, 4];
            for b in [min, max].into_iter().flatten() {
                let b = b as i64;
                v.extend([b - 1, b, b + 1]);
            }
            v.into_iter().map(|n| json!(n)).collect()
        }
        Some("number") => {
            let mut v: Vec<f64> = vec![-1.0, 0.0, 0.001, 0.5, 0.999, 1.0, 1.25, 10.0, 10.5, 100.0];
            for b in [min, max].into_iter().flatten() {
                v.extend([b - 0.5, b, b + 0.5]);
            }
            v.into_iter().map(|n| json!(n)).collect()
        }
        Some("boolean") => vec![json!(true), json!(false)],
        Some("array") => vec![json!([])],
        _ => vec![],
    }
}

/// A few probes for pairs: the values where cross-field rules turn.
fn few_probes(schema: &Value) -> Vec<Value> {
    match schema["type"].as_str() {
        Some("string") if schema["pattern"] == DURATION_PATTERN => {
            vec![json!("0s"), json!("1ms"), json!("5s"), json!("99999h")]
        }
        Some("integer") | Some("number") => {
            let mut v = vec![json!(0), json!(1)];
            v.extend(schema.get("minimum").cloned());
            v.extend(schema.get("maximum").cloned());
            v
        }
        Some("boolean") => vec![json!(true), json!(false)],
        _ => vec![],
    }
}
