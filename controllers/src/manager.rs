//! The controller-manager shell: shared informers, work queues, worker pools, leader
//! election and `/metrics`, wiring the sans-IO cores of this crate to the API client.
//!
//! One informer per resource feeds every controller that cares about it (the handlers only
//! update indexes and queue keys; reconciles read the caches). Each controller has its own
//! [`WorkQueue`] and worker pool.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use api::client::leader::LeaderElector;
use api::client::runtime::{Event, Informer, Store};
use api::client::{
    Api, ApiResource, Client, ClientConfig, ClientError, DeleteParams, DynamicObject, ListParams,
    Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::json;

use crate::expectations::{EXPECTATIONS_TIMEOUT, Expectations};
use crate::gc::{self, Graph, Identity, ObjectInfo, Propagation};
use crate::queue::WorkQueue;
use crate::runtime::{Action, Controller, ReconcileError, Stats, run_workers};
use crate::util::{ObjectKey, controller_ref, selector_matches};
use crate::{deployment, endpointslice, job, namespace, replicaset, serviceaccount};

mod apps;
mod batch;
mod nodes;
mod policy;

pub use self::nodes::NodeOptions;
pub use self::policy::{ApiMetrics, ContainerUsage, Metrics, MetricsSource, PodUsage};

/// Every controller this manager runs, by its upstream name.
pub const CONTROLLERS: &[&str] = &[
    "deployment",
    "replicaset",
    "job",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "root-ca-cert-publisher",
    "endpointslice",
    "endpoint",
    "nodeipam",
    "nodelifecycle",
    "taint-eviction-controller",
    "daemonset",
    "statefulset",
    "cronjob",
    "ttl-after-finished",
    "replicationcontroller",
    "disruption",
    "resourcequota",
    "horizontalpodautoscaling",
    "persistentvolume-binder",
];

/// Bound of every work queue (distinct keys).
const QUEUE_CAPACITY: usize = 1 << 20;

/// Where the controllers read the time (CronJob schedules, TTLs, node health). The system
/// clock in production; tests drive their own.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(now))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The time now.
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The kubeconfig to reach the apiserver with.
    pub kubeconfig: PathBuf,
    /// `--controllers`: `*` (all), `name` (enable), `-name` (disable), comma-separated.
    pub controllers: String,
    /// Serve `/metrics` on this 127.0.0.1 port.
    pub metrics_port: Option<u16>,
    /// Take the `kube-system/kube-controller-manager` Lease before running.
    pub leader_elect: bool,
    /// This instance's identity in the Lease.
    pub identity: String,
    /// Node IPAM and node lifecycle settings.
    pub nodes: NodeOptions,
    /// The clock of the time-driven controllers.
    pub clock: Clock,
    /// Where the HPA controller reads pod metrics (`None`: the resource metrics API).
    pub metrics: Option<Metrics>,
}

impl Options {
    /// Every controller, no metrics port, no leader election, upstream's defaults otherwise.
    pub fn new(kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            kubeconfig: kubeconfig.into(),
            controllers: "*".into(),
            metrics_port: None,
            leader_elect: false,
            identity: "controller-manager".into(),
            nodes: NodeOptions::default(),
            clock: Clock::system(),
            metrics: None,
        }
    }
}

/// Why the manager stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// Bad `--controllers`.
    #[error("--controllers: {0}")]
    Controllers(String),
    /// The client could not be built, or leader election failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The metrics listener.
    #[error("metrics: {0}")]
    Io(#[from] std::io::Error),
    /// A bad `--cluster-cidr`/`--node-cidr-mask-size`.
    #[error(transparent)]
    Ipam(#[from] crate::nodeipam::IpamError),
    /// Leadership was lost; the process must restart to campaign again.
    #[error("leader election lost")]
    LeadershipLost,
}

/// Parses `--controllers` as upstream: `*` enables all, `foo` enables foo, `-foo` disables it.
pub fn parse_controllers(spec: &str) -> Result<BTreeSet<&'static str>, ManagerError> {
    let mut on: BTreeSet<&'static str> = BTreeSet::new();
    let mut off: BTreeSet<&'static str> = BTreeSet::new();
    let mut star = false;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "*" {
            star = true;
            continue;
        }
        let (neg, name) = match part.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, part),
        };
        let known = CONTROLLERS
            .iter()
            .copied()
            .find(|c| *c == name)
            .ok_or_else(|| ManagerError::Controllers(format!("unknown controller {name:?}")))?;
        if neg {
            off.insert(known)
        } else {
            on.insert(known)
        };
    }
    if star {
        on.extend(CONTROLLERS.iter().copied());
    }
    Ok(on.difference(&off).copied().collect())
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::of(meta)
}

fn api_err(e: ClientError) -> ReconcileError {
    ReconcileError::Api(e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Invalid(e.to_string())
}

/// Upstream-like API access for a kind the manager knows (GC and namespace deletion).
fn resource_for(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    NAMESPACED
        .iter()
        .find(|(g, v, k, _)| *g == group && *v == version && *k == kind)
        .map(|(g, v, k, p)| ApiResource::new(g, v, k, p, true))
}

/// Namespaced resources the namespace controller empties, controllers before what they
/// create (so nothing is recreated behind the deletion).
const NAMESPACED: &[(&str, &str, &str, &str)] = &[
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("batch", "v1", "Job", "jobs"),
    ("", "v1", "ReplicationController", "replicationcontrollers"),
    ("apps", "v1", "ControllerRevision", "controllerrevisions"),
    (
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
    ),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "PodTemplate", "podtemplates"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Endpoints", "endpoints"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("networking.k8s.io", "v1", "Ingress", "ingresses"),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
    ),
    ("", "v1", "ConfigMap", "configmaps"),
    ("", "v1", "Secret", "secrets"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("", "v1", "ResourceQuota", "resourcequotas"),
    ("", "v1", "LimitRange", "limitranges"),
    ("", "v1", "Event", "events"),
    ("events.k8s.io", "v1", "Event", "events"),
    ("coordination.k8s.io", "v1", "Lease", "leases"),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    ),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
];

/// Kinds whose objects feed the GC graph (their informers exist anyway).
const GC_KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "ConfigMap"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "ControllerRevision"),
    ("batch/v1", "CronJob"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ReplicationController"),
];

/// Per-controller queue, stats and enablement.
struct Lane {
    queue: WorkQueue<ObjectKey>,
    stats: Arc<Stats>,
    on: bool,
}

