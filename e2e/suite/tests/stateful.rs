//! Stateful replicas on the local cluster: stable identities, persistent volumes, and keys that
//! stay with the replica that owns them through rollouts, pod deletion, an operator restart,
//! scaling, a workload crash, scale to zero and deletion of the stream.
//!
//! Keys are written with `affinity` PUTs, so each lives only on its owner's volume: a read that
//! answers 200 proves both that the data survived and that the same replica still owns the key.
//! The owner is predicted independently of the sidecar, by a ring over the replicas' stable names
//! built here from the sidecar's published hash function and virtual-node count.

use std::collections::BTreeMap;
use std::time::Duration;

use datastream_api::v1alpha1::{DataStream, Phase};
use datastream_e2e::*;
use datastream_lb::balance::hash::{RING_VNODES, hash_bytes};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::ListParams;

const STREAM: &str = "kv";
const KEYS: usize = 200;

fn stream_yaml(replicas: i32, roll: &str, retention: &str) -> String {
    format!(
        r#"apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata:
  name: {STREAM}
spec:
  replicas: {replicas}
  workload:
    image: {DEMO_IMAGE}
    port: 8080
    env:
      - name: POD_NAME
        valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }}
      - name: DATA_DIR
        value: /var/lib/kv
      - name: ROLL
        value: "{roll}"
    volumeClaims:
      - name: data
        mountPath: /var/lib/kv
        size: 16Mi
{retention}  sidecar:
    image: {SIDECAR_IMAGE}
  traffic:
    routes:
      - name: kv
        match: {{ path: {{ prefix: /kv }} }}
        mode: affinity
        affinity:
          key: {{ pathSegment: 1 }}
          hashing: ring-hash
"#
    )
}

/// The owner of `key` among `replicas` on a ring of their names (the sidecar's ring-hash).
fn predicted_owner(key: &str, replicas: &[String]) -> String {
    let mut points: Vec<(u64, usize)> = replicas
        .iter()
        .enumerate()
        .flat_map(|(i, name)| {
            (0..RING_VNODES).map(move |v| (hash_bytes(name.as_bytes(), u64::from(v)), i))
        })
        .collect();
    points.sort_unstable();
    let hash = hash_bytes(key.as_bytes(), 0);
    let at = points.partition_point(|(p, _)| *p < hash) % points.len();
    replicas[points[at].1].clone()
}

fn replica_names(n: i32) -> Vec<String> {
    (0..n).map(|i| format!("{STREAM}-{i}")).collect()
}

/// One request through a sidecar: status, `x-replica-id`, body.
async fn exchange(method: &str, url: &str, body: &str) -> anyhow::Result<(u16, String, String)> {
    let answer = http_exchange(method, url, &[], body).await?;
    let replica = answer.header("x-replica-id").to_owned();
    Ok((answer.status, replica, answer.body))
}

/// Pod IPs of the stream's pods that are ready, by pod name.
async fn ready_pods(pods: &Api<Pod>) -> BTreeMap<String, String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STREAM}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect()
}

/// Waits until `n` replicas (`kv-0` … `kv-<n-1>`) are ready on the latest revision and the stream
/// says so, and every sidecar routes over exactly those replicas.
async fn wait_settled(ns: &str, streams: &Api<DataStream>, pods: &Api<Pod>, n: i32, what: &str) {
    wait_for(ns, what, Duration::from_secs(180), || async {
        let ds = streams.get(STREAM).await.ok()?;
        let status = ds.status.clone()?;
        let converged =
            status.current_revision.is_some() && status.current_revision == status.update_revision;
        let ready = ready_pods(pods).await;
        let names: Vec<String> = ready.keys().cloned().collect();
        let mut expected = replica_names(n);
        expected.sort();
        (status.observed_generation == ds.metadata.generation
            && status.ready_replicas == n
            && status.updated_replicas == n
            && status.endpoints.len() == n as usize
            && converged
            && status.outdated_replicas.is_empty()
            && (n == 0 || status.phase == Some(Phase::Available))
            && names == expected)
            .then_some(())
    })
    .await;
}

