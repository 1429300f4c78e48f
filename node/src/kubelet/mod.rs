//! The kubelet: registers the Node and renews its Lease ([`node_status`]), watches the pods
//! bound to it (an informer with `spec.nodeName=<node>`) plus the static pods of its manifest
//! directory ([`static_pods`]), and runs one pod worker per pod ([`worker`]) over the
//! built-in [`Runtime`].
//!
//! Data flow: informer events and the manifest scan only mark the dispatcher dirty; the
//! dispatcher then reconciles the whole desired set (level-triggered) against its workers:
//! a new pod uid gets a worker (a tokio task fed by a one-slot `watch` channel that always
//! holds the newest pod, so updates are bounded and coalesced), a changed pod is handed to
//! its worker, a pod gone from every source is handed over as `None` and torn down.
//! Sandboxes in the runtime whose pod uid no source knows are removed once the informer has
//! synced (adoption keeps the others: a restarted kubelet finds its containers by uid).
//!
//! Stopping the kubelet stops its workers but leaves the pods running, as upstream does.

pub mod env;
pub mod events;
pub mod eviction;
pub mod machine;
pub mod node_status;
mod objects;
pub mod quantity;
pub mod static_pods;
pub mod stats;
pub mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::client::runtime::{Event, Informer, Store};
use api::client::{Api, Client, ClientError, ListParams};
use k8s_openapi::api::core::v1::{Pod, Service};
use parking_lot::RwLock;
use tokio::sync::{Notify, watch};

use crate::cgroup::CgroupDriver;
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

/// The Kubernetes version the kubelet reports (`nodeInfo.kubeletVersion`).
pub const KUBELET_VERSION: &str = "v1.33.0";

/// Errors that stop the kubelet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// The runtime could not be opened.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The kubeconfig is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The configuration is invalid.
    #[error("invalid kubelet configuration: {0}")]
    Config(String),
}

/// How a kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The apiserver's kubeconfig; `None` runs standalone (static pods only).
    pub kubeconfig: Option<PathBuf>,
    /// The Node's name.
    pub node_name: String,
    /// Images, runtime state, manifests (`<data_dir>/manifests` by default).
    pub data_dir: PathBuf,
    /// The pod CIDR when the Node has no `spec.podCIDR`.
    pub pod_cidr: Option<String>,
    /// The node's address (default: the first global IPv4 address).
    pub node_ip: Option<IpAddr>,
    /// The static pod manifest directory (default `<data_dir>/manifests`).
    pub pod_manifest_path: Option<PathBuf>,
    /// The binary that serves as the shim ([`crate::shim::run_if_requested`]); the kubelet
    /// uses the stand-alone `kubeshard-shim` next to it instead when that one is of the
    /// same build ([`crate::shim::program_for`]). Both only when the process has no zygote
    /// ([`crate::zygote::start`]) or it fails: shims are forked from the zygote then.
    pub shim_program: PathBuf,
    /// The cgroup layout (default: detected, under a `kubeshard` group).
    pub cgroups: Option<CgroupDriver>,
    /// Cluster DNS servers for `dnsPolicy: ClusterFirst` pods.
    pub cluster_dns: Vec<String>,
    /// The cluster domain.
    pub cluster_domain: String,
    /// How often the Node's status is written.
    pub node_status_interval: Duration,
    /// How often the Lease is renewed.
    pub lease_interval: Duration,
    /// Restart and image-pull backoff: first delay (upstream 10 s).
    pub backoff_base: Duration,
    /// Restart and image-pull backoff: largest delay (upstream 300 s).
    pub backoff_max: Duration,
    /// How often a pod worker re-syncs without news (and the dispatcher re-reconciles).
    pub resync_interval: Duration,
    /// How often the manifest directory is re-read.
    pub static_scan_interval: Duration,
    /// `pods` capacity.
    pub max_pods: u32,
    /// The port the kubelet API listens on (`daemonEndpoints.kubeletEndpoint`).
    pub kubelet_port: u16,
    /// Wire pods into the node's bridge network (`node::network`); off: pods get no IP
    /// (hostNetwork pods report the node's).
    pub pod_network: bool,
    /// The node bridge.
    pub bridge: String,
    /// Registries pulled from over plain HTTP or unverified HTTPS (`host[:port]` or CIDR);
    /// loopback registries may use plain HTTP anyway.
    pub insecure_registries: Vec<String>,
    /// Image garbage collection (upstream defaults: 85% / 80%, 2 min minimum age).
    pub image_gc: crate::image::manager::ImageGcPolicy,
    /// Hard eviction thresholds (`--eviction-hard`; upstream's defaults).
    pub eviction_hard: eviction::Thresholds,
    /// How often the eviction manager observes the node (upstream: 10 s).
    pub eviction_interval: Duration,
}

