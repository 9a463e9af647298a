//! Workload certificates on the real control plane (issue 14, first step): an operator started
//! with `--workload-signer` generates the trust anchor and issuer Secret, approves and signs a
//! `datastream.dev/workload` CertificateSigningRequest that a DataStream's sidecar ServiceAccount
//! makes for its own SPIFFE ID, and denies, with the reason, one from another ServiceAccount and
//! one naming another identity. Requests are made as a sidecar will make them
//! (`datastream_identity::kubernetes::request_certificate`) with each ServiceAccount's own token,
//! so the apiserver, not the request, says who asked.

use std::time::Duration;

use datastream_api::v1alpha1::SIDECAR_ADMIN_PORT;
use datastream_e2e::*;
use datastream_identity::WorkloadId;
use datastream_identity::authority::certificates_from_pem;
use datastream_identity::credentials::PendingKey;
use datastream_identity::kubernetes::{CsrCertifier, RequestError, request_certificate};
use datastream_identity::rotation::{IdentityState, SystemClock};
use datastream_identity::verify::{PeerVerifier, TrustAnchors};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use rustls::client::danger::ServerCertVerifier;

/// A kubeconfig authenticating as `namespace/service_account` with a fresh token.
fn kubeconfig_for(namespace: &str, service_account: &str) -> std::path::PathBuf {
    let token = kubectl_ok(&[
        "create",
        "token",
        service_account,
        "-n",
        namespace,
        "--duration=10m",
    ]);
    let server = kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let path = std::env::temp_dir().join(format!(
        "e2e-identity-{namespace}-{service_account}.kubeconfig"
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {}}}\nusers:\n- name: u\n  user: {{token: {}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            server.trim(),
            ca.trim(),
            token.trim()
        ),
    )
    .unwrap();
    path
}

