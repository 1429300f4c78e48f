//! Kubelet tests' harness: an in-process apiserver over the in-memory store, kubelets on
//! temporary data dirs with the busybox test image imported, and polling helpers.
#![allow(dead_code, unreachable_pub)]

#[path = "../common/mod.rs"]
pub mod images;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::{Api, Client, PostParams};
use k8s_openapi::api::core::v1::Pod;
use node::cgroup::CgroupDriver;
use node::kubelet::{Kubelet, KubeletConfig};
use node::runtime::{Runtime, RuntimeConfig};

pub const IMAGE: &str = "kubeshard.test/busybox:1";

/// An apiserver on a random port (TLS), over an in-memory engine.
pub struct Server {
    engine: Arc<store::Engine>,
    server: Option<api::server::RunningServer>,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = store::EngineConfig::in_memory();
        cfg.shards = 1;
        cfg.progress_interval = Duration::from_millis(200);
        let engine = store::Engine::open(cfg).expect("engine");
        let mut opts = api::server::ServerOptions::new(dir.path());
        opts.port = 0;
        opts.acceptors = 1;
        let e = engine.clone();
        let server = std::thread::spawn(move || api::server::start(opts, e))
            .join()
            .expect("start thread")
            .expect("server");
        Server {
            engine,
            kubeconfig: server.kubeconfig.clone(),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig).expect("client")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let server = self.server.take();
        let engine = self.engine.clone();
        let _ = std::thread::spawn(move || {
            if let Some(s) = server {
                s.shutdown();
            }
            engine.close();
        })
        .join();
    }
}

/// A node's data dir with the test image, and the cgroup group of its pods.
pub struct NodeDir {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub cgroups: CgroupDriver,
}

impl NodeDir {
    pub fn new(test: &str) -> Option<NodeDir> {
        if !images::can_run_as_root(test) {
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        node::image::ImageStore::open(&data)
            .unwrap()
            .import(&images::busybox_image(tmp.path()))
            .expect("import the test image");
        let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
        let cgroups = match CgroupDriver::detect(&group) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP {test}: {e}");
                return None;
            }
        };
        Some(NodeDir { tmp, data, cgroups })
    }

    /// A kubelet configuration with short intervals for tests.
    pub fn config(&self, node: &str, kubeconfig: Option<&Path>) -> KubeletConfig {
        let mut cfg = KubeletConfig::new(
            node,
            self.data.clone(),
            PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
        );
        cfg.kubeconfig = kubeconfig.map(Path::to_path_buf);
        cfg.cgroups = Some(self.cgroups.clone());
        cfg.node_ip = Some("127.0.0.1".parse().unwrap());
        cfg.lease_interval = Duration::from_secs(1);
        cfg.node_status_interval = Duration::from_secs(2);
        cfg.resync_interval = Duration::from_secs(2);
        cfg.static_scan_interval = Duration::from_secs(1);
        cfg.backoff_base = Duration::from_secs(2);
        cfg.backoff_max = Duration::from_secs(8);
        cfg.pod_network = false;
        // Several kubelets run at once: no kubelet API unless a test asks for it.
        cfg.kubelet_port = 0;
        // No evictions on a busy CI disk (nodefs.available<10% would evict the tests' pods);
        // the eviction test sets its own thresholds.
        cfg.eviction_hard = node::kubelet::eviction::Thresholds {
            memory_available: None,
            nodefs_available: None,
        };
        cfg
    }

    /// Removes every sandbox (and container) left, the pods' volumes (their mounts) and
    /// the cgroup group. Also runs when the NodeDir is dropped, so a failed test (a panic
    /// skips its explicit cleanup) leaves no sandbox holder, shim or mount behind.
    pub async fn cleanup(&self) {
        cleanup_node(&self.data, &self.cgroups).await;
    }

    /// A runtime over the same data dir (to inspect what the kubelet runs).
    pub fn runtime(&self) -> Runtime {
        let mut rcfg = RuntimeConfig::new(
            &self.data,
            PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
        )
        .unwrap();
        rcfg.cgroups = self.cgroups.clone();
        Runtime::new(rcfg).unwrap()
    }
}

async fn cleanup_node(data: &Path, cgroups: &CgroupDriver) {
    let Ok(mut rcfg) =
        RuntimeConfig::new(data, PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")))
    else {
        return;
    };
    rcfg.cgroups = cgroups.clone();
    if let Ok(rt) = Runtime::new(rcfg) {
        for sb in rt.list_sandboxes().unwrap_or_default() {
            let _ = rt.remove_sandbox(&sb.id).await;
        }
        // Containers whose sandbox record is gone (a half-created pod).
        for c in rt.list_containers().unwrap_or_default() {
            let _ = rt.stop_container(&c.id, Duration::ZERO).await;
            let _ = rt.remove_container(&c.id).await;
        }
    }
    let vols = node::volumes::VolumeManager::new(data.to_path_buf());
    for uid in vols.pod_uids_on_disk().unwrap_or_default() {
        let _ = vols.teardown_pod(&uid).await;
    }
    let dirs: Vec<PathBuf> = match cgroups {
        CgroupDriver::V1 { bases } => bases.iter().map(|(_, b)| b.clone()).collect(),
        CgroupDriver::V2 { base } => vec![base.clone()],
    };
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        let (data, cgroups) = (self.data.clone(), self.cgroups.clone());
        // A thread of its own: the drop may run inside or outside a tokio runtime.
        let _ = std::thread::spawn(move || rt().block_on(cleanup_node(&data, &cgroups))).join();
    }
}

/// A running kubelet task and its stop switch.
pub struct RunningKubelet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), node::kubelet::KubeletError>>>,
}

impl RunningKubelet {
    pub fn start(cfg: KubeletConfig) -> RunningKubelet {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Kubelet::run(cfg, async move {
            let _ = rx.await;
        }));
        RunningKubelet {
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("kubelet stops")
                .expect("join")
                .expect("kubelet ok");
        }
    }
}

/// A pod from JSON, bound to `node`.
pub fn pod(node: &str, v: serde_json::Value) -> Pod {
    let mut p: Pod = serde_json::from_value(v).expect("pod json");
    p.spec.as_mut().unwrap().node_name = Some(node.to_string());
    p
}

/// A one-container busybox pod running `script` with `restartPolicy`.
pub fn sh_pod(node: &str, name: &str, script: &str, restart: &str) -> Pod {
    pod(
        node,
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", script]}]}
        }),
    )
}

pub async fn create(client: &Client, p: &Pod) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), p)
        .await
        .expect("create pod")
}

/// Polls `f` on the pod every 100 ms until it returns `Some`, at most `secs`.
pub async fn wait_pod<T>(
    client: &Client,
    name: &str,
    secs: u64,
    what: &str,
    mut f: impl FnMut(&Pod) -> Option<T>,
) -> T {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(p)) = api.get_opt(name).await {
            if let Some(v) = f(&p) {
                return v;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out waiting for {what} on pod {name}; last: {}",
        serde_json::to_string_pretty(&last.map(|p| p.status)).unwrap_or_default()
    );
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The status of container `name` as JSON (init containers too).
pub fn cstatus(p: &Pod, name: &str) -> Option<serde_json::Value> {
    let s = p.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .and_then(|c| serde_json::to_value(c).ok())
}

pub fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
