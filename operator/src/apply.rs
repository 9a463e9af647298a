//! Applying children with server-side apply, but only when the live object differs.
//!
//! A server-side apply of an unchanged object is still an API request. To make a steady DataStream
//! cost zero requests, each child is checked against the cached live object first, and nothing is
//! sent when both hold:
//!
//! - the live object's [`APPLIED_DIGEST_ANNOTATION`] equals the digest of the desired object:
//!   what the operator would apply now is what it last applied. This catches a field the spec no
//!   longer sets (an apply would remove it), which a comparison of values cannot see;
//! - every field and value the operator sets is in the live object ([`contains`]): a field
//!   edited or removed by hand or by another manager is drift, and the apply restores it.
//!
//! Fields other managers add are not drift: server-side apply would leave them in place, so
//! re-applying would change nothing and repeat forever. That includes entries they add to lists
//! that Kubernetes merges by key (`kubectl set env` adds to `env`, keyed by name).

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

/// Annotation on every child: a digest of the object as the operator last applied it.
pub const APPLIED_DIGEST_ANNOTATION: &str = "datastream.dev/applied-digest";

/// The digest of `desired` (without its own digest annotation): 128 bits of SHA-256, in hex.
pub fn digest<K: Serialize>(desired: &K) -> String {
    let mut value = serde_json::to_value(desired).expect("Kubernetes objects serialize");
    if let Some(annotations) = value
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(APPLIED_DIGEST_ANNOTATION);
    }
    // serde_json's maps are ordered (BTreeMap without `preserve_order`), and k8s-openapi
    // serializes fields in a fixed order: equal objects give equal bytes.
    let bytes = serde_json::to_vec(&value).expect("JSON values serialize");
    hex::encode(&sha2::Sha256::digest(&bytes)[..16])
}

/// Writes the digest of `desired` into its [`APPLIED_DIGEST_ANNOTATION`] and returns it.
pub fn stamp<K: kube::Resource + Serialize>(desired: &mut K) -> String {
    let digest = digest(desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_DIGEST_ANNOTATION.to_owned(), digest.clone());
    digest
}

/// Whether `live` was last applied from an object with this digest.
pub fn applied_from<K: kube::Resource>(live: &K, digest: &str) -> bool {
    live.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_DIGEST_ANNOTATION))
        .is_some_and(|d| d == digest)
}

/// Whether `live` already holds every field and value of `desired`.
///
/// Objects compare key by key (extra live keys are defaults or other managers' fields and are
/// ignored). Lists that Kubernetes merges by key (containers, env, volumes, ports, ...; see
/// [`merge_key`]) compare each desired entry with the live entry of the same key, and ignore
/// live entries of other keys; every other list is owned whole and compares element by element,
/// with the same length. Scalars compare by value, and the values of resource maps
/// (`requests`, `limits`) and of `sizeLimit` as quantities, since the API server stores those
/// in canonical form (`cpu: 0.5` comes back as `500m`, `memory: 1024Mi` as `1Gi`).
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, false)
}

fn contains_at(live: &Value, desired: &Value, quantities: bool) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match live.get(key) {
                Some(Value::Array(have)) if merge_key(key).is_some() => {
                    let Value::Array(want) = want else {
                        return false;
                    };
                    merged_list_contains(have, want, merge_key(key).unwrap_or_default())
                }
                Some(have) => contains_at(
                    have,
                    want,
                    quantities || matches!(key.as_str(), "requests" | "limits" | "sizeLimit"),
                ),
                // The API server omits zero values (Go's `omitempty`), so a missing field
                // matches a desired false, 0, "" or empty collection.
                None => is_zero(want),
            })
        }
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| contains_at(have, want, false))
        }
        (Value::Number(live), Value::Number(desired)) => live.as_f64() == desired.as_f64(),
        (Value::String(live), Value::String(desired)) if quantities => {
            crate::quantity::same_value(live, desired)
        }
        (live, desired) => live == desired,
    }
}

