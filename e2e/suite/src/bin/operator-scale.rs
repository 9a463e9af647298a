//! Operator scale benchmark: creates N DataStreams at once against the local cluster, starts an
//! operator process, and measures the time until every stream reports its children applied (a
//! status with `observedGeneration`), the API requests per stream (from the apiserver's audit
//! log), the operator's peak RSS, and the writes per minute once everything is steady. Then it
//! restarts the operator on the settled streams (writes and RSS of a restart, where nothing is
//! created), and times reconciles of single changed streams among all the others. The
//! apiserver's and etcd's resident memory and CPU time are reported beside the operator's.
//!
//! Run inside the cluster netns: `e2e/scripts/in-cluster-netns target/release/operator-scale 1000`
//! (see BENCHMARKS.md). With `SCALE_RESTART_AB=<operator binary A>,<operator binary B>` it then
//! restarts the operator on the same settled streams with A and B in turn,
//! `SCALE_RESTART_ROUNDS` times each (3 by default), and reports each restart's peak RSS, time to
//! ready and writes: two builds' restarts compared on one cluster, round by round. Streams use
//! `replicas: 0` so that the measurement is the operator's work, not the process kubelet starting
//! thousands of pods.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datastream_api::DataStream;
use datastream_e2e::{
    OPERATOR_WRITTEN_RESOURCES, Operator, TestNamespace, audit_now, audited_writes, client,
    kubectl_ok,
};
use futures::StreamExt;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};

/// Resident memory now (`VmRSS`), in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

