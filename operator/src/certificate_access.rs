//! Who may ask for workload certificates.
//!
//! CertificateSigningRequests are cluster-scoped, so a namespaced Role cannot let a sidecar create
//! one. One ClusterRole ([`DEFAULT_ROLE_NAME`] unless named otherwise: create, get and delete
//! CSRs) is bound by one
//! ClusterRoleBinding of the same name to the sidecar ServiceAccount of every DataStream, and this
//! module keeps the binding's subjects equal to the streams that exist: a pure function of the set
//! of streams ([`binding`]) applied by the leader when it differs from what it last saw, so there
//! is no write at steady state, and a deleted stream's account loses the grant without a finalizer.
//! The signer still decides each request on its own checks; the binding only stops every other
//! account of the cluster from filing requests at all.
//!
//! The chart creates both objects, named after the release (the operator may not create a role
//! that grants what it does not hold), passes the name with `--sidecar-certificate-role`, and gives
//! the operator `bind` on the role and `get`/`patch` on the binding, by name. Run with broader
//! credentials (a test, `cargo run`), the operator creates them itself under the default name,
//! which a chart install never uses, so the two never fight over one object.

use std::collections::BTreeSet;
use std::time::Duration;

use datastream_api::DataStream;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::desired::{MANAGER, Names};

/// Name of the ClusterRole and of the ClusterRoleBinding when the operator is not told another.
pub const DEFAULT_ROLE_NAME: &str = "datastream-sidecar-certificates";

/// How long a burst of stream changes is gathered before the binding is recomputed.
const SETTLE: Duration = Duration::from_millis(500);

/// A stream, by namespace and name.
pub type StreamKey = (String, String);

/// What a sidecar may do with CSRs: file its own, read it back, withdraw it when the wait ends.
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["certificates.k8s.io".to_owned()]),
            resources: Some(vec!["certificatesigningrequests".to_owned()]),
            verbs: ["create", "get", "delete"].map(String::from).to_vec(),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    }
}

/// The binding `name` (of the role `name`) for `streams`: every stream's sidecar ServiceAccount,
/// sorted, once.
pub fn binding<'a>(
    name: &str,
    streams: impl IntoIterator<Item = &'a StreamKey>,
) -> ClusterRoleBinding {
    let subjects: BTreeSet<(&str, String)> = streams
        .into_iter()
        .map(|(ns, name)| (ns.as_str(), Names::of(name).sidecar))
        .collect();
    ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: name.to_owned(),
        },
        subjects: Some(
            subjects
                .into_iter()
                .map(|(ns, sa)| Subject {
                    kind: "ServiceAccount".to_owned(),
                    name: sa,
                    namespace: Some(ns.to_owned()),
                    api_group: None,
                })
                .collect(),
        ),
    }
}

fn labels() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (
            "app.kubernetes.io/part-of".to_owned(),
            crate::desired::APP_NAME.to_owned(),
        ),
        (
            crate::desired::MANAGED_BY_LABEL.to_owned(),
            MANAGER.to_owned(),
        ),
    ])
}

/// What a binding grants, as a digest: its role and its set of subjects, in any order. The loop
/// keeps this of the live binding rather than the binding itself: at 10,000 streams the answer to
/// a write is megabytes (every subject, and again in its managedFields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants([u8; 32]);

impl Grants {
    /// The grants of `binding`.
    pub fn of(binding: &ClusterRoleBinding) -> Self {
        use sha2::{Digest, Sha256};
        let subjects: BTreeSet<(&str, &str, &str)> = binding
            .subjects
            .iter()
            .flatten()
            .map(|s| {
                (
                    s.kind.as_str(),
                    s.namespace.as_deref().unwrap_or_default(),
                    s.name.as_str(),
                )
            })
            .collect();
        let mut hasher = Sha256::new();
        let role = &binding.role_ref;
        // Each field ends in a NUL, which no name contains, so that no two lists hash alike.
        for field in [
            role.api_group.as_deref().unwrap_or_default(),
            &role.kind,
            &role.name,
        ] {
            hasher.update(field.as_bytes());
            hasher.update([0]);
        }
        for (kind, namespace, name) in subjects {
            for field in [kind, namespace, name] {
                hasher.update(field.as_bytes());
                hasher.update([0]);
            }
        }
        Self(hasher.finalize().into())
    }
}

/// Runs until `shutdown`: watches every DataStream's metadata and keeps the subjects of binding
/// `name` equal to their sidecar accounts. Meant for the leader's (fenced) client.
pub async fn run(client: Client, name: String, shutdown: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = keep_bound(client, &name) => tracing::error!("sidecar certificate access loop ended"),
        () = shutdown => {}
    }
}