impl KubeletConfig {
    /// The upstream defaults for a node named `node_name` keeping its data in `data_dir`.
    pub fn new(node_name: &str, data_dir: PathBuf, shim_program: PathBuf) -> KubeletConfig {
        KubeletConfig {
            kubeconfig: None,
            node_name: node_name.to_string(),
            data_dir,
            pod_cidr: None,
            node_ip: None,
            pod_manifest_path: None,
            shim_program,
            cgroups: None,
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            node_status_interval: Duration::from_secs(10),
            lease_interval: Duration::from_secs(10),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            resync_interval: Duration::from_secs(10),
            static_scan_interval: Duration::from_secs(20),
            max_pods: 110,
            kubelet_port: 10250,
            pod_network: true,
            bridge: crate::network::DEFAULT_BRIDGE.into(),
            insecure_registries: Vec::new(),
            image_gc: crate::image::manager::ImageGcPolicy::default(),
            eviction_hard: eviction::Thresholds::default(),
            eviction_interval: Duration::from_secs(10),
        }
    }

    fn manifest_dir(&self) -> PathBuf {
        self.pod_manifest_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("manifests"))
    }
}

/// What every part of the kubelet shares.
pub(crate) struct Ctx {
    pub(crate) cfg: KubeletConfig,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) client: Option<Client>,
    pub(crate) host_ip: String,
    pub(crate) machine: machine::MachineInfo,
    /// The API's pods bound to this node (the informer's cache).
    pub(crate) pods: Store<Pod>,
    /// Every Service (for the Service environment variables), once synced.
    pub(crate) services: Store<Service>,
    /// The pod CIDR in use (the Node's `spec.podCIDR`, else the flag).
    pub(crate) pod_cidr: RwLock<Option<String>>,
    /// The static pods of the manifest directory (last scan).
    pub(crate) static_pods: RwLock<Vec<Arc<Pod>>>,
    /// Pod volumes.
    pub(crate) volumes: crate::volumes::VolumeManager,
    /// Image pulls (policy, registry, dedup) and image garbage collection.
    pub(crate) images: Arc<crate::image::manager::ImageManager>,
    /// The event recorder (disabled without an apiserver).
    pub(crate) events: events::Recorder,
    /// Pods the eviction manager evicted (uid -> message) until their workers tear down.
    pub(crate) evictions: parking_lot::Mutex<HashMap<String, String>>,
    /// The pod network, once the pod CIDR is known.
    network: parking_lot::Mutex<Option<Arc<crate::network::PodNetwork>>>,
}

impl Ctx {
    /// The pod network: `Ok(None)` when disabled; an error while it cannot be set up (no
    /// podCIDR yet, no privileges), which keeps pods from starting as upstream's
    /// "network not ready".
    pub(crate) fn network(&self) -> Result<Option<Arc<crate::network::PodNetwork>>, String> {
        if !self.cfg.pod_network {
            return Ok(None);
        }
        let mut slot = self.network.lock();
        if let Some(n) = slot.as_ref() {
            return Ok(Some(n.clone()));
        }
        let cidr = self
            .pod_cidr
            .read()
            .clone()
            .ok_or("network is not ready: the node has no podCIDR yet")?;
        let net: ipnet::Ipv4Net = cidr
            .parse()
            .map_err(|e| format!("network is not ready: bad podCIDR {cidr:?}: {e}"))?;
        let mut ncfg = crate::network::NetworkConfig::new(net, self.cfg.data_dir.join("network"));
        ncfg.bridge = self.cfg.bridge.clone();
        let n = crate::network::PodNetwork::new(ncfg)
            .map_err(|e| format!("network is not ready: {e}"))?;
        tracing::info!(node = %self.cfg.node_name, pod_cidr = %cidr, "pod network ready");
        let n = Arc::new(n);
        *slot = Some(n.clone());
        Ok(Some(n))
    }

    /// The API objects volumes read.
    pub(crate) fn objects(&self) -> objects::ApiObjects {
        objects::ApiObjects {
            client: self.client.clone(),
        }
    }
}

/// The kubelet.
#[derive(Debug)]
pub struct Kubelet;

