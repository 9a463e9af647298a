//! The workload certificate signer's decisions (pure): which Kubernetes CertificateSigningRequests
//! for [`SIGNER_NAME`] to approve, which to deny and why, and what the approval and the issued
//! certificate look like on the object. The controller that watches the requests and writes these
//! decisions is the next step of issue 14 (see `docs/identity.md`).
//!
//! The apiserver sets `spec.username` from the requester's credentials, so the identity comes from
//! who asked, never from what the request says: a request is approved only when its requester is
//! the sidecar ServiceAccount of an existing DataStream and it names exactly that account's SPIFFE
//! ID.

use std::time::Duration;

use datastream_identity::WorkloadId;
use datastream_identity::authority::{check_request, request_from_pem};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The signer name sidecars put in `spec.signerName`.
pub const SIGNER_NAME: &str = datastream_identity::WORKLOAD_SIGNER;

/// Longest certificate lifetime issued, whatever `spec.expirationSeconds` asks (the default when it
/// asks nothing).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Key usages a sidecar certificate may be requested with.
const ALLOWED_USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not ours to decide (another signer), or decided already.
    Skip,
    /// Approve and sign for this identity, valid this long.
    Approve {
        /// The requester's identity.
        identity: WorkloadId,
        /// Lifetime of the certificate.
        lifetime: Duration,
    },
    /// Deny, with a reason (CamelCase, for the condition) and a message.
    Deny {
        /// The condition's reason.
        reason: &'static str,
        /// The condition's message.
        message: String,
    },
}

/// Decides on `csr`. `sidecar_of(namespace, service_account)` names the DataStream whose sidecars
/// run as that ServiceAccount (one the operator created and controls), if any.
pub fn decide(
    csr: &CertificateSigningRequest,
    trust_domain: &str,
    sidecar_of: impl Fn(&str, &str) -> Option<String>,
) -> Decision {
    if settled(csr) {
        return Decision::Skip;
    }
    let has = |kind: &str| has_condition(csr, kind);
    // Approved but not signed (signing failed, or the replica stopped in between): sign it now,
    // after the same checks; an approved request that fails them is left alone (it can no
    // longer be denied).
    if has("Approved") {
        return match decide_fresh(csr, trust_domain, sidecar_of) {
            approve @ Decision::Approve { .. } => approve,
            _ => Decision::Skip,
        };
    }
    decide_fresh(csr, trust_domain, sidecar_of)
}

/// Whether `csr` is not ours or needs nothing more: another signer's, denied, failed or signed.
pub fn settled(csr: &CertificateSigningRequest) -> bool {
    csr.spec.signer_name != SIGNER_NAME
        || has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
        || csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some()
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind))
}

/// The checks of [`decide`], for a request with no decision yet.
fn decide_fresh(
    csr: &CertificateSigningRequest,
    trust_domain: &str,
    sidecar_of: impl Fn(&str, &str) -> Option<String>,
) -> Decision {
    let deny = |reason, message: String| Decision::Deny { reason, message };
    let user = csr.spec.username.as_deref().unwrap_or_default();
    let Some(identity) = WorkloadId::from_service_account_user(trust_domain, user) else {
        return deny(
            "NotAServiceAccount",
            format!(
                "{user:?} is not a ServiceAccount; only DataStream sidecars get workload certificates"
            ),
        );
    };
    if sidecar_of(identity.namespace(), identity.service_account()).is_none() {
        return deny(
            "NotADataStreamSidecar",
            format!(
                "ServiceAccount {}/{} runs no DataStream's sidecars",
                identity.namespace(),
                identity.service_account()
            ),
        );
    }
    if let Some(bad) = csr
        .spec
        .usages
        .iter()
        .flatten()
        .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return deny(
            "UnsupportedUsage",
            format!(
                "usage {bad:?} is not granted (allowed: {})",
                ALLOWED_USAGES.join(", ")
            ),
        );
    }
    let checked =
        request_from_pem(&csr.spec.request.0).and_then(|der| check_request(&der, &identity));
    if let Err(e) = checked {
        return deny("InvalidRequest", e.to_string());
    }
    let asked = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    Decision::Approve {
        identity,
        lifetime: asked.map_or(MAX_LIFETIME, |a| a.min(MAX_LIFETIME)),
    }
}

