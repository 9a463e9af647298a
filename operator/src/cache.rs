//! Caches of the children the operator applies, each child reduced to its drift verdict.
//!
//! A reconcile must know, for each child, whether the live object still holds what the operator
//! would apply now ([`crate::apply`]). The obvious cache, kube's reflector store of the typed
//! objects, keeps every child whole: about 10 KiB per stream in typed k8s-openapi structs, a
//! gigabyte at 10,000 streams. This cache takes the verdict when the object arrives instead,
//! while the whole object is in hand, and keeps only that:
//!
//! - the digest of the desired object the live one was found to contain ([`Seen::holds`]):
//!   the owning DataStream is looked up in the streams' cache and its children computed
//!   ([`crate::desired::children`]), exactly as a reconcile would;
//! - the resourceVersion (for [`crate::expectations`]) and a hash of the controller's uid (to see
//!   an object of another owner in the way);
//! - for kinds whose status is read (the StatefulSet), a stripped copy ([`Child::keep`]).
//!
//! A reconcile then applies a child when its verdict is not the digest of what it would apply:
//! a changed spec (another digest) or drift (no verdict). A verdict stays right while the stream
//! changes in ways that leave the child's desired object alone, since the digest names exactly
//! that object. A child that arrives before its stream is in the streams' cache gets no verdict,
//! and is applied once (server-side apply of an unchanged object writes nothing to etcd); the
//! controller starts the child watches only once the streams' cache is filled, so that this does
//! not happen for every child at start.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::num::NonZeroU64;
use std::sync::Arc;

use datastream_api::v1alpha1::DataStream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{applied_from, stamp, up_to_date};
use crate::desired::{self, Children, Settings};

/// A kind of child the operator applies.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The desired object of this kind named `name` among a stream's children, if any.
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self>;

    /// What of `desired` the API server keeps, given the live object: the drift check compares
    /// the live object with this. All of it, for most kinds.
    fn as_served<'a>(_live: &Self, desired: &'a Self) -> Cow<'a, Self> {
        Cow::Borrowed(desired)
    }

    /// What of a live object the cache keeps beside its verdict, for kinds a reconcile reads
    /// more of than the verdict (none by default).
    fn keep(_live: &Self) -> Option<Self> {
        None
    }
}

/// What the cache holds of one live child.
#[derive(Clone, Debug)]
pub struct Seen<K> {
    /// `metadata.resourceVersion`, as a number (see [`crate::expectations`]).
    pub resource_version: Option<u64>,
    /// The digest (see [`crate::apply::digest`]) of the desired object the live one was found to
    /// hold, when it held the stream's current one as it arrived. Two halves rather than a
    /// `u128`, whose 16-byte alignment would pad every entry of the cache to 80 bytes.
    in_sync_with: Option<[u64; 2]>,
    /// Hash of the uid of the object's controller (its owner reference with `controller: true`).
    controller: Option<NonZeroU64>,
    /// What [`Child::keep`] kept, as JSON: a typed StatefulSet is 2.5 KiB before any of its
    /// fields is set (the pod template's structs are inline), its stripped JSON a fifth of that.
    kept: Option<Arc<[u8]>>,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: Child> Seen<K> {
    /// What [`Child::keep`] kept of the live object, if anything.
    pub fn kept(&self) -> Option<K> {
        serde_json::from_slice(self.kept.as_deref()?).ok()
    }

    /// Whether the live object holds the desired object with this digest (hex, as
    /// [`crate::apply::digest`] gives it).
    pub fn holds(&self, digest: &str) -> bool {
        self.in_sync_with.is_some() && self.in_sync_with == parse_digest(digest)
    }

    /// Whether the object's controller is the object with this uid (`None`: no controller).
    pub fn controlled_by(&self, uid: Option<&str>) -> bool {
        self.controller == uid.map(hash_uid)
    }
}

/// A digest as [`crate::apply::digest`] gives it (32 hex digits), as the two halves entries keep.
fn parse_digest(hex: &str) -> Option<[u64; 2]> {
    let digest = u128::from_str_radix(hex, 16).ok()?;
    Some([(digest >> 64) as u64, digest as u64])
}

fn hash_uid(uid: &str) -> NonZeroU64 {
    let mut hasher = std::hash::DefaultHasher::new();
    uid.hash(&mut hasher);
    NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN)
}

