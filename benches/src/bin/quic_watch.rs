//! Watch fan-out over the apiserver's QUIC endpoint side by side with HTTP/2 (both over
//! TLS, both through `api::client`): `QW_WATCHERS` watchers (10,000), each filtered to its
//! own node's pods (`fieldSelector=spec.nodeName=node-i`, the kubelet's watch), then one pod
//! created per node at `QW_RATE` creates/s (2,000) over HTTP/2; each watcher records the
//! delay from its pod's create being sent to the pod's ADDED event arriving. Per round:
//! events delivered, create-to-delivery p50/p99, and the server's CPU seconds from the first
//! create to the last delivery. Rounds alternate the transports (`QW_ROUNDS` of each, 3)
//! against one `kubeshard server` child process (durable store); medians are printed last.
//!
//! Command: `cargo run --release -p kubeshard-benches --bin quic_watch`
//! (builds `target/release/kubeshard` first when missing; `KUBESHARD_BIN` overrides).
//! Knobs: `QW_WATCHERS`, `QW_RATE`, `QW_ROUNDS`, `QW_CLIENT_THREADS` (the load generator's
//! tokio workers, 2). Every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::client::{Api, Client, ListParams, PostParams, WatchEvent, WatchParams};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kubeshard_benches::server_proc::{
    BoxError, cpu_secs, env_or, kubeshard_bin, quantile, start_server,
};
use parking_lot::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Watch streams per connection (the server allows 1,000 on either transport).
const WATCHES_PER_CONN: usize = 1000;
/// Creates in flight at once.
const CREATES_IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Http2,
    Quic,
}

struct Round {
    delivered: usize,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_s: f64,
    open_s: f64,
}

struct Shared {
    t0: Instant,
    /// When pod i's create was sent, ns since `t0` (u64::MAX: not yet).
    sent_at: Vec<AtomicU64>,
    delays: Mutex<Vec<Duration>>,
    opened: AtomicUsize,
    delivered: AtomicUsize,
}

fn pod(name: &str, node: usize) -> Result<Pod, BoxError> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": format!("node-{node}"),
                 "containers": [{"name": "c", "image": "busybox"}]}
    }))?)
}

