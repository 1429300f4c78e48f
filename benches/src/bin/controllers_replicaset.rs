//! Pods created per second by the ReplicaSet controller through the API, and the time for a
//! Deployment's pods to all exist: an in-process `kubeshard server` (in-memory engine, TLS on
//! loopback) and an in-process controller-manager (`controllers::manager::run`), a ReplicaSet
//! (or Deployment) of N replicas created through the client, timed until a pod informer
//! holds N pods. Each run starts from a fresh server; the median of the runs is printed.
//!
//! Run: `cargo run --release -p kubeshard-benches --bin controllers_replicaset -- [replicaset|deployment] [N] [RUNS]`
//!
//! Two more modes:
//! - `latency [ROUNDS]`: reconcile latency from an event to the write it causes. One
//!   ReplicaSet, scaled up by one replica per round through the API; each round is timed
//!   from the scale write's response to the moment a pod watch (an informer) sees the pod
//!   the controller created; p50/p99/max over the rounds.
//! - `memory [N]`: controller-manager memory with N pods cached. N pods are created through
//!   the API first (no controller running), the process RSS is read, then the whole
//!   controller-manager (every controller) starts and the RSS is read again once its
//!   `/metrics` says the pod cache holds N pods; the difference is the manager's (same
//!   process as the apiserver, so allocator noise is included).

use std::time::{Duration, Instant};

// As the product binary (`kubeshard` runs on mimalloc): the allocator is part of what is
// measured. Without it a profile of this bench showed ~15% of samples in glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use api::client::runtime::Informer;
use api::client::{Api, Client, ListParams, PostParams};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

fn template() -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_string(), "bench".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some([("app".to_string(), "bench".to_string())].into()),
        ..Default::default()
    }
}

/// One run; seconds until N pods exist.
fn run(kind: &str, n: i32) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = store::Engine::open(store::EngineConfig::in_memory()).expect("engine");
    let mut opts = api::server::ServerOptions::new(dir.path());
    opts.port = 0;
    let server = api::server::start(opts, engine.clone()).expect("server");
    let kubeconfig = server.kubeconfig.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let secs = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let controllers = if kind == "deployment" {
            "deployment,replicaset"
        } else {
            "replicaset"
        };
        let mut opts = controllers::manager::Options::new(kubeconfig.clone());
        opts.controllers = controllers.into();
        let manager = tokio::spawn(controllers::manager::run(opts, async move {
            let _ = stop_rx.await;
        }));
        let client = Client::from_kubeconfig(&kubeconfig).expect("client");
        let (pods, inf) = Informer::new(
            Api::<Pod>::namespaced(client.clone(), "default"),
            ListParams::default(),
        );
        let informer = tokio::spawn(inf.run(|_| {}));
        pods.wait_until_synced().await;
        // Let the manager's caches sync before the clock starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let meta = ObjectMeta {
            name: Some("bench".into()),
            ..Default::default()
        };
        let start = Instant::now();
        if kind == "deployment" {
            let d = Deployment {
                metadata: meta,
                spec: Some(DeploymentSpec {
                    replicas: Some(n),
                    selector: selector(),
                    template: template(),
                    ..Default::default()
                }),
                status: None,
            };
            Api::<Deployment>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &d)
                .await
                .expect("create deployment");
        } else {
            let rs = ReplicaSet {
                metadata: meta,
                spec: Some(ReplicaSetSpec {
                    replicas: Some(n),
                    selector: selector(),
                    template: Some(template()),
                    min_ready_seconds: None,
                }),
                status: None,
            };
            Api::<ReplicaSet>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &rs)
                .await
                .expect("create rs");
        }
        let want = usize::try_from(n).expect("n");
        let deadline = start + Duration::from_secs(600);
        while pods.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} pods after 600 s",
                pods.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = manager.await;
        informer.abort();
        secs
    });
    server.shutdown();
    engine.close();
    secs
}