/// A client authenticating as `namespace/service_account` only, and its kubeconfig file.
async fn client_as(namespace: &str, service_account: &str) -> (kube::Client, std::path::PathBuf) {
    let kubeconfig = kubeconfig_for(namespace, service_account);
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    (kube::Client::try_from(config).unwrap(), kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_service_accounts_get_their_own_identity_and_nobody_else_does() {
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-identity");
    let _operator = Operator::start_with(
        "identity-0",
        &ns.name,
        &OperatorOptions {
            args: vec![
                "--workload-signer=true".into(),
                "--leader-elect=false".into(),
            ],
            ..OperatorOptions::default()
        },
    );
    let stream = format!(
        "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata:\n  name: signed\nspec:\n  replicas: 0\n  workload:\n    image: {DEMO_IMAGE}\n    port: 8080\n"
    );
    let applied = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&stream));
    assert!(applied.ok, "{}", applied.stderr);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        &ns.name,
        "the sidecar ServiceAccount",
        Duration::from_secs(30),
        || async { accounts.get_opt("signed-sidecar").await.ok()?.map(|_| ()) },
    )
    .await;
    // The operator lets the stream's sidecar account file requests; the namespace's `default`
    // account gets the same right from the test, so that the signer, not RBAC, turns it away.
    wait_for(
        &ns.name,
        "the operator binding the sidecar account to the CSR role",
        Duration::from_secs(30),
        || async {
            binds(&client, &ns.name, "signed-sidecar")
                .await
                .then_some(())
        },
    )
    .await;
    let grant = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-csr}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: datastream-sidecar-certificates}}\nsubjects:\n- {{kind: ServiceAccount, name: default, namespace: {ns}}}\n",
        ns = ns.name
    );
    assert!(kubectl_stdin(&["apply", "-f", "-"], Some(&grant)).ok);

    let td = "cluster.local";
    let sidecar = WorkloadId::new(td, &ns.name, "signed-sidecar").unwrap();
    let cases = [
        ("signed-sidecar", sidecar.clone(), None),
        (
            "default",
            WorkloadId::new(td, &ns.name, "default").unwrap(),
            Some("NotADataStreamSidecar"),
        ),
        (
            "signed-sidecar",
            WorkloadId::new(td, &ns.name, "other-sidecar").unwrap(),
            Some("InvalidRequest"),
        ),
    ];
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (i, (account, asks_for, denied)) in cases.into_iter().enumerate() {
        let name = format!("{}-{i}", ns.name);
        let key = PendingKey::generate(&asks_for).unwrap();
        // The sidecar's own client: the ServiceAccount's token, nothing else.
        let (as_account, kubeconfig) = client_as(&ns.name, account).await;
        let result = request_certificate(
            as_account,
            &key,
            &name,
            Duration::from_secs(3600),
            Duration::from_secs(30),
        )
        .await;
        match (denied, result) {
            (
                Some(reason),
                Err(RequestError::Refused {
                    kind,
                    reason: got,
                    message,
                    name: csr,
                }),
            ) => {
                assert_eq!(
                    (kind.as_str(), got.as_str()),
                    ("Denied", reason),
                    "{csr}: {message}"
                );
                let decided = csrs.get(&csr).await.unwrap();
                assert!(
                    decided.status.unwrap().certificate.is_none(),
                    "{csr} got a certificate"
                );
                let _ = csrs.delete(&csr, &Default::default()).await;
            }
            (None, Ok(chain)) => {
                let creds = key
                    .complete(chain.clone(), time::OffsetDateTime::now_utc())
                    .expect("the certificate is for our key and identity");
                assert_eq!(creds.id(), &sidecar);
                let lifetime = creds.not_after() - time::OffsetDateTime::now_utc();
                assert!(lifetime <= time::Duration::seconds(3600), "{lifetime}");
                // It chains to the trust anchor the operator published.
                let secret = secrets.get("datastream-identity").await.unwrap();
                assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
                let anchors = String::from_utf8(secret.data.unwrap()["ca.crt"].0.clone()).unwrap();
                let anchors = TrustAnchors::new(&certificates_from_pem(&anchors).unwrap()).unwrap();
                PeerVerifier::new(anchors, sidecar.clone())
                    .verify_server_cert(
                        &chain[0],
                        &chain[1..],
                        &rustls::pki_types::ServerName::try_from("peer.invalid").unwrap(),
                        &[],
                        rustls::pki_types::UnixTime::now(),
                    )
                    .expect("the issued chain verifies against the published anchor");
                let issued: Vec<CertificateSigningRequest> = csrs
                    .list(&Default::default())
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter(|c| {
                        c.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with(&name))
                    })
                    .collect();
                assert_eq!(issued.len(), 1, "one request, one certificate");
                for c in issued {
                    let condition = c.status.unwrap().conditions.unwrap().remove(0);
                    assert_eq!(condition.reason.as_deref(), Some("DataStreamSidecar"));
                    let _ = csrs
                        .delete(c.metadata.name.as_deref().unwrap(), &Default::default())
                        .await;
                }
            }
            (want, got) => panic!("{name} as {account}: wanted {want:?}, got {got:?}"),
        }
        let _ = std::fs::remove_file(kubeconfig);
    }
    // The loop a sidecar runs, with the certifier it will use: ready with a certificate for its
    // identity once the signer answers.
    let (as_sidecar, kubeconfig) = client_as(&ns.name, "signed-sidecar").await;
    let prefix = format!("{}-rotation", ns.name);
    let (tx, mut rx) = tokio::sync::watch::channel(IdentityState::Pending {
        reason: "starting".into(),
    });
    let rotation = tokio::spawn(datastream_identity::rotation::run(
        sidecar.clone(),
        CsrCertifier {
            client: as_sidecar,
            name_prefix: prefix.clone(),
            lifetime: Duration::from_secs(600),
            wait: Duration::from_secs(30),
        },
        SystemClock,
        tx,
        std::future::pending(),
    ));
    let ready = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.credentials().is_some()),
    )
    .await
    .expect("the rotation loop got a certificate")
    .unwrap()
    .credentials()
    .cloned()
    .unwrap();
    assert_eq!(ready.id(), &sidecar);
    rotation.abort();
    for c in csrs.list(&Default::default()).await.unwrap().items {
        let name = c.metadata.name.unwrap_or_default();
        if name.starts_with(&prefix) {
            let _ = csrs.delete(&name, &Default::default()).await;
        }
    }
    let _ = std::fs::remove_file(kubeconfig);
    kubectl(&["delete", "clusterrolebinding", &format!("{}-csr", ns.name)]);
}

