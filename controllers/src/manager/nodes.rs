//! The shells of node IPAM, node lifecycle and NoExecute taint eviction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::client::runtime::{Event, Informer, Store};
use api::client::{Api, Client, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::json;

use super::{Ctx, Lane, ManagerError, api_err, object_ref, record_event};
use crate::nodeipam::{self, CidrAllocator, NodeStep};
use crate::nodelifecycle::{self, Eviction, LEASE_NAMESPACE, Monitor};
use crate::runtime::{Action, Controller, ReconcileError, run_workers};
use crate::util::{ObjectKey, is_pod_active};

/// Node IPAM and lifecycle settings (upstream's flags of the same names).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `--allocate-node-cidrs`: give Nodes a podCIDR.
    pub allocate_node_cidrs: bool,
    /// `--cluster-cidr`.
    pub cluster_cidr: Ipv4Net,
    /// `--node-cidr-mask-size`.
    pub node_cidr_mask_size: u8,
    /// `--node-monitor-grace-period`: a node without a heartbeat this long goes Unknown.
    pub monitor_grace_period: Duration,
    /// `--node-monitor-period`: how often every node is looked at.
    pub monitor_period: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            allocate_node_cidrs: true,
            cluster_cidr: nodeipam::DEFAULT_CLUSTER_CIDR
                .parse()
                .unwrap_or_else(|_| Ipv4Net::default()),
            node_cidr_mask_size: nodeipam::DEFAULT_NODE_MASK,
            monitor_grace_period: nodelifecycle::DEFAULT_GRACE,
            monitor_period: nodelifecycle::DEFAULT_MONITOR_PERIOD,
        }
    }
}

/// Validated settings, before the informers exist.
pub(super) struct NodesInit {
    opts: NodeOptions,
    ipam_on: bool,
    lifecycle_on: bool,
    eviction_on: bool,
}

/// Caches, queues and state of the node controllers.
pub(super) struct Nodes {
    nodes: Store<Node>,
    leases: Store<Lease>,
    ipam: Lane,
    lifecycle: Lane,
    eviction: bool,
    opts: NodeOptions,
    /// None until the Node cache has synced and the map was rebuilt from it.
    allocator: Mutex<Option<CidrAllocator>>,
    monitor: Mutex<Monitor>,
    /// node -> when we first saw its NoExecute taints without `timeAdded`.
    taint_seen: Mutex<HashMap<String, Timestamp>>,
}

/// The informers behind [`Nodes`], until spawned.
pub(super) struct NodeInformers {
    nodes: Informer<Node>,
    leases: Informer<Lease>,
}

impl Nodes {
    pub(super) fn configure(
        opts: &NodeOptions,
        enabled: &BTreeSet<&'static str>,
    ) -> Result<NodesInit, ManagerError> {
        // Fail early on a bad range rather than at the first Node.
        CidrAllocator::new(opts.cluster_cidr, opts.node_cidr_mask_size)?;
        Ok(NodesInit {
            opts: opts.clone(),
            ipam_on: enabled.contains("nodeipam") && opts.allocate_node_cidrs,
            lifecycle_on: enabled.contains("nodelifecycle")
                || enabled.contains("taint-eviction-controller"),
            eviction_on: enabled.contains("taint-eviction-controller"),
        })
    }

    pub(super) async fn wait_until_synced(&self) {
        self.nodes.wait_until_synced().await;
        self.leases.wait_until_synced().await;
    }

    pub(super) fn lanes(&self) -> [&Lane; 2] {
        [&self.ipam, &self.lifecycle]
    }

    pub(super) fn resync(&self) {
        for n in self.nodes.list() {
            let name = n.metadata.name.clone().unwrap_or_default();
            self.ipam.add(ObjectKey::new("", &name));
            self.lifecycle.add(ObjectKey::new("", &name));
        }
    }

    /// Every cached Node.
    pub(super) fn list_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.list()
    }

    /// A pod changed: if it is bound to a node with NoExecute taints, look at that node.
    pub(super) fn on_pod(&self, pod: &Pod) {
        if !self.eviction {
            return;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return;
        };
        let tainted = self.nodes.get("", node).is_some_and(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
        });
        if tainted {
            self.lifecycle.add(ObjectKey::new("", node));
        }
    }
}

