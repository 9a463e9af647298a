//! The DataStream controller: watches, reconcile and error policy.
//!
//! `reconcile` turns one DataStream into its children (see [`crate::desired`]), applies only the
//! children whose live copy differs, deletes children no longer wanted, and writes status only
//! when it changed. Child objects are read from reflector caches, never fetched, so a steady
//! DataStream costs no API request at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datastream_api::v1alpha1::DataStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::apply::{Outcome, immutable_change, max_unavailable, stamp};
use crate::cache::{Child, ChildCache, child_cache};
use crate::desired::{self, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, Names, Settings};
use crate::error::{Error, Result};
use crate::grouped::{GroupedCache, grouped_cache};
use crate::metrics::{ErrorLabels, Metrics, ResultLabels, WatchLabels};
use crate::status::{self, Observed, REVISION_LABEL};

/// Field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "datastream-operator";

/// Streams reconciled at the same time.
const RECONCILE_CONCURRENCY: u16 = 16;

/// How often a DataStream is reconciled with no event at all (the default of
/// `--resync-period`): watches can miss events, and a reconcile of an unchanged stream costs no
/// request.
pub const RESYNC: Duration = Duration::from_secs(300);

/// `delay` spread by up to ±10 %, the same for the same stream and attempt: streams that failed
/// or were created together do not come back in lockstep, and tests can predict the delay.
pub fn jittered(stream: &ObjectRef<DataStream>, attempt: u32, delay: Duration) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stream.hash(&mut hasher);
    attempt.hash(&mut hasher);
    // A fraction in [0.9, 1.1) from the hash's top 16 bits.
    let unit = (hasher.finish() >> 48) as f64 / 65_536.0;
    delay.mul_f64(0.9 + 0.2 * unit)
}

/// Where a controller watches: the whole cluster, or one namespace (a namespace-scoped install
/// runs one controller per namespace, each with namespaced watches, so that Roles suffice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (needs the ClusterRole).
    Cluster,
    /// One namespace (needs the Role in it).
    Namespace(String),
}

impl Scope {
    /// An API of `K` in this scope.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("cluster"),
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// Cached children, by kind. Filled by watches restricted to objects this operator manages. The
/// kinds the operator applies are held as drift verdicts ([`crate::cache`]), the others whole or
/// stripped to what status reads.
#[derive(Clone)]
pub struct Stores {
    /// StatefulSets: the replicas.
    pub stateful_sets: ChildCache<StatefulSet>,
    /// The replicas' PersistentVolumeClaims (they carry the claim templates' labels).
    pub claims: Store<PersistentVolumeClaim>,
    /// Deployments, which ran the replicas before StatefulSets did: a stream that still has one is
    /// migrated (the Deployment is deleted once the StatefulSet's replicas are all ready).
    pub deployments: Store<Deployment>,
    /// Client and peer Services.
    pub services: ChildCache<Service>,
    /// Sidecar ServiceAccounts.
    pub service_accounts: ChildCache<ServiceAccount>,
    /// Sidecar Roles.
    pub roles: ChildCache<Role>,
    /// Sidecar RoleBindings.
    pub role_bindings: ChildCache<RoleBinding>,
    /// PodDisruptionBudgets.
    pub pdbs: ChildCache<PodDisruptionBudget>,
    /// NetworkPolicies.
    pub network_policies: ChildCache<NetworkPolicy>,
    /// EndpointSlices of the peer Services (they inherit the Services' labels), stripped, by
    /// Service.
    pub endpoint_slices: GroupedCache<EndpointSlice>,
    /// Metadata of the replicas' pods (labels carry each one's revision), to say which replicas
    /// a rollout has not reached yet, by stream.
    pub pods: GroupedCache<Pod>,
}

/// Watch health, for `/readyz`.
#[derive(Debug)]
pub struct WatchHealth {
    last_error: Mutex<Option<Instant>>,
    synced: Mutex<std::collections::HashSet<(String, &'static str)>>,
    expected: usize,
}

/// Kinds the controller watches: DataStreams, eight child kinds (Deployments only for migration),
/// PersistentVolumeClaims, EndpointSlices and the replicas' pods (as a summary).
const WATCHED_KINDS: usize = 12;

impl Default for WatchHealth {
    fn default() -> Self {
        WatchHealth {
            last_error: Mutex::default(),
            synced: Mutex::default(),
            expected: WATCHED_KINDS,
        }
    }
}

impl WatchHealth {
    /// Health of caches that are filled by hand (tests): counts as filled from the start.
    pub fn all_synced() -> Self {
        WatchHealth {
            expected: 0,
            ..WatchHealth::default()
        }
    }
    /// Records a watch error now.
    pub fn error(&self) {
        *self.last_error.lock() = Some(Instant::now());
    }
    /// Health of the caches of a controller per scope in `scopes` (one with a cluster-wide
    /// install).
    pub fn for_scopes(scopes: usize) -> Self {
        WatchHealth {
            expected: WATCHED_KINDS * scopes.max(1),
            ..WatchHealth::default()
        }
    }
    /// Records that the cache of `kind` in `scope` holds a complete first list.
    pub fn synced(&self, scope: &Scope, kind: &'static str) {
        self.synced.lock().insert((scope.to_string(), kind));
    }
    /// Whether every cache holds a complete first list.
    ///
    /// Tracked from the watch events themselves rather than with `Store::wait_until_ready`:
    /// that future wakes only its latest waiter, and the controller already waits on it.
    pub fn caches_filled(&self) -> bool {
        self.synced.lock().len() >= self.expected
    }
    /// Whether a watch failed in the last 30 seconds.
    pub fn failing(&self) -> bool {
        self.last_error
            .lock()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
    }
    /// Ready when every cache was filled and no watch failed in the last 30 seconds.
    pub fn is_ready(&self) -> bool {
        self.caches_filled() && !self.failing()
    }
    /// Waits until every cache holds its first list, for at most `limit`, and no longer while a
    /// watch is failing: its cache may never fill, and a reconcile that waited for it would
    /// only stall the others.
    pub async fn until_caches_filled(&self, limit: Duration) {
        let started = tokio::time::Instant::now();
        while !self.caches_filled() && !self.failing() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How long a reconcile waits for the caches' first lists. They are listed in turn
/// ([`FirstLists`]): 16-24 s at 10,000 streams on the benchmark machine.
const CACHES_FILLED_WAIT: Duration = Duration::from_secs(120);

/// Everything reconcile needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Installation settings.
    pub settings: Settings,
    /// Publishes Kubernetes Events.
    pub recorder: crate::events::EventPublisher,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Child caches.
    pub stores: Stores,
    /// Whether the caches are filled (reconciles wait for it).
    pub health: Arc<WatchHealth>,
    /// Our recent applies, until the caches have seen them.
    pub expectations: crate::expectations::Expectations,
    /// Consecutive failures per stream and when the last one happened, for exponential requeue
    /// backoff.
    failures: Mutex<std::collections::HashMap<ObjectRef<DataStream>, (u32, Instant)>>,
    /// When failures of deleted streams were last forgotten.
    failures_pruned: Mutex<Instant>,
    /// Reconcile period of a stream with no event.
    resync: Duration,
    /// Reconcile starts and ends, for `/healthz`.
    progress: Arc<crate::progress::Progress>,
}

/// First requeue delay after a failed reconcile; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest requeue delay after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Requeue delay after `failures` consecutive failures: 1 s, 2 s, 4 s ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

impl Context {
    /// A context with the given stores.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        stores: Stores,
        instance: String,
    ) -> Self {
        let recorder = crate::events::EventPublisher::new(client.clone(), MANAGER, instance);
        Context {
            client,
            settings,
            recorder,
            metrics,
            stores,
            health: Arc::new(WatchHealth::all_synced()),
            expectations: Default::default(),
            failures: Mutex::default(),
            failures_pruned: Mutex::new(Instant::now()),
            resync: RESYNC,
            progress: crate::progress::Progress::new(RESYNC),
        }
    }

