//! Side-by-side: a real etcd (Debian `etcd-server`) and the `kubeshard store` binary on
//! loopback, both driven by the very same etcd v3 gRPC client (our generated tonic client),
//! in one run. Prints one table with the ratio kubeshard/etcd per workload.
//!
//! Run: `cargo run --release -p kubeshard-benches --bin etcd_vs_store`
//! (builds `target/release/kubeshard` first if it is missing; `KUBESHARD_BIN` overrides).
//! `BENCH_SECS` sets the seconds per throughput cell (default 3); `BENCH_ONLY=put,get,range,watch`
//! picks cell groups, `BENCH_SIZES` / `BENCH_CLIENTS` the put cells (comma-separated). Each
//! put/get cell also reports each server's CPU (user + system from `/proc/<pid>/stat`) per
//! operation, since the clients share the cores with both servers. Every loop is bounded in
//! count and time.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubeshard_benches::server_proc::kubeshard_bin;
use store::conformance::etcd_process::{EtcdProcess, free_port};
use store::proto::etcdserverpb as pb;
use store::proto::etcdserverpb::kv_client::KvClient;
use store::proto::etcdserverpb::watch_client::WatchClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC connections each side's clients are spread over.
const CONNECTIONS: usize = 4;
/// Upper bound of operations per client per cell, beside the time bound.
const MAX_OPS_PER_CLIENT: usize = 200_000;
const RANGE_KEYS: usize = 10_000;
const RANGE_REPEATS: usize = 20;
const WATCHERS_PER_STREAM: usize = 100;

struct Server {
    name: &'static str,
    url: String,
    pid: u32,
    _guard: Box<dyn std::any::Any>,
}

/// User + system CPU seconds a process (all its threads) has used so far, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks; 100 per second on Linux).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; the fields after it follow the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// A comma-separated list of numbers from `var`, or `default`.
fn list_env(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Whether the cell group `name` runs (`BENCH_ONLY=put,get,range,watch`; all by default).
fn wanted(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |v| v.split(',').any(|x| x.trim() == name))
}

