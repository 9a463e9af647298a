//! Reconcile branches against a fake API server: create, no-op, drift, error and status writes.
//!
//! The fake records every request and answers the way kube-apiserver does for the verbs the
//! operator uses (apply echoes the object, events are created). Child caches are filled by hand,
//! as the watches would fill them. The e2e suite repeats these against a real kube-apiserver.

use std::sync::Arc;

use bytes::Bytes;
use datastream_api::v1alpha1::DataStream;
use datastream_operator::apply::stamp;
use datastream_operator::cache::{ChildCacheWriter, child_cache};
use datastream_operator::controller::{Context, Stores, jittered, reconcile};
use datastream_operator::desired::{self, Settings};
use datastream_operator::grouped::grouped_cache;
use datastream_operator::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet, StatefulSetStatus};
use kube::Client;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use parking_lot::Mutex;

/// One request the operator sent.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    body: serde_json::Value,
}

#[derive(Clone, Default)]
struct FakeApi {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// When set, applies of this kind's plural fail with 500.
    fail_plural: Arc<Mutex<Option<&'static str>>>,
    /// Objects that exist but are not in the operator's caches (not labelled as its own), by
    /// path; GETs of any other object answer 404.
    foreign: Arc<Mutex<std::collections::HashMap<String, serde_json::Value>>>,
}

impl FakeApi {
    fn client(&self) -> Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let path = parts.uri.path().to_owned();
                fake.requests.lock().push(Recorded {
                    method: parts.method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                let failing = *fake.fail_plural.lock();
                let (status, answer) = if parts.method != Method::GET
                    && failing.is_some_and(|p| path.contains(&format!("/{p}/")))
                {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
                    )
                } else if parts.method == Method::GET {
                    match fake.foreign.lock().get(&path) {
                        Some(object) => (StatusCode::OK, object.clone()),
                        None => (
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": "not found", "reason": "NotFound", "code": 404}),
                        ),
                    }
                } else if path.ends_with("/status") {
                    // The real server answers a status patch with the whole object.
                    let mut object = serde_json::to_value(stream()).unwrap();
                    object["status"] = body["status"].clone();
                    (StatusCode::OK, object)
                } else if parts.method == Method::POST {
                    (StatusCode::CREATED, body)
                } else {
                    (StatusCode::OK, body)
                };
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&answer).unwrap())))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.requests.lock())
    }
}