    /// Records reconcile progress in `progress`.
    pub fn with_progress(mut self, progress: Arc<crate::progress::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Reconciles every stream at least every `resync` (jittered).
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }
}

impl Context {
    /// Uses `health` to know when the watch caches are filled.
    pub fn with_health(mut self, health: Arc<WatchHealth>) -> Self {
        self.health = health;
        self
    }
}

fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Applies one child unless its cached verdict says the live object already holds it.
async fn apply_child<K: Child>(
    ctx: &Context,
    ns: &str,
    cache: &ChildCache<K>,
    desired: &K,
) -> Result<(Outcome, Option<K>)> {
    let name = desired.meta().name.clone().unwrap_or_default();
    let live = cache.get(ns, &name);
    let mut desired = desired.clone();
    let digest = stamp(&mut desired);
    let desired = &desired;
    if live.as_ref().is_some_and(|l| l.holds(&digest)) {
        return Ok((Outcome::Unchanged, live.and_then(|l| l.kept())));
    }
    let kind = kind_of::<K>();
    let desired_json = serde_json::to_value(desired).expect("Kubernetes objects serialize");
    if let Some(applied) = ctx.expectations.pending(
        kind,
        ns,
        &name,
        &desired_json,
        live.as_ref().map(|l| l.resource_version),
    ) {
        // The cache has not caught up with our own last apply of this very object.
        return Ok((
            Outcome::Unchanged,
            applied
                .and_then(|a| serde_json::from_value(a).ok())
                .or_else(|| live.and_then(|l| l.kept())),
        ));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    // The caches hold only objects labelled as ours; an object of another owner with this name
    // is invisible to them, so look before creating.
    let ours = controller_uid(desired.meta());
    let in_the_way = match &live {
        Some(live) if live.controlled_by(ours) => None,
        // The cache keeps only a hash of the controller's uid; the message names the holder.
        _ => api
            .get_metadata_opt(&name)
            .await
            .map_err(|source| Error::Lookup {
                kind,
                name: name.clone(),
                source,
            })?
            .map(|found| found.metadata),
    };
    if let Some(found) = in_the_way
        && controller_uid(&found) != ours
    {
        return Err(Error::NameConflict {
            kind,
            name,
            holder: holder_of(&found),
        });
    }
    ctx.metrics.wrote(kind, "apply");
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
    cache.observe(&applied);
    let kept = K::keep(&applied);
    ctx.expectations.record(
        kind,
        ns,
        &name,
        &desired_json,
        applied
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok()),
        // Only what the cache keeps is ever read back (the StatefulSet's, for status).
        kept.as_ref()
            .map(|k| serde_json::to_value(k).expect("Kubernetes objects serialize")),
        live.is_none(),
    );
    let outcome = if live.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    Ok((outcome, Some(applied)))
}

/// The uid of an object's controller (its owner reference with `controller: true`).
fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Who controls an object that is in the way, for a condition message.
fn holder_of(meta: &ObjectMeta) -> String {
    match meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(owner) => format!("controlled by {} {}", owner.kind, owner.name),
        None => "not controlled by this DataStream".into(),
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are compile-time constants of k8s-openapi types; leak-free because K::kind(&()) is a
    // borrowed 'static string for every built-in type.
    match K::kind(&()).as_ref() {
        "StatefulSet" => "StatefulSet",
        "Deployment" => "Deployment",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "Service" => "Service",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "NetworkPolicy" => "NetworkPolicy",
        "EndpointSlice" => "EndpointSlice",
        _ => "Other",
    }
}

async fn publish(
    ctx: &Context,
    ds: &DataStream,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &ds.object_ref(&())).await {
        // Events are best effort: failing to record one must not fail the reconcile.
        warn!(%error, reason, "could not publish event");
    }
}

/// Publishes one event per kind of change, listing the children concerned: the event recorder
/// folds events with the same reason into one series, so one event per child would hide all but
/// the last name.
async fn note_outcomes(
    ctx: &Context,
    ds: &DataStream,
    outcomes: &[(&'static str, String, Outcome)],
) {
    for (wanted, reason, action, verb) in [
        (Outcome::Created, "Created", "Create", "Created"),
        (Outcome::Updated, "Updated", "Update", "Restored or updated"),
    ] {
        let names: Vec<String> = outcomes
            .iter()
            .filter(|(_, _, o)| *o == wanted)
            .map(|(kind, name, _)| format!("{kind} {name}"))
            .collect();
        if !names.is_empty() {
            publish(
                ctx,
                ds,
                EventType::Normal,
                reason,
                action,
                format!("{verb} {}", names.join(", ")),
            )
            .await;
        }
    }
}

/// Applies every child and deletes unwanted ones; returns the StatefulSet as last seen.
async fn apply_children(ctx: &Context, ds: &DataStream, ns: &str) -> Result<Option<StatefulSet>> {
    let children = desired::children(ds, &ctx.settings);
    let stores = &ctx.stores;

    let mut outcomes: Vec<(&'static str, String, Outcome)> = Vec::new();
    macro_rules! apply {
        ($store:expr, $object:expr) => {{
            let object = $object;
            let (outcome, live) = match apply_child(ctx, ns, $store, object).await {
                Ok(done) => done,
                Err(error) => {
                    note_outcomes(ctx, ds, &outcomes).await;
                    return Err(error);
                }
            };
            outcomes.push((
                kind_of_val(object),
                object.meta().name.clone().unwrap_or_default(),
                outcome,
            ));
            live
        }};
    }

    // RBAC first: the pods' sidecars need it the moment they start.
    apply!(&stores.service_accounts, &children.service_account);
    apply!(&stores.roles, &children.role);
    apply!(&stores.role_bindings, &children.role_binding);
    apply!(&stores.services, &children.peer_service);
    apply!(&stores.services, &children.client_service);
    apply!(&stores.network_policies, &children.network_policy);

    let name = children.stateful_set.name_any();
    let live = stores.stateful_sets.get(ns, &name);
    if let Err(error) = resize_claims(ctx, ds, ns, &children.stateful_set).await {
        note_outcomes(ctx, ds, &outcomes).await;
        return Err(error);
    }
    let kept = live.as_ref().and_then(|l| l.kept());
    if let Some(kept) = &kept {
        if kept.metadata.deletion_timestamp.is_some() {
            // Being recreated (see below): the new one is applied once the old one is gone.
            note_outcomes(ctx, ds, &outcomes).await;
            return Ok(Some(kept.clone()));
        }
        if let Some(change) = immutable_change(kept, &children.stateful_set) {
            note_outcomes(ctx, ds, &outcomes).await;
            recreate_orphaning_pods(ctx, ds, ns, &name, &change).await?;
            return Ok(Some(kept.clone()));
        }
    }
    let previous_replicas = kept
        .as_ref()
        .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas));
    let stateful_set = apply!(&stores.stateful_sets, &children.stateful_set);
    let applied = outcomes
        .last()
        .is_some_and(|(_, _, o)| *o != Outcome::Unchanged);
    if applied
        && max_unavailable(&children.stateful_set).is_some()
        && stateful_set
            .as_ref()
            .is_some_and(|s| max_unavailable(s).is_none())
    {
        publish(
            ctx,
            ds,
            EventType::Warning,
            "RolloutSettingIgnored",
            "Apply",
            "The API server dropped spec.rollout.maxUnavailable (its MaxUnavailableStatefulSet feature gate is off): replicas roll one at a time".into(),
        )
        .await;
    }
    if let Some(previous) = previous_replicas.filter(|p| *p != ds.spec.replicas) {
        let note = format!("Scaled from {previous} to {} replicas", ds.spec.replicas);
        publish(ctx, ds, EventType::Normal, "Scaled", "Scale", note).await;
    }
    if let Err(error) = retire_deployment(ctx, ds, ns, stateful_set.as_ref()).await {
        note_outcomes(ctx, ds, &outcomes).await;
        return Err(error);
    }

    match &children.pdb {
        Some(pdb) => {
            apply!(&stores.pdbs, pdb);
            note_outcomes(ctx, ds, &outcomes).await;
        }
        None => {
            note_outcomes(ctx, ds, &outcomes).await;
            let name = Names::of(&ds.name_any()).base;
            if stores.pdbs.get(ns, &name).is_some() {
                delete_child::<PodDisruptionBudget>(ctx, ns, &name, &DeleteParams::default())
                    .await?;
                publish(
                    ctx,
                    ds,
                    EventType::Normal,
                    "Deleted",
                    "Delete",
                    format!("Deleted PodDisruptionBudget {name}: one replica needs none"),
                )
                .await;
            }
        }
    }
    Ok(stateful_set)
}

/// Grows every existing claim of the stream that is smaller than its template now asks, in place
/// (a StatefulSet never resizes the claims it created). Claims never shrink: admission rejects a
/// smaller size, and a claim someone grew further is left alone.
async fn resize_claims(
    ctx: &Context,
    ds: &DataStream,
    ns: &str,
    desired: &StatefulSet,
) -> Result<()> {
    let stream = ds.name_any();
    let templates = desired
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for template in templates {
        let claim = template.metadata.name.clone().unwrap_or_default();
        let Some(want) = storage_request(template) else {
            continue;
        };
        let Some(want_size) = crate::quantity::Quantity::parse(&want) else {
            continue;
        };
        for ordinal in 0..ds.spec.replicas {
            let name = desired::claim_name(&claim, &stream, ordinal);
            let Some(live) = cached(&ctx.stores.claims, ns, &name) else {
                continue;
            };
            let smaller = storage_request(&live)
                .and_then(|have| crate::quantity::Quantity::parse(&have))
                .is_some_and(|have| have < want_size);
            if !smaller {
                continue;
            }
            ctx.metrics.wrote("PersistentVolumeClaim", "resize");
            let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": want}}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::ResizeClaim {
                    name: name.clone(),
                    source,
                })?;
            publish(
                ctx,
                ds,
                EventType::Normal,
                "Resizing",
                "Resize",
                format!("Requested {want} for PersistentVolumeClaim {name}"),
            )
            .await;
        }
    }
    Ok(())
}

