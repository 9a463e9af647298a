//! Admission, evaluated locally: what the API server says about a DataStream object, without an
//! API server. The generated openAPIV3Schema is checked with a JSON-schema validator and the CEL
//! rules (`x-kubernetes-validations`) with kube's CEL evaluator, both compiled once per thread.
//!
//! Test support only (this crate's tests, and the sidecar's admission-parity test through the
//! `admission` feature): one implementation of "what admission accepts", so the tests of both
//! crates cannot drift apart. The e2e suite checks the same rules against a real kube-apiserver.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::{Value, json};

use crate::v1alpha1::DataStream;

/// The CRD's openAPIV3Schema, as the API server gets it.
pub fn open_api_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = DataStream::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema");
        serde_json::to_value(schema).expect("the schema serializes")
    })
}

/// The object as clients read it back after defaulting (the Rust types' defaults are the
/// schema's). An error means the object does not fit the types the operator and sidecars read.
pub fn deserialize(object: &Value) -> Result<DataStream, serde_json::Error> {
    serde_json::from_value(as_stored(object.clone()))
}

/// Whole numbers written as floats (`1.0`), which the schema admits in integer fields, come back
/// from the API server as integers: Go's JSON encoding writes a whole float64 without a fraction.
fn as_stored(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(as_stored).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, as_stored(v))).collect())
        }
        other => other,
    }
}

/// Violations of the schema (types, bounds, patterns, enums), as `<JSON pointer>: <message>`.
pub fn schema_errors(object: &Value) -> Vec<String> {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(open_api_schema()).expect("the CRD schema is a valid JSON schema")
    });
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {}", e.instance_path, e))
        .collect()
}

/// Violations of the CEL rules, evaluated on the defaulted object.
///
/// Panics when the object does not deserialize (see [`deserialize`]); check the schema first.
pub fn cel_errors(object: &Value) -> Vec<String> {
    thread_local! {
        // The CEL context is not `Sync`; one compiled copy per test thread.
        static CEL: (Validator, CompiledSchema) =
            (Validator::new(), compile_schema(open_api_schema()));
    }
    let ds = deserialize(object).expect("the object deserializes into a DataStream");
    let defaulted = serde_json::to_value(&ds).expect("a DataStream serializes");
    CEL.with(|(validator, compiled)| {
        match validator.validate_compiled(compiled, &defaulted, None) {
            Ok(()) => vec![],
            Err(errors) => errors.as_slice().iter().map(|e| e.to_string()).collect(),
        }
    })
}

/// Why admission refuses the object; empty when it admits it. Schema errors come first, and CEL
/// rules are evaluated only on an object that passes the schema (the API server evaluates both,
/// but either refuses the object, and CEL on a value out of the schema's bounds, such as a
/// duration Go cannot hold, only adds noise).
///
/// Panics when the schema admits an object that does not deserialize: the operator and the
/// sidecars could not read such a stream, so the schema is missing a bound.
pub fn admission_errors(object: &Value) -> Vec<String> {
    let schema = schema_errors(object);
    if !schema.is_empty() {
        return schema;
    }
    if let Err(e) = deserialize(object) {
        panic!("the schema admits an object the API types cannot read ({e}): {object}");
    }
    cel_errors(object)
}

/// A valid stream that sets every field of `spec.traffic` at least once, with the values a
/// careful user would write: the starting point for tests that change one field at a time.
pub fn full_traffic_reference() -> Value {
    json!({
        "apiVersion": "datastream.dev/v1alpha1",
        "kind": "DataStream",
        "metadata": { "name": "catalog", "namespace": "shop" },
        "spec": {
            "replicas": 3,
            "workload": { "image": "example.com/catalog:1", "port": 8080 },
            "traffic": {
                "routes": [
                    {
                        "name": "by-user",
                        "match": {
                            "path": { "prefix": "/kv" },
                            "methods": ["GET", "PUT"],
                            "headers": [
                                { "name": "x-tenant", "exact": "acme" },
                                { "name": "x-region", "prefix": "eu-" },
                                { "name": "x-debug", "present": false }
                            ]
                        },
                        "mode": "affinity",
                        "affinity": { "key": { "header": "x-user" }, "hashing": "maglev", "loadBound": 1.25 },
                        "timeout": "5s",
                        "retryNonIdempotent": true,
                        "rateLimit": { "requestsPerSecond": 500, "burst": 50 }
                    },
                    { "name": "by-query", "mode": "affinity", "affinity": { "key": { "queryParam": "user" } } },
                    { "name": "by-segment", "mode": "affinity", "affinity": { "key": { "pathSegment": 1 } } },
                    { "name": "writes", "match": { "path": { "exact": "/write" } }, "mode": "primary",
                      "primary": { "holdDown": "5s" } },
                    { "name": "fanout", "match": { "path": { "exact": "/invalidate" } }, "mode": "broadcast",
                      "broadcast": { "quorum": 2, "maxBodyBytes": 65536 } },
                    { "name": "rest", "mode": "balance" }
                ],
                "loadBalancing": { "policy": "least-request", "localFirst": true },
                "failover": {
                    "connectTimeout": "500ms",
                    "requestTimeout": "10s",
                    "perTryTimeout": "2s",
                    "streamIdleTimeout": "5m",
                    "retries": {
                        "attempts": 2,
                        "retryOn": ["5xx", "gateway-error", "reset", "connect-failure", "per-try-timeout"],
                        "budgetRatio": 0.2,
                        "minRetriesPerSecond": 10,
                        "backoffBase": "25ms",
                        "backoffMax": "250ms"
                    },
                    "outlierDetection": {
                        "consecutiveFailures": 5,
                        "failureRatePercent": 50,
                        "interval": "10s",
                        "baseEjectionTime": "30s",
                        "maxEjectedPercent": 50,
                        "panicThresholdPercent": 50
                    },
                    "healthCheck": {
                        "interval": "2s",
                        "timeout": "1s",
                        "unhealthyThreshold": 3,
                        "healthyThreshold": 2,
                        "probePeers": true,
                        "path": "/ready"
                    },
                    "circuitBreaker": {
                        "enabled": true,
                        "k": 1.5,
                        "window": "10s",
                        "minRequests": 20,
                        "maxPendingRequests": 100
                    },
                    "maxConcurrentRequestsPerReplica": 64,
                    "hedging": { "percentile": 95.0, "minDelay": "10ms" }
                },
                "limits": {
                    "rateLimit": { "requestsPerSecond": 1000, "burst": 100 },
                    "loadShedding": {
                        "enabled": true,
                        "latencyTarget": "250ms",
                        "minConcurrency": 8,
                        "maxConcurrency": 10000
                    },
                    "maxRequestBodyBytes": 10485760,
                    "maxResponseHeaderBytes": 131072,
                    "maxResponseHeaderFields": 256
                },
                "upstreamProtocol": "http1"
            }
        }
    })
}
