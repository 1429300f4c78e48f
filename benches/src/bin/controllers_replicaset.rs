//! Pods created per second by the ReplicaSet controller through the API, and the time for a
//! Deployment's pods to all exist: an in-process `kubeshard server` (in-memory engine, TLS on
//! loopback) and an in-process controller-manager (`controllers::manager::run`), a ReplicaSet
//! (or Deployment) of N replicas created through the client, timed until a pod informer
//! holds N pods. Each run starts from a fresh server; the median of the runs is printed.
//!
//! Run: `cargo run --release -p kubeshard-benches --bin controllers_replicaset -- [replicaset|deployment] [N] [RUNS]`

use std::time::{Duration, Instant};

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).cloned().unwrap_or_else(|| "replicaset".into());
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