fn storage_request(claim: &PersistentVolumeClaim) -> Option<String> {
    let requests = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
    Some(requests.get("storage")?.0.clone())
}

/// Deletes the StatefulSet but not its pods (nor their claims), so that it can be created again
/// with a change to a field Kubernetes does not let a StatefulSet change (its volume claim
/// templates, above all): the new one adopts the running pods, which keep serving throughout.
async fn recreate_orphaning_pods(
    ctx: &Context,
    ds: &DataStream,
    ns: &str,
    name: &str,
    change: &str,
) -> Result<()> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    delete_child::<StatefulSet>(ctx, ns, name, &params).await?;
    publish(
        ctx,
        ds,
        EventType::Normal,
        "Recreating",
        "Recreate",
        format!(
            "Recreating StatefulSet {name} without touching its pods or claims: {change} cannot change in place"
        ),
    )
    .await;
    Ok(())
}

/// Migration from the Deployment that ran a stream's replicas before StatefulSets did: it keeps
/// serving beside the new replicas until every one of them is ready, and is deleted then.
async fn retire_deployment(
    ctx: &Context,
    ds: &DataStream,
    ns: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<()> {
    let name = ds.name_any();
    if cached(&ctx.stores.deployments, ns, &name).is_none() {
        return Ok(());
    }
    let ready = stateful_set
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if ready < ds.spec.replicas {
        return Ok(());
    }
    if !delete_child::<Deployment>(ctx, ns, &name, &DeleteParams::background()).await? {
        return Ok(());
    }
    publish(
        ctx,
        ds,
        EventType::Normal,
        "Migrated",
        "Delete",
        format!(
            "Deleted Deployment {name}: the StatefulSet's {ready} replicas, with stable identities, serve the stream now"
        ),
    )
    .await;
    Ok(())
}

/// Deletes one child. Already gone counts as done: `Ok(false)`.
async fn delete_child<K>(ctx: &Context, ns: &str, name: &str, params: &DeleteParams) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = kind_of::<K>();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    ctx.metrics.wrote(kind, "delete");
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(Error::Delete {
            kind,
            name: name.to_owned(),
            source,
        }),
    }
}