/// The fields that identify an entry of a list Kubernetes merges by key (its
/// `x-kubernetes-list-map-keys`), by the list's field name; `None` for lists owned whole.
pub fn merge_key(list: &str) -> Option<&'static [&'static str]> {
    Some(match list {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        // A container's ports (containerPort) and a Service's ports (port), with the protocol.
        "ports" => &["containerPort", "port", "protocol"],
        "ownerReferences" => &["uid"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "hostAliases" => &["ip"],
        _ => return None,
    })
}

fn merged_list_contains(live: &[Value], desired: &[Value], key: &[&str]) -> bool {
    // Key fields the desired entry leaves out take the API server's default (protocol: TCP).
    let key_of = |entry: &Value| -> Vec<Value> {
        key.iter()
            .map(|field| match (entry.get(*field), *field) {
                (Some(value), _) => value.clone(),
                (None, "protocol")
                    if entry.get("containerPort").is_some() || entry.get("port").is_some() =>
                {
                    Value::String("TCP".into())
                }
                (None, _) => Value::Null,
            })
            .collect()
    };
    desired.iter().all(|want| {
        let wanted_key = key_of(want);
        live.iter()
            .find(|have| key_of(have) == wanted_key)
            .is_some_and(|have| contains_at(have, want, false))
    })
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Whether the live object (if any) already matches the desired one.
pub fn up_to_date<K: Serialize>(live: Option<&K>, desired: &K) -> bool {
    let Some(live) = live else { return false };
    let live = serde_json::to_value(live).expect("Kubernetes objects serialize");
    let mut desired = serde_json::to_value(desired).expect("Kubernetes objects serialize");
    // Status is never applied by the operator and is never part of a child's desired state.
    if let Value::Object(map) = &mut desired {
        map.remove("status");
    }
    contains(&live, &desired)
}

/// The first field of `desired` that differs from `live` among those Kubernetes never lets a
/// StatefulSet change (an apply would be refused with "Forbidden: updates to statefulset spec
/// for fields other than ..."), as a phrase for an event; `None` when an apply can proceed.
pub fn immutable_change(
    live: &k8s_openapi::api::apps::v1::StatefulSet,
    desired: &k8s_openapi::api::apps::v1::StatefulSet,
) -> Option<String> {
    let (Some(live), Some(desired)) = (live.spec.as_ref(), desired.spec.as_ref()) else {
        return None;
    };
    if desired.service_name.is_some() && live.service_name != desired.service_name {
        return Some("its governing Service".into());
    }
    if desired.pod_management_policy.is_some()
        && live.pod_management_policy != desired.pod_management_policy
    {
        return Some("its pod management policy".into());
    }
    let live_templates = live.volume_claim_templates.as_deref().unwrap_or_default();
    let desired_templates = desired
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default();
    let same = live_templates.len() == desired_templates.len()
        && live_templates.iter().zip(desired_templates).all(|(l, d)| {
            l.metadata.name == d.metadata.name
                && contains(
                    &serde_json::to_value(&l.spec).expect("claims serialize"),
                    &serde_json::to_value(&d.spec).expect("claims serialize"),
                )
        });
    (!same).then(|| "its volume claim templates".into())
}

/// `maxUnavailable` of a StatefulSet's rolling update, if set.
pub fn max_unavailable(
    set: &k8s_openapi::api::apps::v1::StatefulSet,
) -> Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString> {
    set.spec
        .as_ref()?
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()?
        .max_unavailable
        .as_ref()
}

/// The desired StatefulSet as the API server serves it back, for the drift check: without
/// `maxUnavailable` when the live object has none although the operator applies it with force (no
/// other manager can take it away), since then the server drops the field (feature gate
/// MaxUnavailableStatefulSet off). Comparing with the field would re-apply on every reconcile.
pub fn as_served<'a>(
    live: Option<&k8s_openapi::api::apps::v1::StatefulSet>,
    desired: &'a k8s_openapi::api::apps::v1::StatefulSet,
) -> std::borrow::Cow<'a, k8s_openapi::api::apps::v1::StatefulSet> {
    let dropped = live.is_some_and(|l| max_unavailable(l).is_none());
    if !dropped || max_unavailable(desired).is_none() {
        return std::borrow::Cow::Borrowed(desired);
    }
    let mut served = desired.clone();
    if let Some(strategy) = served
        .spec
        .as_mut()
        .and_then(|s| s.update_strategy.as_mut())
    {
        strategy.rolling_update = None;
    }
    std::borrow::Cow::Owned(served)
}

