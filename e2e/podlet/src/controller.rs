//! Watches the pods bound to this node and runs one [`Worker`] per pod uid.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::worker::Worker;

/// Runs pods until `shutdown`; then stops every pod's processes (pods stay in the API).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api = Api::<Pod>::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut stream = watcher::watcher(api, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut relist: Option<HashSet<String>> = None;
    let mut tasks = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let workers_stop = CancellationToken::new();

    let dispatch = |pod: Pod,
                    workers: &mut HashMap<String, watch::Sender<Pod>>,
                    finished: &HashSet<String>,
                    tasks: &mut JoinSet<()>| {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if finished.contains(&uid) {
            return;
        }
        if let Some(tx) = workers.get(&uid) {
            tx.send_replace(pod);
            return;
        }
        let (tx, rx) = watch::channel(pod.clone());
        workers.insert(uid.clone(), tx);
        let worker = Worker::new(ctx.clone(), pod);
        let stop = workers_stop.clone();
        let done = done_tx.clone();
        tasks.spawn(async move {
            worker.run(rx, stop).await;
            let _ = done.send(uid);
        });
    };

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                finished.insert(uid);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            ev = stream.next() => match ev {
                Some(Ok(Event::Apply(pod))) => dispatch(pod, &mut workers, &finished, &mut tasks),
                Some(Ok(Event::Delete(pod))) => {
                    // Dropping the sender tells the worker the pod is gone.
                    if let Some(uid) = pod.metadata.uid {
                        workers.remove(&uid);
                    }
                }
                Some(Ok(Event::Init)) => relist = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (relist.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    dispatch(pod, &mut workers, &finished, &mut tasks);
                }
                Some(Ok(Event::InitDone)) => {
                    if let Some(seen) = relist.take() {
                        workers.retain(|uid, _| seen.contains(uid));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod watch error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => anyhow::bail!("pod watch ended"),
            }
        }
    }
    tracing::info!(pods = workers.len(), "stopping all pods");
    workers_stop.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("some pod workers did not stop in time");
    }
    Ok(())
}