/// The caches' writers, standing in for the watches. `streams` is the streams' cache the child
/// caches take their verdicts against.
struct Caches {
    streams: Writer<DataStream>,
    stateful_sets: ChildCacheWriter<StatefulSet>,
    deployments: Writer<Deployment>,
    services: ChildCacheWriter<k8s_openapi::api::core::v1::Service>,
    service_accounts: ChildCacheWriter<k8s_openapi::api::core::v1::ServiceAccount>,
    roles: ChildCacheWriter<k8s_openapi::api::rbac::v1::Role>,
    role_bindings: ChildCacheWriter<k8s_openapi::api::rbac::v1::RoleBinding>,
    pdbs: ChildCacheWriter<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    network_policies: ChildCacheWriter<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

fn caches() -> (Stores, Caches) {
    fn ready<K>() -> (reflector::Store<K>, Writer<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (reader, writer)
    }
    let (streams, streams_writer) = ready::<DataStream>();
    let shared = Arc::new(settings());
    let (stateful_sets, stw) = child_cache(streams.clone(), shared.clone());
    let (claims, _cw) = ready();
    std::mem::forget(_cw);
    let (deployments, dw) = ready();
    let (services, sw) = child_cache(streams.clone(), shared.clone());
    let (service_accounts, saw) = child_cache(streams.clone(), shared.clone());
    let (roles, rw) = child_cache(streams.clone(), shared.clone());
    let (role_bindings, rbw) = child_cache(streams.clone(), shared.clone());
    let (pdbs, pw) = child_cache(streams.clone(), shared.clone());
    let (network_policies, nw) = child_cache(streams, shared);
    let (endpoint_slices, _) = grouped_cache("kubernetes.io/service-name");
    let (pods, _) = grouped_cache(datastream_operator::desired::INSTANCE_LABEL);
    (
        Stores {
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
        },
        Caches {
            streams: streams_writer,
            stateful_sets: stw,
            deployments: dw,
            services: sw,
            service_accounts: saw,
            roles: rw,
            role_bindings: rbw,
            pdbs: pw,
            network_policies: nw,
        },
    )
}

fn settings() -> Settings {
    Settings {
        sidecar_image: "example.com/datastream-sidecar:0.1.0".into(),
        identity: None,
    }
}

fn stream() -> DataStream {
    let mut ds: DataStream = serde_saphyr::from_str(
        "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata: {name: catalog, namespace: shop, generation: 1, uid: 0000-1}\nspec:\n  workload: {image: demo}\n",
    )
    .unwrap();
    ds.metadata.resource_version = Some("1".into());
    ds
}

/// The children as the operator applies them: stamped with the digest of what was applied.
fn applied_children(ds: &DataStream) -> desired::Children {
    let mut c = desired::children(ds, &settings());
    stamp(&mut c.stateful_set);
    stamp(&mut c.client_service);
    stamp(&mut c.peer_service);
    stamp(&mut c.service_account);
    stamp(&mut c.role);
    stamp(&mut c.role_binding);
    if let Some(pdb) = &mut c.pdb {
        stamp(pdb);
    }
    stamp(&mut c.network_policy);
    c
}

/// Fills the caches with exactly what the operator would have applied, plus server defaults,
/// with `ds` as the stream they were applied for.
fn settle(caches: &mut Caches, ds: &DataStream) {
    caches
        .streams
        .apply_watcher_event(&watcher::Event::Apply(ds.clone()));
    fill_children(caches, ds);
}

/// Fills the child caches only (as if the children's watch events came before the stream's).
fn fill_children(caches: &mut Caches, ds: &DataStream) {
    let c = applied_children(ds);
    let mut set = c.stateful_set.clone();
    set.metadata.uid = Some("d-1".into());
    set.metadata.generation = Some(1);
    set.spec.as_mut().unwrap().revision_history_limit = Some(10);
    set.status = caches_status();
    caches
        .stateful_sets
        .apply_watcher_event(&watcher::Event::Apply(set));
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(c.client_service.clone()));
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(c.peer_service.clone()));
    caches
        .service_accounts
        .apply_watcher_event(&watcher::Event::Apply(c.service_account.clone()));
    caches
        .roles
        .apply_watcher_event(&watcher::Event::Apply(c.role.clone()));
    caches
        .role_bindings
        .apply_watcher_event(&watcher::Event::Apply(c.role_binding.clone()));
    caches
        .pdbs
        .apply_watcher_event(&watcher::Event::Apply(c.pdb.clone().unwrap()));
    caches
        .network_policies
        .apply_watcher_event(&watcher::Event::Apply(c.network_policy.clone()));
}

fn context(fake: &FakeApi, stores: Stores) -> Arc<Context> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    Arc::new(Context::new(
        fake.client(),
        settings(),
        metrics,
        stores,
        "test".into(),
    ))
}

fn applies(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| {
            r.method == Method::PATCH && !r.path.ends_with("/status") && !r.path.contains("/events")
        })
        .map(|r| r.path.clone())
        .collect()
}

fn events(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.path.contains("/events"))
        .map(|r| r.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn status_writes(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect()
}

#[tokio::test]
async fn create_applies_every_child_and_reports_progress() {
    let fake = FakeApi::default();
    let (stores, _caches) = caches();
    let ctx = context(&fake, stores);
    reconcile(Arc::new(stream()), ctx)
        .await
        .expect("reconcile succeeds");
    let requests = fake.take();
    assert_eq!(
        applies(&requests),
        [
            "/api/v1/namespaces/shop/serviceaccounts/catalog-sidecar",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/catalog-sidecar",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/catalog-sidecar",
            "/api/v1/namespaces/shop/services/catalog-peers",
            "/api/v1/namespaces/shop/services/catalog",
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/catalog-peers",
            "/apis/apps/v1/namespaces/shop/statefulsets/catalog",
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/catalog",
        ]
    );
    assert_eq!(events(&requests), ["Created"]);
    let note = requests
        .iter()
        .find(|r| r.path.contains("/events"))
        .unwrap()
        .body["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("StatefulSet catalog") && note.contains("Role catalog-sidecar"),
        "{note}"
    );
    let status = status_writes(&requests);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].body["status"]["phase"], "Pending");
    let apply = requests.iter().find(|r| r.method == Method::PATCH).unwrap();
    assert_eq!(
        apply.body["apiVersion"], "v1",
        "apply bodies carry apiVersion and kind"
    );
}

