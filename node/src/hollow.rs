//! Hollow mode: many simulated kubelets in one process, for scale tests of the control plane
//! (`kubeshard node --hollow N`), as kubemark's hollow nodes are upstream.
//!
//! Each hollow node does what a kubelet does *through the API*: it registers its Node (with
//! capacity, node info and the usual labels), renews its Lease in `kube-node-lease` every
//! `lease_interval`, posts a status heartbeat every `status_interval`, watches only its own
//! pods (`spec.nodeName=<name>`), reports each new pod Running (with a pod IP from its pod
//! CIDR and container statuses) after `start_delay`, and finishes graceful deletions by
//! deleting with grace 0 and a uid precondition. Containers are not run.
//!
//! Cost is what matters here (kubemark spends about 220 MB per hollow node; the target is
//! under 1 MiB): the nodes share one client with a few HTTP/2 connections (at most 1,000
//! streams each, the server's limit), one informer and two small tasks per node, and work is
//! level-triggered: watch events only mark pods dirty, and the node's task reads the
//! informer's cache. Nodes start at a bounded rate so N initial LISTs do not arrive at once.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::client::runtime::{Event, Informer, Store};
use api::client::{
    Api, Client, ClientConfig, ClientError, DeleteParams, ListParams, Patch, PatchParams,
    PostParams, Preconditions,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::kubelet::KUBELET_VERSION;
use crate::kubelet::machine::{MachineInfo, Pressure};
use crate::kubelet::node_status::{
    LEASE_DURATION_SECS, LEASE_NAMESPACE, conditions, node_labels, now_micro, now_rfc3339,
    resources,
};

/// Streams one pooled connection carries before the next is used (the server allows 1,000).
const STREAMS_PER_CONNECTION: usize = 800;
/// Label marking hollow Nodes, so tests and operators can tell them apart.
pub const HOLLOW_LABEL: &str = "kubeshard.io/hollow";

/// Why hollow mode could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HollowError {
    /// The kubeconfig or the client.
    #[error("client: {0}")]
    Client(#[from] ClientError),
    /// A bad setting.
    #[error("hollow config: {0}")]
    Config(String),
}

/// How the hollow nodes behave.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// The apiserver's kubeconfig.
    pub kubeconfig: PathBuf,
    /// How many nodes.
    pub count: usize,
    /// Node names are `<prefix><index>`.
    pub name_prefix: String,
    /// Index of the first node (to split a large fleet over processes).
    pub first_index: usize,
    /// Simulated time from a pod's arrival to its containers running.
    pub start_delay: Duration,
    /// Lease renewal period (upstream 10 s).
    pub lease_interval: Duration,
    /// Node status heartbeat period (upstream reports at least every 5 min).
    pub status_interval: Duration,
    /// Nodes started per second (bounds the burst of initial LISTs and registrations).
    pub start_rate: u32,
    /// CPUs each node reports.
    pub cpus: u32,
    /// Memory each node reports, bytes.
    pub memory_bytes: u64,
    /// Pods each node accepts.
    pub max_pods: u32,
}

impl HollowConfig {
    /// Defaults: nodes `hollow-node-<i>` of 4 CPUs and 16 GiB, 110 pods, containers "start"
    /// after 500 ms, Lease every 10 s, status every 60 s, 100 nodes started per second.
    pub fn new(kubeconfig: PathBuf, count: usize) -> HollowConfig {
        HollowConfig {
            kubeconfig,
            count,
            name_prefix: "hollow-node-".into(),
            first_index: 0,
            start_delay: Duration::from_millis(500),
            lease_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            start_rate: 100,
            cpus: 4,
            memory_bytes: 16 << 30,
            max_pods: 110,
        }
    }
}