fn kind_of_val<K: Resource<DynamicType = ()>>(_: &K) -> &'static str {
    kind_of::<K>()
}

/// Reconciles one DataStream.
#[instrument(skip_all, fields(namespace = ds.namespace().unwrap_or_default(), name = ds.name_any()))]
pub async fn reconcile(ds: Arc<DataStream>, ctx: Arc<Context>) -> Result<Action> {
    let _running = ctx.progress.start();
    let started = Instant::now();
    ctx.metrics.in_flight.inc();
    let result = reconcile_inner(&ds, &ctx).await;
    ctx.metrics.in_flight.dec();
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "success" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels { result: label })
        .inc();
    result
}

async fn reconcile_inner(ds: &DataStream, ctx: &Context) -> Result<Action> {
    let ns = ds.namespace().ok_or(Error::MissingNamespace)?;
    if ds.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground deletion or another's finalizer): the garbage collector
        // removes the children; applying or writing status now would only race it.
        ctx.failures.lock().remove(&ObjectRef::from(ds));
        return Ok(Action::await_change());
    }
    // A reconcile on half-filled caches would re-create children that are merely not listed yet.
    ctx.health.until_caches_filled(CACHES_FILLED_WAIT).await;
    let applied = apply_children(ctx, ds, &ns).await;

    let names = Names::of(&ds.name_any());
    let cached_set = ctx
        .stores
        .stateful_sets
        .get(&ns, &names.base)
        .and_then(|s| s.kept());
    let stateful_set = match &applied {
        Ok(Some(d)) => Some(d.clone()),
        _ => cached_set,
    };
    let slices = ctx.stores.endpoint_slices.group(&ns, &names.peers);
    // Claims of the current replicas only, looked up by name (a retained claim of a removed
    // replica is not the stream's concern until a scale-up brings its replica back).
    let claims: Vec<Arc<PersistentVolumeClaim>> = desired::replica_claim_names(ds)
        .filter_map(|name| cached(&ctx.stores.claims, &ns, &name))
        .collect();
    let pods = ctx.stores.pods.group(&ns, &names.base);
    let observed = Observed {
        stateful_set: stateful_set.as_ref(),
        peer_slices: slices.iter().map(|s| s.as_ref()).collect(),
        pods: pods.iter().map(|p| p.as_ref()).collect(),
        claims: claims.iter().map(|c| c.as_ref()).collect(),
        apply_error: applied
            .as_ref()
            .err()
            .map(|e| (e.condition_reason(), e.to_string())),
    };
    let status = status::derive(ds, &observed, Time(jiff::Timestamp::now()));
    if ds.status.as_ref() != Some(&status) {
        write_status(ctx, ds, &ns, &status).await?;
    }
    if let Err(error) = &applied {
        let note = error.to_string();
        publish(
            ctx,
            ds,
            EventType::Warning,
            error.event_reason(),
            "Reconcile",
            note,
        )
        .await;
    }
    applied?;
    ctx.failures.lock().remove(&ObjectRef::from(ds));
    // Watches report a claim's binding and the old StatefulSet's removal; what no event reports
    // is a claim staying Pending past the grace status gives it, so look again then.
    let waiting = stateful_set
        .as_ref()
        .is_some_and(|s| s.metadata.deletion_timestamp.is_some())
        || claims
            .iter()
            .any(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"));
    Ok(Action::requeue(if waiting {
        status::CLAIM_PENDING_GRACE
    } else {
        jittered(&ObjectRef::from(ds), 0, ctx.resync)
    }))
}