impl Lane {
    fn new(name: &str, on: bool) -> Self {
        Self {
            queue: WorkQueue::new(name, QUEUE_CAPACITY),
            stats: Arc::new(Stats::default()),
            on,
        }
    }

    fn add(&self, key: ObjectKey) {
        if self.on {
            self.queue.add(key);
        }
    }
}

/// Pod indexes kept by the pod handler (reconciles must not scan every pod).
#[derive(Default)]
struct PodIndex {
    /// controller owner uid -> pods.
    by_owner: HashMap<String, HashSet<ObjectKey>>,
    /// pod -> its controller owner uid.
    owner_of: HashMap<ObjectKey, String>,
    /// namespace -> pods.
    by_ns: HashMap<String, HashSet<ObjectKey>>,
    /// pod -> Services that selected it at its last event.
    services_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    /// node -> pods bound to it.
    by_node: HashMap<String, HashSet<ObjectKey>>,
    /// pod -> the node it is bound to.
    node_of: HashMap<ObjectKey, String>,
}

/// Everything the controllers share.
struct Ctx {
    client: Client,
    ca_pem: Option<String>,
    pods: Store<Pod>,
    rss: Store<ReplicaSet>,
    deploys: Store<Deployment>,
    jobs: Store<Job>,
    nss: Store<Namespace>,
    sas: Store<ServiceAccount>,
    cms: Store<ConfigMap>,
    svcs: Store<Service>,
    slices: Store<EndpointSlice>,
    eps: Store<Endpoints>,
    index: Mutex<PodIndex>,
    rs_exp: Expectations<ObjectKey>,
    job_exp: Expectations<ObjectKey>,
    graph: Mutex<Graph>,
    rs: Lane,
    deploy: Lane,
    job: Lane,
    ns: Lane,
    sa: Lane,
    eps_lane: Lane,
    gc: Lane,
    root_ca: bool,
    endpoints: bool,
    clock: Clock,
    recent_events: Mutex<HashMap<String, Instant>>,
    apps: apps::Apps,
    batch: batch::Batch,
    nodes: nodes::Nodes,
    policy: policy::Policy,
}

/// Runs the enabled controllers until `shutdown` completes (or leadership is lost).
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ManagerError> {
    let enabled = parse_controllers(&opts.controllers)?;
    let node_state = nodes::Nodes::configure(&opts.nodes, &enabled)?;
    let cfg = ClientConfig::from_kubeconfig(&opts.kubeconfig)?;
    let ca_pem = cfg.ca_pem.clone().and_then(|v| String::from_utf8(v).ok());
    let client = Client::new(cfg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut leader_rx = None;
    if opts.leader_elect {
        let elector = LeaderElector::new(
            client.clone(),
            "kube-system",
            "kube-controller-manager",
            &opts.identity,
        );
        let mut rx = elector.subscribe();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = elector.run(stop).await {
                tracing::error!("leader election: {e}");
            }
        });
        tokio::select! {
            r = rx.wait_for(|l| *l) => { if r.is_err() { return Err(ManagerError::LeadershipLost); } }
            () = stopped(stop_rx.clone()) => return Ok(()),
        }
        tracing::info!(identity = %opts.identity, "became leader");
        leader_rx = Some(rx);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let ctx = start(
        &mut tasks,
        client,
        ca_pem,
        &enabled,
        node_state,
        opts.clock.clone(),
        opts.metrics.clone(),
    )
    .await;
    if let Some(port) = opts.metrics_port {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tracing::info!(port = listener.local_addr()?.port(), "metrics listening");
        tasks.spawn(serve_metrics(listener, ctx.clone()));
    }
    let lost = async move {
        match leader_rx {
            Some(mut rx) => {
                let _ = rx.wait_for(|l| !*l).await;
            }
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = stopped(stop_rx.clone()) => Ok(()),
        () = lost => Err(ManagerError::LeadershipLost),
    };
    for lane in ctx.lanes() {
        lane.queue.shut_down();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    shutdown_task.abort();
    result
}

fn informer<K>(client: &Client) -> (Store<K>, Informer<K>)
where
    K: api::client::ApiObject + k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    Informer::new(Api::all(client.clone()), ListParams::default())
}

async fn start(
    tasks: &mut tokio::task::JoinSet<()>,
    client: Client,
    ca_pem: Option<String>,
    enabled: &BTreeSet<&'static str>,
    node_state: nodes::NodesInit,
    clock: Clock,
    metrics: Option<Metrics>,
) -> Arc<Ctx> {
    let on = |n: &str| enabled.contains(n);
    let (pods, pod_inf) = informer::<Pod>(&client);
    let (rss, rs_inf) = informer::<ReplicaSet>(&client);
    let (deploys, d_inf) = informer::<Deployment>(&client);
    let (jobs, job_inf) = informer::<Job>(&client);
    let (nss, ns_inf) = Informer::new(Api::<Namespace>::all(client.clone()), ListParams::default());
    let (sas, sa_inf) = informer::<ServiceAccount>(&client);
    let (cms, cm_inf) = informer::<ConfigMap>(&client);
    let (svcs, svc_inf) = informer::<Service>(&client);
    let (slices, slice_inf) = informer::<EndpointSlice>(&client);
    let (eps, eps_inf) = informer::<Endpoints>(&client);
    let (apps_state, apps_informers) = apps::Apps::new(&client, enabled);
    let (batch_state, batch_informers) = batch::Batch::new(&client, enabled);
    let (node_state, node_informers) = node_state.informers(&client);
    let (policy_state, policy_informers) =
        policy::Policy::new(&client, enabled, metrics.map(|m| m.0));
    let watched = GC_KINDS
        .iter()
        .map(|(a, k)| ((*a).to_string(), (*k).to_string()));
    let ctx = Arc::new(Ctx {
        client,
        ca_pem,
        pods,
        rss,
        deploys,
        jobs,
        nss,
        sas,
        cms,
        svcs,
        slices,
        eps,
        index: Mutex::new(PodIndex::default()),
        rs_exp: Expectations::default(),
        job_exp: Expectations::default(),
        graph: Mutex::new(Graph::new(watched)),
        rs: Lane::new("replicaset", on("replicaset")),
        deploy: Lane::new("deployment", on("deployment")),
        job: Lane::new("job", on("job")),
        ns: Lane::new("namespace", on("namespace")),
        sa: Lane::new(
            "serviceaccount",
            on("serviceaccount") || on("root-ca-cert-publisher"),
        ),
        eps_lane: Lane::new("endpointslice", on("endpointslice") || on("endpoint")),
        gc: Lane::new("garbagecollector", on("garbagecollector")),
        root_ca: on("root-ca-cert-publisher"),
        endpoints: on("endpoint"),
        clock,
        recent_events: Mutex::new(HashMap::new()),
        apps: apps_state,
        batch: batch_state,
        nodes: node_state,
        policy: policy_state,
    });
    macro_rules! run_informer {
        ($inf:expr, $handler:ident) => {{
            let c = ctx.clone();
            tasks.spawn($inf.run(move |ev| c.$handler(ev)));
        }};
    }
    run_informer!(pod_inf, on_pod);
    run_informer!(rs_inf, on_rs);
    run_informer!(d_inf, on_deploy);
    run_informer!(job_inf, on_job);
    run_informer!(ns_inf, on_ns);
    run_informer!(sa_inf, on_sa);
    run_informer!(cm_inf, on_cm);
    run_informer!(svc_inf, on_svc);
    run_informer!(slice_inf, on_slice);
    run_informer!(eps_inf, on_eps);
    apps_informers.spawn(tasks, &ctx);
    batch_informers.spawn(tasks, &ctx);
    node_informers.spawn(tasks, &ctx);
    policy_informers.spawn(tasks, &ctx);
    // Workers start once every cache has its first list (a reconcile on a half-filled
    // cache would create what exists).
    ctx.pods.wait_until_synced().await;
    ctx.rss.wait_until_synced().await;
    ctx.deploys.wait_until_synced().await;
    ctx.jobs.wait_until_synced().await;
    ctx.nss.wait_until_synced().await;
    ctx.sas.wait_until_synced().await;
    ctx.cms.wait_until_synced().await;
    ctx.svcs.wait_until_synced().await;
    ctx.slices.wait_until_synced().await;
    ctx.eps.wait_until_synced().await;
    ctx.apps.wait_until_synced().await;
    ctx.batch.wait_until_synced().await;
    ctx.nodes.wait_until_synced().await;
    ctx.policy.wait_until_synced().await;
    tracing::info!(controllers = ?enabled, "caches synced; starting workers");
    macro_rules! workers {
        ($lane:ident, $ctl:expr, $n:expr) => {
            if ctx.$lane.on {
                tasks.spawn(run_workers(
                    Arc::new($ctl),
                    ctx.$lane.queue.clone(),
                    $n,
                    ctx.$lane.stats.clone(),
                ));
            }
        };
    }
    workers!(rs, ReplicaSetController(ctx.clone()), 5);
    workers!(deploy, DeploymentController(ctx.clone()), 5);
    workers!(job, JobController(ctx.clone()), 5);
    workers!(ns, NamespaceController(ctx.clone()), 5);
    workers!(sa, ServiceAccountController(ctx.clone()), 2);
    workers!(eps_lane, EndpointSliceController(ctx.clone()), 5);
    workers!(gc, GarbageCollector(ctx.clone()), 10);
    apps::spawn_workers(tasks, &ctx);
    batch::spawn_workers(tasks, &ctx);
    nodes::spawn_workers(tasks, &ctx);
    policy::spawn_workers(tasks, &ctx);
    // Resync: a periodic pass over every object catches anything a refused add dropped.
    let c = ctx.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        tick.tick().await;
        loop {
            tick.tick().await;
            c.resync();
        }
    });
    ctx
}