/// Whether the operator's ClusterRoleBinding lets `namespace/service_account` file CSRs.
async fn binds(client: &kube::Client, namespace: &str, service_account: &str) -> bool {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let Ok(Some(binding)) = bindings.get_opt("datastream-sidecar-certificates").await else {
        return false;
    };
    binding.role_ref.name == "datastream-sidecar-certificates"
        && binding.subjects.unwrap_or_default().iter().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == service_account
                && s.namespace.as_deref() == Some(namespace)
        })
}

/// The sidecar's admin endpoint `path` on the pod, as (status, body).
async fn admin(pod: &Pod, path: &str) -> Option<(u16, String)> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    http_get(&format!("http://{ip}:{SIDECAR_ADMIN_PORT}{path}"), &[])
        .await
        .ok()
}

fn pod_ip(pod: &Pod) -> std::net::IpAddr {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("a running pod has an IP")
        .parse()
        .expect("pod IPs parse")
}

/// Applies DataStream `name` of `replicas` demo replicas balanced round-robin, waits until every
/// replica is Ready and each sidecar lists all of them as eligible, and returns the pods in
/// ordinal order.
async fn round_robin_stream(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: usize,
) -> Vec<Pod> {
    round_robin_stream_with(client, namespace, name, replicas, "").await
}