async fn round(
    admin: &Api<Pod>,
    kubeconfig: &std::path::Path,
    transport: Transport,
    tag: &str,
    watchers: usize,
    rate: u64,
    pid: u32,
) -> Result<Round, BoxError> {
    let mut cfg = api::client::ClientConfig::from_kubeconfig(kubeconfig)?;
    cfg.connections = watchers.div_ceil(WATCHES_PER_CONN).max(1);
    if transport == Transport::Quic {
        cfg = cfg.with_quic_watches();
    }
    let watch_client = Client::new(cfg)?;
    let pods: Api<Pod> = Api::namespaced(watch_client, "qw");
    let rv = admin
        .list(&ListParams::default().limit(1))
        .await?
        .resource_version;
    let w = Arc::new(Shared {
        t0: Instant::now(),
        sent_at: (0..watchers).map(|_| AtomicU64::new(u64::MAX)).collect(),
        delays: Mutex::new(Vec::with_capacity(watchers)),
        opened: AtomicUsize::new(0),
        delivered: AtomicUsize::new(0),
    });
    let deadline = Duration::from_secs(180);
    let mut tasks = Vec::with_capacity(watchers);
    for node in 0..watchers {
        let (pods, w, rv) = (pods.clone(), w.clone(), rv.clone());
        let want = format!("{tag}-{node}");
        tasks.push(tokio::spawn(async move {
            let wp = WatchParams::default().fields(&format!("spec.nodeName=node-{node}"));
            let mut s = match pods.watch(&wp, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("watch node-{node}: {e}");
                    return;
                }
            };
            w.opened.fetch_add(1, Ordering::Relaxed);
            let left = deadline.saturating_sub(w.t0.elapsed());
            let _ = tokio::time::timeout(left, async {
                while let Some(ev) = s.next().await {
                    let Ok(WatchEvent::Added(p)) = ev else {
                        continue;
                    };
                    if p.metadata.name.as_deref() == Some(want.as_str()) {
                        let sent = w.sent_at[node].load(Ordering::Relaxed);
                        let now = w.t0.elapsed();
                        w.delays
                            .lock()
                            .push(now.saturating_sub(Duration::from_nanos(sent)));
                        w.delivered.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            })
            .await;
        }));
    }
    let open_limit = Instant::now() + Duration::from_secs(120);
    while w.opened.load(Ordering::Relaxed) < watchers && Instant::now() < open_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_s = w.t0.elapsed().as_secs_f64();
    let cpu0 = cpu_secs(pid);

    // Paced creates: create i is due at i / rate seconds after the start.
    let sem = Arc::new(tokio::sync::Semaphore::new(CREATES_IN_FLIGHT));
    let start = Instant::now();
    let mut creates = Vec::with_capacity(watchers);
    for node in 0..watchers {
        let due = start + Duration::from_secs_f64(node as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = sem.clone().acquire_owned().await?;
        let (admin, w) = (admin.clone(), w.clone());
        let p = pod(&format!("{tag}-{node}"), node)?;
        creates.push(tokio::spawn(async move {
            let _permit = permit;
            w.sent_at[node].store(w.t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Err(e) = admin.create(&PostParams::default(), &p).await {
                eprintln!("create {node}: {e}");
            }
        }));
    }
    for c in creates {
        let _ = c.await;
    }
    let wait_limit = Instant::now() + Duration::from_secs(30);
    while w.delivered.load(Ordering::Relaxed) < w.opened.load(Ordering::Relaxed)
        && Instant::now() < wait_limit
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server_cpu_s = cpu_secs(pid) - cpu0;
    for t in &tasks {
        t.abort();
    }
    let mut delays = std::mem::take(&mut *w.delays.lock());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Round {
        delivered: delays.len(),
        p50_ms: ms(quantile(&mut delays, 0.50)),
        p99_ms: ms(quantile(&mut delays, 0.99)),
        server_cpu_s,
        open_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), BoxError> {
    let watchers: usize = env_or("QW_WATCHERS", 10_000);
    let rate: u64 = env_or("QW_RATE", 2_000);
    let rounds: usize = env_or("QW_ROUNDS", 3);
    let threads: usize = env_or("QW_CLIENT_THREADS", 2);
    let bin = kubeshard_bin()?;
    let dir = tempfile::Builder::new().prefix("quic-watch-").tempdir()?;
    let server = start_server(&bin, dir.path(), false)?;
    let pid = server.proc.id();
    let kubeconfig = server.kubeconfig.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut cfg = api::client::ClientConfig::from_kubeconfig(&kubeconfig)?;
        cfg.connections = 4;
        let client = Client::new(cfg)?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "qw"}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let admin: Api<Pod> = Api::namespaced(client, "qw");
        let mut results: Vec<(Transport, Round)> = Vec::new();
        for r in 0..rounds {
            for t in [Transport::Http2, Transport::Quic] {
                let tag = format!("r{r}-{}", if t == Transport::Quic { "q" } else { "h" });
                let res = round(&admin, &kubeconfig, t, &tag, watchers, rate, pid).await?;
                println!(
                    "round {r} {t:?}: {watchers} watchers open in {:.2} s; {} of {watchers} delivered; create-to-delivery p50 {:.1} ms, p99 {:.1} ms; server CPU {:.2} s",
                    res.open_s, res.delivered, res.p50_ms, res.p99_ms, res.server_cpu_s
                );
                results.push((t, res));
            }
        }
        for t in [Transport::Http2, Transport::Quic] {
            let of = |f: fn(&Round) -> f64| {
                median(results.iter().filter(|(x, _)| *x == t).map(|(_, r)| f(r)).collect())
            };
            println!(
                "median of {rounds} {t:?}: delivered {:.0}, p50 {:.1} ms, p99 {:.1} ms, server CPU {:.2} s, open {:.2} s",
                of(|r| r.delivered as f64),
                of(|r| r.p50_ms),
                of(|r| r.p99_ms),
                of(|r| r.server_cpu_s),
                of(|r| r.open_s)
            );
        }
        Ok::<_, BoxError>(())
    })?;
    drop(server);
    Ok(())
}