// === impl Ctx: informer handlers ===

impl Ctx {
    fn gc_upsert(&self, api_version: &str, kind: &str, meta: &ObjectMeta) {
        if !self.gc.on {
            return;
        }
        let uids = self
            .graph
            .lock()
            .upsert(ObjectInfo::new(api_version, kind, meta));
        for u in uids {
            self.gc.add(ObjectKey::new("", &u));
        }
    }

    fn gc_remove(&self, meta: &ObjectMeta) {
        if !self.gc.on {
            return;
        }
        let uids = self.graph.lock().remove(meta.uid.as_deref().unwrap_or(""));
        for u in uids {
            self.gc.add(ObjectKey::new("", &u));
        }
    }

    fn resync(&self) {
        for d in self.deploys.list() {
            self.deploy.add(key_of(&d.metadata));
        }
        for r in self.rss.list() {
            self.rs.add(key_of(&r.metadata));
        }
        for j in self.jobs.list() {
            self.job.add(key_of(&j.metadata));
        }
        for n in self.nss.list() {
            self.ns.add(key_of(&n.metadata));
            self.sa.add(key_of(&n.metadata));
        }
        for s in self.svcs.list() {
            self.eps_lane.add(key_of(&s.metadata));
        }
        self.apps.resync();
        self.batch.resync();
        self.nodes.resync();
        self.policy.resync();
    }

    /// Every lane (queue) of the manager.
    fn lanes(&self) -> Vec<&Lane> {
        let mut v = vec![
            &self.rs,
            &self.deploy,
            &self.job,
            &self.ns,
            &self.sa,
            &self.eps_lane,
            &self.gc,
        ];
        v.extend(self.apps.lanes());
        v.extend(self.batch.lanes());
        v.extend(self.nodes.lanes());
        v.extend(self.policy.lanes());
        v
    }