/// The store process and its data dir (removed when dropped, after the kill).
struct StoreChild(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for StoreChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_store() -> Result<Server, BoxError> {
    let bin = kubeshard_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("kubeshard-bench-")
        .tempdir()?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["store", "--data-dir"])
        .arg(dir.path())
        .args(["--listen-client-urls", &url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let guard = StoreChild(child, dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("kubeshard store did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        name: "kubeshard",
        url,
        pid,
        _guard: Box::new(guard),
    })
}

fn start_etcd() -> Result<Server, BoxError> {
    let p = EtcdProcess::start(&[
        "--quota-backend-bytes=8589934592",
        "--auto-compaction-retention=0",
    ])?;
    Ok(Server {
        name: "etcd",
        url: p.client_url().to_string(),
        pid: p.pid(),
        _guard: Box::new(p),
    })
}

async fn channels(url: &str) -> Result<Vec<Channel>, BoxError> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let ch = Channel::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(16 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .connect()
            .await?;
        out.push(ch);
    }
    Ok(out)
}

fn kv(ch: &Channel) -> KvClient<Channel> {
    KvClient::new(ch.clone()).max_decoding_message_size(512 << 20)
}

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server CPU (user + system, all threads) per operation, in microseconds.
    server_cpu_us_per_op: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `clients` tasks each run `op` back to back for `secs` (bounded by `MAX_OPS_PER_CLIENT`).
async fn closed_loop<F, Fut>(
    chs: &[Channel],
    clients: usize,
    secs: f64,
    op: F,
) -> Result<Cell, BoxError>
where
    F: Fn(KvClient<Channel>, usize, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = kv(&chs[c % chs.len()]);
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            for i in 0..MAX_OPS_PER_CLIENT {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                op(client.clone(), c, i).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Cell {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        server_cpu_us_per_op: f64::NAN,
    })
}

async fn bench_put(
    chs: &[Channel],
    clients: usize,
    size: usize,
    secs: f64,
) -> Result<Cell, BoxError> {
    let value = Bytes::from(vec![b'v'; size]);
    closed_loop(chs, clients, secs, move |mut kv, c, i| {
        let value = value.clone();
        async move {
            kv.put(pb::PutRequest {
                key: Bytes::from(format!("/bench/put/{c:03}/{:05}", i % 1000)),
                value,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    })
    .await
}

async fn bench_get(chs: &[Channel], clients: usize, secs: f64) -> Result<Cell, BoxError> {
    kv(&chs[0])
        .put(pb::PutRequest {
            key: Bytes::from_static(b"/bench/get/key"),
            value: Bytes::from(vec![b'g'; 256]),
            ..Default::default()
        })
        .await?;
    closed_loop(chs, clients, secs, |mut kv, _, _| async move {
        kv.range(pb::RangeRequest {
            key: Bytes::from_static(b"/bench/get/key"),
            ..Default::default()
        })
        .await
        .map(|_| ())
    })
    .await
}

/// Loads `RANGE_KEYS` keys of 256 B, then times full ranges; returns the median in ms.
async fn bench_range(chs: &[Channel]) -> Result<f64, BoxError> {
    let mut client = kv(&chs[0]);
    for batch in 0..RANGE_KEYS / 100 {
        let success = (0..100)
            .map(|j| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: Bytes::from(format!("/bench/range/{:06}", batch * 100 + j)),
                    value: Bytes::from(vec![b'r'; 256]),
                    ..Default::default()
                })),
            })
            .collect();
        client
            .txn(pb::TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await?;
    }
    let mut times = Vec::new();
    for _ in 0..RANGE_REPEATS {
        let t = Instant::now();
        let r = client
            .range(pb::RangeRequest {
                key: Bytes::from_static(b"/bench/range/"),
                range_end: Bytes::from_static(b"/bench/range0"),
                ..Default::default()
            })
            .await?
            .into_inner();
        times.push(t.elapsed());
        if r.kvs.len() != RANGE_KEYS {
            return Err(format!("range returned {} keys, wanted {RANGE_KEYS}", r.kvs.len()).into());
        }
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5))
}

#[derive(Debug, Clone, Copy, Default)]
struct WatchCell {
    delivered: u64,
    expected: u64,
    events_per_sec: f64,
    p99_ms: f64,
}

