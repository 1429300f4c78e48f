//! Pod startup latency through the API, as upstream's SLO measures it: pods created through
//! an in-process apiserver with `spec.nodeName` set, run by an in-process kubelet (image
//! present), time from the create call to `phase: Running` as seen through a watch. One pod at a
//! time (20 runs), then 100 pods at once (3 rounds); prints p50/p99. Needs root and
//! busybox-static. Upstream's SLO: p99 < 5 s.
//!
//! `cargo run --release -p kubeshard-benches --bin pod_startup [-- --pod-network]`
//! (`--pod-network`: pods wired into the kubelet's bridge network, in a private network
//! namespace of the bench; without it pods get no network of their own.)
//!
//! The kubelet forks its shims from a zygote (`node::zygote`), like the `kubeshard` binary;
//! with `--exec-shim` it executes them instead (`kubeshard-shim` next to this binary when it
//! is of the same build, else this binary, which is its own shim).

#[path = "../bench_node_common.rs"]
mod bench_node_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::{Api, Client, DeleteParams, ListParams, PostParams};
use k8s_openapi::api::core::v1::Pod;
use node::kubelet::{Kubelet, KubeletConfig};
use parking_lot::Mutex;

/// One step of a pod's timeline (`KUBESHARD_POD_TIMELINE`, as the kubelet prints them).
fn tl(pod: &str, step: &str) {
    if std::env::var_os("KUBESHARD_POD_TIMELINE").is_some() {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        eprintln!("TL {us} {pod} {step}");
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "startup"}},
        "spec": {"nodeName": "bench-node", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "bench/busybox:1", "command": ["sleep", "1000"]}]}
    }))
    .unwrap()
}

