//! Kubelet idle cost with 110 pods (upstream's default max pods per node): an in-process
//! apiserver (in-memory engine), the kubelet in a child process of its own (this binary
//! re-executed with `--kubelet`, default intervals: 10 s lease, node status, resync), 110
//! busybox `sleep` pods (pause-like: no probes) created through the API. Once all run, it
//! waits `--settle` seconds, then samples the kubelet process' CPU (utime + stime from
//! `/proc/PID/stat`) over `--seconds` and its RSS (`VmRSS`), and the shims' RSS for context.
//! Target: under 1% of a core and 30 MiB. Needs root and busybox-static.
//!
//! `cargo run --release -p kubeshard-benches --bin kubelet_idle [-- --pods 110 --seconds 60 --settle 10]`
//!
//! The kubelet forks its shims from a zygote (`node::zygote`), like the `kubeshard` binary;
//! `--exec-shim` executes them instead (this binary is its own shim).

// Only the image layout is used here (not the percentiles).
#[allow(dead_code)]
#[path = "../bench_node_common.rs"]
mod bench_node_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::client::{Api, Client, DeleteParams, ListParams, PostParams};
use k8s_openapi::api::core::v1::Pod;
use node::kubelet::{Kubelet, KubeletConfig};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "idle"}},
        "spec": {"nodeName": "idle-node", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "bench/busybox:1", "command": ["sleep", "100000"]}]}
    }))
    .unwrap()
}

fn group() -> String {
    format!("kubeshard-bench-idle-{}", std::process::id())
}

/// The child: a kubelet with default intervals until SIGTERM.
fn run_kubelet(kubeconfig: &Path, data: &Path, cgroup_group: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = KubeletConfig::new(
            "idle-node",
            data.to_path_buf(),
            std::env::current_exe().unwrap(),
        );
        cfg.kubeconfig = Some(kubeconfig.to_path_buf());
        cfg.node_ip = Some("127.0.0.1".parse().unwrap());
        cfg.pod_network = false;
        cfg.kubelet_port = 0;
        cfg.cgroups = Some(node::cgroup::CgroupDriver::detect(cgroup_group).unwrap());
        // The bench machine's disk may be fuller than nodefs.available<10%.
        cfg.eviction_hard = node::kubelet::eviction::Thresholds {
            memory_available: None,
            nodefs_available: None,
        };
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        Kubelet::run(cfg, async move {
            term.recv().await;
        })
        .await
        .unwrap();
    });
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// RSS of the container shim processes this binary's kubelet started, in KiB: forked from
/// its zygote (named `node::zygote::CONTAINER_SHIM_NAME`), or with `--exec-shim` the
/// stand-alone `kubeshard-shim` next to it when the kubelet picked that one
/// (`node::shim::program_for`), else this binary.
fn shims_rss_kib(exe: &Path) -> (usize, u64) {
    let small = exe.with_file_name(node::shim::SHIM_BIN);
    let mut n = 0;
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Forked from the zygote: named so (its command line is the kubelet's).
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == node::zygote::CONTAINER_SHIM_NAME {
            n += 1;
            total += rss_kib(pid);
            continue;
        }
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() > 2
            && (args[0] == exe.as_os_str().as_encoded_bytes()
                || args[0] == small.as_os_str().as_encoded_bytes())
            && args[1] == node::shim::SHIM_ARG.as_bytes()
            && args[2] == b"container"
        {
            n += 1;
            total += rss_kib(pid);
        }
    }
    (n, total)
}

fn main() {
    node::shim::run_if_requested();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--kubelet") {
        // Shims forked from a zygote, as `kubeshard up` runs them (`--exec-shim`: executed).
        if !args.iter().any(|a| a == "--exec-shim") {
            assert!(node::zygote::start(), "starting the shim zygote");
        }
        run_kubelet(Path::new(&args[2]), Path::new(&args[3]), &args[4]);
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("kubelet_idle needs root");
        std::process::exit(1);
    }
    let n_pods = arg("--pods", 110) as usize;
    let seconds = arg("--seconds", 60);
    let settle = arg("--settle", 10);
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
    let exe: PathBuf = std::env::current_exe().unwrap();
    let mut kubelet = std::process::Command::new(&exe)
        .arg("--kubelet")
        .arg(&kubeconfig)
        .arg(&data)
        .arg(group())
        .args(std::env::args().filter(|a| a == "--exec-shim"))
        .spawn()
        .expect("kubelet process");
    let kpid = kubelet.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::from_kubeconfig(&kubeconfig).unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let t0 = Instant::now();
        for chunk in (0..n_pods).collect::<Vec<_>>().chunks(20) {
            let futs = chunk.iter().map(|i| {
                let pods = pods.clone();
                async move {
                    pods.create(&PostParams::default(), &pod(&format!("idle-{i}")))
                        .await
                        .expect("create")
                }
            });
            futures::future::join_all(futs).await;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let l = pods
                .list(&ListParams::default().labels("bench=idle"))
                .await
                .unwrap();
            let running = l
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            if running == n_pods {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {running}/{n_pods} pods Running after 300 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "{n_pods} pods Running {:.1} s after the first create",
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(settle)).await;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let c0 = cpu_ticks(kpid);
        let t = Instant::now();
        let mut rss = Vec::new();
        while t.elapsed() < Duration::from_secs(seconds) {
            rss.push(rss_kib(kpid));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let c1 = cpu_ticks(kpid);
        let secs = t.elapsed().as_secs_f64();
        rss.sort_unstable();
        let cpu_pct = (c1 - c0) as f64 / hz / secs * 100.0;
        let (nshims, shims_kib) = shims_rss_kib(&exe);
        println!(
            "kubelet idle with {n_pods} pods over {secs:.0} s: CPU {cpu_pct:.2}% of a core \
             ({} ticks at {hz} Hz), RSS median {:.1} MiB (max {:.1} MiB); \
             {nshims} container shims, {:.1} MiB RSS in all ({:.2} MiB each) (target: < 1% and < 30 MiB)",
            c1 - c0,
            rss[rss.len() / 2] as f64 / 1024.0,
            rss[rss.len() - 1] as f64 / 1024.0,
            shims_kib as f64 / 1024.0,
            shims_kib as f64 / 1024.0 / nshims.max(1) as f64,
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let l = pods
            .list(&ListParams::default().labels("bench=idle"))
            .await
            .unwrap();
        for p in l.items {
            let _ = pods.delete(p.metadata.name.as_deref().unwrap_or(""), &dp).await;
        }
        // Let the kubelet tear them down.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut rcfg = node::runtime::RuntimeConfig::new(&data, exe.clone()).unwrap();
        rcfg.cgroups = node::cgroup::CgroupDriver::detect(&group()).unwrap();
        let runtime = node::runtime::Runtime::new(rcfg).unwrap();
        while !runtime.list_sandboxes().unwrap_or_default().is_empty() && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(kpid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = tokio::task::spawn_blocking(move || kubelet.wait()).await;
        for sb in runtime.list_sandboxes().unwrap_or_default() {
            let _ = runtime.remove_sandbox(&sb.id).await;
        }
        // The run's own top-level group, which the runtime never removes.
        if let Ok(d) = node::cgroup::CgroupDriver::detect(&group())
            && let Err(e) = d.base().remove(Duration::from_secs(5))
        {
            eprintln!("removing the bench's cgroup: {e}");
        }
    });
    server.shutdown();
    engine.close();
}