/// [`round_robin_stream`] with `sidecar` as the stream's `spec.sidecar` (YAML flow mapping
/// contents, e.g. `clientTls: {secretName: x}`).
async fn round_robin_stream_with(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: usize,
    sidecar: &str,
) -> Vec<Pod> {
    let stream = format!(
        "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  workload:\n    image: {DEMO_IMAGE}\n    port: 8080\n  sidecar: {{ {sidecar} }}\n  traffic:\n    loadBalancing: {{ policy: round-robin }}\n"
    );
    let applied = kubectl_stdin(&["apply", "-n", namespace, "-f", "-"], Some(&stream));
    assert!(applied.ok, "{}", applied.stderr);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut ready = Vec::new();
    for ordinal in 0..replicas {
        let pod_name = format!("{name}-{ordinal}");
        let pod = wait_for(
            namespace,
            &format!("{pod_name} Ready"),
            Duration::from_secs(180),
            || async { pods.get_opt(&pod_name).await.ok()?.filter(pod_ready) },
        )
        .await;
        ready.push(pod);
    }
    for pod in &ready {
        wait_for(
            namespace,
            "every replica eligible on each sidecar",
            Duration::from_secs(60),
            || async {
                let (_, body) = admin(pod, "/endpoints").await?;
                let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
                let eligible = doc["endpoints"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["eligibility"]["state"] == "eligible")
                    .count();
                (eligible == replicas).then_some(())
            },
        )
        .await;
    }
    ready
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The whole path with real pods under runc: a stream's sidecar asks for its certificate with its
/// own ServiceAccount (which the operator bound to the CSR role), checks the chain against the
/// anchors in its pod spec and only then turns ready; `/identity` and the metrics show it. A pod
/// started while the signer is down stays not ready, saying why, and becomes ready once the signer
/// is back; a deleted stream's account loses the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_are_ready_only_with_a_certificate_and_wait_for_the_signer() {
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-certs");
    let options = OperatorOptions {
        args: vec!["--leader-elect=false".into()],
        ..OperatorOptions::default()
    };
    let operator = Operator::start_with("certs-0", &ns.name, &options);
    let stream = format!(
        "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata:\n  name: certified\nspec:\n  replicas: 1\n  workload:\n    image: {DEMO_IMAGE}\n    port: 8080\n"
    );
    let applied = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&stream));
    assert!(applied.ok, "{}", applied.stderr);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let first = wait_for(
        &ns.name,
        "certified-0 Ready",
        Duration::from_secs(120),
        || async { pods.get_opt("certified-0").await.ok()?.filter(pod_ready) },
    )
    .await;
    assert!(binds(&client, &ns.name, "certified-sidecar").await);
    let (status, body) = admin(&first, "/identity").await.expect("admin answers");
    assert_eq!(status, 200, "{body}");
    let identity: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(identity["state"], "ready", "{identity}");
    assert_eq!(
        identity["id"],
        format!("spiffe://cluster.local/ns/{}/sa/certified-sidecar", ns.name)
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let not_after = identity["notAfter"].as_i64().unwrap();
    // The default lifetime: 24 hours.
    assert!(
        (now + 23 * 3600..=now + 24 * 3600 + 60).contains(&not_after),
        "{identity}"
    );
    let (_, metrics) = admin(&first, "/metrics").await.unwrap();
    assert!(
        metrics.contains("datastream_sidecar_identity_ready 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "datastream_sidecar_identity_certificate_expiry_timestamp_seconds {not_after}"
        )),
        "{metrics}"
    );

    // The signer goes away; a replacement pod cannot get a certificate and says so.
    drop(operator);
    let old_uid = first.metadata.uid.clone();
    kubectl_ok(&[
        "delete",
        "pod",
        "certified-0",
        "-n",
        &ns.name,
        "--wait=false",
    ]);
    let replacement = wait_for(
        &ns.name,
        "a replacement certified-0 with a sidecar answering",
        Duration::from_secs(120),
        || async {
            let pod = pods.get_opt("certified-0").await.ok()??;
            if pod.metadata.uid == old_uid {
                return None;
            }
            let (status, body) = admin(&pod, "/ready").await?;
            (status == 503 && body.contains("no workload certificate")).then_some(pod)
        },
    )
    .await;
    // Still not ready a while later: nothing else lets it through.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, body) = admin(&replacement, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no workload certificate"), "{body}");
    let pod = pods.get("certified-0").await.unwrap();
    assert!(!pod_ready(&pod), "ready without a certificate");
    let (_, body) = admin(&replacement, "/identity").await.unwrap();
    let identity: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(identity["state"], "pending", "{identity}");

    // The signer is back: the pending request (or the next one) is signed and the pod turns ready.
    let back = std::time::Instant::now();
    let _operator = Operator::start_with("certs-1", &ns.name, &options);
    wait_for(
        &ns.name,
        "certified-0 Ready once the signer is back",
        Duration::from_secs(90),
        || async {
            let pod = pods.get_opt("certified-0").await.ok()??;
            (pod.metadata.uid != old_uid && pod_ready(&pod)).then_some(())
        },
    )
    .await;
    eprintln!("ready {:?} after the signer came back", back.elapsed());

    // A deleted stream's sidecar account loses the right to ask.
    kubectl_ok(&["delete", "dst", "certified", "-n", &ns.name]);
    wait_for(
        &ns.name,
        "the binding to forget the deleted stream's account",
        Duration::from_secs(30),
        || async { (!binds(&client, &ns.name, "certified-sidecar").await).then_some(()) },
    )
    .await;
}

