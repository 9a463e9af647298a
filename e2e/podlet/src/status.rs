//! Building the pod status a kubelet would report, from the podlet's view of the pod (pure).

use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Exit code (128 + signal when killed by a signal, as container runtimes report).
    pub exit_code: i32,
    /// Signal number when killed by one.
    pub signal: Option<i32>,
    /// `Completed` (exit 0) or `Error`.
    pub reason: String,
    /// When the run started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// `runc://<container id>` of that run.
    pub container_id: String,
    /// Why it ended, when the runtime said (a container that could not start).
    pub message: Option<String>,
}

impl Termination {
    /// Builds a termination record, deriving the reason from the exit code.
    pub fn new(
        exit_code: Option<i32>,
        signal: Option<i32>,
        started_at: Timestamp,
        finished_at: Timestamp,
        container_id: String,
    ) -> Self {
        let exit_code = exit_code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        let reason = if exit_code == 0 { "Completed" } else { "Error" }.to_owned();
        Self {
            exit_code,
            signal,
            reason,
            started_at,
            finished_at,
            container_id,
            message: None,
        }
    }

    fn to_api(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            started_at: Some(Time(self.started_at)),
            finished_at: Some(Time(self.finished_at)),
            container_id: Some(self.container_id.clone()),
            message: self.message.clone(),
        }
    }
}

/// The current state of a container as the podlet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not running, with the kubelet-style reason (`ContainerCreating`, `CrashLoopBackOff`, ...).
    Waiting {
        /// Machine-readable reason.
        reason: String,
        /// Human-readable detail.
        message: Option<String>,
    },
    /// Running since `started_at` as process `pid`.
    Running {
        /// Process id of the container's main process.
        pid: u32,
        /// Start time.
        started_at: Timestamp,
    },
    /// Ended and will not be restarted.
    Terminated(Termination),
}

/// Everything the status needs about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// What the image resolved to (the local binary).
    pub image_id: String,
    /// Current state.
    pub state: RunState,
    /// The previous run, if any.
    pub last_state: Option<Termination>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness probe result (true without a readiness probe once started).
    pub ready: bool,
    /// Startup probe passed (true without one once running).
    pub started: bool,
}

impl ContainerView {
    fn to_api(&self) -> ContainerStatus {
        let (state, container_id) = match &self.state {
            RunState::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                self.last_state.as_ref().map(|t| t.container_id.clone()),
            ),
            RunState::Running { pid, started_at } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..ContainerState::default()
                },
                Some(format!("process://{pid}")),
            ),
            RunState::Terminated(t) => (
                ContainerState {
                    terminated: Some(t.to_api()),
                    ..ContainerState::default()
                },
                Some(t.container_id.clone()),
            ),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id,
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map(|t| ContainerState {
                        terminated: Some(t.to_api()),
                        ..ContainerState::default()
                    })
                    .unwrap_or_default(),
            ),
            ..ContainerStatus::default()
        }
    }
}

/// The podlet's view of a pod.
#[derive(Debug, Clone)]
pub struct PodView {
    /// `metadata.generation`, echoed as `observedGeneration`.
    pub generation: Option<i64>,
    /// Network namespace and volumes are set up.
    pub sandbox_ready: bool,
    /// All init containers completed (true without init containers).
    pub initialized: bool,
    /// Pod IP once allocated.
    pub pod_ip: Option<Ipv4Addr>,
    /// Node address.
    pub host_ip: Ipv4Addr,
    /// When the podlet accepted the pod.
    pub start_time: Timestamp,
    /// `spec.restartPolicy` (`Always` when unset).
    pub restart_policy: String,
    /// Init containers in spec order.
    pub init_containers: Vec<ContainerView>,
    /// App containers in spec order.
    pub containers: Vec<ContainerView>,
}