/// Reads every key through every ready sidecar until all answer as `expect` says, or fails
/// after a minute with the disagreements (sidecars learn endpoint changes within a second).
async fn assert_keys(
    ns: &str,
    pods: &Api<Pod>,
    keys: &BTreeMap<String, String>,
    expect: impl Fn(&str) -> (u16, String),
    what: &str,
) {
    let started = std::time::Instant::now();
    loop {
        let sidecars = ready_pods(pods).await;
        let mut wrong = Vec::new();
        for (i, (key, value)) in keys.iter().enumerate() {
            // Spread the reads over the sidecars: each routes by the same ring.
            let ip = sidecars.values().nth(i % sidecars.len().max(1)).cloned();
            let Some(ip) = ip else {
                wrong.push("no ready sidecar".to_owned());
                break;
            };
            let (want_status, want_owner) = expect(key);
            match exchange("GET", &format!("http://{ip}:7080/kv/{key}"), "").await {
                Ok((status, owner, body))
                    if status == want_status
                        && owner == want_owner
                        && (status != 200 || body == *value) => {}
                Ok((status, owner, _)) => wrong.push(format!(
                    "{key}: {status} from {owner:?}, want {want_status} from {want_owner}"
                )),
                Err(e) => wrong.push(format!("{key}: {e:#}")),
            }
        }
        if wrong.is_empty() {
            eprintln!("{what}: all {} keys as expected", keys.len());
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            dump_state(ns);
            panic!(
                "{what}: {} of {} keys wrong, e.g. {:#?}",
                wrong.len(),
                keys.len(),
                &wrong[..wrong.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn claims_of(list: &[PersistentVolumeClaim]) -> Vec<(String, String)> {
    let mut claims: Vec<(String, String)> = list
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.status.clone().and_then(|s| s.phase).unwrap_or_default(),
            )
        })
        .collect();
    claims.sort();
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_with_their_replica_through_every_disruption() {
    let client = client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-stateful");
    let mut operator = Operator::start("stateful-0", &ns.name);
    let streams: Api<DataStream> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let delete_stream = || {
        kubectl_ok(&[
            "delete",
            "dst",
            STREAM,
            "-n",
            &ns.name,
            "--wait=true",
            "--timeout=90s",
        ]);
    };
    let apply = |yaml: String| {
        let out = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(out.ok, "kubectl apply: {}", out.stderr);
    };

    apply(stream_yaml(3, "1", ""));
    wait_settled(&ns.name, &streams, &pods, 3, "3 replicas ready").await;
    let three = replica_names(3);

    // Write through one sidecar: each key lands on its owner only.
    let sidecars = ready_pods(&pods).await;
    let ip = sidecars.values().next().unwrap().clone();
    let mut keys = BTreeMap::new();
    for i in 0..KEYS {
        let (key, value) = (format!("key-{i}"), format!("value-{i}-{}", i * 7919));
        let (status, owner, body) = exchange("PUT", &format!("http://{ip}:7080/kv/{key}"), &value)
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e:#}"));
        assert!(status / 100 == 2, "PUT {key}: {status} {body}");
        assert_eq!(owner, predicted_owner(&key, &three), "owner of {key}");
        keys.insert(key, value);
    }
    let owner3 = |key: &str| (200, predicted_owner(key, &three));
    assert_keys(&ns.name, &pods, &keys, owner3, "after the writes").await;

    // 1. A rolling update (an env change): every replica replaced, highest ordinal first.
    let before = sets
        .get(STREAM)
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision;
    apply(stream_yaml(3, "2", ""));
    wait_for(
        &ns.name,
        "a new revision",
        Duration::from_secs(30),
        || async {
            let now = streams.get(STREAM).await.ok()?.status?.update_revision;
            (now.is_some() && now != before).then_some(())
        },
    )
    .await;
    // The status names the replicas not yet replaced: the lowest ordinals, since a rollout
    // goes from the highest down, until none is left.
    let seen_outdated = std::sync::Mutex::new(std::collections::BTreeSet::new());
    {
        let (streams, three, seen) = (&streams, &three, &seen_outdated);
        wait_for(
            &ns.name,
            "every replica on the new revision",
            Duration::from_secs(180),
            move || async move {
                let status = streams.get(STREAM).await.ok()?.status?;
                let outdated = status.outdated_replicas.clone();
                assert_eq!(
                    outdated,
                    three[..outdated.len()],
                    "outdated replicas are the lowest ordinals"
                );
                seen.lock().unwrap().insert(outdated.len());
                (outdated.is_empty() && status.updated_replicas == 3).then_some(())
            },
        )
        .await;
    }
    let seen_outdated = seen_outdated.into_inner().unwrap();
    eprintln!("outdated replica counts seen during the rollout: {seen_outdated:?}");
    assert!(
        seen_outdated.len() >= 2,
        "the rollout was never seen in progress: {seen_outdated:?}"
    );
    wait_settled(&ns.name, &streams, &pods, 3, "rolling update complete").await;
    assert_keys(&ns.name, &pods, &keys, owner3, "after a rolling update").await;

    // 2. A deleted pod comes back as the same replica, with its volume.
    let victim = pods.get("kv-1").await.unwrap().metadata.uid;
    kubectl_ok(&["delete", "pod", "kv-1", "-n", &ns.name, "--wait=false"]);
    wait_for(
        &ns.name,
        "kv-1 replaced",
        Duration::from_secs(60),
        || async {
            let uid = pods.get("kv-1").await.ok()?.metadata.uid;
            (uid != victim).then_some(())
        },
    )
    .await;
    wait_settled(&ns.name, &streams, &pods, 3, "kv-1 back").await;
    assert_keys(&ns.name, &pods, &keys, owner3, "after deleting pod kv-1").await;

    // 3. An operator restart changes nothing: no write to the replicas, same owners. The killed
    // leader never released its Lease, so wait until the new one leads and has reconciled the
    // stream (and then some) before counting its writes.
    operator.kill();
    let since = audit_now();
    let operator = Operator::start("stateful-1", &ns.name);
    wait_for(
        &ns.name,
        "the new operator leading and reconciling",
        Duration::from_secs(60),
        || async {
            let metrics = operator.metrics().await.ok()?;
            let reconciled = metrics
                .lines()
                .find(|l| l.starts_with("datastream_operator_reconcile_total{result=\"success\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            (metrics.contains("datastream_operator_leader 1") && reconciled >= 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_settled(&ns.name, &streams, &pods, 3, "steady after the restart").await;
    let writes = audited_writes(&ns.name, &OPERATOR_WRITTEN_RESOURCES, &since);
    assert!(
        writes.is_empty(),
        "the restarted operator wrote: {writes:#?}"
    );
    assert_keys(&ns.name, &pods, &keys, owner3, "after an operator restart").await;

    // 4. Scale 3 -> 4: only the keys the new replica now owns move, to it alone.
    kubectl_ok(&["scale", "dst", STREAM, "-n", &ns.name, "--replicas=4"]);
    wait_settled(&ns.name, &streams, &pods, 4, "4 replicas").await;
    let four = replica_names(4);
    let moved: Vec<&String> = keys
        .keys()
        .filter(|k| predicted_owner(k, &four) != predicted_owner(k, &three))
        .collect();
    assert!(
        moved.iter().all(|k| predicted_owner(k, &four) == "kv-3"),
        "a scale-up moves keys to the new replica only"
    );
    let fraction = moved.len() as f64 / KEYS as f64;
    eprintln!(
        "scale 3->4 moved {} of {KEYS} keys ({:.1} %)",
        moved.len(),
        fraction * 100.0
    );
    assert!(fraction <= 0.4, "moved {fraction:.2}, expected about 1/4");
    // kv-3 owns the moved keys but has no data for them: it answers 404; others still 200.
    assert_keys(
        &ns.name,
        &pods,
        &keys,
        |k| {
            let owner = predicted_owner(k, &four);
            (if owner == "kv-3" { 404 } else { 200 }, owner)
        },
        "with 4 replicas",
    )
    .await;
    // ... and 4 -> 3 moves back exactly those keys, to their old owners, data intact.
    kubectl_ok(&["scale", "dst", STREAM, "-n", &ns.name, "--replicas=3"]);
    wait_settled(&ns.name, &streams, &pods, 3, "back to 3 replicas").await;
    eprintln!("scale 4->3 moved {} of {KEYS} keys back", moved.len());
    assert_keys(&ns.name, &pods, &keys, owner3, "after scaling 3 -> 4 -> 3").await;
    let claims = claims_of(&pvcs.list(&ListParams::default()).await.unwrap().items);
    assert!(
        claims.iter().any(|(n, _)| n == "data-kv-3"),
        "whenScaled Retain keeps the removed replica's claim: {claims:?}"
    );

    // 5. A crash of one replica's workload process: restarted in place, data recovered.
    let pod = pods.get("kv-2").await.unwrap();
    let pid = container_pid(&pod, "workload").to_string();
    let restarts = |p: &Pod| container_restarts(p, "workload");
    let restarts_before = restarts(&pod);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for(
        &ns.name,
        "kv-2's workload restarted",
        Duration::from_secs(90),
        || async {
            let p = pods.get("kv-2").await.ok()?;
            (restarts(&p) > restarts_before).then_some(())
        },
    )
    .await;
    wait_settled(&ns.name, &streams, &pods, 3, "kv-2 ready again").await;
    assert_keys(&ns.name, &pods, &keys, owner3, "after a workload crash").await;

    // 6. Scale to zero and back: the claims stay, and the data with them.
    kubectl_ok(&["scale", "dst", STREAM, "-n", &ns.name, "--replicas=0"]);
    wait_settled(&ns.name, &streams, &pods, 0, "scaled to 0").await;
    wait_for(&ns.name, "no pod left", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    let claims = claims_of(&pvcs.list(&ListParams::default()).await.unwrap().items);
    for name in ["data-kv-0", "data-kv-1", "data-kv-2"] {
        assert!(
            claims
                .iter()
                .any(|(n, phase)| n == name && phase == "Bound"),
            "{name} kept at 0 replicas: {claims:?}"
        );
    }
    kubectl_ok(&["scale", "dst", STREAM, "-n", &ns.name, "--replicas=3"]);
    wait_settled(&ns.name, &streams, &pods, 3, "scaled back to 3").await;
    assert_keys(
        &ns.name,
        &pods,
        &keys,
        owner3,
        "after scaling to 0 and back",
    )
    .await;

    // 7. Deleting the stream keeps the claims by default; a new stream of the same name finds
    // its data again.
    delete_stream();
    wait_for(
        &ns.name,
        "replicas gone",
        Duration::from_secs(90),
        || async {
            let gone = sets.get_opt(STREAM).await.ok()?.is_none()
                && pods
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty();
            gone.then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claims = claims_of(&pvcs.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(
        claims.len(),
        4,
        "whenDeleted Retain keeps every claim: {claims:?}"
    );
    let delete_policy = "    volumeClaimRetention: { whenDeleted: Delete }\n";
    apply(stream_yaml(3, "2", delete_policy));
    wait_settled(&ns.name, &streams, &pods, 3, "the stream re-created").await;
    assert_keys(
        &ns.name,
        &pods,
        &keys,
        owner3,
        "after re-creating the stream",
    )
    .await;

    // 8. With whenDeleted: Delete, deleting the stream removes its claims.
    delete_stream();
    wait_for(
        &ns.name,
        "claims deleted",
        Duration::from_secs(90),
        || async {
            let left = claims_of(&pvcs.list(&ListParams::default()).await.ok()?.items);
            // The claims of the re-created stream's replicas go with it (kv-3 had no replica in it).
            let gone = !left
                .iter()
                .any(|(n, _)| ["data-kv-0", "data-kv-1", "data-kv-2"].contains(&n.as_str()));
            gone.then_some(())
        },
    )
    .await;
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_bind_is_reported_within_seconds() {
    let client = client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-unbound");
    let _operator = Operator::start("unbound-0", &ns.name);
    let streams: Api<DataStream> = Api::namespaced(client.clone(), &ns.name);
    let yaml = stream_yaml(2, "1", "").replace(
        "        size: 16Mi\n",
        "        size: 16Mi\n        storageClassName: no-such-class\n",
    );
    let out = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
    assert!(out.ok, "{}", out.stderr);
    let started = std::time::Instant::now();
    let message = wait_for(
        &ns.name,
        "VolumeClaimPending",
        Duration::from_secs(30),
        || async {
            let status = streams.get(STREAM).await.ok()?.status?;
            let degraded = status.condition("Degraded")?;
            (status.phase == Some(Phase::Degraded) && degraded.reason == "VolumeClaimPending")
                .then(|| degraded.message.clone())
        },
    )
    .await;
    eprintln!("reported after {:?}: {message}", started.elapsed());
    assert!(
        message.contains("data-kv-0") && message.contains("no-such-class"),
        "{message}"
    );
    let wide = kubectl_ok(&["get", "dst", STREAM, "-n", &ns.name, "-o", "wide"]);
    assert!(
        wide.contains("Degraded") && wide.contains("VolumeClaimPending"),
        "{wide}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_storage_and_rollout_specs_are_rejected_at_admission() {
    client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-invalid-storage");
    let valid = stream_yaml(3, "1", "");
    let dry_run = |yaml: &str| {
        kubectl_stdin(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(yaml),
        )
    };
    let out = dry_run(&valid);
    assert!(out.ok, "the valid stream must pass: {}", out.stderr);
    let claim = "        size: 16Mi\n";
    // (case, text replaced, replacement, what the message must name)
    let cases: &[AdmissionCase<'_>] = &[
        (
            "size not a quantity",
            claim,
            "        size: lots\n",
            "volumeClaims[].size must be a positive quantity",
        ),
        (
            "zero size",
            claim,
            "        size: \"0\"\n",
            "volumeClaims[].size must be a positive quantity",
        ),
        (
            "relative mount path",
            "        mountPath: /var/lib/kv\n",
            "        mountPath: var/lib/kv\n",
            "mountPath",
        ),
        (
            "mount path with ..",
            "        mountPath: /var/lib/kv\n",
            "        mountPath: /var/../etc\n",
            "must not contain '..'",
        ),
        (
            "claim name not a DNS label",
            "      - name: data\n",
            "      - name: Data_1\n",
            "volumeClaims[0].name",
        ),
        (
            "unknown access mode",
            claim,
            "        size: 16Mi\n        accessModes: [WriteOnly]\n",
            "accessModes[0]",
        ),
        (
            "repeated access mode",
            claim,
            "        size: 16Mi\n        accessModes: [ReadWriteOnce, ReadWriteOnce]\n",
            "must not repeat a mode",
        ),
        (
            "two claims on one path",
            claim,
            "        size: 16Mi\n      - name: more\n        mountPath: /var/lib/kv\n        size: 1Gi\n",
            "mountPath must be unique",
        ),
        (
            "unknown retention",
            "  sidecar:\n",
            "    volumeClaimRetention: { whenScaled: Archive }\n  sidecar:\n",
            "whenScaled",
        ),
        (
            "maxUnavailable 0",
            "  sidecar:\n",
            "  rollout: { maxUnavailable: 0 }\n  sidecar:\n",
            "rollout.maxUnavailable",
        ),
        (
            "name too long for ordinals",
            "  name: kv\n",
            "  name: a-stream-name-that-is-far-too-long-for-stable-pod-names-x\n",
            "at most 52 characters",
        ),
    ];
    let failures = admission_failures(&ns.name, &valid, cases);
    assert!(failures.is_empty(), "{failures:#?}");

    // Transition rules: a claim never goes below what the replicas' claims have (the status
    // says, written here as the operator would), and its class cannot change.
    let out = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&valid));
    assert!(out.ok, "{}", out.stderr);
    let smaller = valid.replacen(claim, "        size: 8Mi\n", 1);
    let before_status = dry_run(&smaller);
    assert!(
        before_status.ok,
        "no claim exists yet, so any size goes: {}",
        before_status.stderr
    );
    kubectl_ok(&[
        "patch",
        "dst",
        STREAM,
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"volumeClaims":[{"name":"data","size":"16Mi"}]}}"#,
    ]);
    let refused = dry_run(&smaller);
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("cannot be smaller than status.volumeClaims[].size"),
        "shrinking: {}",
        refused.stderr
    );
    let reclassed = dry_run(&valid.replacen(
        claim,
        "        size: 16Mi\n        storageClassName: other\n",
        1,
    ));
    assert!(
        !reclassed.ok && reclassed.stderr.contains("storageClassName is immutable"),
        "changing the class: {}",
        reclassed.stderr
    );
    let grown = dry_run(&valid.replacen(claim, "        size: 1Gi\n", 1));
    assert!(grown.ok, "growing is allowed: {}", grown.stderr);
}

/// Requested and provisioned sizes of a claim.
async fn claim_sizes(pvcs: &Api<PersistentVolumeClaim>, name: &str) -> Option<(String, String)> {
    let claim = pvcs.get(name).await.ok()?;
    let requested = claim.spec?.resources?.requests?.get("storage")?.0.clone();
    let capacity = claim.status?.capacity?.get("storage")?.0.clone();
    Some((requested, capacity))
}

/// UIDs of the stream's pods, by name.
async fn pod_uids(pods: &Api<Pod>) -> BTreeMap<String, String> {
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STREAM}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_grows_in_place_where_its_class_allows_and_is_refused_where_not() {
    let client = client().await.expect("local cluster");
    let ns = TestNamespace::create("e2e-grow");
    let _operator = Operator::start("grow-0", &ns.name);
    let streams: Api<DataStream> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    // Two claims per replica: `data` on the class that allows expansion, `scratch` on the
    // default class, which does not.
    let yaml = |data: &str, scratch: &str| {
        stream_yaml(2, "1", "").replace(
            "        size: 16Mi\n",
            &format!(
                "        size: {data}\n        storageClassName: standard-expandable\n      \
                 - name: scratch\n        mountPath: /scratch\n        size: {scratch}\n"
            ),
        )
    };
    let apply = |yaml: String| {
        let out = kubectl_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(out.ok, "kubectl apply: {}", out.stderr);
    };
    apply(yaml("16Mi", "16Mi"));
    wait_settled(&ns.name, &streams, &pods, 2, "2 replicas ready").await;
    let two = replica_names(2);
    let ip = ready_pods(&pods).await.values().next().unwrap().clone();
    let mut keys = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("grow-{i}"), format!("v{i}"));
        let (status, _, body) = exchange("PUT", &format!("http://{ip}:7080/kv/{key}"), &value)
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e:#}"));
        assert!(status / 100 == 2, "PUT {key}: {status} {body}");
        keys.insert(key, value);
    }
    let uids = pod_uids(&pods).await;
    assert_eq!(uids.len(), 2, "{uids:?}");

    // Growing `data`: every replica's claim is resized in place, and the expansion controller
    // grows the volumes; no pod is replaced and no key moves.
    apply(yaml("32Mi", "16Mi"));
    for name in ["data-kv-0", "data-kv-1"] {
        let sizes = wait_for(
            &ns.name,
            &format!("{name} grown to 32Mi"),
            Duration::from_secs(90),
            || async {
                let (requested, capacity) = claim_sizes(&pvcs, name).await?;
                (requested == "32Mi" && capacity == "32Mi").then_some((requested, capacity))
            },
        )
        .await;
        eprintln!("{name}: requested {}, capacity {}", sizes.0, sizes.1);
    }
    wait_settled(&ns.name, &streams, &pods, 2, "settled after growing").await;
    assert_eq!(
        pod_uids(&pods).await,
        uids,
        "growing a volume replaced a pod"
    );
    let owner = |key: &str| (200, predicted_owner(key, &two));
    assert_keys(&ns.name, &pods, &keys, owner, "after growing a volume").await;

    // Growing `scratch`, whose class does not allow expansion: the stream says why, names the
    // claim, and nothing else changes.
    apply(yaml("32Mi", "32Mi"));
    let message = wait_for(
        &ns.name,
        "VolumeResizeFailed",
        Duration::from_secs(30),
        || async {
            let status = streams.get(STREAM).await.ok()?.status?;
            let degraded = status.condition("Degraded")?;
            (degraded.status == "True" && degraded.reason == "VolumeResizeFailed")
                .then(|| degraded.message.clone())
        },
    )
    .await;
    eprintln!("refused: {message}");
    assert!(message.contains("scratch-kv-0"), "{message}");
    let wide = kubectl_ok(&["get", "dst", STREAM, "-n", &ns.name, "-o", "wide"]);
    assert!(wide.contains("VolumeResizeFailed"), "{wide}");
    assert_eq!(
        claim_sizes(&pvcs, "scratch-kv-0").await.map(|s| s.0),
        Some("16Mi".to_owned())
    );
    assert_eq!(
        pod_uids(&pods).await,
        uids,
        "a refused resize replaced a pod"
    );
    assert_keys(&ns.name, &pods, &keys, owner, "after a refused resize").await;

    // Reverting the size clears the condition.
    apply(yaml("32Mi", "16Mi"));
    wait_settled(&ns.name, &streams, &pods, 2, "settled after reverting").await;
    let status = streams.get(STREAM).await.unwrap().status.unwrap();
    assert!(
        status
            .condition("Degraded")
            .is_none_or(|c| c.status == "False"),
        "{:?}",
        status.condition("Degraded")
    );
}