/// `watchers` watchers on one prefix (100 per gRPC stream), `events` puts from 16 writers;
/// each value carries its send time; counts deliveries and put-to-delivery latency. With
/// `rate` the writers are paced to that many puts per second in all (so the latency is the
/// fan-out's, not the time to drain a backlog the clients cannot decode fast enough).
async fn bench_watch(
    url: &str,
    watchers: usize,
    events: usize,
    rate: Option<f64>,
    limit: Duration,
) -> Result<WatchCell, BoxError> {
    let origin = Instant::now();
    let chs = channels(url).await?;
    let streams = watchers.div_ceil(WATCHERS_PER_STREAM);
    let delivered = Arc::new(AtomicU64::new(0));
    let (lat_tx, mut lat_rx) = mpsc::channel::<Vec<u64>>(streams);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for s in 0..streams {
        let n = WATCHERS_PER_STREAM.min(watchers - s * WATCHERS_PER_STREAM);
        let mut client =
            WatchClient::new(chs[s % chs.len()].clone()).max_decoding_message_size(64 << 20);
        let (req_tx, req_rx) = mpsc::channel::<pb::WatchRequest>(n + 1);
        for _ in 0..n {
            req_tx
                .send(pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: Bytes::from_static(b"/bench/watch/"),
                            range_end: Bytes::from_static(b"/bench/watch0"),
                            ..Default::default()
                        },
                    )),
                })
                .await?;
        }
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await?
            .into_inner();
        let (delivered, lat_tx, ready_tx, stop) = (
            delivered.clone(),
            lat_tx.clone(),
            ready_tx.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let _keep = req_tx;
            let mut created = 0;
            let mut lats = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = match tokio::time::timeout(Duration::from_millis(200), stream.message())
                    .await
                {
                    Ok(Ok(Some(m))) => m,
                    Ok(_) => break,
                    Err(_) => continue,
                };
                if msg.created {
                    created += 1;
                    if created == n {
                        let _ = ready_tx.send(()).await;
                    }
                    continue;
                }
                let now = origin.elapsed().as_nanos() as u64;
                for ev in &msg.events {
                    let Some(kv) = &ev.kv else { continue };
                    // Sample one delivery in 16 for latency (bounded memory).
                    if i.is_multiple_of(16) && kv.value.len() >= 8 {
                        let sent = u64::from_le_bytes(kv.value[..8].try_into().unwrap_or([0; 8]));
                        lats.push(now.saturating_sub(sent));
                    }
                    i += 1;
                }
                delivered.fetch_add(msg.events.len() as u64, Ordering::Relaxed);
            }
            let _ = lat_tx.send(lats).await;
        }));
    }
    drop(lat_tx);
    drop(ready_tx);
    for _ in 0..streams {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .map_err(|_| "watchers were not created in time")?;
    }
    let expected = (watchers * events) as u64;
    let start = Instant::now();
    let writers = 16;
    let mut wtasks = Vec::new();
    for w in 0..writers {
        let mut client = kv(&chs[w % chs.len()]);
        wtasks.push(tokio::spawn(async move {
            for i in (w..events).step_by(writers) {
                if let Some(r) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut v = (origin.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
                v.resize(256, b'w');
                client
                    .put(pb::PutRequest {
                        key: Bytes::from(format!("/bench/watch/{:06}", i % 1000)),
                        value: Bytes::from(v),
                        ..Default::default()
                    })
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in wtasks {
        t.await??;
    }
    let deadline = start + limit;
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lats = Vec::new();
    while let Some(mut l) = lat_rx.recv().await {
        lats.append(&mut l);
    }
    for r in readers {
        let _ = r.await;
    }
    lats.sort_unstable();
    let got = delivered.load(Ordering::Relaxed);
    Ok(WatchCell {
        delivered: got,
        expected,
        events_per_sec: got as f64 / elapsed,
        p99_ms: lats
            .get(((lats.len() as f64 - 1.0) * 0.99).max(0.0) as usize)
            .map_or(f64::NAN, |ns| *ns as f64 / 1e6),
    })
}

#[derive(Default)]
struct Results {
    rows: Vec<(String, String, f64, f64, bool)>,
}

impl Results {
    /// `higher_better`: throughput (ratio kubeshard/etcd) vs latency (ratio etcd/kubeshard).
    fn add(&mut self, workload: String, metric: &str, etcd: f64, ks: f64, higher_better: bool) {
        self.rows
            .push((workload, metric.to_string(), etcd, ks, higher_better));
    }

    fn print(&self) {
        println!("\n| workload | metric | etcd | kubeshard | kubeshard advantage |");
        println!("|---|---|---:|---:|---:|");
        for (w, m, e, k, hb) in &self.rows {
            let ratio = if *hb { k / e } else { e / k };
            println!("| {w} | {m} | {e:.2} | {k:.2} | {ratio:.2}x |");
        }
    }
}

fn main() -> Result<(), BoxError> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let servers = [start_etcd()?, start_store()?];
    let mut res = Results::default();
    rt.block_on(async {
        let mut chs = Vec::new();
        for s in &servers {
            chs.push(channels(&s.url).await?);
        }
        let sizes = list_env("BENCH_SIZES", &[256, 4096]);
        let client_counts = list_env("BENCH_CLIENTS", &[1, 16, 64]);
        for &size in sizes.iter().filter(|_| wanted("put")) {
            for &clients in &client_counts {
                let mut cells = Vec::new();
                for (i, s) in servers.iter().enumerate() {
                    let cpu0 = cpu_secs(s.pid);
                    let mut c = bench_put(&chs[i], clients, size, secs).await?;
                    c.server_cpu_us_per_op =
                        (cpu_secs(s.pid) - cpu0) * 1e6 / (c.ops_per_sec * secs);
                    eprintln!("{}: put {size} B x{clients}: {c:?}", s.name);
                    cells.push(c);
                }
                let w = format!("durable put {size} B, {clients} clients");
                res.add(
                    w.clone(),
                    "puts/s",
                    cells[0].ops_per_sec,
                    cells[1].ops_per_sec,
                    true,
                );
                res.add(w.clone(), "p50 ms", cells[0].p50_ms, cells[1].p50_ms, false);
                res.add(w.clone(), "p99 ms", cells[0].p99_ms, cells[1].p99_ms, false);
                res.add(
                    w,
                    "server CPU us/put",
                    cells[0].server_cpu_us_per_op,
                    cells[1].server_cpu_us_per_op,
                    false,
                );
            }
        }
        if wanted("get") {
            let mut cells = Vec::new();
            for (i, s) in servers.iter().enumerate() {
                let cpu0 = cpu_secs(s.pid);
                let mut c = bench_get(&chs[i], 64, secs).await?;
                c.server_cpu_us_per_op = (cpu_secs(s.pid) - cpu0) * 1e6 / (c.ops_per_sec * secs);
                eprintln!("{}: get x64: {c:?}", s.name);
                cells.push(c);
            }
            let w = "linearizable get, 1 key, 64 clients";
            res.add(
                w.into(),
                "gets/s",
                cells[0].ops_per_sec,
                cells[1].ops_per_sec,
                true,
            );
            res.add(w.into(), "p99 ms", cells[0].p99_ms, cells[1].p99_ms, false);
            res.add(
                w.into(),
                "server CPU us/get",
                cells[0].server_cpu_us_per_op,
                cells[1].server_cpu_us_per_op,
                false,
            );
        }
        if wanted("range") {
            let mut ms = Vec::new();
            for (i, s) in servers.iter().enumerate() {
                let m = bench_range(&chs[i]).await?;
                eprintln!("{}: range {RANGE_KEYS}: {m:.2} ms", s.name);
                ms.push(m);
            }
            res.add(
                format!("range of {RANGE_KEYS} keys (256 B)"),
                "median ms",
                ms[0],
                ms[1],
                false,
            );
        }
        // (watchers, events, paced puts/s): unpaced cells measure throughput and the backlog;
        // the paced 10,000-watcher cell stays under what the clients can decode on these cores.
        let watch_cells: &[(usize, usize, Option<f64>)] = if wanted("watch") {
            &[
                (1_000, 10_000, None),
                (10_000, 1_000, None),
                (10_000, 1_000, Some(50.0)),
            ]
        } else if wanted("watch-paced") {
            &[(10_000, 1_000, Some(50.0))]
        } else {
            &[]
        };
        for &(watchers, events, rate) in watch_cells {
            let mut cells = Vec::new();
            for s in &servers {
                let cpu0 = cpu_secs(s.pid);
                let c =
                    bench_watch(&s.url, watchers, events, rate, Duration::from_secs(120)).await?;
                eprintln!(
                    "{}: watch {watchers} x {events} (rate {rate:?}): {c:?}; server CPU {:.2} s",
                    s.name,
                    cpu_secs(s.pid) - cpu0
                );
                cells.push(c);
            }
            let paced = rate.map_or(String::new(), |r| format!(", paced {r} puts/s"));
            let w = format!("watch fan-out, {watchers} watchers x {events} events{paced}");
            res.add(
                w.clone(),
                "events/s delivered",
                cells[0].events_per_sec,
                cells[1].events_per_sec,
                true,
            );
            res.add(
                w.clone(),
                "put-to-delivery p99 ms",
                cells[0].p99_ms,
                cells[1].p99_ms,
                false,
            );
            res.add(
                w,
                "delivered/expected %",
                100.0 * cells[0].delivered as f64 / cells[0].expected as f64,
                100.0 * cells[1].delivered as f64 / cells[1].expected as f64,
                true,
            );
        }
        Ok::<_, BoxError>(())
    })?;
    res.print();
    Ok(())
}
