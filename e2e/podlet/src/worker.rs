//! One task per pod: claims, sandbox, volumes, container processes, probes, restarts, status and
//! deletion.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus, Probe};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, CRASH_LOOP_BACK_OFF};
use crate::claims::{self, ClaimError, ClaimMount};
use crate::context::Context;
use crate::env::{self, PodFacts};
use crate::events::PodEvents;
use crate::images::ImageError;
use crate::netns::{self, SandboxNames};
use crate::probe::{self, ProbeKind, ProbeTiming, ProbeTracker};
use crate::process::{signal_process, write_pid_file};
use crate::runtime::{self, BindMount, Bundle, ContainerRun};
use crate::security;
use crate::status::{self, ContainerView, PodView, RunState, Termination};
use crate::volumes::Volumes;

/// Delay before retrying a sandbox, volume or config failure.
const RETRY: Duration = Duration::from_secs(5);
/// Grace used when the podlet itself shuts down or the pod vanished from the API.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// While a claim stays unusable with the same reason, its `FailedMount` event repeats this often (the
/// status message is always current; the event is what `kubectl describe pod` shows).
const MOUNT_EVENT_INTERVAL: Duration = Duration::from_secs(30);

/// What a pod worker learns from its helper tasks.
#[derive(Debug)]
enum Event {
    Exited {
        idx: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
        /// The memory cgroup reported an OOM kill.
        oom: bool,
        /// The runtime could not start the process (runc's message).
        start_error: Option<String>,
    },
    Probe {
        idx: usize,
        generation: u64,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

/// Per-container runtime state.
struct Ctr {
    spec: Container,
    init: bool,
    view: ContainerView,
    generation: u64,
    pid: Option<u32>,
    started_instant: Option<Instant>,
    backoff: Backoff,
    next_start: Option<Instant>,
    probes: Option<CancellationToken>,
    startup: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
    /// Set when the podlet killed the process (liveness/startup failure), to explain the exit.
    kill_reason: Option<String>,
    /// Image pulls failed in a row (the first shows `ErrImagePull`, later ones `ImagePullBackOff`).
    pull_failures: u32,
    /// `runc://<id>` of the current or last run.
    container_id: String,
}

impl Ctr {
    fn new(
        spec: Container,
        init: bool,
        restart_count: i32,
        last_state: Option<Termination>,
    ) -> Self {
        let view = ContainerView {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state,
            restart_count,
            ready: false,
            started: false,
        };
        Self {
            spec,
            init,
            view,
            generation: 0,
            pid: None,
            started_instant: None,
            backoff: Backoff::default(),
            next_start: Some(Instant::now()),
            probes: None,
            startup: None,
            liveness: None,
            readiness: None,
            kill_reason: None,
            pull_failures: 0,
            container_id: String::new(),
        }
    }

    fn running(&self) -> bool {
        matches!(self.view.state, RunState::Running { .. })
    }

    fn waiting(&mut self, reason: &str, message: impl Into<String>) {
        self.view.state = RunState::Waiting {
            reason: reason.into(),
            message: Some(message.into()),
        };
    }
}

struct Sandbox {
    names: SandboxNames,
    ip: Ipv4Addr,
    volumes: Volumes,
    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of the pod, mounted into every container.
    etc_files: Vec<BindMount>,
}

/// The pod worker.
pub struct Worker {
    ctx: Arc<Context>,
    pod: Pod,
    uid: String,
    ns: String,
    name: String,
    sandbox: Option<Sandbox>,
    sandbox_retry: Option<Instant>,
    /// The last `FailedMount` event: its message and when it was published.
    mount_warning: Option<(String, Instant)>,
    ctrs: Vec<Ctr>,
    start_time: Timestamp,
    last_sent: Option<PodStatus>,
    status_retry: Option<Instant>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    recorder: PodEvents,
}

impl Worker {
    /// A worker for `pod` (as first seen by the watch).
    pub fn new(ctx: Arc<Context>, pod: Pod) -> Self {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ctrs: Vec<Ctr> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let (n, last) = carried_over(previous.init_container_statuses.as_ref(), &c.name);
                Ctr::new(c, true, n, last)
            })
            .collect();
        ctrs.extend(spec.containers.into_iter().map(|c| {
            let (n, last) = carried_over(previous.container_statuses.as_ref(), &c.name);
            Ctr::new(c, false, n, last)
        }));
        let start_time = previous
            .start_time
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let recorder = PodEvents::new(ctx.client.clone(), &ctx.node.name, &pod);
        Self {
            ctx,
            pod,
            uid,
            ns,
            name,
            sandbox: None,
            sandbox_retry: None,
            mount_warning: None,
            ctrs,
            start_time,
            last_sent: None,
            status_retry: None,
            events_tx,
            events_rx,
            recorder,
        }
    }