fn controller_of(
    meta: &ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

type Entries<K> = HashMap<Box<str>, Seen<K>>;

fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

/// The cache of one child kind, read by reconciles. Cheap to clone (shared).
#[derive(Clone)]
pub struct ChildCache<K> {
    entries: Arc<RwLock<Entries<K>>>,
    streams: Store<DataStream>,
    settings: Arc<Settings>,
}

impl<K> std::fmt::Debug for ChildCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCache")
            .field("len", &self.entries.read().len())
            .finish()
    }
}

impl<K: Child> ChildCache<K> {
    /// What the cache holds of the child `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Seen<K>> {
        self.entries.read().get(&*key(namespace, name)).cloned()
    }

    /// Number of children cached.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether no child is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }

    /// Takes in a live object the operator got other than from the watch (the answer to an
    /// apply), unless the cache already holds a newer version. Without this, an apply that
    /// changed nothing (no new resourceVersion, so no watch event) would leave a child without a
    /// verdict, and every later reconcile would apply it again.
    pub fn observe(&self, live: &K) {
        let Some((key, seen)) = self.see(live) else {
            return;
        };
        insert_unless_older(&mut self.entries.write(), key, seen);
    }

    fn see(&self, live: &K) -> Option<(Box<str>, Seen<K>)> {
        let meta = live.meta();
        let key = key(meta.namespace.as_deref()?, meta.name.as_deref()?);
        let seen = Seen {
            resource_version: meta
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok()),
            in_sync_with: verdict(live, &self.streams, &self.settings),
            controller: controller_of(meta).map(|o| hash_uid(&o.uid)),
            kept: K::keep(live).map(|k| {
                serde_json::to_vec(&k)
                    .expect("Kubernetes objects serialize")
                    .into()
            }),
            kind: std::marker::PhantomData,
        };
        Some((key, seen))
    }
}

/// Watch events arrive in resourceVersion order, but an apply's answer can overtake the event of
/// an earlier write: an entry never goes back to an older version.
fn insert_unless_older<K>(entries: &mut Entries<K>, key: Box<str>, seen: Seen<K>) {
    let older = entries.get(&key).is_some_and(|held| {
        matches!((held.resource_version, seen.resource_version), (Some(held), Some(new)) if new < held)
    });
    if !older {
        entries.insert(key, seen);
    }
}

/// Fills a [`ChildCache`] from watch events, taking each child's verdict.
pub struct ChildCacheWriter<K> {
    cache: ChildCache<K>,
    /// Entries of a relist in progress: they replace the cache's at `InitDone`, so that children
    /// deleted while the watch was down do not linger.
    relisting: Option<Entries<K>>,
}

/// A cache of child kind `K` and its writer. Verdicts are taken against the streams in
/// `streams`, with the installation's `settings`.
pub fn child_cache<K: Child>(
    streams: Store<DataStream>,
    settings: Arc<Settings>,
) -> (ChildCache<K>, ChildCacheWriter<K>) {
    let cache = ChildCache {
        entries: Default::default(),
        streams,
        settings,
    };
    let writer = ChildCacheWriter {
        cache: cache.clone(),
        relisting: None,
    };
    (cache, writer)
}

impl<K: Child> ChildCacheWriter<K> {
    /// Applies one watch event to the cache.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(Entries::default()),
            watcher::Event::InitApply(object) => {
                let Some((key, seen)) = self.cache.see(object) else {
                    return;
                };
                self.relisting
                    .get_or_insert_with(Default::default)
                    .insert(key, seen);
            }
            watcher::Event::InitDone => {
                if let Some(entries) = self.relisting.take() {
                    *self.cache.entries.write() = entries;
                }
            }
            watcher::Event::Apply(object) => {
                if let Some((key, seen)) = self.cache.see(object) {
                    insert_unless_older(&mut self.cache.entries.write(), key, seen);
                }
            }
            watcher::Event::Delete(object) => {
                let meta = object.meta();
                if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) {
                    self.cache.entries.write().remove(&*key(namespace, name));
                }
            }
        }
    }
}

/// The digest of the desired object `live` holds, if it holds its stream's current one.
pub fn verdict<K: Child>(
    live: &K,
    streams: &Store<DataStream>,
    settings: &Settings,
) -> Option<[u64; 2]> {
    let meta = live.meta();
    let owner = controller_of(meta).filter(|o| o.kind == "DataStream")?;
    let stream = streams.get(&ObjectRef::new(&owner.name).within(meta.namespace.as_deref()?))?;
    if stream.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return None;
    }
    let children = desired::children(&stream, settings);
    let mut desired = K::desired(&children, meta.name.as_deref()?)?.clone();
    let digest = stamp(&mut desired);
    let served = K::as_served(live, &desired);
    (applied_from(live, &digest) && up_to_date(Some(live), served.as_ref()))
        .then(|| parse_digest(&digest))
        .flatten()
}