impl NodesInit {
    pub(super) fn informers(self, client: &Client) -> (Nodes, NodeInformers) {
        let (nodes, ni) = Informer::new(Api::<Node>::all(client.clone()), ListParams::default());
        let (leases, li) = Informer::new(
            Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
            ListParams::default(),
        );
        let grace = self.opts.monitor_grace_period;
        (
            Nodes {
                nodes,
                leases,
                ipam: Lane::new("nodeipam", self.ipam_on),
                lifecycle: Lane::new("nodelifecycle", self.lifecycle_on),
                eviction: self.eviction_on,
                opts: self.opts,
                allocator: Mutex::new(None),
                monitor: Mutex::new(Monitor::new(grace)),
                taint_seen: Mutex::new(HashMap::new()),
            },
            NodeInformers {
                nodes: ni,
                leases: li,
            },
        )
    }
}

impl NodeInformers {
    pub(super) fn spawn(self, tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
        let c = ctx.clone();
        tasks.spawn(self.nodes.run(move |ev| c.on_node(ev)));
        let c = ctx.clone();
        tasks.spawn(self.leases.run(move |ev| c.on_lease(ev)));
    }
}

/// Rebuilds the allocation map from the synced Node cache, then starts the worker pools
/// and the monitor tick.
pub(super) fn spawn_workers(tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>) {
    let n = &ctx.nodes;
    if n.ipam.on {
        let mut alloc = match CidrAllocator::new(n.opts.cluster_cidr, n.opts.node_cidr_mask_size) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "node IPAM disabled");
                return;
            }
        };
        for node in n.nodes.list() {
            let name = node.metadata.name.as_deref().unwrap_or("");
            if let Some(c) = nodeipam::node_cidr(&node)
                && let Err(e) = alloc.occupy(name, c)
            {
                tracing::warn!(node = name, error = %e, "existing podCIDR not recorded");
            }
        }
        tracing::info!(cluster = %alloc.cluster(), in_use = alloc.used(), "node IPAM map rebuilt from Nodes");
        *n.allocator.lock() = Some(alloc);
        tasks.spawn(run_workers(
            Arc::new(IpamController(ctx.clone())),
            n.ipam.queue.clone(),
            1,
            n.ipam.stats.clone(),
        ));
        n.resync();
    }
    if n.lifecycle.on {
        tasks.spawn(run_workers(
            Arc::new(LifecycleController(ctx.clone())),
            n.lifecycle.queue.clone(),
            4,
            n.lifecycle.stats.clone(),
        ));
        let c = ctx.clone();
        let period = n.opts.monitor_period.max(Duration::from_millis(100));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                for node in c.nodes.nodes.list() {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    c.nodes.lifecycle.add(ObjectKey::new("", &name));
                }
            }
        });
    }
}

impl Ctx {
    fn on_node(&self, ev: Event<Node>) {
        let (node, deleted) = match ev {
            Event::Added(n) | Event::Modified(n) => (n, false),
            Event::Deleted(n) => (n, true),
            Event::Synced => return,
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        if deleted {
            if let Some(a) = self.nodes.allocator.lock().as_mut()
                && let Some(c) = a.release(&name)
            {
                tracing::info!(node = %name, cidr = %c, "podCIDR released");
            }
            self.nodes.monitor.lock().forget(&name);
            self.nodes.taint_seen.lock().remove(&name);
        } else {
            self.nodes.ipam.add(ObjectKey::new("", &name));
            self.nodes.lifecycle.add(ObjectKey::new("", &name));
        }
        self.apps_on_node(&node);
    }

    fn on_lease(&self, ev: Event<Lease>) {
        if let Event::Added(l) | Event::Modified(l) = ev {
            let name = l.metadata.name.clone().unwrap_or_default();
            if self.nodes.nodes.get("", &name).is_some() {
                self.nodes.lifecycle.add(ObjectKey::new("", &name));
            }
        }
    }
}

// === Node IPAM ===

struct IpamController(Arc<Ctx>);

impl Controller for IpamController {
    fn name(&self) -> &'static str {
        "nodeipam"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let n = &c.nodes;
        let Some(node) = n.nodes.get("", &key.name) else {
            if let Some(a) = n.allocator.lock().as_mut() {
                a.release(&key.name);
            }
            return Ok(Action::Done);
        };
        let step = match n.allocator.lock().as_mut() {
            Some(a) => nodeipam::plan(a, &node),
            None => return Ok(Action::RequeueAfter(Duration::from_secs(1))),
        };
        match step {
            NodeStep::Nothing => Ok(Action::Done),
            NodeStep::Assign(cidr) => {
                let api: Api<Node> = Api::all(c.client.clone());
                let patch =
                    json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                match api
                    .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = %key.name, %cidr, "podCIDR assigned");
                        Ok(Action::Done)
                    }
                    Err(e) if e.is_not_found() => {
                        if let Some(a) = n.allocator.lock().as_mut() {
                            a.release(&key.name);
                        }
                        Ok(Action::Done)
                    }
                    Err(e) => Err(api_err(e)),
                }
            }
            NodeStep::Full(e) => {
                record_event(
                    c,
                    object_ref("v1", "Node", &node.metadata),
                    "cidrAllocator",
                    "Warning",
                    "CIDRNotAvailable",
                    &format!("Node {} status is now: CIDRNotAvailable ({e})", key.name),
                )
                .await;
                Ok(Action::RequeueAfter(Duration::from_secs(30)))
            }
        }
    }
}