    /// Services in the pod's namespace whose selector picks it.
    fn services_selecting(&self, pod: &Pod) -> Vec<ObjectKey> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        self.svcs
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.spec
                        .as_ref()
                        .and_then(|sp| sp.selector.as_ref())
                        .filter(|sel| !sel.is_empty())
                        .is_some_and(|sel| {
                            let labels = pod.metadata.labels.as_ref();
                            sel.iter()
                                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                        })
            })
            .iter()
            .map(|s| key_of(&s.metadata))
            .collect()
    }

    fn on_pod(&self, ev: Event<Pod>) {
        let (pod, deleted, added) = match ev {
            Event::Added(p) => (p, false, true),
            Event::Modified(p) => (p, false, false),
            Event::Deleted(p) => (p, true, false),
            Event::Synced => return,
        };
        let key = key_of(&pod.metadata);
        let ns = key.namespace.clone();
        let owner = controller_ref(&pod.metadata).cloned();
        let new_services = if deleted {
            Vec::new()
        } else {
            self.services_selecting(&pod)
        };
        let old_services;
        {
            let mut ix = self.index.lock();
            if let Some(prev) = ix.owner_of.remove(&key)
                && let Some(set) = ix.by_owner.get_mut(&prev)
            {
                set.remove(&key);
                if set.is_empty() {
                    ix.by_owner.remove(&prev);
                }
            }
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty() && !deleted);
            if let Some(prev) = ix.node_of.remove(&key)
                && let Some(set) = ix.by_node.get_mut(&prev)
            {
                set.remove(&key);
                if set.is_empty() {
                    ix.by_node.remove(&prev);
                }
            }
            if let Some(n) = &node {
                ix.by_node.entry(n.clone()).or_default().insert(key.clone());
                ix.node_of.insert(key.clone(), n.clone());
            }
            if deleted {
                if let Some(set) = ix.by_ns.get_mut(&ns) {
                    set.remove(&key);
                }
                old_services = ix.services_of.remove(&key).unwrap_or_default();
            } else {
                if let Some(o) = &owner {
                    ix.by_owner
                        .entry(o.uid.clone())
                        .or_default()
                        .insert(key.clone());
                    ix.owner_of.insert(key.clone(), o.uid.clone());
                }
                ix.by_ns.entry(ns.clone()).or_default().insert(key.clone());
                old_services = ix
                    .services_of
                    .insert(key.clone(), new_services.clone())
                    .unwrap_or_default();
            }
        }
        let pod_key = key.to_string();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if let Some(o) = &owner {
            let okey = ObjectKey::new(&ns, &o.name);
            match o.kind.as_str() {
                "ReplicaSet" => {
                    if deleted || terminating {
                        self.rs_exp.deletion_observed(&okey, &pod_key);
                    } else if added {
                        self.rs_exp.creation_observed(&okey);
                    }
                    self.rs.add(okey.clone());
                    // Recreate waits for old pods to go: tell the Deployment.
                    if deleted
                        && let Some(rs) = self.rss.get(&ns, &o.name)
                        && let Some(d) = controller_ref(&rs.metadata)
                    {
                        self.deploy.add(ObjectKey::new(&ns, &d.name));
                    }
                }
                "DaemonSet" | "StatefulSet" | "ReplicationController" => {
                    self.apps
                        .on_owned_pod(&o.kind, &okey, &pod_key, deleted || terminating, added);
                }
                "Job" => {
                    if deleted || terminating {
                        self.job_exp.deletion_observed(&okey, &pod_key);
                    } else if added {
                        self.job_exp.creation_observed(&okey);
                    }
                    self.job.add(okey);
                }
                _ => {}
            }
        } else if !deleted {
            // An orphan may be adopted by a ReplicaSet whose selector matches it.
            for rs in self
                .rss
                .filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
            {
                let sel = rs
                    .spec
                    .as_ref()
                    .map(|s| s.selector.clone())
                    .unwrap_or_default();
                if selector_matches(&sel, pod.metadata.labels.as_ref()).unwrap_or(false) {
                    self.rs.add(key_of(&rs.metadata));
                }
            }
        }
        let svc_keys: BTreeSet<ObjectKey> = old_services.into_iter().chain(new_services).collect();
        for s in svc_keys {
            self.eps_lane.add(s);
        }
        if !deleted {
            self.nodes.on_pod(&pod);
        }
        self.apps.on_any_pod(&ns);
        // Quota replenishment (as upstream): creates were charged at admission; a recount
        // follows what admission cannot see, a pod going away or finishing.
        if deleted || terminating || matches!(crate::util::pod_phase(&pod), "Succeeded" | "Failed")
        {
            self.policy.on_ns_object(&ns);
        }
        if deleted {
            self.gc_remove(&pod.metadata);
        } else {
            self.gc_upsert("v1", "Pod", &pod.metadata);
        }
    }

    /// The pods bound to `node`.
    fn pods_on_node(&self, node: &str) -> Vec<Arc<Pod>> {
        let keys: Vec<ObjectKey> = self
            .index
            .lock()
            .by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.pods.get(&k.namespace, &k.name))
            .collect()
    }

    fn on_rs(&self, ev: Event<ReplicaSet>) {
        let (rs, deleted) = match ev {
            Event::Added(p) | Event::Modified(p) => (p, false),
            Event::Deleted(p) => (p, true),
            Event::Synced => return,
        };
        let key = key_of(&rs.metadata);
        if deleted {
            self.rs_exp.delete(&key);
            self.gc_remove(&rs.metadata);
        } else {
            self.gc_upsert("apps/v1", "ReplicaSet", &rs.metadata);
        }
        self.rs.add(key.clone());
        if let Some(o) = controller_ref(&rs.metadata).filter(|o| o.kind == "Deployment") {
            self.deploy.add(ObjectKey::new(&key.namespace, &o.name));
        }
    }

    fn on_deploy(&self, ev: Event<Deployment>) {
        match ev {
            Event::Added(d) | Event::Modified(d) => {
                self.gc_upsert("apps/v1", "Deployment", &d.metadata);
                self.deploy.add(key_of(&d.metadata));
            }
            Event::Deleted(d) => {
                self.gc_remove(&d.metadata);
                self.deploy.add(key_of(&d.metadata));
                self.policy
                    .on_ns_object(d.metadata.namespace.as_deref().unwrap_or(""));
            }
            Event::Synced => {}
        }
    }

    fn on_job(&self, ev: Event<Job>) {
        match ev {
            Event::Added(j) | Event::Modified(j) => {
                self.gc_upsert("batch/v1", "Job", &j.metadata);
                self.job.add(key_of(&j.metadata));
                self.batch.on_job(&j);
            }
            Event::Deleted(j) => {
                self.batch.on_job(&j);
                self.job_exp.delete(&key_of(&j.metadata));
                self.gc_remove(&j.metadata);
            }
            Event::Synced => {}
        }
    }

    fn on_ns(&self, ev: Event<Namespace>) {
        if let Event::Added(n) | Event::Modified(n) = ev {
            self.ns.add(key_of(&n.metadata));
            self.sa.add(key_of(&n.metadata));
        }
    }

    fn on_sa(&self, ev: Event<ServiceAccount>) {
        if let Event::Deleted(s) = ev
            && s.metadata.name.as_deref() == Some(serviceaccount::DEFAULT_SA)
        {
            self.sa.add(ObjectKey::new(
                "",
                s.metadata.namespace.as_deref().unwrap_or(""),
            ));
        }
    }

    fn on_cm(&self, ev: Event<ConfigMap>) {
        let (cm, deleted) = match ev {
            Event::Added(p) | Event::Modified(p) => (p, false),
            Event::Deleted(p) => (p, true),
            Event::Synced => return,
        };
        if cm.metadata.name.as_deref() == Some(serviceaccount::ROOT_CA) {
            self.sa.add(ObjectKey::new(
                "",
                cm.metadata.namespace.as_deref().unwrap_or(""),
            ));
        }
        if deleted {
            self.policy
                .on_ns_object(cm.metadata.namespace.as_deref().unwrap_or(""));
        }
        if deleted {
            self.gc_remove(&cm.metadata);
        } else {
            self.gc_upsert("v1", "ConfigMap", &cm.metadata);
        }
    }

    fn on_svc(&self, ev: Event<Service>) {
        let (s, deleted, added) = match ev {
            Event::Added(p) => (p, false, true),
            Event::Modified(p) => (p, false, false),
            Event::Deleted(p) => (p, true, false),
            Event::Synced => return,
        };
        if !added {
            self.policy
                .on_ns_object(s.metadata.namespace.as_deref().unwrap_or(""));
        }
        if deleted {
            self.gc_remove(&s.metadata);
        } else {
            self.gc_upsert("v1", "Service", &s.metadata);
            self.eps_lane.add(key_of(&s.metadata));
        }
    }

    fn on_slice(&self, ev: Event<EndpointSlice>) {
        let (s, deleted) = match ev {
            Event::Added(p) | Event::Modified(p) => (p, false),
            Event::Deleted(p) => (p, true),
            Event::Synced => return,
        };
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(endpointslice::SERVICE_NAME_LABEL))
        {
            self.eps_lane.add(ObjectKey::new(
                s.metadata.namespace.as_deref().unwrap_or(""),
                svc,
            ));
        }
        if deleted {
            self.gc_remove(&s.metadata);
        } else {
            self.gc_upsert("discovery.k8s.io/v1", "EndpointSlice", &s.metadata);
        }
    }

    fn on_eps(&self, ev: Event<Endpoints>) {
        if let Event::Deleted(e) | Event::Modified(e) = ev {
            self.eps_lane.add(key_of(&e.metadata));
        }
    }

    /// The pods a ReplicaSet or Job owns plus the orphans of its namespace.
    fn pods_owned_by(&self, ns: &str, uid: &str, with_orphans: bool) -> Vec<Arc<Pod>> {
        let keys: Vec<ObjectKey> = {
            let ix = self.index.lock();
            let mut keys: Vec<ObjectKey> = ix
                .by_owner
                .get(uid)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            if with_orphans {
                keys.extend(
                    ix.by_ns
                        .get(ns)
                        .into_iter()
                        .flatten()
                        .filter(|k| !ix.owner_of.contains_key(*k))
                        .cloned(),
                );
            }
            keys
        };
        keys.iter()
            .filter_map(|k| self.pods.get(&k.namespace, &k.name))
            .collect()
    }

    fn pods_in(&self, ns: &str) -> Vec<Arc<Pod>> {
        let keys: Vec<ObjectKey> = self
            .index
            .lock()
            .by_ns
            .get(ns)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.pods.get(&k.namespace, &k.name))
            .collect()
    }
}