struct WorkerHandle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Runs a kubelet until `shutdown` completes. Pods keep running after it returns; a
    /// kubelet started later on the same data dir adopts them.
    pub async fn run(
        cfg: KubeletConfig,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), KubeletError> {
        if cfg.node_name.is_empty() || cfg.node_name.len() > 253 {
            return Err(KubeletError::Config(format!(
                "bad node name {:?}",
                cfg.node_name
            )));
        }
        let gc = &cfg.image_gc;
        if gc.high_threshold_percent > 100 || gc.low_threshold_percent > gc.high_threshold_percent {
            return Err(KubeletError::Config(format!(
                "image GC thresholds: low {}% must not exceed high {}% (at most 100)",
                gc.low_threshold_percent, gc.high_threshold_percent
            )));
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(RuntimeError::from)?;
        // The small stand-alone shim next to the given binary when it is of this build
        // (cheaper to exec at every sandbox and container start), else the binary itself.
        let main_exe = cfg.shim_program.clone();
        let shim = tokio::task::spawn_blocking(move || crate::shim::program_for(&main_exe))
            .await
            .unwrap_or_else(|_| cfg.shim_program.clone());
        match crate::zygote::get() {
            Some(z) => tracing::info!(zygote = z.pid(), fallback = %shim.display(),
                "container shims forked from the zygote"),
            None => tracing::info!(shim = %shim.display(), "container shim"),
        }
        let mut rcfg = RuntimeConfig::new(&cfg.data_dir, shim)?;
        if let Some(c) = &cfg.cgroups {
            rcfg.cgroups = c.clone();
        }
        let runtime = Arc::new(Runtime::new(rcfg)?);
        let client = match &cfg.kubeconfig {
            Some(k) => Some(Client::from_kubeconfig(k)?),
            None => None,
        };
        let host_ip = cfg
            .node_ip
            .unwrap_or_else(machine::default_node_ip)
            .to_string();
        let pods_api: Option<Api<Pod>> = client.as_ref().map(|c| Api::all(c.clone()));
        let (store, informer) = match pods_api {
            Some(api) => {
                let lp = ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name));
                let (s, i) = Informer::new(api, lp);
                (s, Some(i))
            }
            None => (Store::new(), None),
        };
        let mut registry = crate::image::registry::RegistryConfig::new(&cfg.data_dir);
        registry.insecure_registries = cfg.insecure_registries.clone();
        let images = Arc::new(crate::image::manager::ImageManager::new(
            runtime.images().clone(),
            registry,
            cfg.image_gc.clone(),
        ));
        let (services, svc_informer) = match &client {
            Some(c) => {
                let (s, i) = Informer::new(Api::<Service>::all(c.clone()), ListParams::default());
                (s, Some(i))
            }
            None => (Store::new(), None),
        };
        let (events, events_task) = match &client {
            Some(c) => {
                let (r, t) = events::Recorder::start(c.clone(), cfg.node_name.clone());
                (r, Some(t))
            }
            None => (events::Recorder::disabled(), None),
        };
        let ctx = Arc::new(Ctx {
            images,
            evictions: parking_lot::Mutex::new(HashMap::new()),
            events,
            services,
            pod_cidr: RwLock::new(cfg.pod_cidr.clone()),
            static_pods: RwLock::new(Vec::new()),
            volumes: crate::volumes::VolumeManager::new(cfg.data_dir.clone()),
            network: parking_lot::Mutex::new(None),
            cfg,
            runtime,
            client,
            host_ip,
            machine: machine::MachineInfo::detect(),
            pods: store,
        });
        tracing::info!(node = %ctx.cfg.node_name, ip = %ctx.host_ip, "kubelet starting");
        let dirty = Arc::new(Notify::new());
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = events_task.into_iter().collect();
        if let Some(t) = start_server(&ctx).await {
            tasks.push(t);
        }
        tasks.push(tokio::spawn(
            ctx.images.clone().gc_loop(ctx.runtime.clone()),
        ));
        if let Some(inf) = svc_informer {
            tasks.push(tokio::spawn(inf.run(|_ev: Event<Service>| {})));
        }
        if let Some(inf) = informer {
            let d = dirty.clone();
            tasks.push(tokio::spawn(inf.run(move |ev: Event<Pod>| {
                if let Event::Added(p) | Event::Modified(p) = &ev {
                    tl(p.metadata.name.as_deref().unwrap_or(""), "watch-event");
                }
                d.notify_one();
            })));
            tasks.push(tokio::spawn(node_status::run(ctx.clone())));
            tasks.push(tokio::spawn(eviction::run(
                ctx.clone(),
                Arc::new(stats::StatsProvider::new()),
            )));
            tasks.push(tokio::spawn(static_pods::mirror_loop(ctx.clone())));
        }
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            r = dispatch(ctx.clone(), dirty) => r,
        };
        for t in &tasks {
            t.abort();
        }
        tracing::info!(node = %ctx.cfg.node_name, "kubelet stopped");
        result
    }
}