/// One request over TLS to `addr` with `creds` (or no certificate), the peer verified as
/// `server_id`; the raw answer, or why there was none.
async fn peer_request(
    addr: std::net::SocketAddr,
    creds: Option<&datastream_identity::credentials::Credentials>,
    anchors: &TrustAnchors,
    server_id: &WorkloadId,
) -> Result<String, String> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = datastream_identity::crypto_provider();
    let config = match creds {
        Some(c) => datastream_identity::tls::client_config(
            c.certified_key(&provider).unwrap(),
            anchors.clone(),
            server_id.clone(),
        )
        .unwrap(),
        None => rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(
                anchors.clone(),
                server_id.clone(),
            )))
            .with_no_client_auth(),
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: peer\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err("closed without an answer".to_owned());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer".to_owned())?
}

/// A sidecar's certificate for `account`, got the way a sidecar gets it (its own token, a CSR).
async fn certificate_for(
    namespace: &str,
    account: &str,
) -> datastream_identity::credentials::Credentials {
    let who = WorkloadId::new("cluster.local", namespace, account).unwrap();
    let key = PendingKey::generate(&who).unwrap();
    let (as_account, kubeconfig) = client_as(namespace, account).await;
    let chain = request_certificate(
        as_account,
        &key,
        &format!("{namespace}-{account}-probe"),
        Duration::from_secs(600),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("certificate for {account}: {e}"));
    let _ = std::fs::remove_file(kubeconfig);
    key.complete(chain, time::OffsetDateTime::now_utc())
        .unwrap()
}