/// Creates pods in slow-start batches; returns (created, first error). Creates never
/// attempted lower the expectations so the key is not blocked for 5 minutes.
async fn create_pods(
    api: &Api<Pod>,
    pods: Vec<Pod>,
    exp: &Expectations<ObjectKey>,
    key: &ObjectKey,
) -> (usize, Option<ClientError>) {
    let total = pods.len();
    let mut iter = pods.into_iter();
    let mut created = 0;
    for size in replicaset::slow_start_batches(total, 1) {
        let batch: Vec<Pod> = iter.by_ref().take(size).collect();
        let pp = PostParams::default();
        let results = join_all(batch.iter().map(|p| api.create(&pp, p))).await;
        let mut err = None;
        for r in results {
            match r {
                Ok(_) => created += 1,
                Err(e) => {
                    // This create will never be observed.
                    exp.creation_observed(key);
                    if !e.is_already_exists() {
                        err.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = err {
            // The rest of the batches are skipped: they will never be observed either.
            exp.lower_adds(key, iter.count());
            return (created, Some(e));
        }
    }
    (created, None)
}

async fn delete_pods(
    api: &Api<Pod>,
    victims: &[replicaset::PodRef],
    ns: &str,
    exp: &Expectations<ObjectKey>,
    key: &ObjectKey,
) -> Option<ClientError> {
    let results = join_all(victims.iter().map(|v| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(v.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        async move { (v, api.delete(&v.name, &dp).await) }
    }))
    .await;
    let mut first = None;
    for (v, r) in results {
        if let Err(e) = r {
            exp.deletion_observed(key, &format!("{ns}/{}", v.name));
            if !e.is_not_found() {
                first.get_or_insert(e);
            }
        }
    }
    first
}

fn requeue(d: Option<Duration>) -> Action {
    d.map_or(Action::Done, Action::RequeueAfter)
}

// === ReplicaSet ===

struct ReplicaSetController(Arc<Ctx>);

impl Controller for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(rs) = c.rss.get(&key.namespace, &key.name) else {
            c.rs_exp.delete(&key);
            return Ok(Action::Done);
        };
        let t = Instant::now();
        let satisfied = c.rs_exp.satisfied(&key, t);
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let pods = c.pods_owned_by(&key.namespace, &uid, true);
        let plan = replicaset::plan(&rs, pods.iter().map(AsRef::as_ref), now()).map_err(invalid)?;
        let api: Api<Pod> = Api::namespaced(c.client.clone(), &key.namespace);
        let mut err = None;
        if satisfied {
            let me = crate::util::new_controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
            adopt_release(&api, &me, &plan).await.map_err(api_err)?;
            let deletes: Vec<String> = plan
                .delete
                .iter()
                .map(|p| format!("{}/{}", key.namespace, p.name))
                .collect();
            c.rs_exp.expect(&key, plan.create, deletes, t);
            if plan.create > 0 {
                let pods: Vec<Pod> = (0..plan.create)
                    .map(|_| replicaset::pod_from_template(&rs))
                    .collect();
                let (_, e) = create_pods(&api, pods, &c.rs_exp, &key).await;
                err = e;
            }
            if !plan.delete.is_empty()
                && let Some(e) =
                    delete_pods(&api, &plan.delete, &key.namespace, &c.rs_exp, &key).await
            {
                err.get_or_insert(e);
            }
        }
        if rs.status.as_ref() != Some(&plan.status) {
            let rsapi: Api<ReplicaSet> = Api::namespaced(c.client.clone(), &key.namespace);
            let patch = json!({"status": plan.status});
            match rsapi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = err {
            return Err(api_err(e));
        }
        Ok(if satisfied {
            requeue(plan.requeue_after)
        } else {
            Action::RequeueAfter(EXPECTATIONS_TIMEOUT + Duration::from_secs(1))
        })
    }
}

async fn adopt_release(
    api: &Api<Pod>,
    me: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    plan: &replicaset::Plan,
) -> Result<(), ClientError> {
    for p in &plan.adopt {
        let patch = json!({"metadata": {"uid": p.uid, "ownerReferences": [me]}});
        match api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_conflict() || e.is_invalid() => {}
            Err(e) => return Err(e),
        }
    }
    for p in &plan.release {
        let patch = json!([
            {"op": "test", "path": "/metadata/uid", "value": p.uid},
            {"op": "remove", "path": "/metadata/ownerReferences"}
        ]);
        match api
            .patch(&p.name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_invalid() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// === Deployment ===

struct DeploymentController(Arc<Ctx>);

impl Controller for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(d) = c.deploys.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let rss: Vec<Arc<ReplicaSet>> = c.rss.filter(|r| {
            r.metadata.namespace == d.metadata.namespace
                && controller_ref(&r.metadata).is_some_and(|o| o.uid == uid)
        });
        let recreate = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        let pods: Vec<Arc<Pod>> = if recreate {
            rss.iter()
                .flat_map(|r| {
                    c.pods_owned_by(
                        &key.namespace,
                        r.metadata.uid.as_deref().unwrap_or(""),
                        false,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let plan = deployment::plan(
            &d,
            rss.iter().map(AsRef::as_ref),
            pods.iter().map(AsRef::as_ref),
            now(),
        )
        .map_err(invalid)?;
        let rsapi: Api<ReplicaSet> = Api::namespaced(c.client.clone(), &key.namespace);
        let dapi: Api<Deployment> = Api::namespaced(c.client.clone(), &key.namespace);
        let pp = PostParams::default();
        for w in plan.writes {
            match w {
                deployment::Write::CreateReplicaSet(rs) => match rsapi.create(&pp, &rs).await {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {
                        let name = rs.metadata.name.clone().unwrap_or_default();
                        let existing = rsapi.get_opt(&name).await.map_err(api_err)?;
                        let ours = existing
                            .as_ref()
                            .and_then(|r| controller_ref(&r.metadata))
                            .is_some_and(|o| o.uid == uid);
                        if !ours {
                            // A hash collision: bump the count so the next template hash differs.
                            let cc = d
                                .status
                                .as_ref()
                                .and_then(|s| s.collision_count)
                                .unwrap_or(0)
                                + 1;
                            let patch = json!({"status": {"collisionCount": cc}});
                            dapi.patch_status(
                                &key.name,
                                &PatchParams::default(),
                                &Patch::Merge(patch),
                            )
                            .await
                            .map_err(api_err)?;
                        }
                        return Err(ReconcileError::Api(format!(
                            "replicaset {name} already exists"
                        )));
                    }
                    Err(e) => return Err(api_err(e)),
                },
                deployment::Write::UpdateReplicaSet(rs) => {
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    rsapi.replace(&name, &pp, &rs).await.map_err(api_err)?;
                }
                deployment::Write::DeleteReplicaSet { name, uid } => {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match rsapi.delete(&name, &dp).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(api_err(e)),
                    }
                }
                deployment::Write::SetRevision(r) => {
                    let patch = json!({"metadata": {"annotations": {deployment::REVISION: r}}});
                    dapi.patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(api_err)?;
                }
                deployment::Write::UpdateStatus(s) => {
                    let patch = json!({"status": s});
                    dapi.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(api_err)?;
                }
            }
        }
        Ok(requeue(plan.requeue_after))
    }
}

// === Job ===

struct JobController(Arc<Ctx>);

impl Controller for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(j) = c.jobs.get(&key.namespace, &key.name) else {
            c.job_exp.delete(&key);
            return Ok(Action::Done);
        };
        let t = Instant::now();
        if !c.job_exp.satisfied(&key, t) {
            return Ok(Action::RequeueAfter(
                EXPECTATIONS_TIMEOUT + Duration::from_secs(1),
            ));
        }
        let pods = c.pods_owned_by(
            &key.namespace,
            j.metadata.uid.as_deref().unwrap_or(""),
            false,
        );
        let plan = job::plan(&j, pods.iter().map(AsRef::as_ref), now());
        let api: Api<Pod> = Api::namespaced(c.client.clone(), &key.namespace);
        let deletes: Vec<String> = plan
            .delete
            .iter()
            .map(|p| format!("{}/{}", key.namespace, p.name))
            .collect();
        c.job_exp.expect(&key, plan.create.len(), deletes, t);
        let mut err = None;
        if !plan.create.is_empty() {
            let pods: Vec<Pod> = plan.create.iter().map(|i| job::pod_for(&j, *i)).collect();
            err = create_pods(&api, pods, &c.job_exp, &key).await.1;
        }
        if !plan.delete.is_empty()
            && let Some(e) = delete_pods(&api, &plan.delete, &key.namespace, &c.job_exp, &key).await
        {
            err.get_or_insert(e);
        }
        if j.status.as_ref() != Some(&plan.status) {
            let japi: Api<Job> = Api::namespaced(c.client.clone(), &key.namespace);
            let patch = json!({"status": plan.status});
            if let Err(e) = japi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                && !e.is_not_found()
            {
                err.get_or_insert(e);
            }
        }
        if let Some(e) = err {
            return Err(api_err(e));
        }
        Ok(requeue(plan.requeue_after))
    }
}

// === Namespace ===

struct NamespaceController(Arc<Ctx>);

impl Controller for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(ns) = c.nss.get("", &key.name) else {
            return Ok(Action::Done);
        };
        if !namespace::needs_finalizing(&ns) {
            return Ok(Action::Done);
        }
        let mut remaining = Vec::new();
        let mut errors = Vec::new();
        for (g, v, k, p) in NAMESPACED {
            let ar = ApiResource::new(g, v, k, p, true);
            let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &key.name, &ar);
            let list = match api.list_all(&ListParams::default().limit(500), 100).await {
                Ok(l) => l.items,
                Err(e) if e.is_not_found() || e.code() == Some(405) => continue,
                Err(e) => {
                    errors.push(format!("{p}: {e}"));
                    continue;
                }
            };
            let mut fins: BTreeMap<String, usize> = BTreeMap::new();
            for o in &list {
                for f in o.metadata.finalizers.iter().flatten() {
                    *fins.entry(f.clone()).or_default() += 1;
                }
            }
            let results = join_all(
                list.iter()
                    .filter(|o| o.metadata.deletion_timestamp.is_none())
                    .map(|o| {
                        let dp = DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Background),
                            preconditions: o.metadata.uid.clone().map(|u| Preconditions {
                                uid: Some(u),
                                resource_version: None,
                            }),
                            ..DeleteParams::default()
                        };
                        let name = o.metadata.name.clone().unwrap_or_default();
                        let api = api.clone();
                        async move { api.delete(&name, &dp).await }
                    }),
            )
            .await;
            for r in results {
                if let Err(e) = r
                    && !e.is_not_found()
                    && !e.is_conflict()
                {
                    errors.push(format!("{p}: {e}"));
                }
            }
            let group = if g.is_empty() {
                (*p).to_string()
            } else {
                format!("{p}.{g}")
            };
            remaining.push(namespace::Remaining {
                resource: group,
                count: list.len(),
                finalizers: fins.into_iter().collect(),
            });
        }
        let old = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let conds = namespace::conditions(&old, &remaining, &errors, now());
        let nsapi: Api<Namespace> = Api::all(c.client.clone());
        if !namespace::same_conditions(&old, &conds) {
            let patch = json!({"status": {"conditions": conds}});
            match nsapi
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(api_err(e)),
            }
        }
        match namespace::step(&ns, &remaining, &errors) {
            namespace::Step::Finalize => {
                let mut fin = (*ns).clone();
                if let Some(spec) = fin.spec.as_mut() {
                    spec.finalizers = Some(
                        spec.finalizers
                            .take()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|f| f != namespace::FINALIZER)
                            .collect(),
                    );
                }
                match nsapi
                    .replace_subresource::<Namespace, Namespace>(
                        &key.name,
                        "finalize",
                        &PostParams::default(),
                        &fin,
                    )
                    .await
                {
                    Ok(_) => Ok(Action::Done),
                    Err(e) if e.is_not_found() => Ok(Action::Done),
                    Err(e) => Err(api_err(e)),
                }
            }
            namespace::Step::Wait(d) => Ok(Action::RequeueAfter(d)),
            namespace::Step::Nothing => Ok(Action::Done),
        }
    }
}

