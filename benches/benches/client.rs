//! The Rust client (`api::client`) against the in-process apiserver over TLS + HTTP/2 with
//! the admin kubeconfig: single-object GET throughput with 64 requests in flight on the
//! client's pooled connections (criterion reports elements/s = requests/s), and the time
//! an informer takes to list (500 per page) and store 10,000 pods.
//!
//! Run: `cargo bench -p kubeshard-benches --bench client`

use std::time::Duration;

use api::client::runtime::Informer;
use api::client::{Api, Client, ListParams, PostParams};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};

const IN_FLIGHT: usize = 64;
const PODS: usize = 10_000;

fn pod(i: usize) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench", "tier": "web"}},
        "spec": {
            "nodeName": format!("node-{}", i % 100),
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]
        }
    }))
    .expect("pod")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = store::Engine::open(store::EngineConfig::in_memory()).expect("engine");
    let mut opts = api::server::ServerOptions::new(dir.path());
    opts.port = 0;
    let server = api::server::start(opts, engine.clone()).expect("server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = Client::from_kubeconfig(&server.kubeconfig).expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    rt.block_on(async {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cm-get"}, "data": {"key": "v".repeat(200)}
        }))
        .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    });

    let mut g = c.benchmark_group("client_get");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.bench_function("get_configmap_tls_h2_64_in_flight", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = futures::future::join_all((0..IN_FLIGHT).map(|_| cms.get("cm-get"))).await;
                assert!(r.iter().all(Result::is_ok));
            })
        })
    });
    g.finish();

    rt.block_on(async {
        let pp = PostParams::default();
        for chunk in (0..PODS).collect::<Vec<_>>().chunks(IN_FLIGHT) {
            let objs: Vec<Pod> = chunk.iter().map(|i| pod(*i)).collect();
            let r = futures::future::join_all(objs.iter().map(|p| pods.create(&pp, p))).await;
            assert!(r.iter().all(Result::is_ok), "create pods");
        }
    });
    let mut g = c.benchmark_group("client_informer");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("informer_initial_sync_10000_pods", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (store, informer) = Informer::new(pods.clone(), ListParams::default());
                let task = tokio::spawn(informer.run(|_| {}));
                store.wait_until_synced().await;
                assert_eq!(store.len(), PODS);
                task.abort();
            })
        })
    });
    g.finish();
    drop(rt);
    server.shutdown();
    engine.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
