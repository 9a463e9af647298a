//! Cleaning up after a previous podlet run, so that restarting the podlet is safe.
//!
//! Pods are not adopted: their processes are killed and their sandboxes removed, and the pod workers
//! started from the API's pod list restart them (keeping the pod IP when it is still free).

use std::path::Path;

use nix::sys::signal::Signal;

use crate::netns;
use crate::process::{live_pid_from_file, signal_process};
use crate::runtime::{self, Runc};

/// Kills recorded containers (and deletes them from runc), unmounts their root file systems, deletes
/// stale pod network namespaces and veths, and removes the per-pod directories under `pods_run_dir`.
pub async fn leftovers(runc: &Runc, pods_run_dir: &Path) {
    let mut killed = 0;
    for id in runc.list().await {
        runc.delete(&id).await;
        killed += 1;
    }
    runtime::unmount_below(pods_run_dir);
    if let Ok(pods) = std::fs::read_dir(pods_run_dir) {
        for pod in pods.flatten() {
            if let Ok(files) = std::fs::read_dir(pod.path()) {
                for f in files.flatten() {
                    let path = f.path();
                    if path.extension().is_some_and(|e| e == "pid")
                        && let Some(pid) = live_pid_from_file(&path)
                    {
                        signal_process(pid, Signal::SIGKILL);
                        killed += 1;
                    }
                }
            }
            if let Err(e) = std::fs::remove_dir_all(pod.path()) {
                tracing::warn!(dir = %pod.path().display(), error = %e, "removing stale pod directory failed");
            }
        }
    }
    let (namespaces, links) = netns::leftovers().await;
    for link in &links {
        let _ = netns::ip(&["link", "del", link]).await;
    }
    for ns in &namespaces {
        let _ = netns::ip(&["netns", "del", ns]).await;
    }
    if killed + namespaces.len() + links.len() > 0 {
        tracing::info!(
            killed,
            netns = namespaces.len(),
            veths = links.len(),
            "cleaned up after a previous run"
        );
    }
}