/// Creates `names` at once; returns each pod's create-to-Running latency.
async fn round(
    pods: &Api<Pod>,
    running: &Arc<Mutex<HashMap<String, Instant>>>,
    names: &[String],
) -> Vec<Duration> {
    let mut created = HashMap::new();
    let futs = names.iter().map(|n| {
        let pods = pods.clone();
        let n = n.clone();
        async move {
            let t = Instant::now();
            tl(&n, "create-begin");
            pods.create(&PostParams::default(), &pod(&n))
                .await
                .expect("create");
            tl(&n, "create-done");
            (n, t)
        }
    });
    for (n, t) in futures::future::join_all(futs).await {
        created.insert(n, t);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let r = running.lock();
            names.iter().all(|n| r.contains_key(n))
        };
        if done {
            break;
        }
        if Instant::now() >= deadline {
            // Say why: the pods' statuses as the kubelet reported them.
            for n in names.iter().take(3) {
                if let Ok(p) = pods.get(n).await {
                    eprintln!(
                        "{n}: {}",
                        serde_json::to_string(&p.status).unwrap_or_default()
                    );
                }
            }
            panic!("pods not Running within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = {
        let r = running.lock();
        names
            .iter()
            .map(|n| r[n].duration_since(created[n]))
            .collect()
    };
    // Clean up: delete (grace 0) and wait until the kubelet has torn them down.
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    futures::future::join_all(names.iter().map(|n| pods.delete(n, &dp))).await;
    out
}

fn main() {
    node::shim::run_if_requested();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("pod_startup needs root");
        std::process::exit(1);
    }
    // `--pod-network`: pods get addresses from the kubelet's pod network (bridge, veth,
    // IPAM, nft), all inside a network namespace of this process' own, so nothing is left
    // on the host and no other user of the host's bridge is disturbed.
    let pod_network = std::env::args().any(|a| a == "--pod-network");
    if pod_network {
        // Before any thread starts (unshare(2) of the network namespace needs no single
        // thread, but the threads started later must see the new namespace).
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let lo = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(lo, "ip link set lo up");
    }
    // The kubelet forks its shims from a zygote, as `kubeshard up` does (made here, in the
    // bench's network namespace, while the process has one thread); `--exec-shim`: it
    // executes the shim binary for each instead (the stand-alone `kubeshard-shim` next to
    // this binary when it is of the same build, else this binary).
    if !std::env::args().any(|a| a == "--exec-shim") {
        assert!(node::zygote::start(), "starting the shim zygote");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    node::image::ImageStore::open(&data)
        .unwrap()
        .import(&bench_node_common::busybox_layout(tmp.path()))
        .unwrap();
    let mut scfg = store::EngineConfig::in_memory();
    scfg.shards = 1;
    let engine = store::Engine::open(scfg).unwrap();
    let mut opts = api::server::ServerOptions::new(tmp.path());
    opts.port = 0;
    let server = api::server::start(opts, engine.clone()).expect("apiserver");
    let kubeconfig = server.kubeconfig.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg =
            KubeletConfig::new("bench-node", data.clone(), std::env::current_exe().unwrap());
        cfg.kubeconfig = Some(kubeconfig.clone());
        cfg.node_ip = Some("127.0.0.1".parse().unwrap());
        cfg.pod_network = pod_network;
        cfg.pod_cidr = Some("10.244.0.0/24".into());
        cfg.cgroups = Some(
            node::cgroup::CgroupDriver::detect(&format!("kubeshard-bench-{}", std::process::id()))
                .unwrap(),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let kubelet = tokio::spawn(Kubelet::run(cfg, async move {
            let _ = stop_rx.await;
        }));
        let client = Client::from_kubeconfig(&kubeconfig).unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // The watch that sees phase Running (as the SLO's measurement does).
        let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        // Running as the API reports it, seen through a watch (an informer on the bench's
        // label), as upstream's SLO measurement watches pods. (A LIST polled every 5 ms, as
        // this bench first did, serialized every pod 200 times a second in the apiserver
        // the kubelet shares the 2 cores with.)
        let r2 = running.clone();
        let (_store, informer) = api::client::runtime::Informer::new(
            pods.clone(),
            ListParams::default().labels("bench=startup"),
        );
        let watcher = tokio::spawn(informer.run(move |ev: api::client::runtime::Event<Pod>| {
            let (api::client::runtime::Event::Added(p) | api::client::runtime::Event::Modified(p)) =
                &ev
            else {
                return;
            };
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                let now = Instant::now();
                r2.lock()
                    .entry(p.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(|| {
                        tl(p.metadata.name.as_deref().unwrap_or(""), "running-seen");
                        now
                    });
            }
        }));
        // Warm-up (unpacks the layer, registers the node).
        round(&pods, &running, &["warm".to_string()]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut one = Vec::new();
        for i in 0..20 {
            one.extend(round(&pods, &running, &[format!("one-{i}")]).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "1 pod at a time (20 runs): p50 {:.0} ms, p99 {:.0} ms",
            bench_node_common::pct(&mut one, 0.5).as_secs_f64() * 1e3,
            bench_node_common::pct(&mut one, 0.99).as_secs_f64() * 1e3
        );
        let mut hundred = Vec::new();
        for r in 0..3 {
            let names: Vec<String> = (0..100).map(|i| format!("batch{r}-{i}")).collect();
            hundred.extend(round(&pods, &running, &names).await);
            // Let the kubelet tear the batch down before the next one.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        println!(
            "100 pods at once (3 rounds): p50 {:.0} ms, p99 {:.0} ms (upstream SLO: p99 < 5000 ms)",
            bench_node_common::pct(&mut hundred, 0.5).as_secs_f64() * 1e3,
            bench_node_common::pct(&mut hundred, 0.99).as_secs_f64() * 1e3
        );
        watcher.abort();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = stop_tx.send(());
        let _ = kubelet.await;
        // Whatever is left (pods still being torn down) goes with the sandboxes.
        let mut rcfg =
            node::runtime::RuntimeConfig::new(&data, std::env::current_exe().unwrap()).unwrap();
        rcfg.cgroups =
            node::cgroup::CgroupDriver::detect(&format!("kubeshard-bench-{}", std::process::id()))
                .unwrap();
        let base = rcfg.cgroups.base();
        let runtime = node::runtime::Runtime::new(rcfg).unwrap();
        for sb in runtime.list_sandboxes().unwrap_or_default() {
            let _ = runtime.remove_sandbox(&sb.id).await;
        }
        // And the run's own top-level group (`kubeshard-bench-<pid>` in each hierarchy),
        // which the runtime never removes.
        if let Err(e) = base.remove(Duration::from_secs(5)) {
            eprintln!("removing the bench's cgroup: {e}");
        }
    });
    server.shutdown();
    engine.close();
}
