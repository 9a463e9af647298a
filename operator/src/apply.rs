//! Applying children with server-side apply, but only when the live object differs.
//!
//! A server-side apply of an unchanged object is still an API request. To make a steady DataStream
//! cost zero requests, each desired object is compared with the cached live object first: when
//! every field the operator sets already has the desired value, nothing is sent. A field edited or
//! removed by hand makes the comparison fail, so drift is still corrected.

use serde::Serialize;
use serde_json::Value;

/// Whether `live` already holds every field and value of `desired`.
///
/// Objects compare key by key (extra live keys are defaults or other managers' fields and are
/// ignored); lists compare element by element and must have the same length (the operator owns
/// whole lists such as containers and ports); scalars compare by value, and the values of
/// resource maps (`requests`, `limits`) as quantities, since the API server stores those in
/// canonical form (`cpu: 0.5` comes back as `500m`).
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, false)
}

fn contains_at(live: &Value, desired: &Value, quantities: bool) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match live.get(key) {
                Some(have) => contains_at(
                    have,
                    want,
                    quantities || matches!(key.as_str(), "requests" | "limits"),
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
    fn lists_must_keep_their_length() {
        let live = json!({"ports": [{"port": 80, "nodePort": 3}, {"port": 81}]});
        assert!(!contains(&live, &json!({"ports": [{"port": 80}]})));
        assert!(contains(
            &live,
            &json!({"ports": [{"port": 80}, {"port": 81}]})
        ));
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