/// The pod phase per the kubelet's rules for the given containers.
pub fn phase(view: &PodView) -> &'static str {
    if !view.initialized {
        let failed_for_good = view.restart_policy == "Never"
            && view
                .init_containers
                .iter()
                .any(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code != 0));
        return if failed_for_good { "Failed" } else { "Pending" };
    }
    let (mut waiting_new, mut running, mut restarting, mut succeeded, mut failed) = (0, 0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Waiting { .. } if c.last_state.is_some() => restarting += 1,
            RunState::Waiting { .. } => waiting_new += 1,
            RunState::Terminated(t) if t.exit_code == 0 => succeeded += 1,
            RunState::Terminated(_) => failed += 1,
        }
    }
    let _ = succeeded;
    if waiting_new > 0 {
        "Pending"
    } else if running > 0 || restarting > 0 {
        "Running"
    } else if failed > 0 {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// Builds the full status. Conditions keep their `lastTransitionTime` from `previous` while unchanged.
pub fn build(view: &PodView, previous: Option<&PodStatus>, now: Timestamp) -> PodStatus {
    let phase = phase(view);
    let containers_ready = phase == "Running" && view.containers.iter().all(|c| c.ready);
    let condition = |type_: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let prev = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
        let since = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone().unwrap_or(Time(now)),
            _ => Time(now),
        };
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(since),
            observed_generation: view.generation,
            ..PodCondition::default()
        }
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", view.sandbox_ready),
        condition("Initialized", view.initialized),
        condition("Ready", containers_ready),
        condition("ContainersReady", containers_ready),
        condition("PodScheduled", true),
    ];
    let ips = view.pod_ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.to_owned()),
        observed_generation: view.generation,
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.to_string(),
        }]),
        pod_ip: ips.clone(),
        pod_ips: ips.map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(view.start_time)),
        init_container_statuses: (!view.init_containers.is_empty()).then(|| {
            view.init_containers
                .iter()
                .map(ContainerView::to_api)
                .collect()
        }),
        container_statuses: Some(view.containers.iter().map(ContainerView::to_api).collect()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn running(name: &str, ready: bool) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "x/datastream-demo-replica:dev".into(),
            image_id: "podlet:///bin/datastream-demo-replica".into(),
            state: RunState::Running {
                pid: 42,
                started_at: ts(1),
            },
            last_state: None,
            restart_count: 0,
            ready,
            started: true,
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            generation: Some(1),
            sandbox_ready: true,
            initialized: true,
            pod_ip: Some("10.244.1.2".parse().unwrap()),
            host_ip: "10.244.0.1".parse().unwrap(),
            start_time: ts(0),
            restart_policy: "Always".into(),
            init_containers: vec![],
            containers,
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn running_and_ready_pod() {
        let s = build(
            &view(vec![running("a", true), running("b", true)]),
            None,
            ts(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.244.1.2");
        assert_eq!(s.host_ip.as_deref(), Some("10.244.0.1"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.container_id.as_deref(), Some("process://42"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn one_unready_container_makes_pod_unready_and_times_are_stable() {
        let first = build(
            &view(vec![running("a", true), running("b", false)]),
            None,
            ts(5),
        );
        assert_eq!(cond(&first, "Ready").status, "False");
        let again = build(
            &view(vec![running("a", true), running("b", false)]),
            Some(&first),
            ts(9),
        );
        assert_eq!(
            first, again,
            "unchanged view must give an identical status (no needless PATCH)"
        );
        let ready = build(
            &view(vec![running("a", true), running("b", true)]),
            Some(&again),
            ts(12),
        );
        assert_eq!(
            cond(&ready, "Ready").last_transition_time,
            Some(Time(ts(12)))
        );
        assert_eq!(
            cond(&ready, "PodScheduled").last_transition_time,
            Some(Time(ts(5)))
        );
    }

    #[test]
    fn phases() {
        let mut waiting = running("a", false);
        waiting.state = RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        assert_eq!(phase(&view(vec![waiting.clone()])), "Pending");

        let term = |code| Termination::new(Some(code), None, ts(1), ts(2), "process://1".into());
        let mut backoff = waiting.clone();
        backoff.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        backoff.last_state = Some(term(1));
        assert_eq!(phase(&view(vec![backoff])), "Running");

        let mut done = waiting.clone();
        done.state = RunState::Terminated(term(0));
        assert_eq!(phase(&view(vec![done.clone()])), "Succeeded");
        let mut failed = waiting.clone();
        failed.state = RunState::Terminated(term(2));
        assert_eq!(phase(&view(vec![done, failed])), "Failed");

        let mut v = view(vec![waiting]);
        v.initialized = false;
        assert_eq!(phase(&v), "Pending");
    }

    #[test]
    fn termination_reasons_and_last_state() {
        let t = Termination::new(None, Some(9), ts(1), ts(2), "process://7".into());
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "Error"));
        let mut c = running("a", true);
        c.restart_count = 1;
        c.last_state = Some(t);
        let s = build(&view(vec![c]), None, ts(3));
        let cs = &s.container_statuses.unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    }
}
