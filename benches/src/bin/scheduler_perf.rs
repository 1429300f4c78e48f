//! The scheduler's in-process benchmark, shaped like upstream's scheduler_perf: workloads as
//! data (`benches/workloads/scheduler.yaml`), nodes and init pods loaded first, then the
//! measured pods queued and the batch-parallel cycle run until every measured pod is placed.
//! Throughput is reported as scheduler_perf does: the median of the per-second counts of
//! scheduled pods (plus the average over the whole run). Every node is scored for every pod.
//!
//! Run: `cargo run --release -p kubeshard-benches --bin scheduler_perf [-- NAME_FILTER]`, or
//! `... --bin scheduler_perf -- e2e [NAME_FILTER]` end to end through an in-process
//! `kubeshard server` and the real scheduler shell (see `run_e2e`).
//! Env: `SCHED_PARALLELISM` (worker threads, default: cores), `SCHED_BATCH` (pods per batch,
//! default 256), `SCHED_MAX_SECS` (per-workload time bound, default 60),
//! `SCHED_BIND_CONCURRENCY` (e2e: bindings in flight, default 64).

use std::time::{Duration, Instant};

// As the product binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use k8s_openapi::api::core::v1 as core;
use scheduler::{Config, Decision, Options, Scheduler};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct File {
    workloads: Vec<Workload>,
}

#[derive(Debug, Deserialize)]
struct Workload {
    name: String,
    nodes: Nodes,
    #[serde(default)]
    init: Option<Init>,
    measure: Measure,
    #[serde(default)]
    floor: u32,
}

#[derive(Debug, Deserialize)]
struct Nodes {
    count: usize,
    cpu: String,
    memory: String,
    pods: u32,
    #[serde(default)]
    zones: usize,
}

#[derive(Debug, Deserialize)]
struct Init {
    per_node: usize,
    cpu: String,
    memory: String,
    #[serde(default)]
    priority: i32,
}

#[derive(Debug, Deserialize)]
struct Measure {
    count: usize,
    cpu: String,
    memory: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    groups: usize,
    #[serde(default)]
    anti_affinity: bool,
    #[serde(default)]
    spread_max_skew: i32,
}

fn node(i: usize, n: &Nodes) -> core::Node {
    let name = format!("node-{i}");
    let mut labels = json!({"kubernetes.io/hostname": name});
    if n.zones > 0 {
        labels["topology.kubernetes.io/zone"] = json!(format!("zone-{}", i % n.zones));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": n.cpu, "memory": n.memory, "pods": n.pods.to_string()},
                   "capacity": {"cpu": n.cpu, "memory": n.memory, "pods": n.pods.to_string()}}
    }))
    .expect("node template")
}

fn pod(
    name: &str,
    cpu: &str,
    mem: &str,
    priority: i32,
    node: Option<&str>,
    m: Option<(&Measure, usize)>,
) -> core::Pod {
    let mut labels = json!({"app": "perf"});
    let mut spec = json!({
        "priority": priority,
        "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}}}]
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    if let Some((m, i)) = m
        && m.groups > 0
    {
        let group = format!("group-{}", i % m.groups);
        labels["group"] = json!(group);
        let sel = json!({"matchLabels": {"group": group}});
        if m.anti_affinity {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": sel, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        if m.spread_max_skew > 0 {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": m.spread_max_skew,
                "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": sel}]);
        }
    }
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec}),
    )
    .expect("pod template")
}

/// CPU seconds this process has used (user + system, from /proc/self/stat; 0 when unknown).
/// The machine is shared, so wall-clock rates depend on the load; this shows the cost.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based) -> 11 and 12 here.
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