/// Runs the hollow nodes until `shutdown` completes. Their Nodes stay registered (their
/// Leases then expire, as for stopped kubelets).
pub async fn run(
    cfg: HollowConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HollowError> {
    if cfg.count == 0 || cfg.count > 100_000 {
        return Err(HollowError::Config(format!(
            "--hollow must be 1..=100000, not {}",
            cfg.count
        )));
    }
    let mut ccfg = ClientConfig::from_kubeconfig(&cfg.kubeconfig)?;
    ccfg.connections = (cfg.count / STREAMS_PER_CONNECTION + 2).min(64);
    let client = Client::new(ccfg)?;
    let machine = Arc::new(hollow_machine(&cfg));
    let cfg = Arc::new(cfg);
    let pace = Duration::from_secs(1) / cfg.start_rate.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let started = async {
        for i in 0..cfg.count {
            let node = HollowNode::new(cfg.clone(), machine.clone(), client.clone(), i);
            tasks.spawn(node.run());
            tokio::time::sleep(pace).await;
        }
        tracing::info!(nodes = cfg.count, "hollow nodes started");
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = started => {}
        _ = shutdown => {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn hollow_machine(cfg: &HollowConfig) -> MachineInfo {
    let real = MachineInfo::detect();
    MachineInfo {
        cpus: cfg.cpus,
        memory_bytes: cfg.memory_bytes,
        kernel_version: real.kernel_version,
        os_image: real.os_image,
        arch: real.arch,
        machine_id: String::new(),
        boot_id: String::new(),
        hostname: String::new(),
    }
}

/// The fake InternalIP of node `i`: 172.16.0.0/12 holds a million of them.
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 1 + i as u32)
}

/// The pod CIDR node `i` uses when the Node has none: a /24 of 10.128.0.0/9.
fn default_pod_cidr(i: usize) -> String {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((i as u32 % 32_768) << 8);
    format!("{}/24", Ipv4Addr::from(base))
}

/// One simulated kubelet.
struct HollowNode {
    cfg: Arc<HollowConfig>,
    machine: Arc<MachineInfo>,
    client: Client,
    index: usize,
    name: String,
}

/// Pod bookkeeping of one node: which pods were reported running, which deletions are done.
#[derive(Default)]
struct PodBook {
    /// Pod uid -> its IP's host number in the pod CIDR.
    started: HashMap<String, u8>,
    deleting: HashSet<String>,
    next_host: u8,
}

impl PodBook {
    /// A host number in 2..=254 not used by a running pod (the CIDR holds at most 253).
    fn allocate(&mut self) -> Option<u8> {
        let used: HashSet<u8> = self.started.values().copied().collect();
        for _ in 0..253 {
            self.next_host = if self.next_host < 2 || self.next_host >= 254 {
                2
            } else {
                self.next_host + 1
            };
            if !used.contains(&self.next_host) {
                return Some(self.next_host);
            }
        }
        None
    }
}

impl HollowNode {
    fn new(
        cfg: Arc<HollowConfig>,
        machine: Arc<MachineInfo>,
        client: Client,
        i: usize,
    ) -> HollowNode {
        let index = cfg.first_index + i;
        HollowNode {
            name: format!("{}{index}", cfg.name_prefix),
            cfg,
            machine,
            client,
            index,
        }
    }

    async fn run(self) {
        let this = Arc::new(self);
        let nodes: Api<Node> = Api::all(this.client.clone());
        let mut backoff = Duration::from_secs(1);
        let node = loop {
            match this.register(&nodes).await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(node = %this.name, "hollow node registration failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        let pod_cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .unwrap_or_else(|| default_pod_cidr(this.index));

        // Pods: the informer marks pods dirty; this task reads its cache.
        let dirty: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", this.name));
        let (store, informer) = Informer::new(Api::<Pod>::all(this.client.clone()), lp);
        let (d, w) = (dirty.clone(), wake.clone());
        let informer = tokio::spawn(informer.run(move |ev: Event<Pod>| {
            let pod = match &ev {
                Event::Added(p) | Event::Modified(p) | Event::Deleted(p) => p,
                Event::Synced => return,
            };
            if let (Some(ns), Some(n)) = (&pod.metadata.namespace, &pod.metadata.name) {
                d.lock().insert((ns.clone(), n.clone()));
                w.notify_one();
            }
        }));

        let book: Arc<Mutex<PodBook>> = Arc::default();
        let mut lease = tokio::time::interval(this.cfg.lease_interval);
        let mut status = tokio::time::interval(this.cfg.status_interval);
        status.tick().await;
        let leases: Api<Lease> = Api::namespaced(this.client.clone(), LEASE_NAMESPACE);
        loop {
            tokio::select! {
                _ = lease.tick() => {
                    if let Err(e) = this.renew_lease(&leases, &uid).await {
                        tracing::debug!(node = %this.name, "lease renewal failed: {e}");
                    }
                }
                _ = status.tick() => {
                    if let Err(e) = this.heartbeat(&nodes).await {
                        tracing::debug!(node = %this.name, "status heartbeat failed: {e}");
                    }
                }
                _ = wake.notified() => {
                    let keys: Vec<(String, String)> = dirty.lock().drain().collect();
                    for (ns, name) in keys {
                        this.sync_pod(&store, &book, &pod_cidr, &ns, &name);
                    }
                }
            }
            if informer.is_finished() {
                return;
            }
        }
    }

    /// Creates the Node, or takes over an existing one of this name.
    async fn register(&self, nodes: &Api<Node>) -> Result<Node, ClientError> {
        let (cap, alloc) = resources(&self.machine, 100 << 30, self.cfg.max_pods);
        let mut labels = node_labels(&self.name, &self.machine);
        labels[HOLLOW_LABEL] = json!("true");
        let status = self.status(None, cap, alloc);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "status": status,
        }))
        .map_err(|e| ClientError::Decode(e.to_string()))?;
        let created = match nodes.create(&PostParams::default(), &node).await {
            Ok(n) => n,
            Err(e) if e.is_already_exists() => nodes.get(&self.name).await?,
            Err(e) => return Err(e),
        };
        // Status is not written on create (a subresource): set it now.
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        Ok(created)
    }

    fn status(&self, old: Option<&Value>, cap: Value, alloc: Value) -> Value {
        let now = now_rfc3339();
        let m = &self.machine;
        json!({
            "capacity": cap,
            "allocatable": alloc,
            "conditions": conditions(Pressure::default(), old, &now),
            "addresses": [
                {"type": "InternalIP", "address": node_ip(self.index).to_string()},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": m.machine_id, "systemUUID": "", "bootID": m.boot_id,
                "kernelVersion": m.kernel_version, "osImage": m.os_image,
                "containerRuntimeVersion": format!("hollow://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": m.arch,
            },
        })
    }

    async fn heartbeat(&self, nodes: &Api<Node>) -> Result<(), ClientError> {
        let now = now_rfc3339();
        let old = nodes
            .get_opt(&self.name)
            .await?
            .and_then(|n| serde_json::to_value(n.status).ok());
        let conds = conditions(Pressure::default(), old.as_ref(), &now);
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": conds}})),
            )
            .await
            .map(|_| ())
    }

    async fn renew_lease(&self, leases: &Api<Lease>, node_uid: &str) -> Result<(), ClientError> {
        let renew = now_micro();
        let patch = json!({"spec": {"holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION_SECS, "renewTime": renew}});
        match leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                            "name": self.name, "uid": node_uid}]},
                    "spec": {"holderIdentity": self.name,
                        "leaseDurationSeconds": LEASE_DURATION_SECS, "renewTime": renew},
                }))
                .map_err(|e| ClientError::Decode(e.to_string()))?;
                match leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_already_exists() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Brings one pod's reported state in line with its spec: start it (after the simulated
    /// delay), finish its graceful deletion, or forget it once it is gone.
    fn sync_pod(
        self: &Arc<Self>,
        store: &Store<Pod>,
        book: &Arc<Mutex<PodBook>>,
        pod_cidr: &str,
        ns: &str,
        name: &str,
    ) {
        let Some(pod) = store.get(ns, name) else {
            // Gone from the API: forget it (its uid is no longer in the cache).
            let live: HashSet<String> = store
                .list()
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            let mut b = book.lock();
            b.started.retain(|uid, _| live.contains(uid));
            b.deleting.retain(|uid| live.contains(uid));
            return;
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            if !book.lock().deleting.insert(uid.clone()) {
                return;
            }
            let (this, ns, name) = (self.clone(), ns.to_string(), name.to_string());
            tokio::spawn(async move {
                let pods: Api<Pod> = Api::namespaced(this.client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                if let Err(e) = pods.delete(&name, &dp).await
                    && !e.is_not_found()
                    && !e.is_conflict()
                {
                    tracing::debug!(pod = %name, "hollow delete failed: {e}");
                }
            });
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Running" | "Succeeded" | "Failed"))
            || book.lock().started.contains_key(&uid)
        {
            return;
        }
        let Some(host) = book.lock().allocate() else {
            tracing::warn!(node = %self.name, "hollow node is out of pod addresses");
            return;
        };
        book.lock().started.insert(uid.clone(), host);
        let pod_ip = pod_ip(pod_cidr, host);
        let (this, ns, name) = (self.clone(), ns.to_string(), name.to_string());
        let book = book.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.cfg.start_delay).await;
            let pods: Api<Pod> = Api::namespaced(this.client.clone(), &ns);
            let status = running_status(&pod, &node_ip(this.index).to_string(), &pod_ip);
            if let Err(e) = pods
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                // Report it again at the next event for this pod.
                book.lock().started.remove(&uid);
                tracing::debug!(pod = %name, "hollow status update failed: {e}");
            }
        });
    }
}