/// Starts the kubelet API (`node::server`: logs, exec, attach, port-forward) on the node's
/// address and `kubelet_port` (0: not served). Clients must present a certificate of the
/// cluster CA (the kubeconfig's), as the apiserver's kubelet client certificate is.
async fn start_server(ctx: &Ctx) -> Option<tokio::task::JoinHandle<()>> {
    if ctx.cfg.kubelet_port == 0 {
        return None;
    }
    let ip: IpAddr = ctx.host_ip.parse().ok()?;
    let mut scfg =
        crate::server::ServerConfig::new(std::net::SocketAddr::new(ip, ctx.cfg.kubelet_port));
    scfg.hostnames.push(ctx.cfg.node_name.clone());
    scfg.node_name = ctx.cfg.node_name.clone();
    scfg.hostnames.push(ctx.host_ip.clone());
    if let Some(k) = &ctx.cfg.kubeconfig
        && let Ok(cc) = api::client::ClientConfig::from_kubeconfig(k)
    {
        scfg.client_ca_pem = cc.ca_pem.map(|c| String::from_utf8_lossy(&c).into_owned());
    }
    match crate::server::KubeletServer::bind(scfg, ctx.runtime.clone()).await {
        Ok(s) => {
            tracing::info!(node = %ctx.cfg.node_name, port = ctx.cfg.kubelet_port, "kubelet API listening");
            Some(tokio::spawn(async move {
                if let Err(e) = s.run(std::future::pending::<()>()).await {
                    tracing::warn!("kubelet API stopped: {e}");
                }
            }))
        }
        Err(e) => {
            tracing::warn!(node = %ctx.cfg.node_name, "kubelet API not started: {e}");
            None
        }
    }
}

/// Whether `pod` is a mirror pod (the API's copy of a static pod: never run from the API).
pub(crate) fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(static_pods::MIRROR_ANNOTATION))
}