// === ServiceAccount + root CA ===

struct ServiceAccountController(Arc<Ctx>);

impl Controller for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(ns) = c.nss.get("", &key.name) else {
            return Ok(Action::Done);
        };
        let sa = c.sas.get(&key.name, serviceaccount::DEFAULT_SA);
        let cm = c.cms.get(&key.name, serviceaccount::ROOT_CA);
        let ca = if c.root_ca { c.ca_pem.as_deref() } else { None };
        let sa_on = c.sa.on && (c.root_ca || sa.is_none());
        let pp = PostParams::default();
        for w in serviceaccount::wants(&ns, sa.as_deref(), cm.as_deref(), ca) {
            let r = match w {
                serviceaccount::Want::CreateServiceAccount(s) if sa_on => {
                    Api::<ServiceAccount>::namespaced(c.client.clone(), &key.name)
                        .create(&pp, &s)
                        .await
                        .map(|_| ())
                }
                serviceaccount::Want::CreateServiceAccount(_) => Ok(()),
                serviceaccount::Want::CreateConfigMap(m) => {
                    Api::<ConfigMap>::namespaced(c.client.clone(), &key.name)
                        .create(&pp, &m)
                        .await
                        .map(|_| ())
                }
                serviceaccount::Want::UpdateConfigMap(m) => {
                    Api::<ConfigMap>::namespaced(c.client.clone(), &key.name)
                        .replace(serviceaccount::ROOT_CA, &pp, &m)
                        .await
                        .map(|_| ())
                }
            };
            match r {
                Ok(()) => {}
                // Exists (cache lag) or the namespace is terminating: nothing to do.
                Err(e) if e.is_already_exists() || e.code() == Some(403) || e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(Action::Done)
    }
}

