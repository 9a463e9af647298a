//! Expectations: remembering our own writes until the caches have seen them.
//!
//! Watch caches lag behind the API server. A reconcile that runs between an apply and the watch
//! event carrying its result would see the old object, conclude it differs, and apply again: with
//! a thousand streams that turns into thousands of useless requests. Kubernetes' own controllers
//! solve this with "expectations" (the ReplicaSet controller's `ControllerExpectations`); this is
//! the same idea for server-side apply: after applying a desired object we record the
//! resourceVersion the server answered with, and while the cache shows an older version of the
//! object we trust our write instead of the cache. Expectations expire, so a lost watch event can
//! delay a correction by at most [`EXPIRY`], never prevent it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long an expectation is trusted without the cache confirming it.
pub const EXPIRY: Duration = Duration::from_secs(30);
/// How long a child we created may be missing from the cache before it counts as deleted.
pub const CREATE_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: &'static str,
    namespace: String,
    name: String,
}

#[derive(Debug)]
struct Expected {
    desired: [u8; 32],
    resource_version: u64,
    applied: Option<Value>,
    at: Instant,
    /// The write created the object: a cache without it is still catching up (for
    /// [`CREATE_GRACE`]). After an update, a cache without it means someone deleted it.
    created: bool,
}

/// Our recent writes, by child.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<Key, Expected>>,
    /// When expired entries were last dropped: an entry is otherwise removed only when its
    /// child is looked at again, which never happens once its stream is deleted.
    last_prune: Mutex<Option<Instant>>,
}

fn digest(value: &Value) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(value).expect("JSON serializes")).into()
}

impl Expectations {
    /// Records that `desired` was applied and the server answered with `resource_version`;
    /// `applied` is what of the answer stands in for the stale cached copy meanwhile, if
    /// anything. `created`: the object did not exist before this write.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        desired: &Value,
        resource_version: Option<u64>,
        applied: Option<Value>,
        created: bool,
    ) {
        let Some(resource_version) = resource_version else {
            return;
        };
        let key = Key {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let expected = Expected {
            desired: digest(desired),
            resource_version,
            applied,
            at: Instant::now(),
            created,
        };
        let mut inner = self.inner.lock();
        inner.insert(key, expected);
        let mut last_prune = self.last_prune.lock();
        if last_prune.is_none_or(|t| t.elapsed() >= EXPIRY) {
            inner.retain(|_, e| e.at.elapsed() < EXPIRY);
            *last_prune = Some(Instant::now());
        }
    }

    /// How many writes are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no write is remembered.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().is_empty()
    }

    /// When the cached object (`live`: `None` if not cached, else its resourceVersion if it has
    /// one) is older than our own last write of exactly this
    /// desired object, returns `Some` with what that write produced (if it was kept); otherwise
    /// `None`, and the cache is the truth (a newer version that differs is drift to correct).
    pub fn pending(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        desired: &Value,
        live: Option<Option<u64>>,
    ) -> Option<Option<Value>> {
        let key = Key {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let mut inner = self.inner.lock();
        let expected = inner.get(&key)?;
        let lagging = expected.desired == digest(desired)
            && expected.at.elapsed() < EXPIRY
            && match live.flatten() {
                Some(seen) => seen < expected.resource_version,
                None => live.is_none() && expected.created && expected.at.elapsed() < CREATE_GRACE,
            };
        if lagging {
            Some(expected.applied.clone())
        } else {
            inner.remove(&key);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn expired_writes_of_children_never_looked_at_again_are_forgotten() {
        let expectations = Expectations::default();
        let desired = json!({"spec": {"replicas": 1}});
        expectations.record(
            "Service",
            "a",
            "gone",
            &desired,
            Some(5),
            Some(object("5", 1)),
            false,
        );
        assert_eq!(expectations.len(), 1);
        // Pretend the entry and the last prune are older than the expiry.
        for entry in expectations.inner.lock().values_mut() {
            entry.at -= EXPIRY;
        }
        *expectations.last_prune.lock() = Some(Instant::now() - EXPIRY);
        expectations.record("Service", "b", "new", &desired, Some(6), None, true);
        assert_eq!(expectations.len(), 1, "only the fresh write remains");
    }

    fn version(object: &Value) -> Option<u64> {
        object
            .pointer("/metadata/resourceVersion")?
            .as_str()?
            .parse()
            .ok()
    }

    fn object(rv: &str, replicas: i64) -> Value {
        json!({"metadata": {"resourceVersion": rv}, "spec": {"replicas": replicas}})
    }

    #[test]
    fn a_stale_cache_is_overruled_by_our_write() {
        let e = Expectations::default();
        let desired = json!({"spec": {"replicas": 3}});
        e.record(
            "Deployment",
            "ns",
            "a",
            &desired,
            Some(20),
            Some(object("20", 3)),
            true,
        );
        let stale = object("10", 1);
        assert_eq!(
            e.pending("Deployment", "ns", "a", &desired, Some(version(&stale))),
            Some(Some(object("20", 3)))
        );
        // Not yet listed at all, just after creation: also a lagging cache.
        assert!(e.pending("Deployment", "ns", "a", &desired, None).is_some());
    }

    #[test]
    fn an_object_deleted_just_after_our_update_is_not_mistaken_for_cache_lag() {
        let e = Expectations::default();
        let desired = json!({"spec": {"replicas": 3}});
        // Updated (not created) a moment ago; now the cache has no such object: it was deleted,
        // and must be applied again at once, not after the create grace.
        e.record("Role", "ns", "a", &desired, Some(20), None, false);
        assert_eq!(e.pending("Role", "ns", "a", &desired, None), None);
    }

    #[test]
    fn a_newer_version_is_the_truth() {
        let e = Expectations::default();
        let desired = json!({"spec": {"replicas": 3}});
        e.record(
            "Deployment",
            "ns",
            "a",
            &desired,
            Some(20),
            Some(object("20", 3)),
            false,
        );
        let edited = object("25", 1);
        assert_eq!(
            e.pending("Deployment", "ns", "a", &desired, Some(version(&edited))),
            None
        );
        // ... and the expectation is gone for good.
        assert_eq!(
            e.pending(
                "Deployment",
                "ns",
                "a",
                &desired,
                Some(version(&object("10", 1)))
            ),
            None
        );
    }

    #[test]
    fn a_different_desired_object_is_not_covered() {
        let e = Expectations::default();
        e.record(
            "Deployment",
            "ns",
            "a",
            &json!({"spec": {"replicas": 3}}),
            Some(20),
            None,
            false,
        );
        let desired = json!({"spec": {"replicas": 4}});
        assert_eq!(
            e.pending(
                "Deployment",
                "ns",
                "a",
                &desired,
                Some(version(&object("10", 3)))
            ),
            None
        );
    }
}
