//! The apiserver under concurrent load, as issue 4's benchmarks ask: create throughput, memory
//! per stored pod, single-object GET throughput and p50/p99 (closed loop and paced), LIST of
//! every pod (full and paged), and a watch fan-out where each of many watchers is filtered to
//! its own node's pods while pods are bound (bind-to-delivery p99).
//!
//! `kubeshard server` (the durable embedded store: every write is fdatasync'ed before it is
//! acknowledged) runs as a child process; the load generator is this process, HTTP/2 over the
//! server's plain loopback port (h2c), so TLS is not in the figures. Both share the machine's
//! cores: the server's own CPU seconds per phase are printed so the cost is visible whatever
//! the load.
//!
//! Command: `cargo run --release -p kubeshard-benches --bin api_load`
//! (builds `target/release/kubeshard` first when missing; `KUBESHARD_BIN` overrides).
//! Knobs: `API_PODS` (stored pods, default 100000), `API_SECS` (seconds per GET cell, 5),
//! `API_GET_RATE` (paced GET rate, 50000/s), `API_WATCHERS` (10000), `API_LISTS` (5),
//! `API_BIND_RATE` (paced binds in the watch phase, 2000/s),
//! `API_ONLY` (a comma list of the phases to run after the creates: `get,list,watch`; all by
//! default), `API_PAUSE_SECS` (a pause before each phase, so a profiler can be attached).
//! `API_PACE_US` (the paced phases' send step, 100 us: requests due within a step leave
//! together), `API_CLIENT_THREADS` (the load generator's tokio workers, 2), `API_CONNS` (HTTP/2
//! connections for the requests, 8), `API_LEAN_CONNS` (connections of the lean client's
//! paced GET cell, 2; 0 skips it), `API_GET_CELLS` (which GET cells run: a comma list of
//! `closed` (1, 64 and 512 in flight), `paced` (the h2 client) and `lean`; all by default).
//! Every phase is bounded in count and time.
//!
//! The load generator shares the cores with the server, so it is kept cheap: request URIs
//! are built once (a clone is a reference count), headers are static, the allocator is
//! mimalloc, and the paced phases are driven by a pacing thread that wakes every
//! `API_PACE_US` rather than by tokio's 1 ms timer (which released 50 requests at a time at
//! 50,000/s and charged up to 1 ms of the client's own lag to each request's latency, which
//! is counted from its scheduled send time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubeshard_benches::h2_lean;
use kubeshard_benches::server_proc::{
    BoxError, cpu_secs, env_or, kubeshard_bin, quantile, rss_kib, start_server,
};
use parking_lot::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The client side of one HTTP/2 connection, driven through the `h2` crate directly: a
/// request is sent and its response read by the task that wants it, where hyper's client adds
/// a channel to the connection task and a spawned task per request.
type Sender = h2::client::SendRequest<Bytes>;

/// One request of a phase: built by the phase's `make(i)`.
struct Req {
    method: hyper::Method,
    uri: hyper::Uri,
    body: Bytes,
}

/// The absolute URI of `path` on the server (the port is in the connection, not the URI).
fn uri(path: &str) -> hyper::Uri {
    hyper::Uri::try_from(format!("http://127.0.0.1{path}")).unwrap_or_default()
}

impl Req {
    fn new(method: hyper::Method, path: &str, body: Bytes) -> Self {
        Self {
            method,
            uri: uri(path),
            body,
        }
    }
}

/// Most requests in flight at once in any phase (bounds the client's memory).
const MAX_IN_FLIGHT: usize = 4096;
/// Streams per HTTP/2 connection for the watchers (the server allows 1,000).
const WATCHES_PER_CONN: usize = 500;

/// A pool of HTTP/2 connections to the server's plain port, used round-robin.
struct Pool {
    senders: Vec<Sender>,
    next: AtomicUsize,
}