// === EndpointSlice + Endpoints ===

struct EndpointSliceController(Arc<Ctx>);

impl Controller for EndpointSliceController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let c = &self.0;
        let Some(svc) = c.svcs.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let pods = c.pods_in(&key.namespace);
        let existing: Vec<Arc<EndpointSlice>> = c.slices.filter(|s| {
            s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(endpointslice::SERVICE_NAME_LABEL))
                    == Some(&key.name)
        });
        let refs: Vec<&EndpointSlice> = existing.iter().map(AsRef::as_ref).collect();
        let plan = endpointslice::plan(&svc, pods.iter().map(AsRef::as_ref), &refs);
        let api: Api<EndpointSlice> = Api::namespaced(c.client.clone(), &key.namespace);
        let pp = PostParams::default();
        for s in &plan.create {
            api.create(&pp, s).await.map_err(api_err)?;
        }
        for s in &plan.update {
            api.replace(s.metadata.name.as_deref().unwrap_or(""), &pp, s)
                .await
                .map_err(api_err)?;
        }
        for n in &plan.delete {
            match api.delete(n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err(e)),
            }
        }
        if c.endpoints
            && let Some(want) = endpointslice::endpoints_for(&svc, pods.iter().map(AsRef::as_ref))
        {
            let eapi: Api<Endpoints> = Api::namespaced(c.client.clone(), &key.namespace);
            match c.eps.get(&key.namespace, &key.name) {
                None => match eapi.create(&pp, &want).await {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(api_err(e)),
                },
                Some(cur)
                    if cur.subsets != want.subsets
                        || cur.metadata.labels != want.metadata.labels =>
                {
                    let mut next = (*cur).clone();
                    next.subsets = want.subsets;
                    next.metadata.labels = want.metadata.labels;
                    eapi.replace(&key.name, &pp, &next).await.map_err(api_err)?;
                }
                Some(_) => {}
            }
        }
        Ok(Action::Done)
    }
}

// === Garbage collector ===

struct GarbageCollector(Arc<Ctx>);

impl GarbageCollector {
    fn api(&self, who: &Identity) -> Option<Api<DynamicObject>> {
        let ar = resource_for(&who.api_version, &who.kind)?;
        Some(Api::namespaced_with(
            self.0.client.clone(),
            &who.namespace,
            &ar,
        ))
    }