/// The condition recording `decision` (none for [`Decision::Skip`]), as written through the
/// `approval` subresource.
pub fn condition(
    decision: &Decision,
    now: jiff::Timestamp,
) -> Option<CertificateSigningRequestCondition> {
    let (type_, reason, message) = match decision {
        Decision::Skip => return None,
        Decision::Approve { identity, .. } => (
            "Approved",
            "DataStreamSidecar",
            format!("{identity} is a DataStream sidecar identity"),
        ),
        Decision::Deny { reason, message } => ("Denied", *reason, message.clone()),
    };
    Some(CertificateSigningRequestCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datastream_identity::credentials::PendingKey;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };

    const TD: &str = "cluster.local";

    fn csr(user: &str, request_pem: String) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: SIGNER_NAME.into(),
                username: Some(user.into()),
                request: ByteString(request_pem.into_bytes()),
                usages: Some(vec![
                    "digital signature".into(),
                    "server auth".into(),
                    "client auth".into(),
                ]),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn request_for(sa: &str) -> String {
        let id = WorkloadId::new(TD, "shop", sa).unwrap();
        PendingKey::generate(&id).unwrap().csr_pem().unwrap()
    }

    /// Streams in namespace `shop`: `catalog` (sidecar ServiceAccount `catalog-sidecar`).
    fn sidecar_of(ns: &str, sa: &str) -> Option<String> {
        (ns == "shop" && sa == "catalog-sidecar").then(|| "catalog".to_owned())
    }

    #[test]
    fn a_sidecar_gets_its_own_identity_for_at_most_a_day() {
        let req = csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("catalog-sidecar"),
        );
        let d = decide(&req, TD, sidecar_of);
        assert_eq!(
            d,
            Decision::Approve {
                identity: WorkloadId::new(TD, "shop", "catalog-sidecar").unwrap(),
                lifetime: Duration::from_secs(3600),
            }
        );
        let mut long = req.clone();
        long.spec.expiration_seconds = Some(30 * 86_400);
        assert!(
            matches!(decide(&long, TD, sidecar_of), Decision::Approve { lifetime, .. } if lifetime == MAX_LIFETIME)
        );
        let c = condition(&d, jiff::Timestamp::now()).unwrap();
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Approved", "True"));
    }

    #[test]
    fn everything_else_is_denied_with_a_reason_or_skipped() {
        let reason = |req: &CertificateSigningRequest| match decide(req, TD, sidecar_of) {
            Decision::Deny { reason, message } => format!("{reason}: {message}"),
            other => format!("{other:?}"),
        };
        // A user, not a ServiceAccount.
        let r = reason(&csr("alice", request_for("catalog-sidecar")));
        assert!(r.starts_with("NotAServiceAccount"), "{r}");
        // A ServiceAccount that runs no stream's sidecars.
        let r = reason(&csr(
            "system:serviceaccount:shop:default",
            request_for("default"),
        ));
        assert!(
            r.starts_with("NotADataStreamSidecar: ServiceAccount shop/default"),
            "{r}"
        );
        // The right requester asking for another identity.
        let r = reason(&csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("billing-sidecar"),
        ));
        assert!(
            r.starts_with("InvalidRequest") && r.contains("must name exactly"),
            "{r}"
        );
        // Garbage instead of a request.
        let r = reason(&csr(
            "system:serviceaccount:shop:catalog-sidecar",
            "not pem".into(),
        ));
        assert!(r.starts_with("InvalidRequest"), "{r}");
        // A usage we do not grant.
        let mut signing = csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("catalog-sidecar"),
        );
        signing.spec.usages = Some(vec!["code signing".into()]);
        assert!(reason(&signing).starts_with("UnsupportedUsage"));

        // Another signer's request, or one decided already, is not ours to touch.
        let mut kubelet = csr("system:node:n1", String::new());
        kubelet.spec.signer_name = "kubernetes.io/kubelet-serving".into();
        assert_eq!(decide(&kubelet, TD, sidecar_of), Decision::Skip);
        let mut approved = csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("catalog-sidecar"),
        );
        approved.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![
                condition(
                    &Decision::Deny {
                        reason: "X",
                        message: String::new(),
                    },
                    jiff::Timestamp::now(),
                )
                .unwrap(),
            ]),
            certificate: None,
        });
        assert_eq!(decide(&approved, TD, sidecar_of), Decision::Skip);
    }

    #[test]
    fn an_approved_request_left_unsigned_is_signed_after_the_same_checks() {
        let approved_condition = || {
            Some(CertificateSigningRequestStatus {
                conditions: Some(vec![
                    condition(
                        &Decision::Approve {
                            identity: WorkloadId::new(TD, "shop", "catalog-sidecar").unwrap(),
                            lifetime: MAX_LIFETIME,
                        },
                        jiff::Timestamp::now(),
                    )
                    .unwrap(),
                ]),
                certificate: None,
            })
        };
        let mut pending = csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("catalog-sidecar"),
        );
        pending.status = approved_condition();
        assert!(matches!(
            decide(&pending, TD, sidecar_of),
            Decision::Approve { .. }
        ));
        // Approved by someone else for an identity the requester does not own: not signed.
        let mut foreign = csr(
            "system:serviceaccount:shop:catalog-sidecar",
            request_for("billing-sidecar"),
        );
        foreign.status = approved_condition();
        assert_eq!(decide(&foreign, TD, sidecar_of), Decision::Skip);
        // Signed already: nothing to do.
        pending.status.as_mut().unwrap().certificate = Some(ByteString(b"pem".to_vec()));
        assert_eq!(decide(&pending, TD, sidecar_of), Decision::Skip);
    }
}