impl Pool {
    async fn connect(port: u16, conns: usize) -> Result<Pool, BoxError> {
        let mut senders = Vec::with_capacity(conns);
        for _ in 0..conns {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let (s, conn) = h2::client::Builder::new()
                .initial_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .max_concurrent_reset_streams(1024)
                .handshake::<_, Bytes>(tcp)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            senders.push(s);
        }
        Ok(Pool {
            senders,
            next: AtomicUsize::new(0),
        })
    }

    fn sender(&self) -> Sender {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].clone()
    }
}

/// Sends `r` (JSON body if any, JSON accepted) and returns the response head and body stream.
async fn send(s: &mut Sender, r: Req) -> Result<hyper::Response<h2::RecvStream>, BoxError> {
    use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
    let json = HeaderValue::from_static("application/json");
    let mut req = hyper::Request::new(());
    *req.method_mut() = r.method;
    *req.uri_mut() = r.uri;
    let h = req.headers_mut();
    if !r.body.is_empty() {
        h.insert(CONTENT_TYPE, json.clone());
    }
    h.insert(ACCEPT, json);
    futures::future::poll_fn(|cx| s.poll_ready(cx)).await?;
    let (resp, mut body) = s.send_request(req, r.body.is_empty())?;
    if !r.body.is_empty() {
        body.send_data(r.body, true)?;
    }
    Ok(resp.await?)
}

/// The next chunk of a response body, its flow-control capacity handed back to the server.
async fn next_data(body: &mut h2::RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let d = body.data().await?;
    if let Ok(d) = &d {
        let _ = body.flow_control().release_capacity(d.len());
    }
    Some(d)
}

/// Sends one request and reads the whole body: (status, body bytes).
async fn request(s: &mut Sender, r: Req) -> Result<(u16, Bytes), BoxError> {
    let resp = send(s, r).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Bytes::new();
    while let Some(d) = next_data(&mut body).await {
        let d = d?;
        out = if out.is_empty() {
            d
        } else {
            let mut v = Vec::with_capacity(out.len() + d.len());
            v.extend_from_slice(&out);
            v.extend_from_slice(&d);
            Bytes::from(v)
        };
    }
    Ok((status, out))
}

/// Sends a GET and reads the body frame by frame, counting bytes without keeping them: the
/// full LIST's figure is then the server's and the transfer's, not the load generator
/// assembling a 200 MB buffer on the same cores.
async fn get_counted(mut s: Sender, path: &str) -> Result<(u16, usize), BoxError> {
    let resp = send(&mut s, Req::new(hyper::Method::GET, path, Bytes::new())).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(d) = next_data(&mut body).await {
        n += d?.len();
    }
    Ok((status, n))
}

/// A pod shaped like scheduler_perf's (~1 KB of JSON), unbound unless `node` is given.
fn pod_body(ns: &str, name: &str, node: Option<&str>) -> Bytes {
    let node_name = node
        .map(|n| format!(r#","nodeName":"{n}""#))
        .unwrap_or_default();
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}","labels":{{"app":"bench","tier":"load","pod-template-hash":"7d9c6b5f8"}},"annotations":{{"bench.kubeshard.io/note":"a realistic annotation to carry some bytes"}}}},"spec":{{"containers":[{{"name":"app","image":"registry.k8s.io/pause:3.10","ports":[{{"containerPort":8080,"name":"http"}}],"resources":{{"requests":{{"cpu":"100m","memory":"500Mi"}},"limits":{{"cpu":"200m","memory":"500Mi"}}}},"env":[{{"name":"MODE","value":"bench"}}]}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30{node_name}}}}}"#
    ))
}