fn status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// User + system CPU time of a process so far, in seconds (`/proc/PID/stat` fields 14 and 15,
/// in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after it are counted from its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of the newest process whose command line holds `pattern`.
fn pid_of(pattern: &str) -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-n", "-f", pattern])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// RSS and CPU time of the apiserver and etcd, as a table cell.
fn control_plane(cpu_since: &[(String, u32, f64)]) -> String {
    cpu_since
        .iter()
        .map(|(name, pid, cpu)| {
            format!(
                "{name}: {:.0} MiB RSS (peak {:.0}), {:.1} s CPU",
                rss_mib(*pid),
                status_kib(*pid, "VmHWM:") / 1024.0,
                cpu_seconds(*pid) - cpu
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until the operator answers `/readyz` with `ok` (leading, every watch listed; a standby
/// answers `standby`), up to `limit`.
async fn until_ready(operator: &Operator, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok((200, body)) =
            datastream_e2e::http_get(&format!("http://{}/readyz", operator.admin), &[]).await
            && body.trim() == "ok"
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            anyhow::bail!("operator not ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Streams seen reconciled (a status for their generation) and settled (rollout complete).
#[derive(Default)]
struct Progress {
    reconciled: HashSet<String>,
    settled: HashSet<String>,
}

impl Progress {
    fn see(&mut self, ds: &DataStream) {
        let name = ds.metadata.name.clone().unwrap_or_default();
        let Some(status) = &ds.status else { return };
        if status.observed_generation == ds.metadata.generation {
            self.reconciled.insert(name.clone());
        }
        if status
            .condition("Progressing")
            .is_some_and(|c| c.status == "False")
        {
            self.settled.insert(name);
        }
    }
}

/// One restart of the operator on settled streams, measured.
struct Restarted {
    /// From the start to `/readyz` answering `ok`.
    ready: Duration,
    /// Writes to the operator's resources from the kill to the end of the quiet period.
    writes: usize,
    /// Peak RSS (MiB) over the restart and the quiet period.
    peak_rss: f64,
    /// RSS (MiB) at the end of the quiet period.
    rss: f64,
}

/// Replaces `operator` with one started with `options` (same identity, so that it leads at
/// once), waits until it is ready and then `quiet` longer, and measures the restart.
async fn restart(
    operator: &mut Operator,
    namespace: &str,
    owned: &[&str],
    quiet: Duration,
    options: &datastream_e2e::OperatorOptions,
) -> anyhow::Result<Restarted> {
    operator.kill();
    let since = audit_now();
    *operator = Operator::start_with("bench-scale", namespace, options);
    let pid = operator.pid();
    let ready = until_ready(operator, Duration::from_secs(600)).await?;
    tokio::time::sleep(quiet).await;
    Ok(Restarted {
        ready,
        writes: audited_writes(namespace, owned, &since).len(),
        peak_rss: peak_rss_mib(pid),
        rss: rss_mib(pid),
    })
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let steady_secs: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    let client = client().await?;
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &datastream_e2e::repo()
            .join("crds/datastream.yaml")
            .to_string_lossy(),
    ]);
    let ns = TestNamespace::create("bench-scale");
    let api: Api<DataStream> = Api::namespaced(client.clone(), &ns.name);
    let template: DataStream = serde_saphyr::from_str(
        "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata: {name: x}\nspec:\n  replicas: 0\n  workload: {image: localhost/datastream-demo-replica:dev}\n",
    )?;

    let created = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let mut ds = template.clone();
            ds.metadata.name = Some(format!("s{i:04}"));
            async move {
                api.create(&PostParams::default(), &ds)
                    .await
                    .expect("create DataStream");
            }
        })
        .await;
    println!(
        "created {count} DataStreams in {:.1}s",
        created.elapsed().as_secs_f64()
    );

    // The local control plane runs each component as a subcommand of one binary; etcd is embedded
    // in its supervisor (`k8s-e2e up`, which does little else).
    let control: Vec<(String, u32, f64)> = [
        ("kube-apiserver", "k8s-e2e kube-apiserver"),
        ("etcd", "k8s-e2e up"),
        ("kube-controller-manager", "k8s-e2e kube-controller-manager"),
    ]
    .into_iter()
    .filter_map(|(name, pattern)| {
        let pid = pid_of(pattern)?;
        Some((name.to_owned(), pid, cpu_seconds(pid)))
    })
    .collect();
    // Generous bounds that still end a run gone wrong: 0.2 s per stream to reconcile and 0.3 s
    // to settle, never less than the 600 s and 900 s of a thousand.
    let reconcile_limit = Duration::from_secs((count as u64 / 5).max(600));
    let settle_limit = Duration::from_secs((count as u64 * 3 / 10).max(900));
    let since = audit_now();
    let started = Instant::now();
    let mut operator = Operator::start("bench-scale", &ns.name);
    let pid = operator.pid();
    // Progress from a watch: listing every stream twice a second would make this process, not
    // the operator, the busiest one on the machine at 10,000 streams.
    let progress = Arc::new(Mutex::new(Progress::default()));
    let watch = tokio::spawn({
        let progress = progress.clone();
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each(move |ds| {
                if let Ok(ds) = ds {
                    progress.lock().unwrap().see(&ds);
                }
                futures::future::ready(())
            })
    });
    loop {
        let done = progress.lock().unwrap().reconciled.len();
        if done == count {
            break;
        }
        if started.elapsed() > reconcile_limit {
            anyhow::bail!("only {done} of {count} reconciled after {reconcile_limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled = started.elapsed();
    // Then until the StatefulSet controller has caught up and every stream says its rollout is
    // complete: only then is the system steady.
    loop {
        let settled = progress.lock().unwrap().settled.len();
        if settled == count {
            break;
        }
        if started.elapsed() > settle_limit {
            anyhow::bail!("only {settled} of {count} settled after {settle_limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = started.elapsed();
    watch.abort();
    let mut owned = OPERATOR_WRITTEN_RESOURCES.to_vec();
    owned.push("events");
    let writes = audited_writes(&ns.name, &owned, &since).len();
    let rss_reconcile = peak_rss_mib(pid);
    let steady_since = audit_now();
    tokio::time::sleep(Duration::from_secs(steady_secs)).await;
    let steady = audited_writes(&ns.name, &owned, &steady_since).len();
    let first_rss = rss_reconcile.max(peak_rss_mib(pid));
    let first_now = rss_mib(pid);
    let first_cpu = cpu_seconds(pid);
    let control_first = control_plane(&control);

    // A restart on settled streams: every cache is listed again, nothing needs creating.
    let quiet = Duration::from_secs(steady_secs);
    let restarted = restart(&mut operator, &ns.name, &owned, quiet, &Default::default()).await?;

    // Single changed streams among all the others: the time from the spec change to the status
    // that reports its generation (children applied, status written).
    let mut latencies = Vec::new();
    for round in 0..5 {
        let name = format!("s{:04}", (round * 7919) % count);
        let patch =
            serde_json::json!({"spec": {"workload": {"args": [format!("--bench-round={round}")]}}});
        let changed = Instant::now();
        let after = api
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        let generation = after.metadata.generation;
        loop {
            let ds = api.get(&name).await?;
            if ds.status.as_ref().and_then(|s| s.observed_generation) == generation {
                break;
            }
            if changed.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("{name} not reconciled 60 s after a change");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies.push(changed.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);

    println!(
        "| DataStreams | children applied, status written | all rollouts complete | writes per stream | operator peak RSS | operator RSS once steady | writes in {steady_secs} s once steady |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {:.1} s | {:.1} s | {:.2} | {first_rss:.1} MiB | {first_now:.1} MiB | {steady} |",
        reconciled.as_secs_f64(),
        settled.as_secs_f64(),
        writes as f64 / count as f64,
    );
    println!();
    println!("operator CPU time, start to steady: {first_cpu:.1} s");
    println!("control plane from the operator's start to steady: {control_first}");
    println!(
        "restart on settled streams: ready (every watch listed) in {:.1} s; writes in the {steady_secs} s after: {}; peak RSS {:.1} MiB, {:.1} MiB once steady",
        restarted.ready.as_secs_f64(),
        restarted.writes,
        restarted.peak_rss,
        restarted.rss,
    );
    println!(
        "one changed stream among {count}, spec change to status with its generation (ms, 5 rounds): {} (median {:.0})",
        latencies
            .iter()
            .map(|l| format!("{l:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        sorted[sorted.len() / 2]
    );
    println!("control plane, whole run: {}", control_plane(&control));

    if let Ok(pair) = std::env::var("SCALE_RESTART_AB") {
        let builds: Vec<&str> = pair.split(',').collect();
        anyhow::ensure!(
            builds.len() == 2,
            "SCALE_RESTART_AB takes two operator binaries separated by a comma, not {pair:?}"
        );
        let rounds: usize = std::env::var("SCALE_RESTART_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        println!();
        println!(
            "| round | build | ready | peak RSS | RSS once steady | writes in {steady_secs} s |"
        );
        println!("|---|---|---|---|---|---|");
        for round in 1..=rounds {
            for (label, path) in ["A", "B"].into_iter().zip(&builds) {
                let options = datastream_e2e::OperatorOptions {
                    binary: Some(path.into()),
                    ..Default::default()
                };
                let r = restart(&mut operator, &ns.name, &owned, quiet, &options).await?;
                println!(
                    "| {round} | {label} ({path}) | {:.1} s | {:.1} MiB | {:.1} MiB | {} |",
                    r.ready.as_secs_f64(),
                    r.peak_rss,
                    r.rss,
                    r.writes,
                );
            }
        }
    }
    drop(operator);
    Ok(())
}