    /// Whether every owner in `ids` is really gone (a live read, not the cache).
    async fn all_absent(&self, ids: &[Identity]) -> Result<bool, ClientError> {
        for id in ids {
            let Some(api) = self.api(id) else {
                return Ok(false);
            };
            if let Some(o) = api.get_opt(&id.name).await?
                && o.metadata.uid.as_deref() == Some(id.uid.as_str())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn patch_list(
        &self,
        who: &Identity,
        path: &str,
        f: impl Fn(&DynamicObject) -> Option<serde_json::Value>,
    ) -> Result<(), ClientError> {
        let Some(api) = self.api(who) else {
            return Ok(());
        };
        let Some(cur) = api.get_opt(&who.name).await? else {
            return Ok(());
        };
        if cur.metadata.uid.as_deref() != Some(who.uid.as_str()) {
            return Ok(());
        }
        let Some(value) = f(&cur) else {
            return Ok(());
        };
        // An emptied list is removed, as a Go client's omitempty would leave it.
        let op = if value.as_array().is_some_and(Vec::is_empty) {
            json!({"op": "remove", "path": path})
        } else {
            json!({"op": "replace", "path": path, "value": value})
        };
        let patch = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": cur.metadata.resource_version},
            op
        ]);
        match api
            .patch(
                &who.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Controller for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
        let actions = self.0.graph.lock().decide(&key.name);
        for a in actions {
            match a {
                gc::Action::Delete {
                    who,
                    policy,
                    verify_absent,
                } => {
                    if !self.all_absent(&verify_absent).await.map_err(api_err)? {
                        return Ok(Action::Done);
                    }
                    let Some(api) = self.api(&who) else { continue };
                    let dp = DeleteParams {
                        propagation_policy: Some(match policy {
                            Propagation::Background => PropagationPolicy::Background,
                            Propagation::Foreground => PropagationPolicy::Foreground,
                            Propagation::Orphan => PropagationPolicy::Orphan,
                        }),
                        preconditions: Some(Preconditions {
                            uid: Some(who.uid.clone()),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(&who.name, &dp).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(api_err(e)),
                    }
                }
                gc::Action::RemoveOwnerRefs {
                    who,
                    uids,
                    verify_absent,
                } => {
                    if !self.all_absent(&verify_absent).await.map_err(api_err)? {
                        return Ok(Action::Done);
                    }
                    self.patch_list(&who, "/metadata/ownerReferences", |o| {
                        let refs = o.metadata.owner_references.clone().unwrap_or_default();
                        let keep: Vec<_> = refs
                            .iter()
                            .filter(|r| !uids.contains(&r.uid))
                            .cloned()
                            .collect();
                        (keep.len() != refs.len()).then(|| json!(keep))
                    })
                    .await
                    .map_err(api_err)?;
                }
                gc::Action::RemoveFinalizer { who, finalizer } => {
                    self.patch_list(&who, "/metadata/finalizers", |o| {
                        let f = o.metadata.finalizers.clone().unwrap_or_default();
                        let keep: Vec<_> = f.iter().filter(|x| *x != finalizer).cloned().collect();
                        (keep.len() != f.len()).then(|| json!(keep))
                    })
                    .await
                    .map_err(api_err)?;
                }
                gc::Action::Enqueue(uids) => {
                    for u in uids {
                        self.0.gc.add(ObjectKey::new("", &u));
                    }
                }
            }
        }
        Ok(Action::Done)
    }
}

// === events ===

/// Records an Event about `obj` (in `namespace`; "default" for cluster-scoped objects).
/// Repeats of the same (object, reason, message) within 10 minutes are dropped, so a
/// controller that retries does not flood the API; the memory of repeats is bounded.
async fn record_event(
    ctx: &Ctx,
    obj: k8s_openapi::api::core::v1::ObjectReference,
    component: &str,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let key = format!(
        "{}/{}/{}/{reason}/{message}",
        obj.kind.as_deref().unwrap_or(""),
        obj.namespace.as_deref().unwrap_or(""),
        obj.name.as_deref().unwrap_or("")
    );
    {
        let mut recent = ctx.recent_events.lock();
        let t = Instant::now();
        if recent
            .get(&key)
            .is_some_and(|at| t.duration_since(*at) < Duration::from_secs(600))
        {
            return;
        }
        if recent.len() >= 4096 {
            recent.clear();
        }
        recent.insert(key, t);
    }
    let ns = obj
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let at = ctx.clock.now();
    let stamp = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at);
    let ev = k8s_openapi::api::core::v1::Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                obj.name.as_deref().unwrap_or("object"),
                at.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: obj,
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(stamp.clone()),
        last_timestamp: Some(stamp),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        ..Default::default()
    };
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(reason, error = %e, "event not recorded");
    }
}

/// A reference to an object for an Event.
fn object_ref(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

// === /metrics ===

async fn serve_metrics(listener: tokio::net::TcpListener, ctx: Arc<Ctx>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // One bounded read of the request head; the answer does not depend on it.
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = ctx.metrics();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

impl Ctx {
    fn metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE workqueue_depth gauge\n# TYPE controller_reconcile_total counter\n");
        for lane in self.lanes() {
            if !lane.on {
                continue;
            }
            let n = lane.queue.name();
            out.push_str(&format!(
                "workqueue_depth{{name=\"{n}\"}} {}\n",
                lane.queue.len()
            ));
            out.push_str(&format!(
                "controller_reconcile_total{{controller=\"{n}\",result=\"success\"}} {}\n",
                lane.stats.ok.load(Ordering::Relaxed)
            ));
            out.push_str(&format!(
                "controller_reconcile_total{{controller=\"{n}\",result=\"error\"}} {}\n",
                lane.stats.errors.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "informer_cached_objects{{resource=\"pods\"}} {}\n",
            self.pods.len()
        ));
        out.push_str(&format!(
            "garbagecollector_graph_nodes {}\n",
            self.graph.lock().len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag_as_upstream() {
        let all = parse_controllers("*").unwrap();
        assert_eq!(all.len(), CONTROLLERS.len());
        let some = parse_controllers("*,-job,-endpoint").unwrap();
        assert!(!some.contains("job") && !some.contains("endpoint") && some.contains("deployment"));
        assert_eq!(
            parse_controllers("replicaset")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["replicaset"]
        );
        assert!(parse_controllers("nope").is_err());
    }
}