    /// Runs the pod until it is deleted (then finalises the deletion in the API), until the pod vanishes
    /// from the watch, or until `shutdown` (then processes stop but the pod stays in the API).
    pub async fn run(mut self, mut pod_rx: watch::Receiver<Pod>, shutdown: CancellationToken) {
        tracing::info!(pod = %self.key(), uid = %self.uid, "pod worker started");
        let terminal_at_start = matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self.grace_period();
                self.terminate(grace).await;
                self.teardown().await;
                self.finalize_deletion().await;
                return;
            }
            // A pod that already finished (before a podlet restart) keeps its final status untouched.
            if !terminal_at_start {
                self.reconcile().await;
                self.sync_status().await;
            }
            let wake = self.next_wakeup();
            tokio::select! {
                changed = pod_rx.changed() => match changed {
                    Ok(()) => self.pod = pod_rx.borrow_and_update().clone(),
                    Err(_) => {
                        tracing::info!(pod = %self.key(), "pod gone from the API; stopping its processes");
                        self.terminate(SHUTDOWN_GRACE).await;
                        self.teardown().await;
                        return;
                    }
                },
                Some(ev) = self.events_rx.recv() => self.on_event(ev),
                () = sleep_until_opt(wake) => {}
                () = shutdown.cancelled() => {
                    self.terminate(SHUTDOWN_GRACE.min(self.grace_period())).await;
                    self.teardown().await;
                    return;
                }
            }
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn grace_period(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn facts(&self) -> PodFacts {
        let meta = &self.pod.metadata;
        PodFacts {
            name: self.name.clone(),
            namespace: self.ns.clone(),
            uid: self.uid.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            node_name: self.ctx.node.name.clone(),
            service_account: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            pod_ip: self
                .sandbox
                .as_ref()
                .map(|s| s.ip.to_string())
                .unwrap_or_default(),
            host_ip: self.ctx.node.ip.to_string(),
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut wake = [self.sandbox_retry, self.status_retry]
            .into_iter()
            .chain(self.ctrs.iter().map(|c| c.next_start))
            .flatten()
            .min();
        if let Some(at) = self.sandbox.as_ref().and_then(|s| s.volumes.next_refresh()) {
            let secs = at.duration_since(Timestamp::now()).as_secs().max(0);
            let token_wake = Instant::now() + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
            wake = Some(wake.map_or(token_wake, |w| w.min(token_wake)));
        }
        wake
    }

    /// Brings the pod closer to running: claims and sandbox first, then init containers in order, then
    /// the rest.
    async fn reconcile(&mut self) {
        if self.sandbox.is_none() {
            // A finished pod gave its sandbox back and runs nothing more.
            if self.terminal() || self.sandbox_retry.is_some_and(|t| t > Instant::now()) {
                return;
            }
            // As in the kubelet, volumes come before the sandbox: a pod waiting for its claims has no
            // IP yet.
            let claims = match claims::resolve(&self.ctx.client, &self.pod, &self.ns).await {
                Ok(c) => c,
                Err(e) => return self.wait_for_claims(&e),
            };
            self.mount_warning = None;
            if let Err(e) = self.create_sandbox(&claims).await {
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "sandbox setup failed; will retry");
                self.recorder
                    .warning("FailedCreatePodSandBox", "CreateSandbox", format!("{e:#}"));
                for c in &mut self.ctrs {
                    c.waiting("ContainerCreating", format!("{e:#}"));
                }
                self.sandbox_retry = Some(Instant::now() + RETRY);
                return;
            }
            self.sandbox_retry = None;
        }
        if let Some(sb) = self.sandbox.as_mut()
            && sb
                .volumes
                .next_refresh()
                .is_some_and(|t| t <= Timestamp::now())
        {
            let facts = self.facts();
            let key = self.key();
            let sb = self.sandbox.as_mut().expect("checked above");
            if let Err(e) = sb
                .volumes
                .refresh_tokens(&self.ctx.client, &self.pod, &facts)
                .await
            {
                tracing::warn!(pod = %key, error = %e, "token refresh failed");
            }
            if let Err(e) = sb
                .volumes
                .sync_objects(&self.ctx.client, &facts.namespace)
                .await
            {
                tracing::warn!(pod = %key, error = %e, "ConfigMap/Secret volume sync failed");
            }
        }
        if self.terminal() {
            return;
        }
        let now = Instant::now();
        // Init containers run one at a time; app containers only once all of them completed.
        for idx in 0..self.ctrs.len() {
            let c = &self.ctrs[idx];
            if c.init && matches!(&c.view.state, RunState::Terminated(t) if t.exit_code == 0) {
                continue;
            }
            if c.running() || matches!(c.view.state, RunState::Terminated(_)) {
                if c.init {
                    break;
                }
                continue;
            }
            if c.next_start.is_some_and(|t| t <= now) {
                self.start(idx).await;
            }
            if self.ctrs[idx].init {
                break;
            }
        }
    }

    /// Keeps every container `ContainerCreating` with the claim's reason, warns with `FailedMount` (when
    /// the reason changes, and every [`MOUNT_EVENT_INTERVAL`] while it stays) and retries soon.
    fn wait_for_claims(&mut self, e: &ClaimError) {
        let msg = e.to_string();
        let now = Instant::now();
        let publish = self.mount_warning.as_ref().is_none_or(|(last, at)| {
            *last != msg || now.duration_since(*at) >= MOUNT_EVENT_INTERVAL
        });
        if publish {
            tracing::info!(pod = %self.key(), reason = %msg, "volumes not ready; waiting");
            self.recorder.warning(
                "FailedMount",
                "MountVolume",
                format!("Unable to attach or mount volumes: {msg}"),
            );
            self.mount_warning = Some((msg.clone(), now));
        }
        for c in &mut self.ctrs {
            c.waiting("ContainerCreating", msg.clone());
        }
        self.sandbox_retry = Some(now + e.retry_after());
    }

    fn initialized(&self) -> bool {
        self.ctrs
            .iter()
            .filter(|c| c.init)
            .all(|c| matches!(&c.view.state, RunState::Terminated(t) if t.exit_code == 0))
    }

    fn terminal(&self) -> bool {
        matches!(status::phase(&self.view()), "Succeeded" | "Failed")
    }

    async fn create_sandbox(&mut self, claims: &HashMap<String, ClaimMount>) -> anyhow::Result<()> {
        let names = SandboxNames::for_uid(&self.uid);
        let preferred = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = self
            .ctx
            .ipam
            .lock()
            .expect("ipam lock poisoned")
            .allocate(preferred)
            .ok_or_else(|| anyhow::anyhow!("pod CIDR exhausted"))?;
        let result = async {
            netns::create(&names, &self.ctx.bridge, ip, self.ctx.cluster_prefix).await?;
            let dir = self.ctx.pod_dir(&self.uid);
            std::fs::create_dir_all(dir.join("volumes"))?;
            let mut facts = self.facts();
            facts.pod_ip = ip.to_string();
            let mut volumes = Volumes::prepare(
                &self.ctx.client,
                &self.pod,
                &facts,
                &dir.join("volumes"),
                claims,
            )
            .await?;
            if let Some(gid) = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.fs_group)
            {
                volumes.apply_fs_group(u32::try_from(gid)?)?;
            }
            let etc_files = write_etc_files(&dir, &self.name, ip)?;
            anyhow::Ok((volumes, etc_files))
        }
        .await;
        match result {
            Ok((volumes, etc_files)) => {
                tracing::info!(pod = %self.key(), %ip, netns = %names.netns, "sandbox ready");
                self.sandbox = Some(Sandbox {
                    names,
                    ip,
                    volumes,
                    etc_files,
                });
                Ok(())
            }
            Err(e) => {
                netns::destroy(&names).await;
                self.ctx
                    .ipam
                    .lock()
                    .expect("ipam lock poisoned")
                    .release(ip);
                Err(e)
            }
        }
    }