/// An apiserver over the in-memory engine in this process.
struct Bed {
    server: Option<api::server::RunningServer>,
    engine: std::sync::Arc<store::Engine>,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Bed {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = store::Engine::open(store::EngineConfig::in_memory()).expect("engine");
        let mut opts = api::server::ServerOptions::new(dir.path());
        opts.port = 0;
        let server = api::server::start(opts, engine.clone()).expect("server");
        let kubeconfig = server.kubeconfig.clone();
        Self {
            server: Some(server),
            engine,
            kubeconfig,
            _dir: dir,
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        self.engine.close();
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(rounds: usize) {
    let bed = Bed::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut opts = controllers::manager::Options::new(bed.kubeconfig.clone());
        opts.controllers = "replicaset".into();
        let manager = tokio::spawn(controllers::manager::run(opts, async move {
            let _ = stop_rx.await;
        }));
        let client = Client::from_kubeconfig(&bed.kubeconfig).expect("client");
        let (pods, inf) = Informer::new(
            Api::<Pod>::namespaced(client.clone(), "default"),
            ListParams::default(),
        );
        let informer = tokio::spawn(inf.run(|_| {}));
        pods.wait_until_synced().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("bench".into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                selector: selector(),
                template: Some(template()),
                min_ready_seconds: None,
            }),
            status: None,
        };
        rss.create(&PostParams::default(), &rs).await.expect("create rs");
        let mut lat: Vec<f64> = Vec::with_capacity(rounds);
        for i in 1..=rounds {
            let want = i;
            rss.patch(
                "bench",
                &api::client::PatchParams::default(),
                &api::client::Patch::Merge(serde_json::json!({"spec": {"replicas": want}})),
            )
            .await
            .expect("scale");
            let start = Instant::now();
            while pods.len() < want {
                assert!(start.elapsed() < Duration::from_secs(30), "round {i} timed out");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "latency rounds={rounds}: scale write -> pod seen: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
        let _ = stop_tx.send(());
        let _ = manager.await;
        informer.abort();
    });
}

async fn cached_pods(port: u16) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with("informer_cached_objects{resource=\"pods\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

fn memory(n: usize) {
    let bed = Bed::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = Client::from_kubeconfig(&bed.kubeconfig).expect("client");
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        let t = Instant::now();
        let mut next = 0usize;
        while next < n {
            let batch: Vec<Pod> = (next..(next + 500).min(n))
                .map(|i| {
                    let mut tpl = template();
                    let mut meta = tpl.metadata.take().unwrap_or_default();
                    meta.name = Some(format!("p-{i}"));
                    Pod {
                        metadata: meta,
                        spec: tpl.spec,
                        status: None,
                    }
                })
                .collect();
            next += batch.len();
            let pp = PostParams::default();
            for r in futures::future::join_all(batch.iter().map(|p| api.create(&pp, p))).await {
                r.expect("create pod");
            }
        }
        println!("created {n} pods in {:.1} s", t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_kib();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").port()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut opts = controllers::manager::Options::new(bed.kubeconfig.clone());
        opts.metrics_port = Some(port);
        let t = Instant::now();
        let manager = tokio::spawn(controllers::manager::run(opts, async move {
            let _ = stop_rx.await;
        }));
        loop {
            if cached_pods(port).await == Some(n) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(600), "cache never filled");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let synced = t.elapsed().as_secs_f64();
        // Let the first reconciles (GC graph, PDBs, quotas) settle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = rss_kib();
        println!(
            "memory N={n}: RSS {before} KiB before the manager, {after} KiB with {n} pods cached (synced in {synced:.1} s): manager {:.1} MiB, {:.0} B/pod",
            (after.saturating_sub(before)) as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
        );
        let _ = stop_tx.send(());
        let _ = manager.await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).cloned().unwrap_or_else(|| "replicaset".into());
    match kind.as_str() {
        "latency" => {
            latency(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500));
            return;
        }
        "memory" => {
            memory(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000));
            return;
        }
        _ => {}
    }
    let n: i32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let runs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mut times: Vec<f64> = (0..runs)
        .map(|i| {
            let s = run(&kind, n);
            println!(
                "run {i}: {n} pods in {s:.3} s = {:.0} pods/s",
                f64::from(n) / s
            );
            s
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{kind} N={n}: median {median:.3} s, {:.0} pods/s",
        f64::from(n) / median
    );
}