async fn write_status(
    ctx: &Context,
    ds: &DataStream,
    ns: &str,
    status: &datastream_api::DataStreamStatus,
) -> Result<()> {
    let api: Api<DataStream> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "datastream.dev/v1alpha1",
        "kind": "DataStream",
        "status": status,
    });
    ctx.metrics.wrote("DataStream", "status");
    api.patch_status(
        &ds.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    info!(phase = ?status.phase, ready = status.ready_replicas, "status updated");
    Ok(())
}

/// Requeues failed reconciles with backoff, counting the failure.
pub fn error_policy(ds: Arc<DataStream>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut failures = ctx.failures.lock();
        // A stream deleted while failing is never reconciled again to clear its entry: once a
        // minute, forget failures older than the longest backoff could make them matter.
        let mut pruned = ctx.failures_pruned.lock();
        if pruned.elapsed() >= Duration::from_secs(60) {
            failures.retain(|_, (_, last)| last.elapsed() < BACKOFF_MAX * 2);
            *pruned = Instant::now();
        }
        let entry = failures
            .entry(ObjectRef::from(ds.as_ref()))
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        entry.0
    };
    let delay = jittered(&ObjectRef::from(ds.as_ref()), failures, backoff(failures));
    warn!(name = %ds.name_any(), %error, failures, ?delay, "reconcile failed; requeueing");
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            reason: error.metric_label(),
        })
        .inc();
    Action::requeue(delay)
}

/// Objects per page when a watch lists (kube's default is 500). The list pages of the
/// different kinds arrive at once when the operator starts, each parsed whole with its
/// managedFields: at 500 StatefulSets a page it was most of the operator's peak memory on a
/// restart. 100 still lists 10,000 objects in 100 requests.
pub const LIST_PAGE_SIZE: u32 = 100;

/// The watch configuration of every watch of the controller.
fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// Orders the watches' first lists: the streams' first, then the other kinds one at a time.
///
/// Each first list parses its pages whole, managedFields included, before they are stripped; on
/// a restart at 10,000 streams eleven kinds listing at once made the operator's peak memory. One
/// at a time, only one kind's page is in flight. The streams come first because a child listed
/// before its stream gets no verdict (see [`Watches::managed_children`]). A kind whose list fails
/// gives up its turn at the error, so one forbidden or broken kind never holds the others back;
/// its watcher keeps retrying on its own.
#[derive(Clone, Debug)]
struct FirstLists {
    streams_listed: tokio::sync::watch::Receiver<bool>,
    turn: Arc<tokio::sync::Semaphore>,
}

impl FirstLists {
    fn new(streams_listed: tokio::sync::watch::Receiver<bool>) -> Self {
        FirstLists {
            streams_listed,
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The events of the watch that `start` makes once the streams are listed and it is this
    /// kind's turn; the turn passes on at its first `InitDone` or error.
    fn in_turn<K, S, F>(
        &self,
        start: F,
    ) -> impl Stream<Item = S::Item> + Send + 'static + use<K, S, F>
    where
        K: Send + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        F: FnOnce() -> S + Send + 'static,
    {
        let mut streams_listed = self.streams_listed.clone();
        let turn = self.turn.clone();
        futures::stream::once(async move {
            // Not `Store::wait_until_ready`: it wakes only its latest waiter, and there are
            // eleven. An error means the streams' watch is gone, and then the controller is
            // stopping.
            let _ = streams_listed.wait_for(|listed| *listed).await;
            // Nothing closes the semaphore, so the acquire cannot fail.
            let mut permit = turn.acquire_owned().await.ok();
            start().inspect(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone) | Err(_)) {
                    drop(permit.take());
                }
            })
        })
        .flatten()
    }
}

/// Counts a watch error of `kind` and marks the watches unhealthy until the next list.
fn watch_error(metrics: &Metrics, health: &WatchHealth, kind: &'static str) {
    metrics
        .watch_errors
        .get_or_create(&WatchLabels { kind })
        .inc();
    health.error();
}

/// A namespaced kind the operator watches only to read it: listed, parsed and cached.
trait Watched:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

// The kinds watched only to read them; the kinds the operator applies implement `Child`.
impl Watched for PersistentVolumeClaim {}
impl Watched for Deployment {}
impl Watched for EndpointSlice {}
impl Watched for Pod {}

/// What every watch of the managed objects is built from: where it watches, the label selector
/// of the managed objects, where it reports errors and syncs, and the turn it lists in (see
/// [`FirstLists`]).
#[derive(Clone, Copy)]
struct Watches<'a> {
    client: &'a Client,
    scope: &'a Scope,
    metrics: &'a Arc<Metrics>,
    health: &'a Arc<WatchHealth>,
    first_lists: &'a FirstLists,
    selector: &'a str,
}