    async fn start(&mut self, idx: usize) {
        let Some(sb) = self.sandbox.as_ref() else {
            return;
        };
        let facts = self.facts();
        let spec = self.ctrs[idx].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let pulled = match self.ctx.images.pull(&image).await {
            Ok(p) => {
                self.ctrs[idx].pull_failures = 0;
                p
            }
            Err(e) => return self.pull_failed(idx, &image, &e),
        };
        let (cms, secrets) = env::referenced_objects(&spec);
        let sources =
            match crate::objects::env_sources(&self.ctx.client, &self.ns, cms, secrets).await {
                Ok(s) => s,
                Err(e) => return self.hold(idx, "CreateContainerConfigError", e.to_string()),
            };
        // The image's environment comes first; the service variables and the container's own
        // override it.
        let mut base: Vec<(String, String)> = pulled
            .defaults
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        base.extend(self.ctx.service_env());
        let mut env = match env::resolve(&spec, &facts, &sources, &base) {
            Ok(env) => env,
            Err(e) => return self.hold(idx, "CreateContainerConfigError", e.to_string()),
        };
        let security = match security::resolve(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref()),
            spec.security_context.as_ref(),
            pulled.defaults.user.as_deref(),
            &pulled.rootfs,
        ) {
            Ok(s) => s,
            Err(e) => return self.hold(idx, "CreateContainerConfigError", e),
        };
        for (k, v) in [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOSTNAME", self.name.as_str()),
            ("HOME", security.home.as_str()),
        ] {
            if !env.iter().any(|(name, _)| name == k) {
                env.push((k.into(), v.into()));
            }
        }
        let command = env::expand_all(spec.command.as_deref().unwrap_or_default(), &env);
        let args = env::expand_all(spec.args.as_deref().unwrap_or_default(), &env);
        let argv = security::argv(&command, &args, &pulled.defaults);
        if argv.is_empty() {
            return self.hold(
                idx,
                "CreateContainerError",
                "no command specified: neither the container nor its image names one",
            );
        }
        let mut mounts = match sb.volumes.mounts_for(&spec) {
            Ok(m) => m,
            Err(e) => return self.hold(idx, "CreateContainerConfigError", e),
        };
        mounts.extend(sb.etc_files.iter().cloned());
        let resources = match security::Resources::of(&spec) {
            Ok(r) => r,
            Err(e) => return self.hold(idx, "CreateContainerConfigError", e),
        };
        let dir = self.ctx.pod_dir(&self.uid);
        let bundle = Bundle::new(&dir, &self.uid, &spec.name);
        let run = ContainerRun {
            hostname: self.name.clone(),
            netns_path: sb.names.netns_path(),
            args: argv,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: spec
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .or(pulled.defaults.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            uid: security.uid,
            gid: security.gid,
            additional_gids: security.additional_gids,
            capabilities: security.capabilities,
            no_new_privileges: security.no_new_privileges,
            read_only_root: security.read_only_root,
            mounts,
            memory_limit: resources.memory_limit,
            cpu_limit_millis: resources.cpu_limit_millis,
            cpu_request_millis: resources.cpu_request_millis,
            cgroups_path: format!("/datastream-podlet/{}", bundle.id),
        };
        let prepared =
            runtime::runtime_spec(&run).and_then(|oci| bundle.prepare(&pulled.rootfs, &oci));
        if let Err(e) = prepared {
            return self.hold(idx, "CreateContainerError", format!("{e:#}"));
        }
        let log = self.ctx.log_path(&self.ns, &self.name, &spec.name);
        let image_id = format!("{}@{}", image_name(&image), pulled.digest);
        let container_id = format!("runc://{}", bundle.id);
        let started = match self.ctx.runc.start(&bundle, &log).await {
            Ok(s) => s,
            Err(e) => return self.start_failed(idx, image_id, container_id, e.0),
        };
        let pid = started.pid;
        if let Err(e) = write_pid_file(&dir.join(format!("{}.pid", spec.name)), pid) {
            tracing::warn!(pod = %self.key(), error = %e, "writing pid file failed");
        }
        let (mut runc_child, oom) = (started.runc, started.oom);
        let runc = self.ctx.runc.clone();
        let id = bundle.id.clone();
        let c = &mut self.ctrs[idx];
        c.generation += 1;
        let generation = c.generation;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let (code, signal) = match runc_child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    (st.code(), st.signal())
                }
                Err(_) => (Some(255), None),
            };
            // runc reports a kill as 128 + signal; the OOM notification may trail the exit.
            if code == Some(137) && !oom.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            runc.delete(&id).await;
            let _ = tx.send(Event::Exited {
                idx,
                generation,
                code,
                signal,
                oom: oom.load(Ordering::SeqCst),
                start_error: None,
            });
        });
        c.pid = Some(pid);
        c.started_instant = Some(Instant::now());
        c.next_start = None;
        c.kill_reason = None;
        c.view.image_id = image_id;
        c.container_id = container_id;
        c.view.state = RunState::Running {
            pid,
            started_at: Timestamp::now(),
        };
        let probe_of =
            |p: &Option<Probe>| p.as_ref().map(|p| ProbeTracker::new(ProbeTiming::of(p)));
        c.startup = probe_of(&c.spec.startup_probe);
        c.liveness = probe_of(&c.spec.liveness_probe);
        c.readiness = probe_of(&c.spec.readiness_probe);
        c.view.started = c.startup.is_none();
        c.view.ready = c.view.started && c.readiness.is_none() && !c.init;
        let token = CancellationToken::new();
        c.probes = Some(token.clone());
        let restarts = c.view.restart_count;
        let is_init = c.init;
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %spec.name, pid, restarts, "container started");
        self.recorder.normal(
            "Started",
            "StartContainer",
            format!("Started container {} (pid {pid})", spec.name),
        );
        if !is_init {
            let ip = IpAddr::V4(sb.ip);
            for (kind, probe) in [
                (ProbeKind::Startup, &spec.startup_probe),
                (ProbeKind::Liveness, &spec.liveness_probe),
                (ProbeKind::Readiness, &spec.readiness_probe),
            ] {
                if let Some(p) = probe.clone() {
                    let tx = self.events_tx.clone();
                    tokio::spawn(probe_loop(
                        p,
                        spec.clone(),
                        ip,
                        kind,
                        idx,
                        generation,
                        tx,
                        token.clone(),
                    ));
                }
            }
        }
    }

    /// Keeps a container waiting with `reason` and retries later.
    fn hold(&mut self, idx: usize, reason: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(pod = %self.key(), container = %self.ctrs[idx].spec.name, reason, %message, "container cannot start");
        self.recorder.warning(
            "Failed",
            "StartContainer",
            format!("Error: {reason}: {message}"),
        );
        let c = &mut self.ctrs[idx];
        c.waiting(reason, message);
        c.next_start = Some(Instant::now() + RETRY * 2);
    }

    /// An image that cannot be pulled: `ErrImagePull` at first, then `ImagePullBackOff` while the
    /// retries back off (10 s doubling to 5 min, the kubelet's image back-off).
    fn pull_failed(&mut self, idx: usize, image: &str, e: &ImageError) {
        let key = self.key();
        let c = &mut self.ctrs[idx];
        c.pull_failures += 1;
        let failures = c.pull_failures;
        let delay =
            Duration::from_secs(10 * (1u64 << (failures - 1).min(5))).min(Duration::from_secs(300));
        let (reason, message) = if failures == 1 || e.reason() != "ErrImagePull" {
            (e.reason(), e.to_string())
        } else {
            (
                "ImagePullBackOff",
                format!("Back-off pulling image {image:?}: ErrImagePull: {e}"),
            )
        };
        tracing::warn!(pod = %key, container = %c.spec.name, reason, %message, "image pull failed");
        let event = if reason == "ImagePullBackOff" {
            "BackOff"
        } else {
            "Failed"
        };
        self.recorder
            .warning(event, "PullImage", format!("Error: {reason}: {message}"));
        c.waiting(reason, message);
        // The first failure is retried at once so that the back-off shows in the status, as the
        // kubelet's second sync would.
        c.next_start = Some(Instant::now() + if failures == 1 { RETRY / 5 } else { delay });
    }

    /// runc could not start the process (for example a missing executable): the run ends at once
    /// with exit code 128 and reason `StartError`, as with containerd, and restarts back off.
    fn start_failed(
        &mut self,
        idx: usize,
        image_id: String,
        container_id: String,
        message: String,
    ) {
        tracing::warn!(pod = %self.key(), container = %self.ctrs[idx].spec.name, %message, "container failed to start");
        self.recorder.warning(
            "Failed",
            "StartContainer",
            format!(
                "Error: failed to start container {:?}: {message}",
                self.ctrs[idx].spec.name
            ),
        );
        let c = &mut self.ctrs[idx];
        c.generation += 1;
        c.view.image_id = image_id;
        c.container_id = container_id;
        c.started_instant = Some(Instant::now());
        c.view.state = RunState::Running {
            pid: 0,
            started_at: Timestamp::now(),
        };
        c.next_start = None;
        let _ = self.events_tx.send(Event::Exited {
            idx,
            generation: c.generation,
            code: Some(128),
            signal: None,
            oom: false,
            start_error: Some(message),
        });
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Exited {
                idx,
                generation,
                code,
                signal,
                oom,
                start_error,
            } => self.on_exit(idx, generation, code, signal, oom, start_error),
            Event::Probe {
                idx,
                generation,
                kind,
                result,
            } => self.on_probe(idx, generation, kind, result),
        }
    }

    fn on_exit(
        &mut self,
        idx: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
        oom: bool,
        start_error: Option<String>,
    ) {
        let policy = self.restart_policy();
        let key = self.key();
        let dir = self.ctx.pod_dir(&self.uid);
        let c = &mut self.ctrs[idx];
        if c.generation != generation {
            return;
        }
        if let Some(t) = c.probes.take() {
            t.cancel();
        }
        let _ = std::fs::remove_file(dir.join(format!("{}.pid", c.spec.name)));
        let started_at = match &c.view.state {
            RunState::Running { started_at, .. } => *started_at,
            _ => Timestamp::now(),
        };
        let container_id = c.container_id.clone();
        c.pid = None;
        let ran_for = c
            .started_instant
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let mut term = Termination::new(code, signal, started_at, Timestamp::now(), container_id);
        if oom {
            term.reason = "OOMKilled".into();
        } else if let Some(message) = start_error {
            term.reason = "StartError".into();
            term.message = Some(message);
        }
        tracing::info!(pod = %key, container = %c.spec.name, exit_code = term.exit_code, ?signal,
            reason = c.kill_reason.as_deref().unwrap_or("exited"), "container terminated");
        c.view.ready = false;
        c.view.started = false;
        let succeeded = term.exit_code == 0;
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => !succeeded,
            _ => !(c.init && succeeded),
        };
        if !restart {
            c.view.state = RunState::Terminated(term);
            c.next_start = None;
            return;
        }
        let delay = c.backoff.next_delay(ran_for);
        c.view.restart_count += 1;
        c.view.last_state = Some(term);
        if delay.is_zero() {
            c.waiting("ContainerCreating", "restarting");
        } else {
            let msg = format!(
                "back-off {}s restarting failed container={} pod={}",
                delay.as_secs(),
                c.spec.name,
                key
            );
            let note = format!("Back-off restarting failed container {}", c.spec.name);
            self.recorder.warning("BackOff", "StartContainer", note);
            c.waiting(CRASH_LOOP_BACK_OFF, msg);
        }
        c.next_start = Some(Instant::now() + delay);
    }

    fn on_probe(
        &mut self,
        idx: usize,
        generation: u64,
        kind: ProbeKind,
        result: Result<(), String>,
    ) {
        let key = self.key();
        let c = &mut self.ctrs[idx];
        if c.generation != generation || !c.running() {
            return;
        }
        let what = match kind {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        };
        // Liveness and readiness only count once the container has started, as in the kubelet.
        if kind != ProbeKind::Startup && !c.view.started {
            return;
        }
        let ok = result.is_ok();
        if let Err(why) = &result {
            // One event per failed check, as the kubelet does; the recorder folds repeats into a series.
            tracing::debug!(pod = %key, container = %c.spec.name, probe = what, %why, "probe failed");
            self.recorder
                .warning("Unhealthy", "Probe", format!("{what} probe failed: {why}"));
        }
        let tracker = match kind {
            ProbeKind::Startup => c.startup.as_mut(),
            ProbeKind::Liveness => c.liveness.as_mut(),
            ProbeKind::Readiness => c.readiness.as_mut(),
        };
        let Some(outcome) = tracker.and_then(|t| t.record(ok)) else {
            return;
        };
        match (kind, outcome) {
            (ProbeKind::Startup, true) => {
                c.view.started = true;
                c.view.ready = c.readiness.is_none();
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let note = format!(
                    "Container {} failed {} probe, will be restarted",
                    c.spec.name,
                    what.to_lowercase()
                );
                self.recorder.normal("Killing", "KillContainer", note);
                kill_for(c, &key, &format!("{} probe failed", what.to_lowercase()));
            }
            (ProbeKind::Readiness, ready) if ready != c.view.ready => {
                let why = if ready {
                    String::new()
                } else {
                    result.err().unwrap_or_default()
                };
                tracing::info!(pod = %key, container = %c.spec.name, ready, %why, "readiness changed");
                c.view.ready = ready;
            }
            _ => {}
        }
    }

    fn view(&self) -> PodView {
        PodView {
            generation: self.pod.metadata.generation,
            sandbox_ready: self.sandbox.is_some(),
            initialized: self.initialized(),
            pod_ip: self.sandbox.as_ref().map(|s| s.ip),
            host_ip: self.ctx.node.ip,
            start_time: self.start_time,
            restart_policy: self.restart_policy(),
            init_containers: self
                .ctrs
                .iter()
                .filter(|c| c.init)
                .map(|c| c.view.clone())
                .collect(),
            containers: self
                .ctrs
                .iter()
                .filter(|c| !c.init)
                .map(|c| c.view.clone())
                .collect(),
        }
    }

    /// PATCHes `pods/status` when the computed status differs from what was last written.
    async fn sync_status(&mut self) {
        if self.status_retry.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let previous = self.last_sent.clone().or_else(|| self.pod.status.clone());
        let mut status = status::build(&self.view(), previous.as_ref(), Timestamp::now());
        if self.sandbox.is_none() {
            // Keep the IP the pod had until a new sandbox exists, rather than flapping it to empty.
            status.pod_ip = None;
            status.pod_ips = None;
        }
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        let api = Api::<Pod>::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({ "status": status });
        // A strategic merge, as the kubelet sends: conditions merge by type, so conditions other
        // writers own (readiness gates, the sidecar's policy report) stay.
        match api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {
                self.status_retry = None;
                self.last_sent = Some(status);
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "patching pod status failed; will retry");
                self.status_retry = Some(Instant::now() + Duration::from_secs(2));
            }
        }
        // A terminal pod keeps its status but gives its network back.
        if self.terminal() && self.ctrs.iter().all(|c| !c.running()) && self.sandbox.is_some() {
            self.teardown().await;
        }
    }

    /// SIGTERM every running container, wait up to `grace`, then SIGKILL what is left.
    async fn terminate(&mut self, grace: Duration) {
        let running: Vec<u32> = self.ctrs.iter().filter_map(|c| c.pid).collect();
        if running.is_empty() {
            return;
        }
        tracing::info!(pod = %self.key(), ?grace, processes = running.len(), "stopping containers");
        for c in self.ctrs.iter().filter(|c| c.pid.is_some()) {
            let note = format!(
                "Stopping container {} (grace {}s)",
                c.spec.name,
                grace.as_secs()
            );
            self.recorder.normal("Killing", "KillContainer", note);
        }
        for c in &mut self.ctrs {
            c.next_start = None;
            if let Some(t) = c.probes.take() {
                t.cancel();
            }
        }
        for pid in &running {
            signal_process(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        if !self.wait_all_exited(deadline).await {
            for pid in self.ctrs.iter().filter_map(|c| c.pid) {
                signal_process(pid, Signal::SIGKILL);
            }
            self.wait_all_exited(Instant::now() + Duration::from_secs(10))
                .await;
        }
        // No SIGKILL to the recorded pids afterwards: when a container's init (PID 1 of its
        // namespace) dies the kernel kills the rest of the container, and the pid may already
        // belong to another process.
    }

    async fn wait_all_exited(&mut self, deadline: Instant) -> bool {
        while self.ctrs.iter().any(|c| c.pid.is_some()) {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(Event::Exited {
                    idx,
                    generation,
                    code,
                    signal,
                    ..
                })) => {
                    let c = &mut self.ctrs[idx];
                    if c.generation == generation {
                        c.pid = None;
                        let started_at = match &c.view.state {
                            RunState::Running { started_at, .. } => *started_at,
                            _ => Timestamp::now(),
                        };
                        let t = Termination::new(
                            code,
                            signal,
                            started_at,
                            Timestamp::now(),
                            c.container_id.clone(),
                        );
                        c.view.state = RunState::Terminated(t);
                        c.view.ready = false;
                    }
                }
                Ok(Some(Event::Probe { .. })) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// Removes the network namespace, releases the IP and deletes the pod directory.
    async fn teardown(&mut self) {
        let dir = self.ctx.pod_dir(&self.uid);
        for c in &self.ctrs {
            let bundle = Bundle::new(&dir, &self.uid, &c.spec.name);
            self.ctx.runc.delete(&bundle.id).await;
            bundle.release();
        }
        // Memory-backed emptyDirs and anything else mounted below the pod's directory.
        runtime::unmount_below(&dir);
        if let Some(sb) = self.sandbox.take() {
            netns::destroy(&sb.names).await;
            self.ctx
                .ipam
                .lock()
                .expect("ipam lock poisoned")
                .release(sb.ip);
            tracing::info!(pod = %self.key(), ip = %sb.ip, "sandbox removed");
        }
        let _ = std::fs::remove_dir_all(self.ctx.pod_dir(&self.uid));
    }

    /// Deletes the pod for good (grace 0, guarded by its uid), as the kubelet does after termination.
    /// Retried for a minute: a pod nobody finalises would stay Terminating forever.
    async fn finalize_deletion(&self) {
        let api = Api::<Pod>::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 1..=30 {
            match api.delete(&self.name, &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %self.key(), "pod deleted");
                    return;
                }
                // Gone already, or a new pod with the same name (uid precondition failed).
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), attempt, error = %e, "final pod delete failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// Restart count and last state a container starts with when a pod is (re)taken over, e.g. after a
/// podlet restart: a container the API still shows running was killed by the restart's cleanup, so that
/// counts as a restart, recorded as terminated by SIGKILL with reason `PodletRestarted`.
fn carried_over(list: Option<&Vec<ContainerStatus>>, name: &str) -> (i32, Option<Termination>) {
    let Some(prev) = list.into_iter().flatten().find(|s| s.name == name) else {
        return (0, None);
    };
    match prev.state.as_ref().and_then(|s| s.running.as_ref()) {
        Some(running) => {
            let started = running
                .started_at
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now);
            let id = prev.container_id.clone().unwrap_or_default();
            let mut t = Termination::new(Some(137), Some(9), started, Timestamp::now(), id);
            t.reason = "PodletRestarted".into();
            (prev.restart_count + 1, Some(t))
        }
        None => (prev.restart_count, None),
    }
}

fn kill_for(c: &mut Ctr, pod: &str, reason: &str) {
    if let Some(pid) = c.pid {
        tracing::info!(%pod, container = %c.spec.name, reason, "container will be restarted");
        c.kill_reason = Some(reason.to_owned());
        if let Some(t) = c.probes.take() {
            t.cancel();
        }
        let grace = Duration::from_secs(10);
        // The start time tells this process from a later one that reused its pid.
        let started = crate::process::start_time(pid);
        signal_process(pid, Signal::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if started.is_some() && crate::process::start_time(pid) == started {
                signal_process(pid, Signal::SIGKILL);
            }
        });
    }
}

/// The repository part of an image reference (without tag or digest), for the status's `imageID`.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    }
}

/// Writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` (the node's: there is
/// no cluster DNS) and returns them as mounts, as the kubelet manages those files.
fn write_etc_files(
    pod_dir: &std::path::Path,
    name: &str,
    ip: Ipv4Addr,
) -> std::io::Result<Vec<BindMount>> {
    let etc = pod_dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let hosts = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{name}\n"
    );
    std::fs::write(etc.join("hosts"), hosts)?;
    std::fs::write(etc.join("hostname"), format!("{name}\n"))?;
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(etc.join("resolv.conf"), resolv)?;
    Ok(["hosts", "hostname", "resolv.conf"]
        .into_iter()
        .map(|f| BindMount {
            source: etc.join(f),
            target: PathBuf::from("/etc").join(f),
            read_only: false,
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    probe: Probe,
    container: Container,
    ip: IpAddr,
    kind: ProbeKind,
    idx: usize,
    generation: u64,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    let timing = ProbeTiming::of(&probe);
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(timing.initial_delay) => {}
    }
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = probe::check(&probe, &container, ip) => r,
        };
        if tx
            .send(Event::Probe {
                idx,
                generation,
                kind,
                result,
            })
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(timing.period) => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(name: &str, count: i32, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            restart_count: count,
            state: Some(state),
            container_id: Some("process://42".into()),
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn restart_counts_carry_over_and_a_killed_running_container_counts() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let list = vec![
            status(
                "running",
                2,
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(t0)),
                    }),
                    ..ContainerState::default()
                },
            ),
            status(
                "waiting",
                5,
                ContainerState {
                    waiting: Some(ContainerStateWaiting::default()),
                    ..ContainerState::default()
                },
            ),
        ];
        let (n, last) = carried_over(Some(&list), "running");
        assert_eq!(n, 3);
        let last = last.unwrap();
        assert_eq!(
            (last.exit_code, last.signal, last.reason.as_str()),
            (137, Some(9), "PodletRestarted")
        );
        assert_eq!(
            (last.started_at, last.container_id.as_str()),
            (t0, "process://42")
        );
        assert_eq!(carried_over(Some(&list), "waiting"), (5, None));
        assert_eq!(carried_over(Some(&list), "new"), (0, None));
        assert_eq!(carried_over(None, "running"), (0, None));
    }
}