async fn keep_bound(client: Client, name: &str) {
    ensure_role(&client, name).await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let streams: Api<kube::core::PartialObjectMeta<DataStream>> = Api::all(client);
    // What the binding grants as last read or written; `None` until read (or while it is missing).
    let mut live: Option<Grants> = None;
    let mut known: BTreeSet<StreamKey> = BTreeSet::new();
    let mut staged: BTreeSet<StreamKey> = BTreeSet::new();
    let mut synced = false;
    // Names are all it needs: metadata-only requests.
    let events = watcher::watcher(
        streams,
        watcher::Config::default()
            .any_semantic()
            .page_size(crate::controller::LIST_PAGE_SIZE),
    )
    .default_backoff();
    let mut events = std::pin::pin!(events);
    loop {
        // Wait for an event, then gather what follows it for a moment: a burst of stream creations
        // is one write.
        let Some(first) = events.next().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + SETTLE;
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, events.next()).await {
            batch.push(next);
        }
        for event in batch {
            let key = |m: &kube::api::ObjectMeta| {
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                )
            };
            match event {
                Ok(watcher::Event::Init) => staged.clear(),
                Ok(watcher::Event::InitApply(o)) => {
                    staged.insert(key(&o.metadata));
                }
                Ok(watcher::Event::InitDone) => {
                    known = std::mem::take(&mut staged);
                    synced = true;
                }
                Ok(watcher::Event::Apply(o)) => {
                    known.insert(key(&o.metadata));
                }
                Ok(watcher::Event::Delete(o)) => {
                    known.remove(&key(&o.metadata));
                }
                Err(e) => tracing::warn!(error = %e, "DataStream watch failed; it resumes"),
            }
        }
        if !synced {
            continue;
        }
        let want = binding(name, &known);
        if live.is_none() {
            match bindings.get_opt(name).await {
                Ok(found) => live = found.as_ref().map(Grants::of),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read ClusterRoleBinding {name}; retrying with the next change");
                    continue;
                }
            }
        }
        let wanted = Grants::of(&want);
        if live == Some(wanted) {
            continue;
        }
        let params = PatchParams::apply(MANAGER).force();
        match bindings.patch(name, &params, &Patch::Apply(&want)).await {
            Ok(written) => {
                tracing::info!(
                    sidecar_accounts = want.subjects.as_ref().map_or(0, Vec::len),
                    "sidecar certificate access updated"
                );
                live = Some(Grants::of(&written));
            }
            Err(e) => {
                // Read again next time: the live object may have changed under us.
                live = None;
                tracing::warn!(error = %e, "cannot update ClusterRoleBinding {name}; sidecars of new streams cannot ask for certificates until it succeeds");
            }
        }
    }
}

/// Creates the ClusterRole when it is missing and the credentials allow it; a chart install has
/// made it already, and an operator without the right to read it leaves it to the chart.
async fn ensure_role(client: &Client, name: &str) {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    match roles.get_opt(name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let params = PatchParams::apply(MANAGER);
            if let Err(e) = roles
                .patch(name, &params, &Patch::Apply(&cluster_role(name)))
                .await
            {
                tracing::warn!(error = %e, "ClusterRole {name} is missing and cannot be created; install it with the chart");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "ClusterRole {name} not readable; assuming the chart made it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `live` already grants what `want` grants (same role, same subjects in any
    /// order), as the loop compares them: through their [`Grants`].
    fn grants_equal(live: &ClusterRoleBinding, want: &ClusterRoleBinding) -> bool {
        Grants::of(live) == Grants::of(want)
    }

    fn key(ns: &str, name: &str) -> StreamKey {
        (ns.to_owned(), name.to_owned())
    }

    #[test]
    fn every_streams_sidecar_account_is_bound_once_in_order() {
        let streams = [
            key("shop", "orders"),
            key("billing", "ledger"),
            key("shop", "carts"),
        ];
        let b = binding(DEFAULT_ROLE_NAME, &streams);
        let subjects: Vec<_> = b
            .subjects
            .unwrap()
            .into_iter()
            .map(|s| format!("{}/{}/{}", s.kind, s.namespace.unwrap(), s.name))
            .collect();
        assert_eq!(
            subjects,
            [
                "ServiceAccount/billing/ledger-sidecar",
                "ServiceAccount/shop/carts-sidecar",
                "ServiceAccount/shop/orders-sidecar",
            ]
        );
        assert_eq!(b.role_ref.name, DEFAULT_ROLE_NAME);
        assert_eq!(binding("x", &[]).subjects, Some(Vec::new()));
    }

    #[test]
    fn equal_grants_need_no_write_and_any_difference_does() {
        let one = binding("r", &[key("a", "x"), key("b", "y")]);
        let mut reordered = one.clone();
        reordered.subjects.as_mut().unwrap().reverse();
        assert!(grants_equal(&reordered, &one));
        assert!(!grants_equal(&binding("r", &[key("a", "x")]), &one));
        let mut other_role = one.clone();
        other_role.role_ref.name = "cluster-admin".into();
        assert!(!grants_equal(&other_role, &one));
        // A live binding without subjects (as the chart creates it) grants nothing.
        let mut empty = binding("r", &[]);
        empty.subjects = None;
        assert!(grants_equal(&empty, &binding("r", &[])));
    }

    #[test]
    fn the_role_lets_sidecars_file_read_and_withdraw_requests_only() {
        let rules = cluster_role("r").rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["certificatesigningrequests".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["create", "get", "delete"]);
    }
}