impl Watches<'_> {
    /// What each watch does with its events before the controller sees them: `apply` fills its
    /// cache, the end of a list marks `kind` synced for `/readyz`, and errors are counted.
    fn feeding<K, A: FnMut(&watcher::Event<K>)>(
        &self,
        mut apply: A,
        kind: &'static str,
    ) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K, A> {
        let (metrics, health, scope) = (
            self.metrics.clone(),
            self.health.clone(),
            self.scope.clone(),
        );
        move |event| match event {
            Ok(event) => {
                apply(event);
                if matches!(event, watcher::Event::InitDone) {
                    health.synced(&scope, kind);
                }
            }
            Err(_) => watch_error(&metrics, &health, kind),
        }
    }

    /// A watcher of one kind the operator only reads, feeding a cache of the objects (after
    /// `strip`). It lists in its turn.
    fn managed<K: Watched>(
        &self,
        strip: fn(&mut K),
    ) -> (
        Store<K>,
        impl Stream<Item = Result<K, watcher::Error>> + Send + 'static + use<K>,
    ) {
        let api: Api<K> = self.scope.api(self.client);
        let (reader, writer) = reflector::store();
        let config = list_config().labels(self.selector);
        let events = self.first_lists.in_turn(move || {
            watcher(api, config)
                .default_backoff()
                // managedFields are most of an object's size and never read here.
                .modify(move |object| {
                    object.managed_fields_mut().clear();
                    strip(object);
                })
        });
        let stream = reflector::reflector(writer, events)
            // The reflector has filled the store already.
            .inspect(self.feeding(|_| {}, kind_of::<K>()))
            // Deletions must trigger too: a child deleted by hand is restored.
            .touched_objects();
        (reader, stream)
    }

    /// A watcher of one kind the operator only reads, feeding a [`GroupedCache`] of the objects
    /// (after `strip`) by the value of their label `group_label`. It lists in its turn.
    fn grouped<K: Watched>(
        &self,
        group_label: &'static str,
        strip: fn(&mut K),
    ) -> (
        GroupedCache<K>,
        impl Stream<Item = Result<K, watcher::Error>> + Send + 'static + use<K>,
    ) {
        let api: Api<K> = self.scope.api(self.client);
        let (cache, mut writer) = grouped_cache::<K>(group_label);
        let apply = move |event: &watcher::Event<K>| writer.apply_watcher_event(event);
        let config = list_config().labels(self.selector);
        let stream = self
            .first_lists
            .in_turn(move || watcher(api, config).default_backoff().modify(strip))
            .inspect(self.feeding(apply, kind_of::<K>()))
            .touched_objects();
        (cache, stream)
    }

    /// A watcher of one kind the operator applies, feeding its verdict cache
    /// ([`crate::cache`]). It starts once the streams' cache is filled and lists in its turn: a
    /// child seen before its stream gets no verdict and would be applied once for nothing.
    fn managed_children<K: Child>(
        &self,
        streams: &Store<DataStream>,
        settings: &Arc<Settings>,
    ) -> (
        ChildCache<K>,
        impl Stream<Item = Result<K, watcher::Error>> + Send + 'static + use<K>,
    ) {
        let api: Api<K> = self.scope.api(self.client);
        let (cache, mut writer) = child_cache::<K>(streams.clone(), settings.clone());
        let apply = move |event: &watcher::Event<K>| writer.apply_watcher_event(event);
        let config = list_config().labels(self.selector);
        let events = self
            .first_lists
            .in_turn(move || watcher(api, config).default_backoff())
            .inspect(self.feeding(apply, kind_of::<K>()))
            // Deletions must trigger too: a child deleted by hand is restored.
            .touched_objects();
        (cache, events)
    }

    /// A cache of the replicas' pods, each reduced to what status reads
    /// ([`crate::pods::strip`]): the revision label, scheduling, container failures and the
    /// sidecar's policy report.
    fn replica_pods(
        &self,
    ) -> (
        GroupedCache<Pod>,
        impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static + use<>,
    ) {
        let selector = format!("{},app.kubernetes.io/component=replica", self.selector);
        let replicas = Watches {
            selector: &selector,
            ..*self
        };
        let (cache, stream) = replicas.grouped(INSTANCE_LABEL, crate::pods::strip);
        let stream = stream
            // A pod changes with every status update; only what the summary keeps (a new revision
            // label, a failure, the policy report, a new pod or one being deleted) can change what
            // the stream reports (the final removal of a deleted pod passes no event, and needs
            // none: its replacement does).
            .predicate_filter(
                |pod: &Pod| {
                    let mut hasher = std::hash::DefaultHasher::new();
                    let summary = (
                        pod.uid(),
                        pod.labels().get(REVISION_LABEL).cloned(),
                        pod.metadata.deletion_timestamp.is_some(),
                        serde_json::to_string(&pod.status).unwrap_or_default(),
                    );
                    std::hash::Hash::hash(&summary, &mut hasher);
                    Some(std::hash::Hasher::finish(&hasher))
                },
                Default::default(),
            );
        (cache, stream)
    }
}

/// A DataStream as its cache keeps it: without managedFields and annotations, which nothing
/// here reads. Under `kubectl apply` the last-applied-configuration annotation alone repeats the
/// whole spec as JSON, and managedFields are usually larger still; at 10,000 streams each is
/// megabytes the controller's store would hold for nothing.
fn strip_stream(ds: &mut DataStream) {
    ds.metadata.managed_fields = None;
    ds.metadata.annotations = None;
}