impl Child for StatefulSet {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        Some(&children.stateful_set).filter(|s| s.metadata.name.as_deref() == Some(name))
    }

    fn as_served<'a>(live: &Self, desired: &'a Self) -> Cow<'a, Self> {
        crate::apply::as_served(Some(live), desired)
    }

    /// What reconcile and status read: identity and generation, deletion, status, the replica
    /// count, the fields Kubernetes never lets change ([`crate::apply::immutable_change`]), the
    /// rollout strategy, and of the pod template only the sidecar's environment variable names
    /// (whether it runs with a workload identity). The pod template is most of the object.
    fn keep(live: &Self) -> Option<Self> {
        let meta = &live.metadata;
        let spec = live.spec.as_ref().map(|spec| {
            let sidecar = spec
                .template
                .spec
                .as_ref()
                .and_then(|p| {
                    p.containers
                        .iter()
                        .find(|c| c.name == desired::SIDECAR_CONTAINER)
                })
                .map(|c| Container {
                    name: c.name.clone(),
                    env: c.env.as_ref().map(|env| {
                        env.iter()
                            .map(|e| EnvVar {
                                name: e.name.clone(),
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                });
            StatefulSetSpec {
                replicas: spec.replicas,
                selector: spec.selector.clone(),
                service_name: spec.service_name.clone(),
                pod_management_policy: spec.pod_management_policy.clone(),
                update_strategy: spec.update_strategy.clone(),
                volume_claim_templates: spec.volume_claim_templates.clone(),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: sidecar.map(|sidecar| PodSpec {
                        containers: vec![sidecar],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }
        });
        Some(StatefulSet {
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                generation: meta.generation,
                deletion_timestamp: meta.deletion_timestamp.clone(),
                ..Default::default()
            },
            spec,
            status: live.status.clone(),
        })
    }
}

impl Child for Service {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        [&children.client_service, &children.peer_service]
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }
}

impl Child for ServiceAccount {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        Some(&children.service_account).filter(|s| s.metadata.name.as_deref() == Some(name))
    }
}

impl Child for Role {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        Some(&children.role).filter(|s| s.metadata.name.as_deref() == Some(name))
    }
}

impl Child for RoleBinding {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        Some(&children.role_binding).filter(|s| s.metadata.name.as_deref() == Some(name))
    }
}

impl Child for PodDisruptionBudget {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        children
            .pdb
            .as_ref()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
    }
}