#[tokio::test]
async fn steady_stream_costs_no_request() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let mut ds = stream();
    settle(&mut caches, &ds);
    // First pass writes the status once ...
    reconcile(Arc::new(ds.clone()), ctx.clone()).await.unwrap();
    let first = fake.take();
    assert_eq!(applies(&first), Vec::<String>::new());
    let status = status_writes(&first);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].body["status"]["phase"], "Available");
    // ... and once the status is what it says, a reconcile sends nothing at all.
    ds.status = Some(serde_json::from_value(status[0].body["status"].clone()).unwrap());
    reconcile(Arc::new(ds), ctx).await.unwrap();
    let second = fake.take();
    assert!(second.is_empty(), "a no-op reconcile sent {second:?}");
}

#[tokio::test]
async fn children_seen_before_their_stream_are_applied_once_then_trusted() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let ds = stream();
    fill_children(&mut caches, &ds);
    caches
        .streams
        .apply_watcher_event(&watcher::Event::Apply(ds.clone()));
    // No verdict without the stream: every child is applied (a server-side apply of an
    // unchanged object writes nothing, and passes no watch event) ...
    reconcile(Arc::new(ds.clone()), ctx.clone()).await.unwrap();
    assert_eq!(applies(&fake.take()).len(), 8);
    // ... and the answers give them their verdicts, so that this happens once, not forever.
    reconcile(Arc::new(ds), ctx).await.unwrap();
    assert_eq!(applies(&fake.take()), Vec::<String>::new());
}

#[tokio::test]
async fn drift_is_corrected_and_deleted_children_restored() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let ds = stream();
    settle(&mut caches, &ds);
    // Someone edits the client Service's port by hand and deletes the Role.
    let mut edited = applied_children(&ds).client_service;
    edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8081;
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(edited));
    let role = desired::children(&ds, &settings()).role;
    caches
        .roles
        .apply_watcher_event(&watcher::Event::Delete(role));

    reconcile(Arc::new(ds), ctx).await.unwrap();
    let requests = fake.take();
    assert_eq!(
        applies(&requests),
        [
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/catalog-sidecar",
            "/api/v1/namespaces/shop/services/catalog",
        ]
    );
    let service = requests
        .iter()
        .find(|r| r.path.ends_with("/services/catalog"))
        .unwrap();
    assert_eq!(service.body["spec"]["ports"][0]["port"], 80);
    assert_eq!(events(&requests), ["Created", "Updated"]);
}

#[tokio::test]
async fn scaling_applies_the_stateful_set_and_records_an_event() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let mut ds = stream();
    settle(&mut caches, &ds);
    ds.spec.replicas = 5;
    ds.metadata.generation = Some(2);
    reconcile(Arc::new(ds), ctx).await.unwrap();
    let requests = fake.take();
    // The sidecars' Role names the replicas' pods (each may report on its own pod's status),
    // so it grows with them, before the StatefulSet creates the new pods.
    assert_eq!(
        applies(&requests),
        [
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/catalog-sidecar",
            "/apis/apps/v1/namespaces/shop/statefulsets/catalog"
        ]
    );
    assert!(events(&requests).contains(&"Scaled".to_owned()));
    let status = status_writes(&requests);
    assert_eq!(status[0].body["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn one_replica_removes_the_disruption_budget() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let mut ds = stream();
    settle(&mut caches, &ds);
    ds.spec.replicas = 1;
    reconcile(Arc::new(ds), ctx).await.unwrap();
    let requests = fake.take();
    let deletes: Vec<_> = requests
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        deletes,
        ["/apis/policy/v1/namespaces/shop/poddisruptionbudgets/catalog"]
    );
}

