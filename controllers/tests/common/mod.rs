//! Harness of the in-process e2e tests: a real apiserver over the in-memory engine and the
//! real controller-manager (`controllers::manager::run`) on a driven clock. Tests play the
//! scheduler and the kubelet by writing node and pod status through the API.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use api::client::{Api, Client, Patch, PatchParams, PostParams};
use controllers::manager::{Clock, Options};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// An apiserver over the in-memory engine, stopped on drop.
pub struct Server {
    engine: Arc<store::Engine>,
    server: Option<api::server::RunningServer>,
    pub kubeconfig: std::path::PathBuf,
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
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
        let kubeconfig = server.kubeconfig.clone();
        let client = Client::from_kubeconfig(&kubeconfig).expect("client");
        Self {
            engine,
            kubeconfig,
            client,
            server: Some(server),
            _dir: dir,
        }
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

/// A clock the test moves: real time plus an offset, or a fixed time.
#[derive(Clone, Default)]
pub struct TestClock {
    /// Fixed time in seconds (0: the real time plus `offset`).
    fixed: Arc<AtomicI64>,
    offset: Arc<AtomicI64>,
}

impl TestClock {
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Clock::from_fn(move || me.now())
    }

    pub fn now(&self) -> Timestamp {
        let fixed = self.fixed.load(Ordering::SeqCst);
        if fixed != 0 {
            return Timestamp::from_second(fixed).expect("time");
        }
        let real = Timestamp::now();
        real.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            self.offset.load(Ordering::SeqCst),
        ))
        .expect("time")
    }

    /// Stops the clock at `t`.
    pub fn set(&self, t: Timestamp) {
        self.fixed.store(t.as_second(), Ordering::SeqCst);
    }
}

/// A controller-manager running in this process, stopped on drop or [`Manager::stop`].
pub struct Manager {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Manager {
    pub fn start(s: &Server, controllers: &str, tweak: impl FnOnce(&mut Options)) -> Self {
        let mut opts = Options::new(s.kubeconfig.clone());
        opts.controllers = controllers.into();
        tweak(&mut opts);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = controllers::manager::run(opts, async move {
                let _ = rx.await;
            })
            .await
            {
                panic!("controller-manager: {e}");
            }
        });
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, at most `secs` seconds.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates an object from JSON.
pub async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: api::client::ApiObject,
{
    let o: K = serde_json::from_value(v).expect("object json");
    api.create(&PostParams::default(), &o)
        .await
        .expect("create")
}

/// A Node named `name` with labels and taints (JSON), Ready=True.
pub async fn node(c: &Client, name: &str, labels: Value, taints: Value) {
    let api: Api<core::Node> = Api::all(c.clone());
    create(
        &api,
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
    )
    .await;
    node_ready(c, name, "True").await;
}

/// Posts the node's Ready condition as a kubelet would.
pub async fn node_ready(c: &Client, name: &str, status: &str) {
    let api: Api<core::Node> = Api::all(c.clone());
    let now = Timestamp::now().to_string();
    let st = json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": "KubeletReady",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(st))
        .await
        .expect("node status");
}

/// Marks a pod Running and Ready (as the kubelet would).
pub async fn pod_ready(c: &Client, ns: &str, name: &str) {
    let api: Api<core::Pod> = Api::namespaced(c.clone(), ns);
    let now = Timestamp::now().to_string();
    let st = json!({"status": {"phase": "Running", "podIP": "10.244.0.9",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(st))
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => panic!("pod status {ns}/{name}: {e}"),
    }
}

/// Whether a pod is Ready.
pub fn is_ready(p: &core::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The live (not terminating) pods of `ns` with label selector `sel`.
pub async fn pods(c: &Client, ns: &str, sel: &str) -> Vec<core::Pod> {
    let api: Api<core::Pod> = Api::namespaced(c.clone(), ns);
    api.list(&api::client::ListParams::default().labels(sel))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The image of a pod's first container.
pub fn image(p: &core::Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Pod name.
pub fn name(p: &core::Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}
