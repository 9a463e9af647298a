//! Whether the controller loop makes progress, for `/healthz`.
//!
//! A live process is not a working operator: a reconcile can hang on an apiserver request that
//! never answers (the client has no deadline on its own), or the loop can stop taking work. Both
//! look healthy to a liveness probe that only asks whether the process answers. This tracker
//! records each reconcile's start and end; the loop is stuck when a reconcile has been running,
//! or no reconcile has finished while streams exist, for longer than [`Progress::limit`]: three
//! resync periods, during which every stream is reconciled at least twice when all is well. Then
//! `/healthz` fails and the kubelet restarts the process, which starts afresh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Counts the streams the controller should be reconciling.
type StreamCount = Box<dyn Fn() -> usize + Send + Sync>;

/// Reconcile starts and ends, shared by the controller and `/healthz`.
pub struct Progress {
    limit: Duration,
    state: Mutex<State>,
    streams: Mutex<Vec<StreamCount>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("limit", &self.limit)
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    next: u64,
    running: BTreeMap<u64, Instant>,
    last_finished: Option<Instant>,
    since: Instant,
}

impl Progress {
    /// A tracker that calls the loop stuck after three resync periods without progress.
    pub fn new(resync: Duration) -> Arc<Self> {
        Arc::new(Progress {
            limit: resync.saturating_mul(3),
            state: Mutex::new(State {
                next: 0,
                running: BTreeMap::new(),
                last_finished: None,
                since: Instant::now(),
            }),
            streams: Mutex::new(Vec::new()),
        })
    }

    /// How long without progress counts as stuck.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Tells the tracker how to count streams that should be reconciled (a controller's cache;
    /// the counts of several controllers add up); until then, and while they count none, an idle
    /// loop is healthy.
    pub fn count_streams_with(&self, count: impl Fn() -> usize + Send + Sync + 'static) {
        self.streams.lock().push(Box::new(count));
        self.state.lock().since = Instant::now();
    }

    /// Records a reconcile's start; the guard records its end when dropped.
    pub fn start(self: &Arc<Self>) -> Running {
        let mut state = self.state.lock();
        let id = state.next;
        state.next += 1;
        state.running.insert(id, Instant::now());
        Running {
            progress: Arc::clone(self),
            id,
        }
    }

    /// Why the loop is stuck, or `None` while it makes progress.
    pub fn stuck(&self) -> Option<String> {
        let now = Instant::now();
        let (oldest, quiet) = {
            let state = self.state.lock();
            let oldest = state.running.values().min().copied();
            let quiet =
                now.duration_since(state.last_finished.unwrap_or(state.since).max(state.since));
            (oldest, quiet)
        };
        if let Some(started) = oldest {
            let running = now.duration_since(started);
            if running > self.limit {
                return Some(format!(
                    "a reconcile has been running for {}s (limit {}s)",
                    running.as_secs(),
                    self.limit.as_secs()
                ));
            }
        }
        if quiet > self.limit {
            let streams: usize = self.streams.lock().iter().map(|count| count()).sum();
            if streams > 0 {
                let exist = if streams == 1 {
                    "1 DataStream exists".to_owned()
                } else {
                    format!("{streams} DataStreams exist")
                };
                return Some(format!(
                    "no reconcile finished for {}s although {exist} (limit {}s)",
                    quiet.as_secs(),
                    self.limit.as_secs()
                ));
            }
        }
        None
    }
}

/// One reconcile in flight; dropping it records its end.
#[derive(Debug)]
pub struct Running {
    progress: Arc<Progress>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.progress.state.lock();
        state.running.remove(&self.id);
        state.last_finished = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_loop_without_streams_is_healthy() {
        let progress = Progress::new(Duration::from_secs(10));
        progress.count_streams_with(|| 0);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(progress.stuck(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_reconcile_finishing_while_streams_exist_is_stuck() {
        let progress = Progress::new(Duration::from_secs(10));
        progress.count_streams_with(|| 4);
        drop(progress.start());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(progress.stuck(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            progress.stuck().as_deref(),
            Some("no reconcile finished for 31s although 4 DataStreams exist (limit 30s)")
        );
        // Progress again: healthy at once.
        drop(progress.start());
        assert_eq!(progress.stuck(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_that_hangs_is_stuck_even_while_others_finish() {
        let progress = Progress::new(Duration::from_secs(10));
        progress.count_streams_with(|| 2);
        let hanging = progress.start();
        for _ in 0..31 {
            drop(progress.start());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            progress.stuck().as_deref(),
            Some("a reconcile has been running for 31s (limit 30s)")
        );
        drop(hanging);
        assert_eq!(progress.stuck(), None);
    }
}