#[tokio::test]
async fn apply_errors_surface_as_condition_event_and_error() {
    let fake = FakeApi::default();
    *fake.fail_plural.lock() = Some("statefulsets");
    let (stores, _caches) = caches();
    let ctx = context(&fake, stores);
    let error = reconcile(Arc::new(stream()), ctx)
        .await
        .expect_err("the apply failure is returned for backoff");
    assert_eq!(error.metric_label(), "Apply");
    let requests = fake.take();
    let status = status_writes(&requests);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].body["status"]["phase"], "Degraded");
    let degraded = status[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["reason"], "ReconcileFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("applying StatefulSet catalog")
    );
    assert!(events(&requests).contains(&"ReconcileFailed".to_owned()));
}

#[tokio::test]
async fn a_name_taken_by_an_object_of_another_owner_is_left_alone_and_reported() {
    let fake = FakeApi::default();
    // A Service the user made by hand holds the client Service's name; a cached Service of
    // another stream holds the peer Service's name.
    fake.foreign.lock().insert(
        "/api/v1/namespaces/shop/services/catalog".into(),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "catalog", "namespace": "shop", "uid": "hand-1"}}),
    );
    let (stores, _caches) = caches();
    let ctx = context(&fake, stores);
    let error = reconcile(Arc::new(stream()), ctx)
        .await
        .expect_err("a name conflict fails the reconcile");
    assert_eq!(error.metric_label(), "NameConflict");
    assert_eq!(
        error.to_string(),
        "Service catalog already exists and is not controlled by this DataStream: the operator will not take it over; rename the DataStream or remove the Service"
    );
    let requests = fake.take();
    // Nothing was written to the Service in the way.
    assert!(
        !requests
            .iter()
            .any(|r| r.method != Method::GET && r.path.ends_with("/services/catalog")),
        "{requests:#?}"
    );
    let status = status_writes(&requests);
    let degraded = status[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NameConflict");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("Service catalog already exists"),
        "{degraded}"
    );
    assert!(events(&requests).contains(&"NameConflict".to_owned()));
}

#[tokio::test]
async fn a_cached_child_controlled_by_another_stream_is_a_name_conflict() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let ds = stream();
    let mut theirs = applied_children(&ds).peer_service;
    theirs.metadata.owner_references.as_mut().unwrap()[0].uid = "other-stream".into();
    theirs.metadata.owner_references.as_mut().unwrap()[0].name = "catalog-old".into();
    // The cache keeps only a hash of the controller's uid; the operator reads the holder's name
    // for its message from the API.
    fake.foreign.lock().insert(
        "/api/v1/namespaces/shop/services/catalog-peers".into(),
        serde_json::to_value(&theirs).unwrap(),
    );
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(theirs));
    let error = reconcile(Arc::new(ds), ctx).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "Service catalog-peers already exists and is controlled by DataStream catalog-old: the operator will not take it over; rename the DataStream or remove the Service"
    );
}

#[tokio::test]
async fn a_stream_being_deleted_is_left_to_the_garbage_collector() {
    let fake = FakeApi::default();
    let (stores, _caches) = caches();
    let ctx = context(&fake, stores);
    let mut ds = stream();
    ds.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let action = reconcile(Arc::new(ds), ctx).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(
        fake.take().is_empty(),
        "nothing may be sent for a stream being deleted"
    );
}

#[tokio::test]
async fn repeated_failures_back_off_exponentially_and_success_resets() {
    use datastream_operator::controller::error_policy;
    use kube::runtime::controller::Action;
    let fake = FakeApi::default();
    let (stores, _caches) = caches();
    let ctx = context(&fake, stores);
    let ds = Arc::new(stream());
    let error = datastream_operator::error::Error::MissingNamespace;
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(ds.clone(), &error, ctx.clone()))
        .collect();
    let key = kube::runtime::reflector::ObjectRef::from(ds.as_ref());
    let expected = |attempt: u32, seconds: u64| {
        let delay = jittered(&key, attempt, std::time::Duration::from_secs(seconds));
        assert!(
            delay >= std::time::Duration::from_secs(seconds).mul_f64(0.9)
                && delay < std::time::Duration::from_secs(seconds).mul_f64(1.1),
            "{delay:?} is not {seconds} s ± 10 %"
        );
        Action::requeue(delay)
    };
    assert_eq!(delays, [expected(1, 1), expected(2, 2), expected(3, 4)]);
    reconcile(ds.clone(), ctx.clone()).await.unwrap();
    assert_eq!(error_policy(ds, &error, ctx), expected(1, 1));
}