/// Name of the Secret holding the trust anchors (`ca.crt`) and the issuer (`tls.crt`, `tls.key`),
/// in the operator's namespace.
pub const AUTHORITY_SECRET: &str = "datastream-identity";

/// How long a generated trust anchor is valid.
const ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a generated issuer is valid.
const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Why the signer cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The API refused a request.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The anchors or the issuer are unusable.
    #[error("identity authority: {0}")]
    Authority(#[from] datastream_identity::authority::AuthorityError),
    /// The Secret lacks a key.
    #[error("Secret {namespace}/{AUTHORITY_SECRET} has no {key:?}")]
    MissingKey {
        /// The Secret's namespace.
        namespace: String,
        /// The missing key.
        key: &'static str,
    },
}

/// How far back the validity of a generated trust anchor and issuer starts.
pub const GENERATED_BACKDATE: Duration = Duration::from_secs(3600);

/// Loads the trust anchors and the issuer from [`AUTHORITY_SECRET`], generating both (and the
/// Secret) when it does not exist. Several operator replicas may race: the first create wins and
/// the others read what it wrote.
pub async fn load_or_create_authority(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<(datastream_identity::authority::Authority, String), SignerError> {
    use datastream_identity::authority::{
        Authority, CaPem, generate_issuer, generate_trust_anchor,
    };
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let now = time::OffsetDateTime::now_utc();
    let secret = match secrets.get_opt(AUTHORITY_SECRET).await? {
        Some(s) => s,
        None => {
            // Backdated by an hour, as public CAs do: another replica whose clock runs behind
            // must not find the issuer "not yet valid" and fail to start.
            let not_before = now - GENERATED_BACKDATE;
            let anchor = generate_trust_anchor(
                trust_domain,
                not_before,
                ANCHOR_VALIDITY + GENERATED_BACKDATE,
            )?;
            let issuer = generate_issuer(
                &anchor,
                trust_domain,
                not_before,
                ISSUER_VALIDITY + GENERATED_BACKDATE,
            )?;
            let data = [
                ("ca.crt", anchor.cert.clone()),
                ("tls.crt", issuer.cert.clone()),
                ("tls.key", issuer.key.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
            .collect();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(AUTHORITY_SECRET.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "datastream-operator".to_owned(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(data),
                ..Default::default()
            };
            // The anchor's key is not kept: a new issuer means a new anchor (docs/identity.md).
            match secrets
                .create(&kube::api::PostParams::default(), &secret)
                .await
            {
                Ok(s) => {
                    tracing::info!(
                        namespace,
                        secret = AUTHORITY_SECRET,
                        "generated the trust anchor and issuer"
                    );
                    s
                }
                Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(AUTHORITY_SECRET).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or(SignerError::MissingKey {
                namespace: namespace.to_owned(),
                key,
            })
    };
    let anchors = field("ca.crt")?;
    let issuer = CaPem {
        cert: field("tls.crt")?,
        key: field("tls.key")?,
    };
    let authority = Authority::new(trust_domain, &issuer, &anchors, now)?;
    Ok((authority, anchors))
}

/// The DataStream whose sidecars run as `namespace/service_account`: the ServiceAccount must exist
/// and be controlled by that DataStream (the operator created it), so that an account a user
/// made under the same name never gets a sidecar identity.
async fn sidecar_stream(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
) -> Result<Option<String>, kube::Error> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let Some(stream) = service_account.strip_suffix("-sidecar") else {
        return Ok(None);
    };
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let Some(account) = accounts.get_opt(service_account).await? else {
        return Ok(None);
    };
    let streams: kube::Api<datastream_api::DataStream> =
        kube::Api::namespaced(client.clone(), namespace);
    let Some(owner) = streams.get_opt(stream).await? else {
        return Ok(None);
    };
    let controlled = account.metadata.owner_references.iter().flatten().any(|r| {
        r.controller == Some(true)
            && r.kind == "DataStream"
            && Some(&r.uid) == owner.metadata.uid.as_ref()
    });
    Ok(controlled.then(|| stream.to_owned()))
}

/// Watches CertificateSigningRequests for [`SIGNER_NAME`] and approves and signs (or denies) each
/// pending one. Every operator replica runs it (issuance does not need the leader): writes carry
/// the object's resourceVersion, so when replicas race one wins and the others see a conflict.
/// Certificates live at most `max_lifetime` ([`MAX_LIFETIME`] normally; shorter to tighten the
/// policy, or in tests of rotation: the CSR API cannot ask for less than 600 s, but the signer may
/// issue less than asked).
pub async fn run(
    client: kube::Client,
    authority: datastream_identity::authority::Authority,
    max_lifetime: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
    let authority = std::sync::Arc::new(authority);
    let config = watcher::Config::default().fields(&format!("spec.signerName={SIGNER_NAME}"));
    // Watch errors (an apiserver restart, an expired resourceVersion) are logged and the watcher
    // backs off and re-lists; the loop itself never ends before shutdown.
    let events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .for_each(|event| {
            let (api, client, authority) = (api.clone(), client.clone(), authority.clone());
            async move {
                let csrs = match event {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => vec![c],
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate request watch failed; it resumes");
                        Vec::new()
                    }
                };
                for csr in csrs {
                    if let Err(e) = handle(&api, &client, &authority, max_lifetime, &csr).await {
                        let name = csr.metadata.name.clone().unwrap_or_default();
                        tracing::warn!(csr = %name, error = %e, "certificate request not handled; retrying in 5 s");
                        tokio::spawn(retry_later(api.clone(), client.clone(), authority.clone(), max_lifetime, name));
                    }
                }
            }
        });
    tokio::select! {
        () = events => tracing::error!("certificate request watch ended"),
        () = shutdown => {}
    }
}

/// Handles one request again after a failure, from a fresh read, a few times.
async fn retry_later(
    api: kube::Api<CertificateSigningRequest>,
    client: kube::Client,
    authority: std::sync::Arc<datastream_identity::authority::Authority>,
    max_lifetime: Duration,
    name: String,
) {
    for attempt in 1..=5u32 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Ok(Some(csr)) = api.get_opt(&name).await else {
            return;
        };
        match handle(&api, &client, &authority, max_lifetime, &csr).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(csr = %name, attempt, error = %e, "certificate request still not handled")
            }
        }
    }
}

async fn handle(
    api: &kube::Api<CertificateSigningRequest>,
    client: &kube::Client,
    authority: &datastream_identity::authority::Authority,
    max_lifetime: Duration,
    csr: &CertificateSigningRequest,
) -> Result<(), SignerError> {
    use kube::api::{Patch, PatchParams};
    // Every issued request comes back on each re-list: no API reads for those.
    if settled(csr) {
        return Ok(());
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let requester = csr
        .spec
        .username
        .as_deref()
        .and_then(|u| WorkloadId::from_service_account_user(authority.trust_domain(), u));
    let stream = match &requester {
        Some(id) => sidecar_stream(client, id.namespace(), id.service_account()).await?,
        None => None,
    };
    let decision = decide(csr, authority.trust_domain(), |_, _| stream.clone());
    let Some(condition) = condition(&decision, jiff::Timestamp::now()) else {
        return Ok(());
    };
    let approved = if has_condition(csr, "Approved") {
        csr.clone()
    } else {
        let approval = serde_json::json!({
            "metadata": {"resourceVersion": csr.metadata.resource_version},
            "status": {"conditions": [condition]},
        });
        match api
            .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
            .await
        {
            Ok(c) => c,
            // Another replica decided first.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    };
    let Decision::Approve { identity, lifetime } = decision else {
        tracing::info!(csr = %name, condition = ?approved.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.last()).and_then(|c| c.reason.clone()), "certificate request denied");
        return Ok(());
    };
    let der = request_from_pem(&csr.spec.request.0)?;
    let lifetime = lifetime.min(max_lifetime);
    let issued = authority.sign(&der, &identity, lifetime, time::OffsetDateTime::now_utc())?;
    let pem = issued.chain_pem();
    let status = serde_json::json!({
        "metadata": {"resourceVersion": approved.metadata.resource_version},
        "status": {"certificate": k8s_openapi::ByteString(pem.into_bytes())},
    });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(_) => {
            tracing::info!(csr = %name, %identity, not_after = %issued.not_after, "workload certificate issued");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