// === Node lifecycle and taint eviction ===

struct LifecycleController(Arc<Ctx>);

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl LifecycleController {
    /// Marks the node's pods not Ready (their node went Unknown).
    async fn mark_pods_not_ready(
        &self,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Result<(), ReconcileError> {
        for p in pods {
            let Some(conds) = nodelifecycle::pod_not_ready(p, now) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(
                self.0.client.clone(),
                p.metadata.namespace.as_deref().unwrap_or(""),
            );
            let patch = json!({"status": {"conditions": conds}});
            match api
                .patch_status(
                    p.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(())
    }

    /// Evicts what must go now; returns when the next eviction is due.
    async fn evict(
        &self,
        node: &str,
        taints: &[k8s_openapi::api::core::v1::Taint],
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Result<Option<Duration>, ReconcileError> {
        let c = &self.0;
        let noexec = taints.iter().any(|t| t.effect == "NoExecute");
        let since = {
            let mut seen = c.nodes.taint_seen.lock();
            if noexec {
                *seen.entry(node.to_string()).or_insert(now)
            } else {
                seen.remove(node);
                return Ok(None);
            }
        };
        let mut next: Option<Timestamp> = None;
        for p in pods.iter().filter(|p| is_pod_active(p)) {
            match nodelifecycle::pod_eviction(p, taints, since, now) {
                Eviction::Never => {}
                Eviction::At(t) => next = Some(next.map_or(t, |n| n.min(t))),
                Eviction::Now => {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("");
                    let name = p.metadata.name.as_deref().unwrap_or("");
                    let api: Api<Pod> = Api::namespaced(c.client.clone(), ns);
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: p.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(name, &dp).await {
                        Ok(_) => {
                            tracing::info!(pod = %format!("{ns}/{name}"), node, "evicted by NoExecute taint");
                            record_event(
                                c,
                                object_ref("v1", "Pod", &p.metadata),
                                "taint-eviction-controller",
                                "Normal",
                                "TaintManagerEviction",
                                &format!("Marking for deletion Pod {ns}/{name}"),
                            )
                            .await;
                        }
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(api_err(e)),
                    }
                }
            }
        }
        Ok(next.map(|t| {
            let ms = t.as_millisecond() - now.as_millisecond();
            Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 100)
        }))
    }
}

impl Controller for LifecycleController {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let n = &c.nodes;
        let Some(node) = n.nodes.get("", &key.name) else {
            n.monitor.lock().forget(&key.name);
            return Ok(Action::Done);
        };
        let now = c.clock.now();
        let lease = n.leases.get(LEASE_NAMESPACE, &key.name);
        let all = n.nodes.list();
        let full_disruption = !all.is_empty() && all.iter().all(|x| !is_ready(x));
        let v = n
            .monitor
            .lock()
            .observe(&node, lease.as_deref(), full_disruption, now);
        let api: Api<Node> = Api::all(c.client.clone());
        let mut taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if let Some(t) = &v.taints {
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": node.metadata.resource_version},
                {"op": "add", "path": "/spec/taints", "value": t}
            ]);
            match api
                .patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
            {
                Ok(_) => taints.clone_from(t),
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(api_err(e)),
            }
        }
        if let Some(conds) = &v.conditions {
            let patch = json!({"status": {"conditions": conds}});
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %key.name, "node stopped posting status: Ready=Unknown");
                    record_event(
                        c,
                        object_ref("v1", "Node", &node.metadata),
                        "node-controller",
                        "Normal",
                        "NodeNotReady",
                        &format!("Node {} status is now: NodeNotReady", key.name),
                    )
                    .await;
                }
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(api_err(e)),
            }
        }
        let pods = c.pods_on_node(&key.name);
        if v.became_unknown {
            self.mark_pods_not_ready(&pods, now).await?;
        }
        let evict_at = if n.eviction {
            self.evict(&key.name, &taints, &pods, now).await?
        } else {
            None
        };
        let next = match (v.recheck_after, evict_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }
}