/// Runs `total` requests built by `make(i)` with at most `in_flight` at once; returns the
/// latency of each successful one, the wall time, and the count of failures (non-2xx or
/// transport errors).
async fn run_closed<F>(
    pool: &Arc<Pool>,
    total: usize,
    in_flight: usize,
    deadline: Duration,
    make: F,
) -> (Vec<Duration>, Duration, u64)
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..in_flight.clamp(1, MAX_IN_FLIGHT) {
        let (make, next, failures) = (make.clone(), next.clone(), failures.clone());
        // Each task keeps to one connection: no shared round-robin counter per request.
        let mut sender = pool.senders[k % pool.senders.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || t0.elapsed() > deadline {
                    break;
                }
                let r = make(i);
                let start = Instant::now();
                match request(&mut sender, r).await {
                    Ok((code, _)) if (200..300).contains(&code) => lat.push(start.elapsed()),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total.min(1 << 22));
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    (all, t0.elapsed(), failures.load(Ordering::Relaxed))
}

/// The list's `metadata.continue` without parsing the items (they dominated the paged
/// figure when the client parsed each page whole): the list metadata precedes `items`.
fn continue_token(body: &[u8]) -> String {
    let head = &body[..body.len().min(4096)];
    let Some(items) = head.windows(8).position(|w| w == b"\"items\":") else {
        return String::new();
    };
    let meta = &head[..items];
    let key = b"\"continue\":\"";
    let Some(at) = meta.windows(key.len()).position(|w| w == key) else {
        return String::new();
    };
    let rest = &meta[at + key.len()..];
    let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(label: &str, lat: &mut [Duration], wall: Duration, failures: u64) {
    let n = lat.len();
    let p50 = quantile(lat, 0.5);
    let p99 = quantile(lat, 0.99);
    println!(
        "{label}: {n} ok, {failures} failed in {:.2} s = {:.0}/s; p50 {:.3} ms, p99 {:.3} ms",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64().max(1e-9),
        ms(p50),
        ms(p99)
    );
}

/// Prints a paced cell: its answers and tail from scheduled send time, the failures and the
/// requests not sent (the client's in-flight bound full), and the server's and the client's
/// CPU seconds per answered GET.
fn report_paced(
    label: &str,
    lat: &mut [Duration],
    secs: u64,
    (failed, not_sent): (u64, u64),
    (server_cpu, client_cpu): (f64, f64),
) {
    let n = lat.len();
    println!(
        "{label}: {n} ok ({:.0}/s), {failed} failed, {not_sent} not sent (client bound full); from scheduled time p50 {:.3} ms, p99 {:.3} ms",
        n as f64 / secs.max(1) as f64,
        ms(quantile(lat, 0.5)),
        ms(quantile(lat, 0.99))
    );
    println!(
        "  p99.9 {:.3} ms, max {:.3} ms; server CPU {:.2} s = {:.1} us per GET; client CPU {:.1} us per GET",
        ms(quantile(lat, 0.999)),
        ms(lat.iter().max().copied().unwrap_or_default()),
        server_cpu,
        server_cpu * 1e6 / n.max(1) as f64,
        client_cpu * 1e6 / n.max(1) as f64
    );
}

/// `total` requests built by `make(i)`, paced at `rate` per second; latency is measured from
/// each request's scheduled send time (so a stalled server is charged for the queue it
/// causes, and so is the client's own lag). Returns the latencies of the 2xx answers, the
/// failures, and the requests not sent because the client's in-flight bound was full.
///
/// A pacing thread wakes every `step` and hands the requests due by then to the runtime
/// as one task, which starts one task per request.
async fn run_paced<F>(
    pool: &Arc<Pool>,
    total: u64,
    rate: u64,
    step: Duration,
    make: F,
) -> (Vec<Duration>, u64, u64)
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let rate = rate.max(1);
    let secs = total.div_ceil(rate);
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let failures = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let pacer = {
        let (pool, sem, lat, failures, dropped) = (
            pool.clone(),
            sem.clone(),
            lat.clone(),
            failures.clone(),
            dropped.clone(),
        );
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let limit = Duration::from_secs(secs + 5);
            let mut sent = 0u64;
            let mut next = t0;
            while sent < total && t0.elapsed() < limit {
                next += step;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // Requests due by now, at the paced rate.
                let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                let mut batch = Vec::with_capacity((due - sent.min(due)) as usize);
                while sent < due {
                    let scheduled = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
                    let r = make(sent as usize);
                    sent += 1;
                    match sem.clone().try_acquire_owned() {
                        Ok(permit) => batch.push((scheduled, r, permit)),
                        // The client's in-flight bound is full: the server is not keeping up.
                        Err(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let (pool, lat, failures) = (pool.clone(), lat.clone(), failures.clone());
                handle.spawn(async move {
                    for (scheduled, r, permit) in batch {
                        let (pool, lat, failures) = (pool.clone(), lat.clone(), failures.clone());
                        tokio::spawn(async move {
                            match request(&mut pool.sender(), r).await {
                                Ok((code, _)) if (200..300).contains(&code) => {
                                    lat.lock().push(scheduled.elapsed())
                                }
                                _ => {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            drop(permit);
                        });
                    }
                });
            }
            let _ = done_tx.send(());
        })
    };
    let _ = done_rx.await;
    let _ = pacer.join();
    // Every request holds a permit until it is answered: taking them all waits for the last.
    let _ = sem.acquire_many(MAX_IN_FLIGHT as u32).await;
    let v = std::mem::take(&mut *lat.lock());
    (
        v,
        failures.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed),
    )
}

/// What every watcher of the fan-out phase shares.
struct WatchShared {
    /// When the bind of pod `wpod-i` was sent, in nanoseconds since `t0`.
    sent_at: Vec<AtomicU64>,
    t0: Instant,
    /// Bind-to-delivery delay of each delivered event.
    delays: Mutex<Vec<Duration>>,
    /// Watches whose response headers arrived.
    opened: AtomicUsize,
    /// When the watchers stop waiting, in nanoseconds since `t0`: 300 s at first, then
    /// 30 s past the last bind (a bind the client could not send never produces an event).
    deadline_ns: AtomicU64,
}

/// Reads node `node`'s filtered watch stream until its pod's event arrived or the deadline;
/// records the delay since that pod's bind was sent. Returns the events seen (0 or 1).
async fn watch_one(
    sender: Sender,
    node: usize,
    rv: String,
    w: Arc<WatchShared>,
) -> Result<usize, BoxError> {
    let path = format!(
        "/api/v1/namespaces/watch/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-{node}&resourceVersion={rv}"
    );
    let mut s = sender;
    let resp = send(&mut s, Req::new(hyper::Method::GET, &path, Bytes::new())).await?;
    if resp.status() != 200 {
        return Err(format!("watch status {}", resp.status()).into());
    }
    w.opened.fetch_add(1, Ordering::Relaxed);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = 0usize;
    while events < 1 {
        let deadline = w.t0 + Duration::from_nanos(w.deadline_ns.load(Ordering::Relaxed));
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        if left.is_zero() {
            break;
        }
        let data = match tokio::time::timeout(left, next_data(&mut body)).await {
            Ok(Some(d)) => d?,
            Ok(None) => break,
            // Look at the deadline again: it moves in once the binds are done.
            Err(_) => continue,
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let now = w.t0.elapsed();
            let ev: serde_json::Value = serde_json::from_slice(&line)?;
            let name = ev
                .pointer("/object/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if let Some(i) = name
                .strip_prefix("wpod-")
                .and_then(|i| i.parse::<usize>().ok())
                && let Some(sent) = w.sent_at.get(i)
            {
                let sent = Duration::from_nanos(sent.load(Ordering::Relaxed));
                w.delays.lock().push(now.saturating_sub(sent));
                events += 1;
            }
        }
    }
    Ok(events)
}

fn main() -> Result<(), BoxError> {
    let pods: usize = env_or("API_PODS", 100_000);
    let secs: u64 = env_or("API_SECS", 5);
    let rate: u64 = env_or("API_GET_RATE", 50_000);
    let watchers: usize = env_or("API_WATCHERS", 10_000);
    let lists: usize = env_or("API_LISTS", 5);
    let bind_rate: u64 = env_or("API_BIND_RATE", 2_000);
    let only: String = env_or("API_ONLY", "get,list,watch".to_string());
    let pause = Duration::from_secs(env_or("API_PAUSE_SECS", 0));
    let pace_step = Duration::from_micros(env_or("API_PACE_US", 100));
    let client_threads: usize = env_or("API_CLIENT_THREADS", 2);
    let conns: usize = env_or("API_CONNS", 8);
    let lean_conns: usize = env_or("API_LEAN_CONNS", 2);
    let get_cells: String = env_or("API_GET_CELLS", "closed,paced,lean".to_string());
    let cell = |name: &str| get_cells.split(',').any(|c| c.trim() == name);
    let (run_closed_gets, run_paced_h2, run_lean) = (cell("closed"), cell("paced"), cell("lean"));
    let phase = move |name: &str| {
        let on = only.split(',').any(|p| p.trim() == name);
        if on && !pause.is_zero() {
            println!("phase {name} starts in {} s", pause.as_secs());
            std::thread::sleep(pause);
        }
        on
    };
    let bin = kubeshard_bin()?;
    let dir = tempfile::Builder::new().prefix("api-load-").tempdir()?;
    let server = start_server(&bin, dir.path(), true)?;
    let port = server.insecure_port.ok_or("no plain port")?;
    let pid = server.proc.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let pool = Arc::new(Pool::connect(port, conns.max(1)).await?);
        for ns in ["load", "watch"] {
            let body = Bytes::from(format!(r#"{{"metadata":{{"name":"{ns}"}}}}"#));
            let (code, _) = request(&mut pool.sender(), Req::new(hyper::Method::POST, "/api/v1/namespaces", body)).await?;
            if code != 201 {
                return Err(format!("create namespace {ns}: {code}").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss0 = rss_kib(pid);

        // 1. Create throughput (and the data set of every later phase).
        let cpu = cpu_secs(pid);
        let (mut lat, wall, failed) = run_closed(&pool, pods, 256, Duration::from_secs(600), |i| {
            Req::new(
                hyper::Method::POST,
                "/api/v1/namespaces/load/pods",
                pod_body("load", &format!("pod-{i}"), Some(&format!("node-{}", i % 5000))),
            )
        })
        .await;
        report("create pod (256 in flight)", &mut lat, wall, failed);
        println!("  server CPU: {:.1} s", cpu_secs(pid) - cpu);
        if failed > 0 || lat.len() < pods {
            return Err(format!("only {} of {pods} pods created", lat.len()).into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss1 = rss_kib(pid);
        println!(
            "memory: server RSS {:.1} MiB -> {:.1} MiB with {pods} pods = {:.2} KiB per stored pod",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            rss1.saturating_sub(rss0) as f64 / pods as f64
        );

        // 2. Single-object GET, closed loop at two concurrencies, then paced.
        let run_get = phase("get");
        // Every GET's URI, built once: a request clones one (a reference count).
        let get_uris: Arc<Vec<hyper::Uri>> = Arc::new(if run_get {
            (0..pods)
                .map(|i| uri(&format!("/api/v1/namespaces/load/pods/pod-{i}")))
                .collect()
        } else {
            Vec::new()
        });
        let get_req = {
            let uris = get_uris.clone();
            move |i: usize| Req {
                method: hyper::Method::GET,
                uri: uris[(i * 7919) % uris.len()].clone(),
                body: Bytes::new(),
            }
        };
        for in_flight in [1usize, 64, 512].into_iter().filter(|_| run_get && run_closed_gets) {
            let cpu = cpu_secs(pid);
            let (mut lat, wall, failed) =
                run_closed(&pool, usize::MAX, in_flight, Duration::from_secs(secs), get_req.clone())
                .await;
            report(&format!("GET one pod ({in_flight} in flight)"), &mut lat, wall, failed);
            println!(
                "  server CPU: {:.2} s = {:.1} us per GET",
                cpu_secs(pid) - cpu,
                (cpu_secs(pid) - cpu) * 1e6 / lat.len().max(1) as f64
            );
        }
        if run_get && run_paced_h2 {
        let (cpu, client_cpu) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let (mut lat, failed, dropped) =
            run_paced(&pool, rate * secs, rate, pace_step, get_req.clone()).await;
        let server_cpu = cpu_secs(pid) - cpu;
        let client_cpu = cpu_secs(std::process::id()) - client_cpu;
        report_paced(
            &format!("GET one pod paced at {rate}/s for {secs} s"),
            &mut lat,
            secs,
            (failed, dropped),
            (server_cpu, client_cpu),
        );
        }
        if run_get && run_lean && lean_conns > 0 {
            // The same paced cell from the lean HTTP/2 client (benches/src/h2_lean.rs), so
            // the client's own CPU leaves the server room on the shared cores.
            let paths: Vec<String> = (0..pods)
                .map(|i| format!("/api/v1/namespaces/load/pods/pod-{i}"))
                .collect();
            let (cpu, client_cpu) = (cpu_secs(pid), cpu_secs(std::process::id()));
            let out = tokio::task::spawn_blocking(move || {
                h2_lean::run_paced_gets(port, &paths, lean_conns, rate, rate * secs, pace_step, MAX_IN_FLIGHT)
            })
            .await??;
            let server_cpu = cpu_secs(pid) - cpu;
            let client_cpu = cpu_secs(std::process::id()) - client_cpu;
            let mut lat = out.latencies;
            report_paced(
                &format!("GET one pod paced at {rate}/s for {secs} s, lean client ({lean_conns} conns)"),
                &mut lat,
                secs,
                (out.failures, out.not_sent),
                (server_cpu, client_cpu),
            );
        }

        if phase("list") {
        // 3. LIST every pod: full, then paged by 500 as kubectl does.
        let mut full = Vec::new();
        let mut bytes = 0usize;
        let cpu = cpu_secs(pid);
        for _ in 0..lists {
            let t = Instant::now();
            let (code, n) = get_counted(pool.sender(), "/api/v1/namespaces/load/pods").await?;
            full.push(t.elapsed());
            if code != 200 {
                return Err(format!("list: {code}").into());
            }
            bytes = n;
        }
        println!(
            "LIST {pods} pods, full: median {:.1} ms, {:.1} MB ({} runs; server CPU {:.0} ms per LIST)",
            ms(quantile(&mut full, 0.5)),
            bytes as f64 / 1e6,
            lists,
            (cpu_secs(pid) - cpu) * 1e3 / lists as f64
        );
        let mut paged = Vec::new();
        let mut pages = 0usize;
        for _ in 0..lists {
            let t = Instant::now();
            let mut cont = String::new();
            pages = 0;
            loop {
                let path = if cont.is_empty() {
                    "/api/v1/namespaces/load/pods?limit=500".to_string()
                } else {
                    format!("/api/v1/namespaces/load/pods?limit=500&continue={cont}")
                };
                let (code, body) =
                    request(&mut pool.sender(), Req::new(hyper::Method::GET, &path, Bytes::new())).await?;
                if code != 200 {
                    return Err(format!("paged list: {code}").into());
                }
                pages += 1;
                cont = continue_token(&body);
                if cont.is_empty() || pages > pods / 500 + 2 {
                    break;
                }
            }
            paged.push(t.elapsed());
        }
        println!(
            "LIST {pods} pods, paged by 500: median {:.1} ms ({pages} pages, {lists} runs)",
            ms(quantile(&mut paged, 0.5))
        );

        }

        if phase("watch") {
        // 4. Watch fan-out: one watcher per node, each filtered to its node's pods; one pod
        //    bound to each node; bind-to-delivery delay.
        let (code, body) =
            request(
                &mut pool.sender(),
                Req::new(hyper::Method::GET, "/api/v1/namespaces/watch/pods?limit=1", Bytes::new()),
            )
            .await?;
        if code != 200 {
            return Err(format!("list for rv: {code}").into());
        }
        let rv = serde_json::from_slice::<serde_json::Value>(&body)?
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("0")
            .to_string();
        let watch_pool = Arc::new(Pool::connect(port, watchers.div_ceil(WATCHES_PER_CONN)).await?);
        let t0 = Instant::now();
        let w = Arc::new(WatchShared {
            sent_at: (0..watchers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            t0,
            delays: Mutex::new(Vec::with_capacity(watchers)),
            opened: AtomicUsize::new(0),
            deadline_ns: AtomicU64::new(Duration::from_secs(300).as_nanos() as u64),
        });
        let mut watch_tasks = Vec::with_capacity(watchers);
        for node in 0..watchers {
            let sender = watch_pool.senders[node / WATCHES_PER_CONN].clone();
            watch_tasks.push(tokio::spawn(watch_one(sender, node, rv.clone(), w.clone())));
        }
        let open_limit = Instant::now() + Duration::from_secs(120);
        while w.opened.load(Ordering::Relaxed) < watchers && Instant::now() < open_limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open_time = t0.elapsed();
        println!(
            "watch: {} of {watchers} filtered watches open after {:.2} s; server RSS {:.1} MiB",
            w.opened.load(Ordering::Relaxed),
            open_time.as_secs_f64(),
            rss_kib(pid) as f64 / 1024.0
        );
        let (_, wall, failed) = run_closed(&pool, watchers, 256, Duration::from_secs(300), |i| {
            Req::new(
                hyper::Method::POST,
                "/api/v1/namespaces/watch/pods",
                pod_body("watch", &format!("wpod-{i}"), None),
            )
        })
        .await;
        println!("  {watchers} unbound pods created in {:.2} s ({failed} failed)", wall.as_secs_f64());
        let cpu = cpu_secs(pid);
        let bind_start = t0.elapsed();
        let sent = w.clone();
        // Binds paced at a fixed rate, as a scheduler posts them: each delivery delay is
        // counted from the bind's scheduled send time, so it holds the bind's own latency
        // but not a closed-loop client's queueing.
        let (_, bind_failed, bind_dropped) =
            run_paced(&pool, watchers as u64, bind_rate, pace_step, move |i| {
                sent.sent_at[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Req::new(
                    hyper::Method::POST,
                    &format!("/api/v1/namespaces/watch/pods/wpod-{i}/binding"),
                    Bytes::from(format!(
                        r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"wpod-{i}"}},"target":{{"kind":"Node","name":"node-{i}"}}}}"#
                    )),
                )
            })
            .await;
        let bind_wall = t0.elapsed().saturating_sub(bind_start);
        w.deadline_ns.store(
            (t0.elapsed() + Duration::from_secs(30)).as_nanos() as u64,
            Ordering::Relaxed,
        );
        let mut delivered = 0usize;
        for t in watch_tasks {
            if let Ok(Ok(n)) = t.await {
                delivered += n;
            }
        }
        let all_done = t0.elapsed().saturating_sub(bind_start);
        let mut d = std::mem::take(&mut *w.delays.lock());
        println!(
            "watch fan-out: {watchers} binds paced at {bind_rate}/s in {:.2} s ({bind_failed} failed, {bind_dropped} not sent); {delivered} of {watchers} events delivered to their own watcher in {:.2} s = {:.0} events/s; bind-to-delivery p50 {:.1} ms, p99 {:.1} ms; server CPU {:.1} s",
            bind_wall.as_secs_f64(),
            all_done.as_secs_f64(),
            delivered as f64 / all_done.as_secs_f64().max(1e-9),
            ms(quantile(&mut d, 0.5)),
            ms(quantile(&mut d, 0.99)),
            cpu_secs(pid) - cpu
        );
        }
        Ok::<(), BoxError>(())
    })?;
    drop(server);
    Ok(())
}