/// The label of an EndpointSlice that names its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice reduced to what status reads (ready addresses) and what maps it to its stream
/// (its labels of Service and instance): one exists per Service, two per stream.
fn strip_slice(slice: &mut EndpointSlice) {
    let meta = &mut slice.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.uid = None;
    meta.generate_name = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    if let Some(labels) = &mut meta.labels {
        labels.retain(|k, _| k == INSTANCE_LABEL || k == SERVICE_NAME_LABEL);
    }
    slice.ports = None;
    for endpoint in slice.endpoints.iter_mut().flatten() {
        *endpoint = k8s_openapi::api::discovery::v1::Endpoint {
            addresses: std::mem::take(&mut endpoint.addresses),
            conditions: endpoint.conditions.take(),
            ..Default::default()
        };
    }
}

/// The values of `datastreams_by_phase`'s `phase` label.
const ALL_PHASES: [&str; 5] = ["None", "Pending", "Progressing", "Available", "Degraded"];

fn phase_label(ds: &DataStream) -> &'static str {
    use datastream_api::v1alpha1::Phase;
    match ds.status.as_ref().and_then(|s| s.phase.as_ref()) {
        None => "None",
        Some(Phase::Pending) => "Pending",
        Some(Phase::Progressing) => "Progressing",
        Some(Phase::Available) => "Available",
        Some(Phase::Degraded) => "Degraded",
    }
}

/// How often streams are reconciled without events, and where progress is recorded.
#[derive(Clone, Debug)]
pub struct Pacing {
    /// Reconcile period of a stream with no event (jittered by ±10 %).
    pub resync: Duration,
    /// Reconcile starts and ends, for `/healthz`.
    pub progress: Arc<crate::progress::Progress>,
    /// Where this controller watches.
    pub scope: Scope,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<WatchHealth>,
    instance: String,
    pacing: Pacing,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Pacing {
        resync,
        progress,
        scope,
    } = pacing;
    let selector = format!("{MANAGED_BY_LABEL}={MANAGER}");
    let (main_store, main_writer) = reflector::store();
    let shared_settings = Arc::new(settings.clone());
    let (streams_listed, streams_listed_rx) = tokio::sync::watch::channel(false);
    let first_lists = FirstLists::new(streams_listed_rx);
    let watches = Watches {
        client: &client,
        scope: &scope,
        metrics: &metrics,
        health: &health,
        first_lists: &first_lists,
        selector: &selector,
    };
    macro_rules! children {
        ($kind:ty) => {
            watches.managed_children::<$kind>(&main_store, &shared_settings)
        };
    }
    let (stateful_sets, stateful_set_events) = children!(StatefulSet);
    let (services, service_events) = children!(Service);
    let (service_accounts, sa_events) = children!(ServiceAccount);
    let (roles, role_events) = children!(Role);
    let (role_bindings, binding_events) = children!(RoleBinding);
    let (pdbs, pdb_events) = children!(PodDisruptionBudget);
    let (network_policies, netpol_events) = children!(NetworkPolicy);
    let (claims, claim_events) = watches.managed::<PersistentVolumeClaim>(|_| {});
    let (deployments, deployment_events) = watches.managed::<Deployment>(|_| {});
    let (endpoint_slices, slice_events) =
        watches.grouped::<EndpointSlice>(SERVICE_NAME_LABEL, strip_slice);
    let (pods, pod_events) = watches.replica_pods();