/// `host` within the /24 `cidr` (a CIDR that does not parse gives 10.128.0.<host>).
fn pod_ip(cidr: &str, host: u8) -> String {
    let base = cidr
        .split('/')
        .next()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .unwrap_or(Ipv4Addr::new(10, 128, 0, 0));
    Ipv4Addr::from((u32::from(base) & !0xff) | u32::from(host)).to_string()
}

/// The status of a pod whose every container runs and is ready.
fn running_status(pod: &Pod, host_ip: &str, pod_ip: &str) -> Value {
    let now = now_rfc3339();
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "image": c.image.clone().unwrap_or_default(),
                        "imageID": format!("hollow://{}", c.image.clone().unwrap_or_default()),
                        "containerID": format!("hollow://{}/{}",
                            pod.metadata.uid.clone().unwrap_or_default(), c.name),
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"),
            cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
        "containerStatuses": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_and_cidrs_are_distinct() {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(node_ip(300), Ipv4Addr::new(172, 16, 1, 45));
        assert_eq!(default_pod_cidr(0), "10.128.0.0/24");
        assert_eq!(default_pod_cidr(257), "10.129.1.0/24");
        assert_ne!(default_pod_cidr(1), default_pod_cidr(2));
    }

    #[test]
    fn pod_addresses_stay_in_the_cidr_and_are_reused_after_release() {
        assert_eq!(pod_ip("10.244.3.0/24", 7), "10.244.3.7");
        let mut b = PodBook::default();
        let mut seen = HashSet::new();
        for i in 0..253 {
            let h = b.allocate().expect("free address");
            assert!((2..=254).contains(&h));
            assert!(seen.insert(h), "duplicate {h}");
            b.started.insert(format!("uid-{i}"), h);
        }
        assert_eq!(b.allocate(), None, "a /24 holds 253 pods");
        b.started.remove("uid-10");
        assert!(b.allocate().is_some());
    }
}