struct Result {
    cpu: f64,
    scheduled: usize,
    unschedulable_attempts: usize,
    preemptions: usize,
    secs: f64,
    per_second: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn run(w: &Workload, opts: &Options, max: Duration) -> Result {
    let t0 = Instant::now();
    let mut s = Scheduler::new(&Config::default(), opts.clone()).expect("scheduler");
    for i in 0..w.nodes.count {
        s.upsert_node(&node(i, &w.nodes), t0).expect("node");
    }
    if let Some(init) = &w.init {
        for i in 0..w.nodes.count {
            let n = format!("node-{i}");
            for j in 0..init.per_node {
                let p = pod(
                    &format!("init-{i}-{j}"),
                    &init.cpu,
                    &init.memory,
                    init.priority,
                    Some(&n),
                    None,
                );
                s.upsert_pod(&p, t0).expect("init pod");
            }
        }
    }
    for i in 0..w.measure.count {
        let m = &w.measure;
        let p = pod(
            &format!("pod-{i}"),
            &m.cpu,
            &m.memory,
            m.priority,
            None,
            Some((m, i)),
        );
        s.upsert_pod(&p, t0).expect("pod");
    }
    let mut skew = Duration::ZERO;
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let mut scheduled = 0usize;
    let mut unsched = 0usize;
    let mut preemptions = 0usize;
    let mut per_second = Vec::new();
    let mut window_start = start;
    let mut window_count = 0usize;
    while scheduled < w.measure.count && start.elapsed() < max {
        let now = Instant::now() + skew;
        let ds = s.schedule_batch(now);
        if ds.is_empty() {
            if s.queue.is_empty() {
                break;
            }
            // Only backing-off pods left: jump the virtual clock to the next backoff expiry.
            let next = s
                .queue
                .next_backoff()
                .unwrap_or(now + Duration::from_secs(1));
            skew += next.saturating_duration_since(now) + Duration::from_millis(1);
            continue;
        }
        for d in ds {
            match d {
                Decision::Assumed { pod, .. } => {
                    s.confirm(&pod.key);
                    scheduled += 1;
                    window_count += 1;
                }
                Decision::Unschedulable { nomination, .. } => {
                    unsched += 1;
                    if let Some((_, victims)) = nomination {
                        preemptions += 1;
                        for v in victims {
                            s.delete_pod(&v, now);
                        }
                    }
                }
                Decision::Error { message, .. } => panic!("scheduling error: {message}"),
            }
        }
        let now = Instant::now();
        while now.duration_since(window_start) >= Duration::from_secs(1) {
            per_second.push(window_count as f64);
            window_count = 0;
            window_start += Duration::from_secs(1);
        }
    }
    Result {
        cpu: cpu_secs() - cpu0,
        scheduled,
        unschedulable_attempts: unsched,
        preemptions,
        secs: start.elapsed().as_secs_f64(),
        per_second,
    }
}

/// End to end: an in-process `kubeshard server` (in-memory engine, TLS on loopback), the
/// workload's nodes and pods created through the API before the scheduler starts, then the
/// real scheduler shell (`scheduler::shell::run`: informers, batch cycle, bindings through
/// the binding subresource, events) started; a pod informer counts the pods that come back
/// bound, sampled once a second. CPU seconds are the whole process's (apiserver, store,
/// scheduler and the counting informer).
fn run_e2e(w: &Workload, max: Duration, bind_concurrency: usize) -> Result {
    use api::client::runtime::{Event, Informer};
    use api::client::{Api, Client, ListParams, Patch, PatchParams, PostParams};
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = store::Engine::open(store::EngineConfig::in_memory()).expect("engine");
    let mut sopts = api::server::ServerOptions::new(dir.path());
    sopts.port = 0;
    let server = api::server::start(sopts, engine.clone()).expect("server");
    let kubeconfig = server.kubeconfig.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(async {
        let client = Client::from_kubeconfig(&kubeconfig).expect("client");
        let nodes: Api<core::Node> = Api::all(client.clone());
        let t = Instant::now();
        futures::stream::iter(0..w.nodes.count)
            .for_each_concurrent(64, |i| {
                let nodes = nodes.clone();
                async move {
                    let mut n = node(i, &w.nodes);
                    let status = serde_json::to_value(n.status.take()).expect("status");
                    let name = n.metadata.name.clone().unwrap_or_default();
                    nodes
                        .create(&PostParams::default(), &n)
                        .await
                        .expect("create node");
                    nodes
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": status })),
                        )
                        .await
                        .expect("node status");
                }
            })
            .await;
        println!(
            "    e2e: {} nodes created in {:.1} s",
            w.nodes.count,
            t.elapsed().as_secs_f64()
        );
        let pods: Api<core::Pod> = Api::namespaced(client.clone(), "default");
        let t = Instant::now();
        let m = &w.measure;
        futures::stream::iter(0..m.count)
            .for_each_concurrent(128, |i| {
                let pods = pods.clone();
                async move {
                    let p = pod(
                        &format!("pod-{i}"),
                        &m.cpu,
                        &m.memory,
                        m.priority,
                        None,
                        Some((m, i)),
                    );
                    pods.create(&PostParams::default(), &p)
                        .await
                        .expect("create pod");
                }
            })
            .await;
        println!(
            "    e2e: {} pods created in {:.1} s ({:.0} pods/s), scheduler not running yet",
            m.count,
            t.elapsed().as_secs_f64(),
            m.count as f64 / t.elapsed().as_secs_f64()
        );
        // Count the pods that come back bound.
        let bound = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let (store, inf) =
            Informer::new(Api::<core::Pod>::all(client.clone()), ListParams::default());
        let (b, s) = (bound.clone(), seen.clone());
        let counter = tokio::spawn(inf.run(move |ev: Event<core::Pod>| {
            if let Event::Added(p) | Event::Modified(p) = ev
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                && let Ok(mut seen) = s.lock()
                && seen.insert(p.metadata.name.clone().unwrap_or_default())
            {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }));
        store.wait_until_synced().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut sh = scheduler::shell::ShellOptions::new(kubeconfig.clone());
        sh.leader_elect = false;
        sh.bind_concurrency = bind_concurrency;
        let cpu0 = cpu_secs();
        let start = Instant::now();
        let shell = tokio::spawn(scheduler::shell::run(sh, async move {
            let _ = stop_rx.await;
        }));
        let mut per_second = Vec::new();
        let mut last = 0;
        let mut tick = start;
        let mut done_at = None;
        while start.elapsed() < max {
            tick += Duration::from_secs(1);
            tokio::time::sleep_until(tick.into()).await;
            let now = bound.load(Ordering::Relaxed);
            per_second.push((now - last) as f64);
            last = now;
            if now >= m.count {
                done_at = Some(start.elapsed());
                break;
            }
        }
        // The last window is partial when everything finished inside it.
        if done_at.is_some() && per_second.len() > 1 {
            per_second.pop();
        }
        let cpu = cpu_secs() - cpu0;
        let scheduled = bound.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = shell.await;
        counter.abort();
        Result {
            cpu,
            scheduled,
            unschedulable_attempts: 0,
            preemptions: 0,
            secs,
            per_second,
        }
    });
    drop(rt);
    server.shutdown();
    engine.close();
    r
}

fn main() {
    let mut filter = std::env::args().nth(1).unwrap_or_default();
    // `scheduler_perf e2e [FILTER]`: through `kubeshard server` and the scheduler shell.
    let e2e = filter == "e2e";
    if e2e {
        filter = std::env::args().nth(2).unwrap_or_default();
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/scheduler.yaml");
    let text = std::fs::read_to_string(path).expect("workloads file");
    let file: File = serde_yaml::from_str(&text).expect("workloads yaml");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let mut opts = Options::default();
    if let Some(p) = env("SCHED_PARALLELISM") {
        opts.parallelism = p;
    }
    opts.batch_size = env("SCHED_BATCH").unwrap_or(256);
    let max = Duration::from_secs(env("SCHED_MAX_SECS").unwrap_or(60) as u64);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "parallelism {} batch {} (every feasible node scored); load average {}",
        opts.parallelism,
        opts.batch_size,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<42} {:>9} {:>8} {:>7} {:>13} {:>10} {:>8} {:>8} {:>11}",
        "workload",
        "scheduled",
        "secs",
        "windows",
        "median pods/s",
        "avg pods/s",
        "x floor",
        "cpu s",
        "pods/cpu-s"
    );
    for w in file.workloads.iter().filter(|w| w.name.contains(&filter)) {
        let mut r = if e2e {
            run_e2e(w, max, env("SCHED_BIND_CONCURRENCY").unwrap_or(64))
        } else {
            run(w, &opts, max)
        };
        let avg = r.scheduled as f64 / r.secs.max(1e-9);
        let windows = r.per_second.len();
        // Runs shorter than one full second have no complete window: report the average.
        let med = if windows == 0 {
            avg
        } else {
            median(&mut r.per_second)
        };
        let ratio = if w.floor > 0 {
            format!("{:.1}", med / f64::from(w.floor))
        } else {
            "-".into()
        };
        let per_cpu = if r.cpu > 0.0 {
            format!("{:.0}", r.scheduled as f64 / r.cpu)
        } else {
            "-".into()
        };
        println!(
            "{:<42} {:>9} {:>8.2} {:>7} {:>13.0} {:>10.0} {:>8} {:>8.1} {:>11}",
            w.name, r.scheduled, r.secs, windows, med, avg, ratio, r.cpu, per_cpu
        );
        if r.preemptions > 0 || r.unschedulable_attempts > 0 {
            println!(
                "    unschedulable attempts {}, preemptions {}",
                r.unschedulable_attempts, r.preemptions
            );
        }
        if r.scheduled < w.measure.count {
            println!(
                "    time bound hit: {} of {} pods scheduled (rates cover the bounded run)",
                r.scheduled, w.measure.count
            );
        }
    }
}
