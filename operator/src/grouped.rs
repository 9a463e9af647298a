//! Caches of objects a reconcile reads by group: the EndpointSlices of one Service, the pods of
//! one stream.
//!
//! kube's reflector [`Store`](kube::runtime::reflector::Store) answers by name only, so reading a
//! stream's slices or pods from it means copying and filtering the whole store: at 10,000 streams
//! that is 20,000 slices walked by every reconcile, quadratic work in all. These caches keep each
//! object under the value of one of its labels (its group) and answer a group in one lookup.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Resource;
use kube::runtime::watcher;
use parking_lot::RwLock;

/// `namespace/name`, or `namespace/group`.
fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

/// One group's objects, by name. Groups are small (a Service's slices, a stream's replicas), so
/// a vector beats a map.
type Members<K> = Vec<(Box<str>, Arc<K>)>;

/// The objects, by group and by name.
struct Groups<K> {
    /// Group key → the group's objects.
    members: HashMap<Box<str>, Members<K>>,
    /// Object key → its group key: an object whose label changed leaves its old group.
    group_of: HashMap<Box<str>, Box<str>>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Self {
            members: HashMap::new(),
            group_of: HashMap::new(),
        }
    }
}

impl<K> Groups<K> {
    fn remove(&mut self, object_key: &str) {
        let Some(group) = self.group_of.remove(object_key) else {
            return;
        };
        let name = &object_key[object_key.find('/').map_or(0, |i| i + 1)..];
        if let Some(members) = self.members.get_mut(&group) {
            members.retain(|(member, _)| &**member != name);
            if members.is_empty() {
                self.members.remove(&group);
            }
        }
    }

    fn insert(&mut self, namespace: &str, name: &str, group: &str, object: K) {
        let object_key = key(namespace, name);
        self.remove(&object_key);
        let group_key = key(namespace, group);
        self.members
            .entry(group_key.clone())
            .or_default()
            .push((name.into(), Arc::new(object)));
        self.group_of.insert(object_key, group_key);
    }
}

/// A cache of objects of kind `K` grouped by the value of one label; objects without that label
/// are not kept. Clones share the same cache.
pub struct GroupedCache<K> {
    groups: Arc<RwLock<Groups<K>>>,
    label: &'static str,
}

impl<K> Clone for GroupedCache<K> {
    fn clone(&self) -> Self {
        Self {
            groups: self.groups.clone(),
            label: self.label,
        }
    }
}

impl<K> std::fmt::Debug for GroupedCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedCache")
            .field("label", &self.label)
            .field("objects", &self.len())
            .finish()
    }
}