    let stores = Stores {
        stateful_sets,
        claims,
        deployments,
        services,
        service_accounts,
        roles,
        role_bindings,
        pdbs,
        network_policies,
        endpoint_slices,
        pods,
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            settings,
            metrics.clone(),
            stores.clone(),
            instance,
        )
        .with_health(health.clone())
        .with_resync(resync)
        .with_progress(progress.clone()),
    );

    let streams: Api<DataStream> = scope.api(&client);
    let stream_events = reflector::reflector(
        main_writer,
        watcher(streams, list_config())
            .default_backoff()
            .modify(strip_stream),
    )
    .inspect({
        let health = health.clone();
        let scope = scope.clone();
        move |event| match event {
            Ok(watcher::Event::InitDone) => {
                health.synced(&scope, "DataStream");
                streams_listed.send_replace(true);
            }
            Err(_) => health.error(),
            _ => {}
        }
    })
    .applied_objects();
    progress.count_streams_with({
        let store = main_store.clone();
        move || store.len()
    });
    let controller = Controller::for_stream(stream_events, main_store.clone())
        .owns_stream(stateful_set_events)
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(sa_events)
        .owns_stream(role_events)
        .owns_stream(binding_events)
        .owns_stream(pdb_events)
        .owns_stream(netpol_events)
        // Claims are owned by nothing (or by the StatefulSet, under a Delete retention policy),
        // so they map to their stream by label, as slices do.
        .watches_stream(claim_events, |claim: PersistentVolumeClaim| {
            let ns = claim.namespace()?;
            let name = claim.labels().get(INSTANCE_LABEL)?.clone();
            Some(ObjectRef::<DataStream>::new(&name).within(&ns))
        })
        .watches_stream(pod_events, |pod: Pod| {
            let ns = pod.namespace()?;
            let name = pod.labels().get(INSTANCE_LABEL)?.clone();
            Some(ObjectRef::<DataStream>::new(&name).within(&ns))
        })
        .watches_stream(slice_events, |slice: EndpointSlice| {
            let ns = slice.namespace()?;
            let name = slice.labels().get(INSTANCE_LABEL)?.clone();
            Some(ObjectRef::<DataStream>::new(&name).within(&ns))
        })
        // Bounded parallelism keeps peak memory and apiserver load flat when many streams change
        // at once (a fresh install with hundreds of streams); each reconcile is a few requests.
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .graceful_shutdown_on(shutdown);

    let waiter = {
        let metrics = metrics.clone();
        let main_store = main_store.clone();
        async move {
            // Each controller (one per watched namespace) adds what it counts: it moves the
            // gauges by the change since its last count instead of setting them.
            let mut counted: std::collections::HashMap<&'static str, i64> = Default::default();
            let mut total = 0;
            loop {
                let streams = main_store.state();
                metrics.streams.inc_by(streams.len() as i64 - total);
                total = streams.len() as i64;
                let mut now: std::collections::HashMap<&'static str, i64> = Default::default();
                for ds in &streams {
                    *now.entry(phase_label(ds)).or_default() += 1;
                }
                for phase in ALL_PHASES {
                    let delta = now.get(phase).copied().unwrap_or(0)
                        - counted.get(phase).copied().unwrap_or(0);
                    if delta != 0 {
                        metrics
                            .streams_by_phase
                            .get_or_create(&crate::metrics::PhaseLabels { phase })
                            .inc_by(delta);
                    }
                }
                counted = now;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let waiter = tokio::spawn(waiter);

    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(error) => warn!(%error, "controller"),
            }
        })
        .await;
    waiter.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_stream_keeps_what_reconcile_reads_and_drops_annotations() {
        let mut ds: DataStream = serde_json::from_value(serde_json::json!({
            "apiVersion": "datastream.dev/v1alpha1",
            "kind": "DataStream",
            "metadata": {
                "name": "orders",
                "namespace": "shop",
                "uid": "u-1",
                "generation": 3,
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"replicas": 2, "workload": {"image": "img:1"}},
            "status": {"observedGeneration": 2},
        }))
        .unwrap();
        strip_stream(&mut ds);
        assert_eq!(ds.metadata.annotations, None);
        assert_eq!(ds.metadata.managed_fields, None);
        assert_eq!(ds.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(ds.metadata.generation, Some(3));
        assert_eq!(ds.labels().get("team").map(String::as_str), Some("a"));
        assert_eq!(ds.spec.replicas, 2);
        assert_eq!(ds.status.and_then(|s| s.observed_generation), Some(2));
    }

    /// A fake watch for [`FirstLists::in_turn`]: records its start under `name` and yields what
    /// the test sends.
    fn fake_watch(
        first_lists: &FirstLists,
        name: &'static str,
        started: &Arc<Mutex<Vec<&'static str>>>,
    ) -> (
        futures::channel::mpsc::UnboundedSender<
            std::result::Result<watcher::Event<u8>, watcher::Error>,
        >,
        tokio::task::JoinHandle<usize>,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let started = started.clone();
        let events = first_lists.in_turn(move || {
            started.lock().push(name);
            rx
        });
        (tx, tokio::spawn(events.count()))
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn first_lists_start_after_the_streams_one_kind_at_a_time() {
        let (streams_listed, listed_rx) = tokio::sync::watch::channel(false);
        let first_lists = FirstLists::new(listed_rx);
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut watches: std::collections::HashMap<_, _> = ["a", "b", "c"]
            .into_iter()
            .map(|name| (name, fake_watch(&first_lists, name, &started)))
            .collect();
        settle().await;
        assert!(
            started.lock().is_empty(),
            "a kind listed before the streams"
        );

        // Which kind goes first is up to the scheduler; that only one goes at a time is not.
        streams_listed.send_replace(true);
        settle().await;
        assert_eq!(started.lock().len(), 1);
        let first = started.lock()[0];
        let send = |name: &str, event| watches[name].0.unbounded_send(event).unwrap();
        // Pages of objects do not end a turn.
        send(first, Ok(watcher::Event::Init));
        send(first, Ok(watcher::Event::InitApply(1)));
        settle().await;
        assert_eq!(*started.lock(), [first]);

        send(first, Ok(watcher::Event::InitDone));
        settle().await;
        assert_eq!(started.lock().len(), 2);
        let second = started.lock()[1];
        // A failing list gives its turn up.
        send(second, Err(watcher::Error::NoResourceVersion));
        settle().await;
        assert_eq!(started.lock().len(), 3);
        let third = started.lock()[2];

        // Later events pass through untouched, and a turn once given up is not taken back.
        send(first, Ok(watcher::Event::Apply(2)));
        send(second, Ok(watcher::Event::InitDone));
        let mut counted = std::collections::HashMap::new();
        for (name, (sender, done)) in watches.drain() {
            drop(sender);
            counted.insert(name, done.await.unwrap());
        }
        assert_eq!(counted[first], 4);
        assert_eq!(counted[second], 2);
        assert_eq!(counted[third], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_waits_for_the_first_lists_unless_a_watch_fails() {
        let scope = Scope::Cluster;
        let health = WatchHealth {
            expected: 2,
            ..WatchHealth::default()
        };
        let started = tokio::time::Instant::now();
        health.until_caches_filled(CACHES_FILLED_WAIT).await;
        assert_eq!(
            started.elapsed(),
            CACHES_FILLED_WAIT,
            "never filled: waits the limit"
        );

        health.synced(&scope, "DataStream");
        health.synced(&scope, "StatefulSet");
        let started = tokio::time::Instant::now();
        health.until_caches_filled(CACHES_FILLED_WAIT).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "filled: no wait");

        let failing = WatchHealth {
            expected: 2,
            ..WatchHealth::default()
        };
        failing.synced(&scope, "DataStream");
        failing.error();
        let started = tokio::time::Instant::now();
        failing.until_caches_filled(CACHES_FILLED_WAIT).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a failing watch: no wait"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