impl Child for NetworkPolicy {
    fn desired<'a>(children: &'a Children, name: &str) -> Option<&'a Self> {
        Some(&children.network_policy).filter(|s| s.metadata.name.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::{self, store::Writer};

    use super::*;

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            sidecar_image: "example.com/datastream-sidecar:0.1.0".into(),
            identity: None,
        })
    }

    fn stream(replicas: i32) -> DataStream {
        let mut ds: DataStream = serde_saphyr::from_str(
            "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata: {name: catalog, namespace: shop, uid: 5b3e1f6c-0000-4000-8000-000000000001}\nspec:\n  workload: {image: demo}\n",
        )
        .expect("fixture parses");
        ds.spec.replicas = replicas;
        ds
    }

    /// The children as applied for `ds`, each with `resourceVersion` `rv` and its digest.
    fn applied(ds: &DataStream, rv: &str) -> Children {
        let mut c = desired::children(ds, &settings());
        stamp(&mut c.stateful_set);
        stamp(&mut c.client_service);
        c.stateful_set.metadata.resource_version = Some(rv.into());
        c.client_service.metadata.resource_version = Some(rv.into());
        c
    }

    fn streams_with(ds: Option<&DataStream>) -> (Store<DataStream>, Writer<DataStream>) {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        if let Some(ds) = ds {
            writer.apply_watcher_event(&watcher::Event::InitApply(ds.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (reader, writer)
    }

    fn digest_of<K: Child>(object: &K) -> String {
        let mut object = object.clone();
        stamp(&mut object)
    }

    /// About 90,000 entries at 10,000 streams: each byte of an entry is most of a MiB.
    #[test]
    fn an_entry_stays_small() {
        let size = std::mem::size_of::<Seen<Service>>();
        assert!(size <= 64, "a verdict cache entry is {size} bytes");
    }

    #[test]
    fn a_child_holding_its_desired_object_gets_that_digest_as_verdict() {
        let ds = stream(3);
        let (streams, _w) = streams_with(Some(&ds));
        let (cache, mut writer) = child_cache::<Service>(streams, settings());
        let live = applied(&ds, "7").client_service;
        writer.apply_watcher_event(&watcher::Event::Apply(live.clone()));
        let seen = cache.get("shop", "catalog").expect("cached");
        assert!(seen.holds(&digest_of(
            &desired::children(&ds, &settings()).client_service
        )));
        assert_eq!(seen.resource_version, Some(7));
        assert!(seen.controlled_by(ds.metadata.uid.as_deref()));
        assert!(!seen.controlled_by(Some("another-uid")));
        assert!(
            seen.kept().is_none(),
            "nothing but the verdict is kept of a Service"
        );
    }

    #[test]
    fn drift_or_a_missing_stream_leaves_no_verdict() {
        let ds = stream(3);
        let (streams, _w) = streams_with(Some(&ds));
        let (cache, mut writer) = child_cache::<Service>(streams, settings());
        let mut edited = applied(&ds, "8").client_service;
        edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 9999;
        writer.apply_watcher_event(&watcher::Event::Apply(edited));
        assert_eq!(cache.get("shop", "catalog").unwrap().in_sync_with, None);

        let (no_streams, _w) = streams_with(None);
        let (cache, mut writer) = child_cache::<Service>(no_streams, settings());
        writer.apply_watcher_event(&watcher::Event::Apply(applied(&ds, "8").client_service));
        assert_eq!(cache.get("shop", "catalog").unwrap().in_sync_with, None);
    }

    #[test]
    fn a_verdict_names_the_desired_object_so_another_spec_needs_an_apply() {
        let ds = stream(3);
        let (streams, _w) = streams_with(Some(&ds));
        let (cache, mut writer) = child_cache::<StatefulSet>(streams, settings());
        writer.apply_watcher_event(&watcher::Event::Apply(applied(&ds, "9").stateful_set));
        let seen = cache.get("shop", "catalog").unwrap();
        let scaled = desired::children(&stream(5), &settings()).stateful_set;
        assert!(!seen.holds(&digest_of(&scaled)));
        assert!(seen.holds(&digest_of(
            &desired::children(&ds, &settings()).stateful_set
        )));
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let ds = stream(3);
        let (streams, _w) = streams_with(Some(&ds));
        let (cache, mut writer) = child_cache::<Service>(streams, settings());
        cache.observe(&applied(&ds, "20").client_service);
        let mut stale = applied(&ds, "15").client_service;
        stale.spec.as_mut().unwrap().ports = None;
        writer.apply_watcher_event(&watcher::Event::Apply(stale));
        let seen = cache.get("shop", "catalog").unwrap();
        assert_eq!(seen.resource_version, Some(20));
        assert!(seen.in_sync_with.is_some());
    }

    #[test]
    fn a_relist_forgets_children_deleted_while_the_watch_was_down() {
        let ds = stream(3);
        let (streams, _w) = streams_with(Some(&ds));
        let (cache, mut writer) = child_cache::<Service>(streams, settings());
        let children = applied(&ds, "3");
        writer.apply_watcher_event(&watcher::Event::Apply(children.client_service.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(children.peer_service.clone()));
        assert_eq!(cache.len(), 2);
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(children.peer_service.clone()));
        assert_eq!(
            cache.len(),
            2,
            "the old entries serve until the relist is complete"
        );
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("shop", "catalog").is_none());
        writer.apply_watcher_event(&watcher::Event::Delete(children.peer_service));
        assert!(cache.is_empty());
    }

    #[test]
    fn the_stateful_set_keeps_what_status_reads_and_not_its_pod_template() {
        let ds = stream(3);
        let mut live = applied(&ds, "4").stateful_set;
        live.metadata.generation = Some(2);
        live.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
            replicas: 3,
            ready_replicas: Some(2),
            ..Default::default()
        });
        let kept = StatefulSet::keep(&live).unwrap();
        assert_eq!(kept.status, live.status);
        assert_eq!(kept.metadata.generation, Some(2));
        let spec = kept.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.volume_claim_templates,
            live.spec.as_ref().unwrap().volume_claim_templates
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 1, "only the sidecar");
        assert_eq!(pod.containers[0].name, desired::SIDECAR_CONTAINER);
        assert!(pod.containers[0].image.is_none());
        assert!(kept.metadata.annotations.is_none() && kept.metadata.labels.is_none());
        let whole = serde_json::to_vec(&live).unwrap().len();
        let small = serde_json::to_vec(&kept).unwrap().len();
        assert!(small * 3 < whole, "kept {small} of {whole} bytes");
    }
}