/// The reconcile loop: desired pods (API + static) against workers. Runs until aborted.
async fn dispatch(ctx: Arc<Ctx>, dirty: Arc<Notify>) -> Result<(), KubeletError> {
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut statics: HashMap<String, Arc<Pod>> = HashMap::new();
    let manifest_dir = ctx.cfg.manifest_dir();
    let mut next_scan = tokio::time::Instant::now();
    let mut gc_done_for_sync = false;
    struct AbortAll<'a>(&'a mut HashMap<String, WorkerHandle>);
    impl Drop for AbortAll<'_> {
        fn drop(&mut self) {
            for w in self.0.values() {
                w.task.abort();
            }
        }
    }
    let guard = AbortAll(&mut workers);
    // Pods that may own sandboxes this worker did not create: those found on disk at start
    // (a restarted kubelet adopts them) and those that already had a worker. A worker for
    // any other pod skips adoption, which lists every sandbox and container on disk: with
    // 100 pods arriving at once that was 100 x 100 record reads on the start path.
    let mut may_own: Option<HashSet<String>> = ctx
        .runtime
        .list_sandboxes()
        .ok()
        .map(|l| l.into_iter().map(|s| s.uid).collect());
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_scan {
            statics = static_pods::scan(&manifest_dir, &ctx.cfg.node_name)
                .into_iter()
                .map(|p| (p.metadata.uid.clone().unwrap_or_default(), Arc::new(p)))
                .collect();
            *ctx.static_pods.write() = statics.values().cloned().collect();
            next_scan = now + ctx.cfg.static_scan_interval;
        }
        let mut desired: HashMap<String, (Arc<Pod>, bool)> = HashMap::new();
        for p in ctx.pods.list() {
            if is_mirror(&p) {
                continue;
            }
            let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                == Some(ctx.cfg.node_name.as_str());
            if let (true, Some(uid)) = (on_node, p.metadata.uid.clone()) {
                desired.insert(uid, (p, false));
            }
        }
        for (uid, p) in &statics {
            desired.insert(uid.clone(), (p.clone(), true));
        }
        guard.0.retain(|_, w| !w.task.is_finished());
        if let Some(m) = may_own.as_mut()
            && (ctx.client.is_none() || ctx.pods.has_synced())
        {
            // Bounded: only pods still desired or still worked on are remembered (once the
            // API's list is in: before, a pod found on disk is not desired yet).
            m.retain(|uid| desired.contains_key(uid) || guard.0.contains_key(uid));
        }
        for (uid, (pod, is_static)) in &desired {
            match guard.0.get(uid) {
                Some(w) => {
                    let pod = pod.clone();
                    w.tx.send_if_modified(|cur| {
                        let changed = cur.as_ref().is_none_or(|c| {
                            c.metadata.resource_version != pod.metadata.resource_version
                                || c.metadata.generation != pod.metadata.generation
                                || (*is_static && c.spec != pod.spec)
                        });
                        if changed {
                            *cur = Some(pod);
                        }
                        changed
                    });
                }
                None => {
                    tl(pod.metadata.name.as_deref().unwrap_or(""), "worker-spawn");
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let fresh = match may_own.as_mut() {
                        Some(m) => m.insert(uid.clone()),
                        None => false,
                    };
                    let task =
                        tokio::spawn(worker::run(ctx.clone(), uid.clone(), rx, *is_static, fresh));
                    guard.0.insert(uid.clone(), WorkerHandle { tx, task });
                }
            }
        }
        for (uid, w) in guard.0.iter() {
            if !desired.contains_key(uid) {
                w.tx.send_if_modified(|cur| cur.take().is_some());
            }
        }
        // Orphaned sandboxes: only once the API's list is complete (or with no API at all).
        let synced = ctx.client.is_none() || ctx.pods.has_synced();
        if synced && !gc_done_for_sync {
            gc_done_for_sync = true;
            remove_orphans(&ctx, &desired, guard.0).await;
        }
        tokio::select! {
            _ = dirty.notified() => {}
            _ = tokio::time::sleep_until(next_scan.min(now + ctx.cfg.resync_interval)) => {
                gc_done_for_sync = false;
            }
        }
    }
}

/// Removes the runtime's sandboxes of pods that no source knows and no worker owns.
async fn remove_orphans(
    ctx: &Ctx,
    desired: &HashMap<String, (Arc<Pod>, bool)>,
    workers: &HashMap<String, WorkerHandle>,
) {
    let sandboxes = match ctx.runtime.list_sandboxes() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("listing sandboxes: {e}");
            return;
        }
    };
    let known: HashSet<&String> = desired.keys().chain(workers.keys()).collect();
    for uid in ctx.volumes.pod_uids_on_disk().unwrap_or_default() {
        if !known.contains(&uid)
            && !sandboxes.iter().any(|s| s.uid == uid)
            && let Err(e) = ctx.volumes.teardown_pod(&uid).await
        {
            tracing::warn!(%uid, "removing an orphaned pod's volumes: {e}");
        }
    }
    if let Ok(Some(net)) = ctx.network() {
        for (sb, _) in net.allocations() {
            let owner = sandboxes.iter().find(|s| s.id == sb);
            if owner.is_none_or(|s| !known.contains(&s.uid))
                && let Err(e) = net.teardown(&sb).await
            {
                tracing::warn!(sandbox = %sb, "releasing an orphaned pod address: {e}");
            }
        }
    }
    for sb in sandboxes {
        if !known.contains(&sb.uid) {
            tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), uid = %sb.uid, "removing the sandbox of a pod that no longer exists");
            if let Err(e) = ctx.runtime.remove_sandbox(&sb.id).await {
                tracing::warn!(sandbox = %sb.id, "removing orphaned sandbox: {e}");
            }
        }
    }
}

/// A pod start's timeline for profiling: with `KUBESHARD_POD_TIMELINE` set in the
/// environment, each step of a pod's start (watch event, worker, sandbox, image, container
/// create/start, status write) is printed to stderr as `TL <unix µs> <pod> <step>`; off
/// (one cached check) otherwise. `benches/src/bin/pod_startup.rs` prints its own steps the
/// same way, so one run's lines merge into per-pod timelines.
pub(crate) fn tl(pod: &str, step: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("KUBESHARD_POD_TIMELINE").is_some()) {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        eprintln!("TL {us} {pod} {step}");
    }
}