impl<K> GroupedCache<K> {
    /// The objects of `namespace` whose label has the value `group`, in no particular order.
    pub fn group(&self, namespace: &str, group: &str) -> Vec<Arc<K>> {
        self.groups
            .read()
            .members
            .get(&*key(namespace, group))
            .map(|members| members.iter().map(|(_, object)| object.clone()).collect())
            .unwrap_or_default()
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.groups.read().group_of.len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fills a [`GroupedCache`] from watch events.
pub struct GroupedCacheWriter<K> {
    cache: GroupedCache<K>,
    /// A relist in progress: it replaces the cache at `InitDone`, so that objects deleted while
    /// the watch was down do not linger.
    relisting: Option<Groups<K>>,
}

/// A cache of kind `K` grouped by the value of `label`, and its writer.
pub fn grouped_cache<K>(label: &'static str) -> (GroupedCache<K>, GroupedCacheWriter<K>) {
    let cache = GroupedCache {
        groups: Default::default(),
        label,
    };
    let writer = GroupedCacheWriter {
        cache: cache.clone(),
        relisting: None,
    };
    (cache, writer)
}

impl<K: Resource + Clone> GroupedCacheWriter<K> {
    /// Applies one watch event to the cache.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        let label = self.cache.label;
        let place = |object: &K| {
            let meta = object.meta();
            let group = meta.labels.as_ref()?.get(label)?.clone();
            Some((meta.namespace.clone()?, meta.name.clone()?, group))
        };
        match event {
            watcher::Event::Init => self.relisting = Some(Groups::default()),
            watcher::Event::InitApply(object) => {
                if let Some((namespace, name, group)) = place(object) {
                    self.relisting.get_or_insert_with(Default::default).insert(
                        &namespace,
                        &name,
                        &group,
                        object.clone(),
                    );
                }
            }
            watcher::Event::InitDone => {
                if let Some(groups) = self.relisting.take() {
                    *self.cache.groups.write() = groups;
                }
            }
            watcher::Event::Apply(object) => {
                let mut groups = self.cache.groups.write();
                match place(object) {
                    Some((namespace, name, group)) => {
                        groups.insert(&namespace, &name, &group, object.clone());
                    }
                    // It lost its label: it is no longer anyone's.
                    None => {
                        let meta = object.meta();
                        if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) {
                            groups.remove(&key(namespace, name));
                        }
                    }
                }
            }
            watcher::Event::Delete(object) => {
                let meta = object.meta();
                if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) {
                    self.cache.groups.write().remove(&key(namespace, name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn object(namespace: &str, name: &str, group: Option<&str>, data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: group.map(|g| [("group".to_owned(), g.to_owned())].into()),
                ..Default::default()
            },
            data: Some([("v".to_owned(), data.to_owned())].into()),
            ..Default::default()
        }
    }

    fn names(cache: &GroupedCache<ConfigMap>, namespace: &str, group: &str) -> Vec<String> {
        let mut names: Vec<String> = cache
            .group(namespace, group)
            .iter()
            .map(|o| {
                format!(
                    "{}={}",
                    o.metadata.name.as_deref().unwrap(),
                    o.data.as_ref().unwrap()["v"]
                )
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn objects_are_found_by_group_and_namespace() {
        let (cache, mut writer) = grouped_cache::<ConfigMap>("group");
        for o in [
            object("a", "x1", Some("x"), "1"),
            object("a", "x2", Some("x"), "1"),
            object("a", "y1", Some("y"), "1"),
            object("b", "x1", Some("x"), "1"),
            object("a", "none", None, "1"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        assert_eq!(names(&cache, "a", "x"), ["x1=1", "x2=1"]);
        assert_eq!(names(&cache, "a", "y"), ["y1=1"]);
        assert_eq!(names(&cache, "b", "x"), ["x1=1"]);
        assert!(cache.group("b", "y").is_empty());
        assert_eq!(cache.len(), 4, "an object without the label is not kept");
    }

    #[test]
    fn an_update_replaces_and_a_changed_label_moves_the_object() {
        let (cache, mut writer) = grouped_cache::<ConfigMap>("group");
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o", Some("x"), "1")));
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o", Some("x"), "2")));
        assert_eq!(names(&cache, "a", "x"), ["o=2"]);
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o", Some("y"), "3")));
        assert!(cache.group("a", "x").is_empty());
        assert_eq!(names(&cache, "a", "y"), ["o=3"]);
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o", None, "4")));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_delete_removes_only_that_object() {
        let (cache, mut writer) = grouped_cache::<ConfigMap>("group");
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o1", Some("x"), "1")));
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "o2", Some("x"), "1")));
        writer.apply_watcher_event(&watcher::Event::Delete(object("a", "o1", Some("x"), "1")));
        assert_eq!(names(&cache, "a", "x"), ["o2=1"]);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_relist_replaces_the_cache_only_when_done() {
        let (cache, mut writer) = grouped_cache::<ConfigMap>("group");
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "gone", Some("x"), "1")));
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(object(
            "a",
            "kept",
            Some("x"),
            "1",
        )));
        assert_eq!(
            names(&cache, "a", "x"),
            ["gone=1"],
            "the old state until the list ends"
        );
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(names(&cache, "a", "x"), ["kept=1"]);
    }
}