/// Mutual TLS between real sidecars on the local cluster: traffic crosses the peer hop between
/// the replicas of a stream, and every replica's peer port refuses whoever is not a sidecar of
/// that stream (a plaintext client, a TLS client without a certificate, and the sidecar identity
/// of another DataStream in the same namespace) while the stream's own identity is answered. Each
/// refusal is counted on the replica with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ports_answer_only_their_own_streams_sidecars() {
    use datastream_api::v1alpha1::{SIDECAR_PEER_PORT, SIDECAR_TRAFFIC_PORT};
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-mtls");
    let _operator = Operator::start_with(
        "mtls-0",
        &ns.name,
        &OperatorOptions {
            args: vec!["--leader-elect=false".into()],
            ..OperatorOptions::default()
        },
    );
    let orders = round_robin_stream(&client, &ns.name, "orders", 2).await;
    round_robin_stream(&client, &ns.name, "payments", 1).await;
    // Each sidecar lists the other replica as a remote endpoint that must prove the stream's
    // identity.
    let orders_id = format!("spiffe://cluster.local/ns/{}/sa/orders-sidecar", ns.name);
    for pod in &orders {
        let (_, body) = admin(pod, "/endpoints").await.unwrap();
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["mutualTls"], true, "{doc}");
        let remote = doc["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["local"] == false)
            .cloned()
            .unwrap();
        assert_eq!(remote["peerIdentity"], orders_id.as_str(), "{doc}");
    }

    // Traffic through one sidecar reaches both replicas: the other one over the mTLS peer hop.
    let traffic = format!("http://{}:{SIDECAR_TRAFFIC_PORT}/", pod_ip(&orders[0]));
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = http_exchange("GET", &traffic, &[], "").await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answered_by.insert(answer.header("x-replica-id").to_owned());
    }
    assert_eq!(
        answered_by,
        ["orders-0".to_owned(), "orders-1".to_owned()].into(),
        "round-robin through orders-0 reaches both replicas"
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = secrets.get("datastream-identity").await.unwrap();
    let anchors = String::from_utf8(secret.data.unwrap()["ca.crt"].0.clone()).unwrap();
    let anchors = TrustAnchors::from_pem(&anchors).unwrap();
    let orders_wid = WorkloadId::new("cluster.local", &ns.name, "orders-sidecar").unwrap();
    let payments_cert = certificate_for(&ns.name, "payments-sidecar").await;
    let orders_cert = certificate_for(&ns.name, "orders-sidecar").await;
    for pod in &orders {
        let peer = std::net::SocketAddr::new(pod_ip(pod), SIDECAR_PEER_PORT as u16);
        // A pod that is not a sidecar: plaintext HTTP gets no answer.
        let plain = http_get(&format!("http://{peer}/"), &[]).await;
        assert!(plain.is_err(), "plaintext answered: {plain:?}");
        // TLS without a certificate.
        let anonymous = peer_request(peer, None, &anchors, &orders_wid).await;
        assert!(anonymous.is_err(), "{anonymous:?}");
        // Another DataStream's sidecar identity, from the same signer.
        let other = peer_request(peer, Some(&payments_cert), &anchors, &orders_wid).await;
        assert!(other.is_err(), "{other:?}");
        // The stream's own identity is answered, by that replica.
        let own = peer_request(peer, Some(&orders_cert), &anchors, &orders_wid)
            .await
            .expect("the stream's own identity is answered");
        assert!(own.starts_with("HTTP/1.1 200"), "{own}");
        let name = pod.metadata.name.as_deref().unwrap();
        assert!(
            own.to_ascii_lowercase()
                .contains(&format!("x-replica-id: {name}")),
            "{own}"
        );

        let (_, metrics) = admin(pod, "/metrics").await.unwrap();
        for reason in ["plaintext", "no_certificate", "wrong_identity"] {
            let line = format!(
                "datastream_sidecar_peer_tls_refusals_total{{side=\"accept\",reason=\"{reason}\"}} "
            );
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
                "{name}: no {reason} refusal counted:\n{}",
                metrics
                    .lines()
                    .filter(|l| l.contains("refusals"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Certificate rotation under load: the signer issues 30-second certificates (a test setting;
/// the sidecars renew at 70 %, about every 21 s), and two minutes of requests through one
/// replica, half of them across the mTLS peer hop to the other, see no failure while every
/// sidecar renews several times. Connections opened before a renewal keep their session; new
/// ones use the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    use datastream_api::v1alpha1::SIDECAR_TRAFFIC_PORT;
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-rotation");
    let _operator = Operator::start_with(
        "rotation-0",
        &ns.name,
        &OperatorOptions {
            args: vec![
                "--leader-elect=false".into(),
                "--max-certificate-lifetime-seconds=30".into(),
            ],
            ..OperatorOptions::default()
        },
    );
    let replicas = round_robin_stream(&client, &ns.name, "rotating", 2).await;
    let certificates = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("datastream_sidecar_identity_certificates_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut before = Vec::new();
    for pod in &replicas {
        let (_, metrics) = admin(pod, "/metrics").await.unwrap();
        before.push(certificates(&metrics));
    }
    let addr = std::net::SocketAddr::new(pod_ip(&replicas[0]), SIDECAR_TRAFFIC_PORT as u16);
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = (0..4).map(|_| tokio::spawn(load(addr, until))).collect();
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "{ok} requests answered, {} failed over 2 minutes",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 5_000, "only {ok} requests in 2 minutes");
    for (pod, before) in replicas.iter().zip(before) {
        let (_, metrics) = admin(pod, "/metrics").await.unwrap();
        let renewed = certificates(&metrics) - before;
        let name = pod.metadata.name.as_deref().unwrap();
        eprintln!("{name}: {renewed} renewals during the load");
        assert!(renewed >= 4, "{name} renewed {renewed} times in 2 minutes");
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("datastream_sidecar_peer_tls_refusals_total"))
        {
            assert!(line.ends_with(" 0"), "{name}: {line}");
        }
        let (_, identity) = admin(pod, "/identity").await.unwrap();
        let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
        let left = identity["notAfter"].as_i64().unwrap()
            - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((0..=31).contains(&left), "{name}: {identity}");
    }
}

/// The issuer (the operator) down for 60 s under load: running sidecars keep their certificates,
/// so requests through one replica, half of them over the mTLS peer hop, see no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_outage_under_load_fails_no_request() {
    use datastream_api::v1alpha1::SIDECAR_TRAFFIC_PORT;
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-outage");
    let options = OperatorOptions {
        args: vec!["--leader-elect=false".into()],
        ..OperatorOptions::default()
    };
    let operator = Operator::start_with("outage-0", &ns.name, &options);
    let replicas = round_robin_stream(&client, &ns.name, "steady", 2).await;
    let addr = std::net::SocketAddr::new(pod_ip(&replicas[0]), SIDECAR_TRAFFIC_PORT as u16);
    let until = tokio::time::Instant::now() + Duration::from_secs(75);
    let workers: Vec<_> = (0..4).map(|_| tokio::spawn(load(addr, until))).collect();
    // The issuer goes away for 60 s in the middle of the load.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(operator);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let _back = Operator::start_with("outage-1", &ns.name, &options);
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "{ok} requests answered, {} failed, across a 60 s issuer outage",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 3_000, "only {ok} requests in 75 s");
    for pod in &replicas {
        let (_, identity) = admin(pod, "/identity").await.unwrap();
        let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
        assert_eq!(identity["state"], "ready", "{identity}");
    }
}

/// A client of the traffic port until `until`: one keep-alive HTTP/1.1 connection (reopened after
/// a failure), a GET every 10 ms. Returns the answered count and every failure. Keep-alive, as
/// real clients do: a new connection per request at this rate would exhaust the test's own
/// ephemeral ports (TIME_WAIT), which says nothing about the sidecar.
async fn load(addr: std::net::SocketAddr, until: tokio::time::Instant) -> (u64, Vec<String>) {
    use http_body_util::BodyExt;
    let (mut ok, mut failed) = (0u64, Vec::new());
    let mut sender: Option<
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    > = None;
    while tokio::time::Instant::now() < until {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let connected = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let (s, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                tokio::spawn(conn);
                anyhow::Ok(s)
            };
            match tokio::time::timeout(Duration::from_secs(5), connected).await {
                Ok(Ok(s)) => sender = Some(s),
                Ok(Err(e)) => failed.push(format!("connect: {e}")),
                Err(_) => failed.push("connect: timed out".to_owned()),
            }
        }
        if let Some(s) = sender.as_mut() {
            let request = http::Request::get("/")
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let exchange = async {
                let response = s.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            };
            match tokio::time::timeout(Duration::from_secs(5), exchange).await {
                Ok(Ok((200, _))) => ok += 1,
                Ok(Ok((status, body))) => failed.push(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&body).trim()
                )),
                Ok(Err(e)) => {
                    failed.push(e.to_string());
                    sender = None;
                }
                Err(_) => {
                    failed.push("timed out".to_owned());
                    sender = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, failed)
}

/// `sidecar.clientTls`: the operator mounts the named `kubernetes.io/tls` Secret into each sidecar,
/// and clients reach the traffic port over TLS only (curl, verifying the certificate against its
/// CA, over HTTP/1.1 and HTTP/2); a plaintext request gets a 400 saying the port speaks TLS. A
/// renewed Secret is served once the kubelet (the podlet) has synced the volume, without a
/// restart. Sidecars still reach each other over mutual TLS with their workload certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_traffic_port_over_tls_when_the_stream_names_a_secret() {
    use datastream_api::v1alpha1::SIDECAR_TRAFFIC_PORT;
    let client = client().await.expect("local cluster");
    install_crd();
    let ns = TestNamespace::create("e2e-client-tls");
    let _operator = Operator::start_with(
        "client-tls-0",
        &ns.name,
        &OperatorOptions {
            args: vec!["--leader-elect=false".into()],
            ..OperatorOptions::default()
        },
    );
    // A CA and a certificate for the name clients use, as cert-manager would write them.
    let host = "orders.e2e.test";
    let dir = std::env::temp_dir().join(format!("e2e-client-tls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let first_ca = dir.join("first-ca.crt");
    client_tls_secret(&ns.name, "orders-tls", host, &dir, &first_ca, "create");

    let orders = round_robin_stream_with(
        &client,
        &ns.name,
        "orders",
        2,
        "clientTls: { secretName: orders-tls }",
    )
    .await;
    let curl = |ip: std::net::IpAddr, ca_file: std::path::PathBuf, version: &'static str| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "-o", "/dev/null", version])
                .args(["-w", "%{http_code} %{http_version}", "--cacert"])
                .arg(&ca_file)
                .arg("--resolve")
                .arg(format!("{host}:{SIDECAR_TRAFFIC_PORT}:{ip}"))
                .arg(format!("https://{host}:{SIDECAR_TRAFFIC_PORT}/"))
                .output()
                .expect("curl runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        })
    };
    for pod in &orders {
        let ip = pod_ip(pod);
        assert_eq!(
            curl(ip, first_ca.clone(), "--http1.1").await.unwrap(),
            "200 1.1"
        );
        assert_eq!(
            curl(ip, first_ca.clone(), "--http2").await.unwrap(),
            "200 2"
        );
        let (status, body) = http_get(&format!("http://{ip}:{SIDECAR_TRAFFIC_PORT}/"), &[])
            .await
            .expect("a plaintext request gets an answer");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("https://"), "{body}");
        // The key is the sidecar's alone.
        let spec = pod.spec.as_ref().unwrap();
        let workload = spec
            .containers
            .iter()
            .find(|c| c.name == "workload")
            .unwrap();
        assert!(
            workload
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "datastream-client-tls")
        );
        let (_, metrics) = admin(pod, "/metrics").await.unwrap();
        assert!(
            metrics.lines().any(|l| l.starts_with(
                "datastream_sidecar_client_tls_certificate_expiry_timestamp_seconds "
            ) && !l.ends_with(" 0")),
            "{metrics}"
        );
    }

    // cert-manager renews: the Secret gets a certificate from another CA. Once the kubelet has
    // synced the volume, each sidecar serves it, without a restart.
    let second_ca = dir.join("second-ca.crt");
    client_tls_secret(&ns.name, "orders-tls", host, &dir, &second_ca, "apply");
    for pod in &orders {
        let ip = pod_ip(pod);
        wait_for(
            &ns.name,
            "the renewed certificate served",
            Duration::from_secs(60),
            || {
                let second_ca = second_ca.clone();
                async move { (curl(ip, second_ca, "--http2").await.ok()? == "200 2").then_some(()) }
            },
        )
        .await;
        let old = curl(ip, first_ca.clone(), "--http1.1").await.unwrap();
        assert!(
            old.starts_with("000"),
            "the replaced certificate is still served: {old}"
        );
        let (_, metrics) = admin(pod, "/metrics").await.unwrap();
        assert!(
            metrics.lines().any(|l| l
                .starts_with("datastream_sidecar_client_tls_reloads_total{reason=\"loaded\"}")
                && !l.ends_with(" 0")),
            "{metrics}"
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for pod in &orders {
        let now = pods
            .get(pod.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(now.metadata.uid, pod.metadata.uid, "the pod was replaced");
        assert_eq!(container_restarts(&now, "sidecar"), 0);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes a new CA and a certificate for `host` it signed into `dir`, the CA's certificate to
/// `ca_file`, and creates (`create`) or replaces (`apply`) the `kubernetes.io/tls` Secret `name`.
fn client_tls_secret(
    namespace: &str,
    name: &str,
    host: &str,
    dir: &std::path::Path,
    ca_file: &std::path::Path,
    verb: &str,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "e2e client TLS CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let args = [
        "create",
        "secret",
        "tls",
        name,
        "-n",
        namespace,
        "--cert",
        cert_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ];
    if verb == "create" {
        kubectl_ok(&args);
    } else {
        let manifest = kubectl_ok(&[&args[..], &["--dry-run=client", "-o", "yaml"]].concat());
        let applied = kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
        assert!(applied.ok, "{}", applied.stderr);
    }
}
