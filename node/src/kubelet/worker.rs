//! One pod worker per pod: sandbox, init containers in order, then containers, restarts with
//! backoff under the restart policy, status through the status subresource (only when it
//! changed), graceful termination (preStop, SIGTERM, grace, SIGKILL, teardown, final delete),
//! and adoption of what the runtime already runs for the pod.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::client::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Ctx;
use super::env::{self, EnvInputs};
use super::events::{EventType, ObjectRef};
use super::quantity;
use super::static_pods;
use super::status::{self, Backoff, Summary};
use crate::cgroup::Resources;
use crate::image::manager::{EnsureError, PullPolicy};
use crate::probe::{ProbeEvent, ProbeKind, ProbeResult, ProbeState};
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, RuntimeError, SandboxConfig,
};
use crate::spec::now_unix_nanos;

/// Status writes retried this many times on transient errors.
const STATUS_RETRIES: u32 = 3;
/// After a failed image pull, when the status flips from ErrImagePull to ImagePullBackOff.
const PULL_FLIP: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct CInfo {
    /// The current runtime container.
    id: Option<String>,
    /// The one before (kept for `logs --previous` and `lastState`).
    prev: Option<String>,
    restarts: i32,
    /// Why the container waits (reason, message), when it does.
    waiting: Option<(String, String)>,
    /// Not before this (Unix ns): retry after a config error or a failed pull.
    retry_at: Option<i64>,
    /// When the last pull attempt failed (Unix ns).
    pull_failed_at: Option<i64>,
    /// The probe state of the running container (its id).
    probe: Option<(String, ProbeState)>,
}

/// A finished probe attempt, sent back to the worker.
#[derive(Debug)]
struct ProbeDone {
    name: String,
    id: String,
    kind: ProbeKind,
    result: ProbeResult,
}

/// Probe results in flight to one worker (each container has at most three probes running).
const PROBE_RESULTS: usize = 64;

/// The runtime state of a container as the status needs it.
#[derive(Debug, Clone)]
enum RState {
    Created,
    Running {
        started: i64,
    },
    Exited {
        code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started: Option<i64>,
        finished: i64,
    },
}

fn rstate(s: &ContainerStatus) -> RState {
    match &s.state {
        ContainerState::Created => RState::Created,
        ContainerState::Running => RState::Running {
            started: s.started_at_unix_nanos.unwrap_or(s.created_at_unix_nanos),
        },
        ContainerState::Exited(e) => RState::Exited {
            code: e.exit_code,
            signal: e.signal,
            reason: s.reason().unwrap_or("Error").to_string(),
            message: e.start_error.clone(),
            started: s.started_at_unix_nanos,
            finished: e.finished_at_unix_nanos,
        },
        ContainerState::Unknown => RState::Exited {
            code: 137,
            signal: None,
            reason: "ContainerStatusUnknown".into(),
            message: Some("The container could not be located when the pod was terminated".into()),
            started: s.started_at_unix_nanos,
            finished: now_unix_nanos(),
        },
    }
}

fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn spec_of(pod: &Pod) -> PodSpec {
    pod.spec.clone().unwrap_or_default()
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// The cgroup limits of a container from its resources (requests default to limits).
pub(crate) fn container_resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let get = |which: &str, key: &str| {
        let m = if which == "limits" {
            r.and_then(|r| r.limits.as_ref())
        } else {
            r.and_then(|r| r.requests.as_ref())
        };
        m.and_then(|m| m.get(key)).map(|q| q.0.clone())
    };
    let cpu_req = get("requests", "cpu").or_else(|| get("limits", "cpu"));
    let cpu_lim = get("limits", "cpu");
    let mem_lim = get("limits", "memory");
    Resources {
        // Upstream: shares = millicores * 1024 / 1000, at least 2 (BestEffort gets 2).
        cpu_shares: Some(
            cpu_req
                .and_then(|q| quantity::millicores(&q))
                .map_or(2, |m| (m.max(0) as u64 * 1024 / 1000).max(2)),
        ),
        cpu_quota_us: cpu_lim
            .and_then(|q| quantity::millicores(&q))
            .filter(|m| *m > 0)
            .map(|m| (m * 100_000 / 1000).max(1000)),
        cpu_period_us: None,
        memory_limit_bytes: mem_lim.and_then(|q| quantity::bytes(&q)).filter(|b| *b > 0),
        pids_limit: None,
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    is_static: bool,
    sandbox: Option<String>,
    pod_ip: Option<String>,
    start_time: Option<String>,
    conts: HashMap<String, CInfo>,
    restart_backoff: Backoff,
    pull_backoff: Backoff,
    terminal: bool,
    init_done: bool,
    sandbox_error: Option<String>,
    volumes: Option<crate::volumes::PodVolumes>,
    volume_error: Option<String>,
    adopted: bool,
    /// No sandbox of this pod can exist yet: adoption need not look at the disk.
    fresh: bool,
    last_written: Option<Value>,
    probe_tx: tokio::sync::mpsc::Sender<ProbeDone>,
    /// The pod's terminationGracePeriodSeconds (for liveness kills).
    pod_grace: i64,
    /// The main containers are done: sidecars are stopped and not restarted.
    sidecars_stopped: bool,
    /// The eviction manager evicted the pod: its message.
    evicted: Option<String>,
}

/// A sidecar: an init container with `restartPolicy: Always`.
pub(crate) fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Runs the worker of pod `uid` until the pod is gone (torn down) or the kubelet stops
/// (the sender is dropped: the pod keeps running).
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    uid: String,
    mut rx: watch::Receiver<Option<Arc<Pod>>>,
    is_static: bool,
    fresh: bool,
) {
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel::<ProbeDone>(PROBE_RESULTS);
    let mut w = Worker {
        probe_tx,
        pod_grace: 30,
        restart_backoff: Backoff::new(ctx.cfg.backoff_base, ctx.cfg.backoff_max),
        pull_backoff: Backoff::new(ctx.cfg.backoff_base, ctx.cfg.backoff_max),
        ctx,
        uid,
        is_static,
        sandbox: None,
        pod_ip: None,
        start_time: None,
        conts: HashMap::new(),
        terminal: false,
        init_done: false,
        sandbox_error: None,
        volumes: None,
        volume_error: None,
        adopted: false,
        fresh,
        last_written: None,
        sidecars_stopped: false,
        evicted: None,
    };
    let mut last: Option<Arc<Pod>> = None;
    loop {
        let cur = rx.borrow_and_update().clone();
        let wake = match cur {
            None => {
                // Gone from the API (or its manifest removed): tear down.
                let grace = last.as_deref().map_or(0, |p| grace_secs(p, true));
                if let Some(p) = last.as_deref() {
                    w.terminate(p, grace).await;
                }
                w.teardown().await;
                return;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() && !is_static => {
                let grace = grace_secs(&pod, false);
                if !w.adopted {
                    w.adopt(&pod).await;
                }
                w.terminate(&pod, grace).await;
                w.teardown().await;
                w.delete_from_api(&pod).await;
                // Wait (bounded) for the watch to confirm, so no second worker starts.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while rx.changed().await.is_ok() {
                        if rx.borrow().is_none() {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
            Some(pod) => {
                last = Some(pod.clone());
                super::tl(pod.metadata.name.as_deref().unwrap_or(""), "sync-begin");
                w.sync(&pod).await
            }
        };
        let running = w.running_ids();
        let runtime = w.ctx.runtime.clone();
        let resync = w.ctx.cfg.resync_interval;
        let sleep = match wake {
            Some(at) => {
                Duration::from_nanos(at.saturating_sub(now_unix_nanos()).max(0) as u64).min(resync)
            }
            None => resync,
        };
        let exits = async move {
            if running.is_empty() {
                std::future::pending::<()>().await;
            }
            let futs = running
                .into_iter()
                .map(|id| {
                    let rt = runtime.clone();
                    async move {
                        let _ = rt.wait_container(&id, Duration::from_secs(3600)).await;
                    }
                    .boxed()
                })
                .collect::<Vec<_>>();
            futures::future::select_all(futs).await;
        };
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return; // The kubelet stops: leave the pod running.
                }
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = exits => {}
            Some(done) = probe_rx.recv() => w.probe_result(done, last.as_deref()),
        }
    }
}

/// The grace period of a deletion (or of a removal without one).
fn grace_secs(pod: &Pod, removed: bool) -> i64 {
    let spec_grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let g = pod
        .metadata
        .deletion_grace_period_seconds
        .unwrap_or(spec_grace);
    if removed { g.clamp(0, 30) } else { g.max(0) }
}

impl Worker {
    fn running_ids(&self) -> Vec<String> {
        self.conts
            .values()
            .filter_map(|c| c.id.clone())
            .filter(|id| {
                matches!(
                    self.ctx.runtime.container_status(id).map(|s| s.state),
                    Ok(ContainerState::Running)
                )
            })
            .collect()
    }

    /// Whether container `name` runs and passed its startup probe (if it has one).
    fn is_started(&self, name: &str) -> bool {
        let Some(info) = self.conts.get(name) else {
            return false;
        };
        let Some(id) = info.id.as_ref() else {
            return false;
        };
        let running = matches!(self.status_of(Some(id)), Some(RState::Running { .. }));
        running
            && info
                .probe
                .as_ref()
                .filter(|(pid, _)| pid == id)
                .is_none_or(|(_, st)| st.is_started())
    }

    /// Whether every regular container has exited and will not be restarted.
    fn main_containers_done(&self, spec: &PodSpec, policy: &str) -> bool {
        !spec.containers.is_empty()
            && spec.containers.iter().all(|c| {
                match self.status_of(self.conts.get(&c.name).and_then(|i| i.id.as_ref())) {
                    Some(RState::Exited { code, .. }) => !status::should_restart(policy, code),
                    _ => false,
                }
            })
    }

    /// Stops the running sidecars in reverse order, each within what is left of `grace`.
    async fn stop_sidecars(&mut self, pod: &Pod, grace: i64) {
        let spec = spec_of(pod);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let rt = self.ctx.runtime.clone();
        for c in spec.init_containers.iter().flatten().rev() {
            if !is_sidecar(c) {
                continue;
            }
            let Some(id) = self.conts.get(&c.name).and_then(|i| i.id.clone()) else {
                continue;
            };
            if !matches!(
                rt.container_status(&id).map(|s| s.state),
                Ok(ContainerState::Running)
            ) {
                continue;
            }
            self.event(
                pod,
                Some(&c.name),
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", c.name),
            );
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = rt.stop_container(&id, left).await {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "stopping the sidecar: {e}");
            }
            if let Some(i) = self.conts.get_mut(&c.name) {
                i.waiting = None;
            }
        }
    }

    fn status_of(&self, id: Option<&String>) -> Option<RState> {
        let id = id?;
        self.ctx
            .runtime
            .container_status(id)
            .ok()
            .map(|s| rstate(&s))
    }

    /// Finds what the runtime already runs for this pod (after a kubelet restart).
    async fn adopt(&mut self, pod: &Pod) {
        self.adopted = true;
        let rt = self.ctx.runtime.clone();
        let api_status = pod.status.clone().unwrap_or_default();
        self.start_time = api_status
            .start_time
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string));
        if matches!(api_status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.terminal = true;
        }
        if self.fresh {
            // No sandbox of this pod existed when the kubelet started and no worker ran it.
            return;
        }
        let sandboxes: Vec<_> = rt
            .list_sandboxes()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.uid == self.uid)
            .collect();
        let keep = sandboxes.iter().find(|s| s.ready).map(|s| s.id.clone());
        for s in &sandboxes {
            if Some(&s.id) != keep.as_ref() && !self.terminal {
                let _ = rt.remove_sandbox(&s.id).await;
            }
        }
        let keep = keep.or_else(|| {
            if self.terminal {
                sandboxes.first().map(|s| s.id.clone())
            } else {
                None
            }
        });
        let Some(sb) = keep else { return };
        self.sandbox = Some(sb.clone());
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            self.pod_ip = Some(self.ctx.host_ip.clone());
        } else if let Ok(Some(net)) = self.ctx.network() {
            self.pod_ip = net.status(&sb).map(|st| st.ip.to_string());
        }
        let mut by_name: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in rt.list_containers().unwrap_or_default() {
            if c.sandbox_id != sb {
                continue;
            }
            if c.state == ContainerState::Created {
                let _ = rt.remove_container(&c.id).await;
                continue;
            }
            by_name.entry(c.name.clone()).or_default().push(c);
        }
        let api_restarts: HashMap<String, i32> = api_status
            .container_statuses
            .iter()
            .flatten()
            .chain(api_status.init_container_statuses.iter().flatten())
            .map(|s| (s.name.clone(), s.restart_count))
            .collect();
        for (name, mut list) in by_name {
            list.sort_by_key(|c| c.created_at_unix_nanos);
            let n = list.len();
            while list.len() > 2 {
                let old = list.remove(0);
                let _ = rt.remove_container(&old.id).await;
            }
            let info = self.conts.entry(name.clone()).or_default();
            info.id = list.last().map(|c| c.id.clone());
            info.prev = (list.len() == 2).then(|| list[0].id.clone());
            info.restarts = api_restarts
                .get(&name)
                .copied()
                .unwrap_or(n as i32 - 1)
                .max(0);
        }
        if self.conts.is_empty() {
            return;
        }
        tracing::info!(pod = %pod_ref(pod), sandbox = %sb, containers = self.conts.len(), "adopted running pod");
    }

    /// Makes sure a ready sandbox exists. `Err` carries the message for the status.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> Result<(), String> {
        let rt = self.ctx.runtime.clone();
        if let Some(id) = &self.sandbox {
            match rt.sandbox_status(id) {
                Ok(s) if s.ready => return Ok(()),
                _ => {
                    tracing::warn!(pod = %pod_ref(pod), "sandbox {id} is gone; recreating the pod's containers");
                    let _ = rt.remove_sandbox(id).await;
                    self.sandbox = None;
                    for c in self.conts.values_mut() {
                        if c.id.take().is_some() {
                            c.restarts += 1;
                        }
                        c.prev = None;
                    }
                }
            }
        }
        let spec = spec_of(pod);
        let host_network = spec.host_network == Some(true);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut hostname = spec
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| name.clone());
        hostname.truncate(63);
        let hostname = hostname.trim_end_matches(['-', '.']).to_string();
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let (mut servers, mut searches) = match policy.as_str() {
            "ClusterFirstWithHostNet" => self.cluster_dns(&ns),
            "ClusterFirst" if !host_network => self.cluster_dns(&ns),
            _ => (Vec::new(), Vec::new()),
        };
        if let Some(dc) = &spec.dns_config {
            servers.extend(dc.nameservers.iter().flatten().cloned());
            searches.extend(dc.searches.iter().flatten().cloned());
        }
        // The network first: a pod does not start while the node's network is not ready.
        let net = if host_network {
            self.pod_ip = Some(self.ctx.host_ip.clone());
            None
        } else {
            self.pod_ip = None;
            self.ctx.network()?
        };
        let cfg = SandboxConfig {
            name,
            namespace: ns,
            uid: self.uid.clone(),
            hostname: if host_network {
                self.ctx.machine.hostname.clone()
            } else {
                hostname
            },
            pod_ip: self.pod_ip.clone(),
            dns_servers: servers,
            dns_searches: searches,
            resources: Resources::default(),
            host_network,
        };
        super::tl(&cfg.name, "sandbox-begin");
        let id = rt.create_sandbox(&cfg).await.map_err(|e| e.to_string())?;
        super::tl(&cfg.name, "sandbox-created");
        tracing::debug!(pod = %pod_ref(pod), sandbox = %id, "sandbox created");
        if let Some(net) = net {
            match self.wire(&net, &id, &spec).await {
                Ok(ip) => {
                    let _ = rt.set_sandbox_pod_ip(&id, &ip);
                    self.pod_ip = Some(ip);
                }
                Err(e) => {
                    let _ = net.teardown(&id).await;
                    let _ = rt.remove_sandbox(&id).await;
                    return Err(format!("setting up the pod network: {e}"));
                }
            }
        }
        self.sandbox = Some(id);
        Ok(())
    }

    /// Wires sandbox `id` into the node network with the pod's host ports; its IP.
    async fn wire(
        &self,
        net: &crate::network::PodNetwork,
        id: &str,
        spec: &PodSpec,
    ) -> Result<String, String> {
        use crate::network::{HostPortMapping, Protocol};
        let pid = self
            .ctx
            .runtime
            .sandbox_status(id)
            .map_err(|e| e.to_string())?
            .pid
            .ok_or("the sandbox holder is gone")?;
        let mut ports = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                let Some(hp) = p.host_port.filter(|h| *h > 0) else {
                    continue;
                };
                ports.push(HostPortMapping {
                    host_port: u16::try_from(hp).map_err(|_| format!("bad hostPort {hp}"))?,
                    container_port: u16::try_from(p.container_port)
                        .map_err(|_| format!("bad containerPort {}", p.container_port))?,
                    protocol: Protocol::from_k8s(p.protocol.as_deref())
                        .map_err(|e| e.to_string())?,
                    host_ip: p.host_ip.as_deref().and_then(|h| h.parse().ok()),
                });
            }
        }
        let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        let st = net
            .setup(id, &netns, &ports)
            .await
            .map_err(|e| e.to_string())?;
        Ok(st.ip.to_string())
    }

    fn cluster_dns(&self, ns: &str) -> (Vec<String>, Vec<String>) {
        let d = &self.ctx.cfg.cluster_domain;
        (
            self.ctx.cfg.cluster_dns.clone(),
            vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
        )
    }

    /// One pass: bring the runtime towards the pod's spec, then report status. Returns when
    /// the worker should look again (Unix ns), if sooner than the resync.
    async fn sync(&mut self, pod: &Pod) -> Option<i64> {
        if !self.adopted {
            self.adopt(pod).await;
            super::tl(pod.metadata.name.as_deref().unwrap_or(""), "adopted");
        }
        if self.start_time.is_none() {
            self.start_time = Some(rfc3339(now_unix_nanos()));
        }
        let spec = spec_of(pod);
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let eviction = self.ctx.evictions.lock().get(&self.uid).cloned();
        if self.evicted.is_none()
            && !self.terminal
            && let Some(msg) = eviction
        {
            // Evicted: everything stops now (a hard threshold: no grace), nothing restarts.
            self.evicted = Some(msg);
            self.terminate(pod, 0).await;
        }
        let active = self.evicted.is_none();
        let mut wake: Option<i64> = None;
        let mut soonest = |t: i64| wake = Some(wake.map_or(t, |w: i64| w.min(t)));
        if !self.terminal && active {
            match self.ensure_sandbox(pod).await {
                Ok(()) => self.sandbox_error = None,
                Err(e) => {
                    tracing::warn!(pod = %pod_ref(pod), "creating the sandbox: {e}");
                    self.event(
                        pod,
                        None,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {e}"),
                    );
                    self.sandbox_error = Some(e);
                    soonest(now_unix_nanos() + self.ctx.cfg.backoff_base.as_nanos() as i64);
                }
            }
        }
        if !self.terminal && active && self.sandbox_error.is_none() {
            // Volumes (every pass: configMap/secret/downwardAPI/projected files are refreshed).
            let r = self.ctx.volumes.setup_pod(pod, &self.ctx.objects()).await;
            super::tl(pod.metadata.name.as_deref().unwrap_or(""), "volumes-done");
            match r {
                Ok(v) => {
                    self.volumes = Some(v);
                    self.volume_error = None;
                }
                Err(e) => {
                    if self.volume_error.as_deref() != Some(&e.to_string()) {
                        tracing::warn!(pod = %pod_ref(pod), "{e}");
                    }
                    self.event(
                        pod,
                        None,
                        EventType::Warning,
                        "FailedMount",
                        format!("MountVolume.SetUp failed: {e}"),
                    );
                    self.volume_error = Some(e.to_string());
                    soonest(now_unix_nanos() + self.ctx.cfg.backoff_base.as_nanos() as i64);
                }
            }
        }
        if !self.terminal && active && self.sandbox_error.is_none() && self.volumes.is_some() {
            // Init containers, in order: each must complete before the next starts; a
            // sidecar (`restartPolicy: Always`) must only have started, and is restarted
            // whenever it exits, whatever the pod's policy, until the pod stops it.
            let mut init_done = true;
            for c in spec.init_containers.iter().flatten() {
                let st = self.status_of(self.conts.get(&c.name).and_then(|i| i.id.as_ref()));
                if is_sidecar(c) {
                    if self.sidecars_stopped {
                        continue;
                    }
                    match st {
                        Some(RState::Running { .. }) => {
                            if self.is_started(&c.name) {
                                continue;
                            }
                        }
                        Some(RState::Created) => {
                            if let Some(id) = self.conts.get(&c.name).and_then(|i| i.id.clone()) {
                                let _ = self.ctx.runtime.start_container(&id).await;
                            }
                        }
                        None => {
                            if let Some(t) = self.start_container(pod, c).await {
                                soonest(t);
                            }
                        }
                        Some(RState::Exited { finished, .. }) => {
                            if let Some(t) = self.restart_container(pod, c, finished).await {
                                soonest(t);
                            }
                        }
                    }
                    if self.init_done {
                        // Restarting a sidecar does not hold the running pod back.
                        continue;
                    }
                    init_done = false;
                    break;
                }
                match st {
                    Some(RState::Exited { code: 0, .. }) => continue,
                    _ if self.init_done => continue,
                    Some(RState::Running { .. }) | Some(RState::Created) => {}
                    None => {
                        if let Some(t) = self.start_container(pod, c).await {
                            soonest(t);
                        }
                    }
                    Some(RState::Exited { finished, .. }) => {
                        if policy != "Never"
                            && let Some(t) = self.restart_container(pod, c, finished).await
                        {
                            soonest(t);
                        }
                    }
                }
                init_done = false;
                break;
            }
            // Once every init container completed (after an adoption too), never again.
            self.init_done |= init_done;
            if self.init_done {
                for c in &spec.containers {
                    let st = self.status_of(self.conts.get(&c.name).and_then(|i| i.id.as_ref()));
                    match st {
                        Some(RState::Running { .. }) => {}
                        Some(RState::Created) => {
                            if let Some(id) = self.conts.get(&c.name).and_then(|i| i.id.clone()) {
                                let _ = self.ctx.runtime.start_container(&id).await;
                            }
                        }
                        None => {
                            if let Some(t) = self.start_container(pod, c).await {
                                soonest(t);
                            }
                        }
                        Some(RState::Exited { code, finished, .. }) => {
                            if status::should_restart(&policy, code) {
                                if let Some(t) = self.restart_container(pod, c, finished).await {
                                    soonest(t);
                                }
                            } else if let Some(i) = self.conts.get_mut(&c.name) {
                                i.waiting = None;
                            }
                        }
                    }
                }
                if !self.sidecars_stopped && self.main_containers_done(&spec, &policy) {
                    // Every regular container finished for good: the sidecars go, in
                    // reverse order, as upstream stops them after the main containers.
                    self.sidecars_stopped = true;
                    self.stop_sidecars(pod, self.pod_grace).await;
                }
            }
        }
        if !self.terminal {
            self.pod_grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
            if let Some(t) = self.drive_probes(pod) {
                soonest(t);
            }
        }
        let status = self.build_status(pod, &policy);
        let phase = status["phase"].as_str().unwrap_or("").to_string();
        if !self.terminal && matches!(phase.as_str(), "Succeeded" | "Failed") {
            self.terminal = true;
            tracing::info!(pod = %pod_ref(pod), %phase, "pod finished");
            if let Some(sb) = &self.sandbox {
                // Every container has exited: only the sandbox holder is left to stop; the
                // address and the volumes go too (the containers stay for their logs).
                let _ = self.ctx.runtime.stop_sandbox(sb).await;
                if let Ok(Some(net)) = self.ctx.network() {
                    let _ = net.teardown(sb).await;
                }
            }
            if let Err(e) = self.ctx.volumes.teardown_pod(&self.uid).await {
                tracing::warn!(pod = %pod_ref(pod), "removing the volumes: {e}");
            }
        }
        let status = self.build_status(pod, &policy);
        self.write_status(pod, status).await;
        wake
    }

    /// Restarts an exited container unless it is backing off; returns when to look again.
    async fn restart_container(&mut self, pod: &Pod, c: &Container, finished: i64) -> Option<i64> {
        let now = now_unix_nanos();
        if let Some(until) = self
            .restart_backoff
            .in_backoff_until(&c.name, finished, now)
        {
            let delay = Duration::from_nanos((until - finished).max(0) as u64);
            self.event(
                pod,
                Some(&c.name),
                EventType::Warning,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name,
                    pod.metadata.name.as_deref().unwrap_or(""),
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    self.uid
                ),
            );
            let info = self.conts.entry(c.name.clone()).or_default();
            info.waiting = Some((
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    c.name,
                    pod.metadata.name.as_deref().unwrap_or(""),
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    self.uid
                ),
            ));
            return Some(until);
        }
        self.restart_backoff.next(&c.name, now);
        let before = self.conts.get(&c.name).and_then(|i| i.id.clone());
        let r = self.start_container(pod, c).await;
        let after = self.conts.get(&c.name).and_then(|i| i.id.clone());
        if before != after
            && let Some(i) = self.conts.get_mut(&c.name)
        {
            i.restarts += 1;
        }
        r
    }

    /// Reads the ConfigMaps and Secrets `c`'s environment refers to.
    async fn env_inputs(&self, pod: &Pod, c: &Container) -> EnvInputs {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets) = env::referenced_objects(c);
        let mut inp = EnvInputs {
            node_name: self.ctx.cfg.node_name.clone(),
            pod_ip: self.pod_ip.clone(),
            host_ip: self.ctx.host_ip.clone(),
            node_cpu_millis: i64::from(self.ctx.machine.cpus) * 1000,
            node_memory_bytes: self.ctx.machine.memory_bytes as i64,
            node_storage_bytes: super::machine::fs_bytes(&self.ctx.cfg.data_dir)
                .map_or(0, |(t, _)| t as i64),
            service_env: self.service_env(pod).await,
            ..EnvInputs::default()
        };
        for name in cms {
            let v = match &self.ctx.client {
                Some(cl) => Api::<ConfigMap>::namespaced(cl.clone(), &ns)
                    .get_opt(&name)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            inp.config_maps.insert(name, v);
        }
        for name in secrets {
            let v = match &self.ctx.client {
                Some(cl) => Api::<Secret>::namespaced(cl.clone(), &ns)
                    .get_opt(&name)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            inp.secrets.insert(name, v);
        }
        inp
    }

    /// Upstream's ImagePullBackOff message: the back-off and the last pull's error.
    fn pull_backoff_message(&self, name: &str, image: &str) -> String {
        let last = self
            .conts
            .get(name)
            .and_then(|i| i.waiting.as_ref())
            .filter(|w| w.0 == "ErrImagePull" || w.0 == "ImagePullBackOff")
            .map(|w| w.1.clone());
        match last {
            Some(m) if m.starts_with("Back-off") => m,
            Some(m) => format!("Back-off pulling image \"{image}\": ErrImagePull: {m}"),
            None => format!("Back-off pulling image \"{image}\""),
        }
    }

    /// Records an event about the pod (or one of its containers).
    fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        msg: String,
    ) {
        self.ctx
            .events
            .record(ObjectRef::pod(pod, container), kind, reason, msg);
    }

    /// The Service variables of the pod (upstream waits for the Service informer's first
    /// list before starting containers of pods that want them; so does this, bounded).
    async fn service_env(&self, pod: &Pod) -> Vec<(String, String)> {
        if self.ctx.client.is_none() {
            return Vec::new();
        }
        let links = spec_of(pod).enable_service_links != Some(false);
        for _ in 0..50 {
            if self.ctx.services.has_synced() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        env::service_env(&self.ctx.services.list(), ns, links)
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: String, retry_at: Option<i64>) {
        let info = self.conts.entry(name.to_string()).or_default();
        info.waiting = Some((reason.to_string(), message));
        info.retry_at = retry_at;
    }

    /// Creates and starts container `c`; on failure records the waiting reason. Returns
    /// when to look again.
    async fn start_container(&mut self, pod: &Pod, c: &Container) -> Option<i64> {
        let now = now_unix_nanos();
        let base = self.ctx.cfg.backoff_base.as_nanos() as i64;
        if let Some(t) = self
            .conts
            .get(&c.name)
            .and_then(|i| i.retry_at)
            .filter(|t| *t > now)
        {
            // A pull that failed a moment ago shows as ImagePullBackOff while it waits.
            let flip = self
                .conts
                .get(&c.name)
                .and_then(|i| i.pull_failed_at)
                .map(|f| f + PULL_FLIP.as_nanos() as i64);
            if let Some(f) = flip {
                if f <= now {
                    let img = c.image.clone().unwrap_or_default();
                    let msg = self.pull_backoff_message(&c.name, &img);
                    if let Some(i) = self.conts.get_mut(&c.name) {
                        i.waiting = Some(("ImagePullBackOff".into(), msg));
                    }
                } else {
                    return Some(f.min(t));
                }
            }
            return Some(t);
        }
        let sb = self.sandbox.clone()?;
        let image = c.image.clone().unwrap_or_default();
        // The image, under the container's pull policy (node::image::manager).
        let key = format!("pull/{}", c.name);
        let failed_at = self.conts.get(&c.name).and_then(|i| i.pull_failed_at);
        if let Some(until) =
            failed_at.and_then(|f| self.pull_backoff.in_backoff_until(&key, f, now))
        {
            let msg = self.pull_backoff_message(&c.name, &image);
            self.event(
                pod,
                Some(&c.name),
                EventType::Normal,
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
            self.event(
                pod,
                Some(&c.name),
                EventType::Warning,
                "Failed",
                "Error: ImagePullBackOff".into(),
            );
            self.set_waiting(&c.name, "ImagePullBackOff", msg, Some(until));
            return Some(until);
        }
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &image);
        let pn = pod.metadata.name.clone().unwrap_or_default();
        super::tl(&pn, "keyring-begin");
        // Pull credentials only when a pull may happen: reading them costs a ServiceAccount
        // GET (and Secret GETs), which every pod start paid with its image present.
        let may_pull = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => self.ctx.images.store().find(&image).is_err(),
            PullPolicy::Never => false,
        };
        let keyring = if may_pull {
            crate::image::auth::keyring_for_pod(self.ctx.client.as_ref(), pod).await
        } else {
            crate::image::auth::Keyring::new()
        };
        super::tl(&pn, "keyring-done");
        let ensured = self.ctx.images.ensure(&image, policy, &keyring).await;
        super::tl(&pn, "image-ensured");
        if let Err(e) = &ensured {
            let now = now_unix_nanos();
            tracing::warn!(pod = %pod_ref(pod), container = %c.name, "{e}");
            if !matches!(e, EnsureError::Pull { .. }) {
                // ErrImageNeverPull / InvalidImageName: no pull to back off from.
                self.set_waiting(&c.name, e.reason(), e.to_string(), Some(now + base));
                return Some(now + base);
            }
            self.pull_backoff.next(&key, now);
            self.event(
                pod,
                Some(&c.name),
                EventType::Warning,
                "Failed",
                e.to_string(),
            );
            self.event(
                pod,
                Some(&c.name),
                EventType::Warning,
                "Failed",
                "Error: ErrImagePull".into(),
            );
            let until = self
                .pull_backoff
                .in_backoff_until(&key, now, now)
                .unwrap_or(now + base);
            self.set_waiting(&c.name, e.reason(), e.to_string(), Some(until));
            if let Some(i) = self.conts.get_mut(&c.name) {
                i.pull_failed_at = Some(now);
            }
            return Some(now + PULL_FLIP.as_nanos() as i64);
        }
        if let Some(i) = self.conts.get_mut(&c.name) {
            i.pull_failed_at = None;
            self.pull_backoff.reset(&key);
        }
        // Upstream's image events (Pulling/Pulled after a pull, else "already present").
        if let Ok(ens) = &ensured {
            for (reason, msg) in ens.events(&image) {
                self.event(pod, Some(&c.name), EventType::Normal, reason, msg);
            }
        }
        let inp = self.env_inputs(pod, c).await;
        super::tl(&pn, "env-inputs");
        let envs = match env::resolve(pod, c, &inp) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "{e}");
                self.event(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {e}"),
                );
                self.set_waiting(&c.name, "CreateContainerConfigError", e.0, Some(now + base));
                return Some(now + base);
            }
        };
        let mounts = match self
            .volumes
            .as_ref()
            .map(|v| self.ctx.volumes.container_mounts(pod, c, v))
        {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "{e}");
                self.event(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {e}"),
                );
                self.set_waiting(
                    &c.name,
                    "CreateContainerConfigError",
                    e.to_string(),
                    Some(now + base),
                );
                return Some(now + base);
            }
            None => return Some(now + base),
        };
        let spec = spec_of(pod);
        let psc = spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let caps = sc.capabilities.clone().unwrap_or_default();
        let mut cap_add = caps.add.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            cap_add.push("ALL".into());
        }
        let cfg = ContainerConfig {
            name: c.name.clone(),
            image: image.clone(),
            command: env::expand_argv(c.command.as_deref().unwrap_or(&[]), &envs),
            args: env::expand_argv(c.args.as_deref().unwrap_or(&[]), &envs),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            env: envs,
            user: sc.run_as_user.or(psc.run_as_user).map(|u| u.to_string()),
            group: sc.run_as_group.or(psc.run_as_group).map(|g| g.to_string()),
            supplementary_gids: psc
                .supplemental_groups
                .iter()
                .flatten()
                .chain(psc.fs_group.iter())
                .filter_map(|g| u32::try_from(*g).ok())
                .collect(),
            cap_add,
            cap_drop: caps.drop.clone().unwrap_or_default(),
            read_only_rootfs: sc.read_only_root_filesystem == Some(true),
            share_pid: spec.share_process_namespace == Some(true),
            resources: container_resources(c),
            mounts,
            log_path: None,
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
        };
        let rt = self.ctx.runtime.clone();
        super::tl(&pn, "create-begin");
        let id = match rt.create_container(&sb, &cfg).await {
            Ok(id) => id,
            Err(e) => {
                let reason = match &e {
                    RuntimeError::Image(_) => "ErrImagePull",
                    RuntimeError::InvalidConfig(_) => "CreateContainerConfigError",
                    _ => "CreateContainerError",
                };
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "creating the container: {e}");
                self.event(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {e}"),
                );
                self.set_waiting(&c.name, reason, e.to_string(), Some(now + base));
                return Some(now + base);
            }
        };
        self.event(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Created",
            format!("Created container: {}", c.name),
        );
        let info = self.conts.entry(c.name.clone()).or_default();
        info.waiting = None;
        info.retry_at = None;
        let older = match info.id.replace(id.clone()) {
            Some(old) => info.prev.replace(old),
            None => None,
        };
        if let Some(older) = older {
            let _ = rt.remove_container(&older).await;
        }
        super::tl(&pn, "start-begin");
        let started = rt.start_container(&id).await;
        super::tl(&pn, "started");
        match started {
            Ok(()) => {
                tracing::debug!(pod = %pod_ref(pod), container = %c.name, id = %id, "container started");
                self.event(
                    pod,
                    Some(&c.name),
                    EventType::Normal,
                    "Started",
                    format!("Started container {}", c.name),
                );
                None
            }
            // The runtime records the start error as the container's exit: look again now.
            Err(e) => {
                tracing::warn!(pod = %pod_ref(pod), container = %c.name, "starting the container: {e}");
                self.event(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {e}"),
                );
                Some(now)
            }
        }
    }

    fn container_status_json(&self, c: &Container, is_init: bool) -> (Value, Summary) {
        let info = self.conts.get(&c.name);
        let cur = info
            .and_then(|i| i.id.as_ref())
            .and_then(|id| self.ctx.runtime.container_status(id).ok());
        let prev = info
            .and_then(|i| i.prev.as_ref())
            .and_then(|id| self.ctx.runtime.container_status(id).ok());
        let term = |s: &ContainerStatus| match rstate(s) {
            RState::Exited {
                code,
                signal,
                reason,
                message,
                started,
                finished,
            } => {
                let mut t = json!({"exitCode": code, "reason": reason, "finishedAt": rfc3339(finished),
                    "startedAt": rfc3339(started.unwrap_or(finished)), "containerID": format!("kubeshard://{}", s.id)});
                if let Some(sig) = signal {
                    t["signal"] = json!(sig);
                }
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                Some((t, code))
            }
            _ => None,
        };
        let waiting = info.and_then(|i| i.waiting.clone());
        let mut last_state = json!({});
        let (state, summary, running) = match cur.as_ref().map(|s| (s, rstate(s))) {
            Some((_, RState::Running { started })) => {
                if let Some((t, _)) = prev.as_ref().and_then(term) {
                    last_state = json!({"terminated": t});
                }
                (
                    json!({"running": {"startedAt": rfc3339(started)}}),
                    Summary::Running,
                    true,
                )
            }
            Some((s, RState::Exited { .. })) => {
                let (t, code) = term(s).unwrap_or((json!({}), 0));
                match waiting {
                    Some((reason, message)) => {
                        last_state = json!({"terminated": t});
                        (
                            json!({"waiting": {"reason": reason, "message": message}}),
                            Summary::Waiting(Some(code)),
                            false,
                        )
                    }
                    None => {
                        if let Some((pt, _)) = prev.as_ref().and_then(term) {
                            last_state = json!({"terminated": pt});
                        }
                        (json!({"terminated": t}), Summary::Terminated(code), false)
                    }
                }
            }
            Some((_, RState::Created)) | None => {
                let (reason, message) = waiting.unwrap_or_else(|| {
                    let r = if !is_init && !self.init_done {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    let m = self
                        .sandbox_error
                        .clone()
                        .or_else(|| self.volume_error.clone())
                        .unwrap_or_default();
                    (r.to_string(), m)
                });
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                let last = prev.as_ref().and_then(term);
                if let Some((t, _)) = &last {
                    last_state = json!({"terminated": t});
                }
                (
                    json!({"waiting": w}),
                    Summary::Waiting(last.map(|(_, c)| c)),
                    false,
                )
            }
        };
        let probe = info
            .and_then(|i| i.probe.as_ref())
            .filter(|(id, _)| cur.as_ref().is_some_and(|s| &s.id == id))
            .map(|(_, st)| st);
        let image_id = cur
            .as_ref()
            .or(prev.as_ref())
            .map(|s| s.image_id.clone())
            .unwrap_or_default();
        let mut v = json!({
            "name": c.name,
            "state": state,
            "lastState": last_state,
                        "ready": running && probe.is_none_or(|p| p.is_ready()),
            "restartCount": info.map_or(0, |i| i.restarts),
            "image": c.image.clone().unwrap_or_default(),
            "imageID": image_id,
            "started": running && probe.is_none_or(|p| p.is_started()),
        });
        if let Some(s) = &cur {
            v["containerID"] = json!(format!("kubeshard://{}", s.id));
        }
        (v, summary)
    }

    fn build_status(&self, pod: &Pod, policy: &str) -> Value {
        let spec = spec_of(pod);
        let mut init_json = Vec::new();
        let mut init_sum = Vec::new();
        let mut sidecar_sum = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            let (v, s) = self.container_status_json(c, true);
            if is_sidecar(c) {
                sidecar_sum.push((s, v["started"] == json!(true)));
            } else {
                init_sum.push(s);
            }
            init_json.push(v);
        }
        let mut json_list = Vec::new();
        let mut sums = Vec::new();
        for c in &spec.containers {
            let (v, s) = self.container_status_json(c, false);
            json_list.push(v);
            sums.push(s);
        }
        let phase = if let Some(p) = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .filter(|p| self.terminal && matches!(*p, "Succeeded" | "Failed"))
        {
            p
        } else if self.evicted.is_some() {
            "Failed"
        } else {
            status::pod_phase(policy, &init_sum, &sidecar_sum, &sums)
        };
        let now = rfc3339(now_unix_nanos());
        let old = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        let sidecar_names: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.as_str())
            .collect();
        let is_sc = |v: &Value| {
            v["name"]
                .as_str()
                .is_some_and(|n| sidecar_names.contains(&n))
        };
        // Sidecars count for readiness as regular containers do (upstream).
        let unready: Vec<&str> = init_json
            .iter()
            .filter(|c| is_sc(c))
            .chain(json_list.iter())
            .filter(|c| c["ready"] != json!(true))
            .filter_map(|c| c["name"].as_str())
            .collect();
        let mut regular_sum = init_sum.iter();
        let uninit: Vec<&str> = init_json
            .iter()
            .filter(|c| {
                if is_sc(c) {
                    c["started"] != json!(true)
                } else {
                    !matches!(regular_sum.next(), Some(Summary::Terminated(0)))
                }
            })
            .filter_map(|c| c["name"].as_str())
            .collect();
        let initialized = self.init_done || uninit.is_empty();
        let completed = phase == "Succeeded";
        let ready = unready.is_empty() && !self.terminal;
        let (ready_reason, ready_msg) = if ready {
            ("", String::new())
        } else if completed {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        };
        let sandbox_ready =
            self.sandbox.is_some() && self.sandbox_error.is_none() && !self.terminal;
        let conds = status::conditions(
            old.as_ref(),
            &now,
            &[
                (
                    "PodReadyToStartContainers",
                    sandbox_ready,
                    "",
                    String::new(),
                ),
                (
                    "Initialized",
                    initialized,
                    if initialized {
                        if completed && !spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
                            "PodCompleted"
                        } else {
                            ""
                        }
                    } else {
                        "ContainersNotInitialized"
                    },
                    if initialized {
                        String::new()
                    } else {
                        format!("containers with incomplete status: [{}]", uninit.join(" "))
                    },
                ),
                ("ContainersReady", ready, ready_reason, ready_msg.clone()),
                ("Ready", ready, ready_reason, ready_msg),
                // The kubelet runs the pod, so it was scheduled (upstream adds it too).
                ("PodScheduled", true, "", String::new()),
            ],
        );
        let mut st = json!({
            "phase": phase,
            "conditions": conds,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "startTime": self.start_time,
            "containerStatuses": json_list,
            "qosClass": qos_class(&spec),
        });
        if !init_json.is_empty() {
            st["initContainerStatuses"] = Value::Array(init_json);
        }
        if let Some(msg) = &self.evicted {
            st["reason"] = json!("Evicted");
            st["message"] = json!(msg);
        }
        if let Some(ip) = &self.pod_ip {
            st["podIP"] = json!(ip);
            st["podIPs"] = json!([{"ip": ip}]);
        }
        st
    }

    /// Writes `status` through the status subresource when it differs from what was written
    /// (or what the API holds). Static pods write to their mirror pod, when it exists.
    async fn write_status(&mut self, pod: &Pod, status: Value) {
        let Some(client) = self.ctx.client.clone() else {
            return;
        };
        // Normalise through the typed form so comparisons see what the API stores.
        let status = serde_json::from_value::<k8s_openapi::api::core::v1::PodStatus>(status)
            .ok()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let current = self.ctx.pods.get(&ns, &name);
        let target_ok = match &current {
            Some(p) if self.is_static => static_pods::mirror_hash(p) == Some(self.uid.as_str()),
            Some(p) => p.metadata.uid.as_deref() == Some(self.uid.as_str()),
            None => false,
        };
        if !target_ok {
            return;
        }
        let api_status = current
            .as_ref()
            .and_then(|p| serde_json::to_value(&p.status).ok());
        let differs = |old: Option<&Value>| match old {
            None => true,
            Some(o) => status
                .as_object()
                .is_some_and(|m| m.iter().any(|(k, v)| o.get(k) != Some(v))),
        };
        if !differs(self.last_written.as_ref()) && !differs(api_status.as_ref()) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(client, &ns);
        super::tl(
            &name,
            &format!("status-begin-{}", status["phase"].as_str().unwrap_or("")),
        );
        for attempt in 0..STATUS_RETRIES {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => {
                    super::tl(&name, "status-done");
                    self.last_written = Some(status);
                    return;
                }
                Err(e) if e.is_not_found() => return,
                Err(e) => {
                    tracing::debug!(pod = %format!("{ns}/{name}"), attempt, "writing the pod status: {e}");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// Keeps a probe state per running container with probes, starts the probes that are due
    /// (each in its own task, reporting back through the worker's channel) and returns when
    /// the next one is due (Unix ns).
    fn drive_probes(&mut self, pod: &Pod) -> Option<i64> {
        let spec = spec_of(pod);
        let now = std::time::Instant::now();
        let now_nanos = now_unix_nanos();
        let pod_ip = self.pod_ip.as_deref().and_then(|i| i.parse().ok());
        let mut next: Option<std::time::Instant> = None;
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .chain(spec.containers.iter())
        {
            if c.startup_probe.is_none()
                && c.liveness_probe.is_none()
                && c.readiness_probe.is_none()
            {
                continue;
            }
            let Some(info) = self.conts.get_mut(&c.name) else {
                continue;
            };
            let running = info.id.as_ref().and_then(|id| {
                match self
                    .ctx
                    .runtime
                    .container_status(id)
                    .ok()
                    .map(|s| rstate(&s))
                {
                    Some(RState::Running { started }) => Some((id.clone(), started)),
                    _ => None,
                }
            });
            let Some((id, started)) = running else {
                info.probe = None;
                continue;
            };
            if info.probe.as_ref().is_none_or(|(pid, _)| *pid != id) {
                let ago = Duration::from_nanos(now_nanos.saturating_sub(started).max(0) as u64);
                let started_at = now.checked_sub(ago).unwrap_or(now);
                info.probe = Some((id.clone(), ProbeState::new(c, started_at)));
            }
            let Some((_, st)) = info.probe.as_mut() else {
                continue;
            };
            while st.poll_event().is_some() {}
            while let Some(kind) = st.poll_probe(now) {
                let Some(probe) = st.probe(kind).cloned() else {
                    continue;
                };
                let (tx, c2, id2) = (self.probe_tx.clone(), c.clone(), id.clone());
                let rt = self.ctx.runtime.clone();
                tokio::spawn(async move {
                    let result =
                        crate::probe::probe_container(&probe, &c2, pod_ip, &id2, &*rt).await;
                    let _ = tx
                        .send(ProbeDone {
                            name: c2.name.clone(),
                            id: id2,
                            kind,
                            result,
                        })
                        .await;
                });
            }
            if let Some(t) = st.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next.map(|t| now_nanos + t.saturating_duration_since(now).as_nanos() as i64)
    }

    /// Applies a probe result; a failed liveness or startup probe kills the container (the
    /// restart policy and backoff decide what follows).
    fn probe_result(&mut self, done: ProbeDone, pod: Option<&Pod>) {
        if let (ProbeResult::Failure(msg), Some(pod)) = (&done.result, pod) {
            self.event(
                pod,
                Some(&done.name),
                EventType::Warning,
                "Unhealthy",
                format!("{} probe failed: {msg}", done.kind.name()),
            );
        }
        let events = self.ctx.events.clone();
        let Some(info) = self.conts.get_mut(&done.name) else {
            return;
        };
        let Some((id, st)) = info.probe.as_mut() else {
            return;
        };
        if *id != done.id {
            return;
        }
        st.handle_result(done.kind, &done.result, std::time::Instant::now());
        while let Some(ev) = st.poll_event() {
            if let ProbeEvent::Restart {
                kind,
                message,
                grace_period_seconds,
            } = ev
            {
                tracing::info!(uid = %self.uid, container = %done.name, "container failed its {} probe, will be restarted: {message}", kind.name());
                if let Some(pod) = pod {
                    events.record(
                        ObjectRef::pod(pod, Some(&done.name)),
                        EventType::Normal,
                        "Killing",
                        format!(
                            "Container {} failed {} probe, will be restarted",
                            done.name,
                            kind.name().to_lowercase()
                        ),
                    );
                }
                let grace = Duration::from_secs(
                    grace_period_seconds.unwrap_or(self.pod_grace).max(0) as u64,
                );
                let (rt, id) = (self.ctx.runtime.clone(), id.clone());
                tokio::spawn(async move {
                    let _ = rt.stop_container(&id, grace).await;
                });
            }
        }
    }

    /// Stops every container of the pod: preStop hooks, SIGTERM, then SIGKILL after `grace`.
    async fn terminate(&mut self, pod: &Pod, grace: i64) {
        let spec = spec_of(pod);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let rt = self.ctx.runtime.clone();
        let mut stops = Vec::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| !is_sidecar(c))
            .chain(spec.containers.iter())
        {
            let Some(id) = self.conts.get(&c.name).and_then(|i| i.id.clone()) else {
                continue;
            };
            if !matches!(
                rt.container_status(&id).map(|s| s.state),
                Ok(ContainerState::Running)
            ) {
                continue;
            }
            let rt = rt.clone();
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone());
            let ip = self.pod_ip.clone();
            let ports = c.ports.clone().unwrap_or_default();
            let name = c.name.clone();
            let pref = pod_ref(pod);
            self.event(
                pod,
                Some(&c.name),
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", c.name),
            );
            stops.push(async move {
                if let Some(h) = hook {
                    let run = run_pre_stop(&h, ip.as_deref(), &ports, &rt, &id);
                    if tokio::time::timeout_at(deadline, run).await.is_err() {
                        tracing::info!(pod = %pref, container = %name, "preStop hook did not finish within the grace period");
                    }
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if let Err(e) = rt.stop_container(&id, left).await {
                    tracing::warn!(pod = %pref, container = %name, "stopping: {e}");
                }
            });
        }
        futures::future::join_all(stops).await;
        // Sidecars last, in reverse order, with what is left of the grace period.
        self.sidecars_stopped = true;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.stop_sidecars(pod, left.as_secs() as i64).await;
    }

    /// Removes the pod's containers and sandbox.
    async fn teardown(&mut self) {
        let rt = self.ctx.runtime.clone();
        let net = self.ctx.network().ok().flatten();
        for sb in rt.list_sandboxes().unwrap_or_default() {
            if sb.uid != self.uid {
                continue;
            }
            if let Some(net) = &net
                && let Err(e) = net.teardown(&sb.id).await
            {
                tracing::warn!(uid = %self.uid, sandbox = %sb.id, "releasing the pod network: {e}");
            }
            if let Err(e) = rt.remove_sandbox(&sb.id).await {
                tracing::warn!(uid = %self.uid, sandbox = %sb.id, "removing the sandbox: {e}");
            }
        }
        if let Err(e) = self.ctx.volumes.teardown_pod(&self.uid).await {
            tracing::warn!(uid = %self.uid, "removing the volumes: {e}");
        }
        self.ctx.evictions.lock().remove(&self.uid);
        self.sandbox = None;
        self.conts.clear();
    }

    /// The last step of a graceful deletion: remove the pod object (grace 0, this uid only).
    async fn delete_from_api(&self, pod: &Pod) {
        let Some(client) = self.ctx.client.clone() else {
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client, &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 0..STATUS_RETRIES {
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), "pod deleted");
                    return;
                }
                Err(e) if e.is_not_found() || e.is_conflict() => return,
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), attempt, "deleting the pod: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }
}

/// The QoS class (upstream's rules over requests and limits of all containers).
pub(crate) fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let lim = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        let req = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        if !lim.is_empty() || !req.is_empty() {
            any = true;
        }
        for k in ["cpu", "memory"] {
            match (lim.get(k), req.get(k)) {
                (Some(l), Some(q)) if quantity::parse(&l.0) == quantity::parse(&q.0) => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Runs a preStop hook (exec, httpGet or sleep); the caller bounds it by the grace period.
async fn run_pre_stop(
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    pod_ip: Option<&str>,
    ports: &[k8s_openapi::api::core::v1::ContainerPort],
    rt: &crate::runtime::Runtime,
    id: &str,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.clamp(0, 3600) as u64)).await;
        return;
    }
    if let Some(g) = &h.http_get {
        let port = match &g.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(n) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(n))
                .map_or(0, |p| p.container_port),
        };
        let host = g
            .host
            .clone()
            .or_else(|| pod_ip.map(str::to_string))
            .unwrap_or_else(|| "127.0.0.1".into());
        let path = g.path.clone().unwrap_or_else(|| "/".into());
        if let Err(e) = http_get(&host, port, &path).await {
            tracing::info!("preStop httpGet {host}:{port}{path} failed: {e}");
        }
        return;
    }
    if let Some(e) = &h.exec {
        let argv = e.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return;
        }
        // Bounded by the grace period by the caller's timeout.
        match rt.exec_sync(id, &argv, Duration::from_secs(3600)).await {
            Ok(o) if o.exit_code != 0 => {
                tracing::info!(container = %id, "preStop exec exited with {}", o.exit_code)
            }
            Ok(_) => {}
            Err(e) => tracing::info!(container = %id, "preStop exec failed: {e}"),
        }
    }
}

async fn http_get(host: &str, port: i32, path: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let port = u16::try_from(port).map_err(|_| std::io::Error::other("bad port"))?;
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-lifecycle/1.33\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).await?;
    Ok(())
}
