//! Container start latency of the node's built-in runtime: create + start until the command
//! runs (the shim has seen `execve` succeed), image present and unpacked. One container at a
//! time, then 100 at once in one pod; prints p50/p99. Needs root and busybox-static.
//!
//! `cargo run --release -p kubeshard-benches --bin node_start`
//!
//! The binary is its own shim (it re-executes itself), like the `kubeshard` binary.

#[path = "../bench_node_common.rs"]
mod bench_node_common;

use std::time::{Duration, Instant};

use node::cgroup::CgroupDriver;
use node::runtime::{ContainerConfig, Runtime, RuntimeConfig, SandboxConfig};

fn container() -> ContainerConfig {
    ContainerConfig {
        name: "c".into(),
        image: "bench/busybox:1".into(),
        command: vec!["sleep".into(), "1000".into()],
        ..ContainerConfig::default()
    }
}

async fn start_one(rt: &Runtime, sb: &str) -> (String, Duration) {
    let t = Instant::now();
    let id = rt.create_container(sb, &container()).await.expect("create");
    rt.start_container(&id).await.expect("start");
    (id, t.elapsed())
}

fn main() {
    node::shim::run_if_requested();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("node_start needs root");
        std::process::exit(1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg =
        RuntimeConfig::new(&tmp.path().join("data"), std::env::current_exe().unwrap()).unwrap();
    cfg.cgroups = CgroupDriver::detect(&format!("kubeshard-bench-{}", std::process::id())).unwrap();
    let rt = Runtime::new(cfg).unwrap();
    rt.images()
        .import(&bench_node_common::busybox_layout(tmp.path()))
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let sb = rt
            .create_sandbox(&SandboxConfig { name: "bench".into(), ..SandboxConfig::default() })
            .await
            .unwrap();
        // Warm up: the layer is unpacked on first use.
        let (id, _) = start_one(&rt, &sb).await;
        rt.remove_container(&id).await.unwrap();

        let mut one = Vec::new();
        for _ in 0..50 {
            let (id, d) = start_one(&rt, &sb).await;
            one.push(d);
            rt.remove_container(&id).await.unwrap();
        }
        println!(
            "1 container at a time (50 runs): p50 {:.2} ms, p99 {:.2} ms",
            bench_node_common::pct(&mut one, 0.5).as_secs_f64() * 1e3,
            bench_node_common::pct(&mut one, 0.99).as_secs_f64() * 1e3
        );

        let mut hundred = Vec::new();
        let mut batch_total = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let started = futures::future::join_all((0..100).map(|_| start_one(&rt, &sb))).await;
            batch_total.push(t.elapsed());
            for (id, d) in &started {
                hundred.push(*d);
                let _ = id;
            }
            for (id, _) in started {
                rt.remove_container(&id).await.unwrap();
            }
        }
        println!(
            "100 containers at once (3 batches): p50 {:.2} ms, p99 {:.2} ms, all 100 running after {:.2} ms (median batch)",
            bench_node_common::pct(&mut hundred, 0.5).as_secs_f64() * 1e3,
            bench_node_common::pct(&mut hundred, 0.99).as_secs_f64() * 1e3,
            bench_node_common::pct(&mut batch_total, 0.5).as_secs_f64() * 1e3
        );
        rt.remove_sandbox(&sb).await.unwrap();
    });
}
