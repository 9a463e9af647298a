//! Picking up a changed config file without a restart.
//!
//! The file is polled (content compared, not just its modification time, which editors and
//! ConfigMap symlink swaps make unreliable), and a change must be stable for [`SETTLE`] and
//! non-empty, so a half-written file is never applied. A change is parsed, validated and compiled; if
//! anything fails the reason is logged, counted and shown in `/config`, and the last good
//! configuration stays live. Listener and limit changes need a restart and are reported as such.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::compile::compile;
use super::{FileConfig, Overrides, Resolved};
use crate::state::Shared;

/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A changed file must read the same twice this far apart before it is applied.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Watches `path` until `close` turns true. `initial` is the configuration the sidecar started
/// with; `flags` are re-applied over every new version of the file. The file's current content
/// is read now, as the baseline, so a change made before the returned future first runs is
/// still seen as a change.
pub fn watch_file(
    path: PathBuf,
    flags: Overrides,
    initial: Resolved,
    shared: Arc<Shared>,
    interval: Duration,
    close: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let baseline = std::fs::read_to_string(&path).ok();
    poll_file(path, flags, initial, shared, interval, close, baseline)
}

async fn poll_file(
    path: PathBuf,
    flags: Overrides,
    initial: Resolved,
    shared: Arc<Shared>,
    interval: Duration,
    mut close: watch::Receiver<bool>,
    mut last_text: Option<String>,
) {
    let mut live = initial;
    loop {
        tokio::select! {
            _ = close.wait_for(|c| *c) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(error) => {
                if last_text.is_some() {
                    tracing::warn!(path = %path.display(), %error, "config file unreadable; keeping the live configuration");
                    last_text = None;
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        // A writer that truncates and then writes can be caught in between: apply a version only
        // once it reads the same twice, SETTLE apart, and never an empty file.
        tokio::time::sleep(SETTLE).await;
        match tokio::fs::read_to_string(&path).await {
            Ok(again) if again == text => {}
            _ => continue,
        }
        last_text = Some(text.clone());
        if text.trim().is_empty() {
            shared.reject_config(format!("{}: the file is empty", path.display()));
            continue;
        }
        match apply(&text, &flags, &live, &shared, &path) {
            Ok(next) => live = next,
            Err(errors) => {
                shared.reject_config(format!("{}: {}", path.display(), errors.join("; ")))
            }
        }
    }
}

/// Applies one version of the file: policy and endpoints swap in, other changes are reported.
pub fn apply(
    text: &str,
    flags: &Overrides,
    live: &Resolved,
    shared: &Shared,
    path: &std::path::Path,
) -> Result<Resolved, Vec<String>> {
    let file = FileConfig::parse(text).map_err(|e| vec![e])?;
    let next = Resolved::resolve(&file, flags)?;
    let version = shared.config_status().version + 1;
    let source = format!("file {}", path.display());
    let policy = compile(&next.traffic, version, &source, &shared.metrics)?;
    let r = &next.runtime;
    let l = &live.runtime;
    if (r.traffic, r.peer, r.admin) != (l.traffic, l.peer, l.admin)
        || r.limits.max_connections != l.limits.max_connections
        || r.limits.max_header_bytes != l.limits.max_header_bytes
        || r.limits.max_header_fields != l.limits.max_header_fields
        || r.limits.header_read_timeout != l.limits.header_read_timeout
    {
        tracing::warn!("listener and server-limit changes take effect at the next restart");
    }
    shared.set_policy(policy);
    if next.endpoints != live.endpoints {
        shared.set_endpoints(&next.endpoints);
    }
    Ok(next)
}