/// What applying one child did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The live object already matched: no request was sent.
    Unchanged,
    /// The object did not exist and was created.
    Created,
    /// The object existed and differed (spec change or drift) and was updated.
    Updated,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn extra_live_fields_do_not_count_as_drift() {
        let live =
            json!({"spec": {"replicas": 3, "revisionHistoryLimit": 10}, "metadata": {"uid": "x"}});
        let desired = json!({"spec": {"replicas": 3}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_value_is_drift() {
        let live = json!({"spec": {"replicas": 5}});
        assert!(!contains(&live, &json!({"spec": {"replicas": 3}})));
    }

    #[test]
    fn a_removed_field_is_drift() {
        let live = json!({"metadata": {"labels": {"a": "1"}}});
        assert!(!contains(
            &live,
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}}})
        ));
    }

    #[test]
    fn lists_owned_whole_must_keep_their_length() {
        let live = json!({"args": ["--listen", ":80", "--debug"]});
        assert!(!contains(&live, &json!({"args": ["--listen", ":80"]})));
        assert!(contains(
            &live,
            &json!({"args": ["--listen", ":80", "--debug"]})
        ));
        let live = json!({"tolerations": [{"key": "a", "effect": "NoSchedule"}, {"key": "b"}]});
        assert!(!contains(&live, &json!({"tolerations": [{"key": "a"}]})));
    }

    #[test]
    fn entries_other_managers_add_to_merged_lists_are_not_drift() {
        // `kubectl set env` adds EXTRA; the API server adds protocol and a nodePort.
        let live = json!({"containers": [
            {"name": "workload", "env": [{"name": "MODE", "value": "strict"}, {"name": "EXTRA", "value": "1"}],
             "ports": [{"containerPort": 9000, "protocol": "TCP"}]},
            {"name": "debugger", "image": "busybox"}
        ]});
        let desired = json!({"containers": [
            {"name": "workload", "env": [{"name": "MODE", "value": "strict"}],
             "ports": [{"containerPort": 9000}]}
        ]});
        assert!(contains(&live, &desired));
        // Our own entries still count: a changed or removed one is drift.
        let changed = json!({"containers": [
            {"name": "workload", "env": [{"name": "MODE", "value": "lax"}, {"name": "EXTRA", "value": "1"}],
             "ports": [{"containerPort": 9000, "protocol": "TCP"}]}
        ]});
        assert!(!contains(&changed, &desired));
        let removed = json!({"containers": [
            {"name": "workload", "env": [{"name": "EXTRA", "value": "1"}],
             "ports": [{"containerPort": 9000, "protocol": "TCP"}]}
        ]});
        assert!(!contains(&removed, &desired));
        // A port of another protocol is another entry.
        let udp = json!({"containers": [
            {"name": "workload", "env": [{"name": "MODE", "value": "strict"}],
             "ports": [{"containerPort": 9000, "protocol": "UDP"}]}
        ]});
        assert!(!contains(&udp, &desired));
    }

    #[test]
    fn quantities_compare_by_value_where_the_server_canonicalises_them() {
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                          "emptyDir": {"sizeLimit": "64Mi"}});
        assert!(contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}},
                    "emptyDir": {"sizeLimit": "65536Ki"}})
        ));
        assert!(!contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.6"}}})
        ));
        // Elsewhere a string is a string.
        assert!(!contains(&json!({"value": "1"}), &json!({"value": "1.0"})));
    }

    #[test]
    fn the_digest_names_what_was_applied_and_ignores_itself() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let object = |data: &str| -> ConfigMap {
            serde_json::from_value(json!({"metadata": {"name": "c", "annotations": {"a": "1"}},
                                          "data": {"k": data}}))
            .unwrap()
        };
        let mut stamped = object("v");
        let digest = stamp(&mut stamped);
        assert_eq!(digest.len(), 32);
        assert!(applied_from(&stamped, &digest));
        // Stamping is idempotent: the annotation is not part of what it digests.
        assert_eq!(super::digest(&stamped), digest);
        assert_eq!(stamp(&mut stamped.clone()), digest);
        assert!(!applied_from(&stamped, &super::digest(&object("w"))));
        assert!(!applied_from(&object("v"), &digest));
    }

    #[test]
    fn omitted_zero_values_match() {
        let live = json!({"spec": {"clusterIP": "None"}});
        assert!(contains(
            &live,
            &json!({"spec": {"clusterIP": "None", "publishNotReadyAddresses": false}})
        ));
        assert!(!contains(
            &live,
            &json!({"spec": {"publishNotReadyAddresses": true}})
        ));
    }

    #[test]
    fn a_max_unavailable_the_server_dropped_is_left_out_of_the_drift_check() {
        use k8s_openapi::api::apps::v1::StatefulSet;
        let set = |strategy: serde_json::Value| -> StatefulSet {
            serde_json::from_value(json!({
                "metadata": {"name": "kv"},
                "spec": {"selector": {}, "template": {}, "serviceName": "kv-peers",
                         "updateStrategy": strategy}
            }))
            .unwrap()
        };
        let desired = set(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}));
        let dropped = set(json!({"type": "RollingUpdate"}));
        assert!(!up_to_date(Some(&dropped), &desired));
        assert!(up_to_date(
            Some(&dropped),
            &as_served(Some(&dropped), &desired)
        ));
        // Where the server keeps the field, it is compared (and a changed value is drift).
        let kept = set(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3}}));
        assert!(!up_to_date(Some(&kept), &as_served(Some(&kept), &desired)));
        // Before the first apply there is nothing to learn from.
        assert!(matches!(
            as_served(None, &desired),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn resource_quantities_compare_by_value() {
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}});
        assert!(contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.6"}}})
        ));
        // Outside resource maps, strings are text: an image tag "1.0" is not "1".
        assert!(!contains(&json!({"tag": "1"}), &json!({"tag": "1.0"})));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(contains(&json!({"k": 1.0}), &json!({"k": 1})));
    }
}