fn deletes(requests: &[Recorded]) -> Vec<(String, serde_json::Value)> {
    requests
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .map(|r| (r.path.clone(), r.body.clone()))
        .collect()
}

#[tokio::test]
async fn a_deployment_from_before_statefulsets_is_retired_once_the_replicas_are_ready() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let ds = stream();
    let old: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "catalog", "namespace": "shop", "uid": "old-1" },
        "spec": { "selector": {}, "template": {} }
    }))
    .unwrap();
    caches
        .deployments
        .apply_watcher_event(&watcher::Event::Apply(old));
    // The StatefulSet is not there yet: the Deployment keeps serving.
    reconcile(Arc::new(ds.clone()), ctx.clone()).await.unwrap();
    assert_eq!(deletes(&fake.take()), []);
    // Every replica of the StatefulSet is ready: the Deployment goes, and an event says so.
    settle(&mut caches, &ds);
    reconcile(Arc::new(ds), ctx).await.unwrap();
    let requests = fake.take();
    let deleted: Vec<String> = deletes(&requests).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        deleted,
        ["/apis/apps/v1/namespaces/shop/deployments/catalog"]
    );
    assert!(events(&requests).contains(&"Migrated".to_owned()));
}

#[tokio::test]
async fn a_claim_template_change_recreates_the_stateful_set_orphaning_its_pods() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let ds = stream();
    settle(&mut caches, &ds);
    let mut with_storage = ds.clone();
    with_storage.spec.workload.volume_claims = vec![
        serde_json::from_value(serde_json::json!(
            { "name": "data", "mountPath": "/data", "size": "1Gi" }
        ))
        .unwrap(),
    ];
    reconcile(Arc::new(with_storage), ctx).await.unwrap();
    let requests = fake.take();
    let deleted = deletes(&requests);
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(
        deleted[0].0,
        "/apis/apps/v1/namespaces/shop/statefulsets/catalog"
    );
    assert_eq!(
        deleted[0].1["propagationPolicy"], "Orphan",
        "the pods (and their data) must survive the recreation"
    );
    assert!(
        !applies(&requests)
            .iter()
            .any(|p| p.contains("/statefulsets/")),
        "the new StatefulSet is applied only once the old one is gone"
    );
    assert!(events(&requests).contains(&"Recreating".to_owned()));
}

#[tokio::test]
async fn a_rollout_setting_the_server_drops_does_not_reapply_on_every_reconcile() {
    let fake = FakeApi::default();
    let (stores, mut caches) = caches();
    let ctx = context(&fake, stores);
    let mut ds = stream();
    ds.spec.rollout =
        Some(serde_json::from_value(serde_json::json!({ "maxUnavailable": 2 })).unwrap());
    settle(&mut caches, &ds);
    // What a server without the MaxUnavailableStatefulSet gate stores: no rollingUpdate at all.
    let mut served = applied_children(&ds).stateful_set;
    served.metadata.uid = Some("d-1".into());
    served.metadata.generation = Some(1);
    served
        .spec
        .as_mut()
        .unwrap()
        .update_strategy
        .as_mut()
        .unwrap()
        .rolling_update = None;
    served.status = caches_status();
    caches
        .stateful_sets
        .apply_watcher_event(&watcher::Event::Apply(served));
    for _ in 0..3 {
        reconcile(Arc::new(ds.clone()), ctx.clone()).await.unwrap();
    }
    let requests = fake.take();
    assert_eq!(applies(&requests), Vec::<String>::new());
}

fn caches_status() -> Option<StatefulSetStatus> {
    Some(StatefulSetStatus {
        observed_generation: Some(1),
        replicas: 3,
        ready_replicas: Some(3),
        updated_replicas: Some(3),
        available_replicas: Some(3),
        current_revision: Some("catalog-7d9f".into()),
        update_revision: Some("catalog-7d9f".into()),
        ..StatefulSetStatus::default()
    })
}
