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
/// whole lists such as containers and ports); scalars compare by value.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match live.get(key) {
                Some(have) => contains(have, want),
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
                    .all(|(have, want)| contains(have, want))
        }
        (Value::Number(live), Value::Number(desired)) => live.as_f64() == desired.as_f64(),
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
    fn numbers_compare_by_value() {
        assert!(contains(&json!({"k": 1.0}), &json!({"k": 1})));
    }
}
