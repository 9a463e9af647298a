//! Operator scale benchmark: creates N DataStreams at once against the local cluster, starts an
//! operator process, and measures the time until every stream reports its children applied (a
//! status with `observedGeneration`), the API requests per stream (from the apiserver's audit
//! log), the operator's peak RSS, and the writes per minute once everything is steady.
//!
//! Run inside the cluster netns: `e2e/scripts/in-cluster-netns target/release/operator-scale 1000`
//! (see BENCHMARKS.md). Streams use `replicas: 0` so that the measurement is the operator's work,
//! not the process kubelet starting thousands of pods.

use std::time::{Duration, Instant};

use datastream_api::DataStream;
use datastream_e2e::{
    OPERATOR_WRITTEN_RESOURCES, Operator, TestNamespace, audit_now, audited_writes, client,
    kubectl_ok,
};
use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, PostParams};

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

    let since = audit_now();
    let started = Instant::now();
    let operator = Operator::start("bench-scale", &ns.name);
    let pid = operator.pid();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.observed_generation == d.metadata.generation)
            })
            .count();
        if done == count {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {done} of {count} reconciled after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled = started.elapsed();
    // Then until the StatefulSet controller has caught up and every stream says its rollout is
    // complete: only then is the system steady.
    loop {
        let list = api.list(&ListParams::default()).await?;
        let settled = list
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.condition("Progressing"))
                    .is_some_and(|c| c.status == "False")
            })
            .count();
        if settled == count {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("only {settled} of {count} settled after 900 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = started.elapsed();
    let mut owned = OPERATOR_WRITTEN_RESOURCES.to_vec();
    owned.push("events");
    let writes = audited_writes(&ns.name, &owned, &since).len();
    let rss_reconcile = peak_rss_mib(pid);
    let steady_since = audit_now();
    tokio::time::sleep(Duration::from_secs(steady_secs)).await;
    let steady = audited_writes(&ns.name, &owned, &steady_since).len();
    println!(
        "| DataStreams | children applied, status written | all rollouts complete | writes per stream | operator peak RSS | writes in {steady_secs} s once steady |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {count} | {:.1} s | {:.1} s | {:.2} | {:.1} MiB | {steady} |",
        reconciled.as_secs_f64(),
        settled.as_secs_f64(),
        writes as f64 / count as f64,
        rss_reconcile.max(peak_rss_mib(pid)),
    );
    drop(operator);
    Ok(())
}
