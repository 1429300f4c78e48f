//! End to end through a real apiserver (in-process, over the in-memory engine): nodes and
//! pods created through the API get bound by the scheduler shell, `Scheduled` events are
//! posted, and a pod that fits nowhere gets `PodScheduled=False` with upstream's message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1 as core;
use serde_json::json;

struct Server {
    engine: Arc<store::Engine>,
    server: Option<api::server::RunningServer>,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
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

async fn create_node(client: &Client, name: &str, cpu: &str) {
    let nodes: Api<core::Node> = Api::all(client.clone());
    let n: core::Node = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
    )
    .unwrap();
    nodes
        .create(&PostParams::default(), &n)
        .await
        .expect("create node");
    let status = json!({"status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                                   "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("node status");
}

async fn create_pod(client: &Client, name: &str, cpu: &str) {
    let pods: Api<core::Pod> = Api::namespaced(client.clone(), "default");
    let p: core::Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
}

#[test]
fn pods_created_through_the_api_get_bound() {
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::from_kubeconfig(&server.kubeconfig).expect("client");
        create_node(&client, "n1", "2").await;
        create_node(&client, "n2", "2").await;
        for i in 0..3 {
            create_pod(&client, &format!("p{i}"), "1").await;
        }
        create_pod(&client, "huge", "8").await;

        let mut opts = scheduler::shell::ShellOptions::new(server.kubeconfig.clone());
        opts.identity = "test-scheduler".into();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shell = tokio::spawn(scheduler::shell::run(opts, async move {
            let _ = stop_rx.await;
        }));

        let pods: Api<core::Pod> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut bound, mut huge_msg) = (Vec::new(), None);
        while Instant::now() < deadline {
            let list = pods.list(&ListParams::default()).await.expect("list");
            bound = list
                .items
                .iter()
                .filter_map(|p| {
                    Some((
                        p.metadata.name.clone()?,
                        p.spec.as_ref()?.node_name.clone()?,
                    ))
                })
                .collect::<Vec<_>>();
            huge_msg = list
                .items
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some("huge"))
                .and_then(|p| {
                    p.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == "PodScheduled")
                        .cloned()
                })
                .and_then(|c| (c.status == "False").then_some(c.message).flatten());
            if bound.len() == 3 && huge_msg.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(bound.len(), 3, "bound: {bound:?}");
        let mut per_node = std::collections::HashMap::<String, usize>::new();
        for (_, n) in &bound {
            *per_node.entry(n.clone()).or_default() += 1;
        }
        assert!(
            per_node.values().all(|&c| c <= 2),
            "a 2-cpu node got more than two 1-cpu pods: {bound:?}"
        );
        let msg = huge_msg.expect("PodScheduled=False on the pod that fits nowhere");
        assert!(
            msg.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
            "{msg}"
        );

        let events: Api<core::Event> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reasons = Vec::new();
        while Instant::now() < deadline {
            let list = events.list(&ListParams::default()).await.expect("events");
            reasons = list
                .items
                .iter()
                .filter_map(|e| e.reason.clone())
                .collect::<Vec<_>>();
            if reasons.iter().filter(|r| *r == "Scheduled").count() == 3
                && reasons.iter().any(|r| r == "FailedScheduling")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            reasons.iter().filter(|r| *r == "Scheduled").count(),
            3,
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r == "FailedScheduling"),
            "{reasons:?}"
        );

        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), shell)
            .await
            .expect("shell stops")
            .expect("join")
            .expect("shell ok");
    });
}
