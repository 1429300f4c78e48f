//! The same L4 job through kubeshard's dataplane (each forwarding engine), HAProxy (mode
//! tcp), nginx's stream module, an nftables DNAT map (kube-proxy's nftables mode) and a
//! direct connection, on loopback; plus the routing-table update latency at 1,000, 10,000 and
//! 100,000 Services.
//!
//! Run (root: VIPs on lo, nftables): `cargo run --release -p kubeshard-benches --bin
//! proxy_vs_haproxy`. `RUNS` (default 5) and `SECS` (default 2) bound each measurement;
//! `ONLY` (comma-separated name prefixes; `table` for the table updates) picks the paths
//! and `JOBS` (`bulk,conns,rtt`) the measurements of each path. `ONESHOT_THREADS` sizes the
//! short-connection backend's thread pool (0: a thread per connection); `PIPE_SIZE` sets
//! kubeshard's splice pipe size; `HAPROXY_SPLICE=1` adds `option splice-auto` to HAProxy's
//! defaults. CPU columns are machine-wide (`/proc/stat`) during the job.
//! Prints a markdown table of medians.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::core::RoutingTable;
use proxy_dp::{Change, Dataplane, DataplaneConfig, ForwardMode, KernelForward};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

// ---------- backends (blocking threads; the same for every target) ----------

/// Three backend ports: sink (counts bytes, replies the count at EOF), echo (persistent
/// ping-pong), one-shot (echoes one read, then closes first).
struct Backends {
    sink: u16,
    echo: u16,
    oneshot: u16,
}

/// Threads of the one-shot backend, each looping accept / echo one read / close
/// (`ONESHOT_THREADS`, default 8; 0 = a new thread per connection, the generator before
/// session 6, whose `clone`/`mmap`/`munmap` per connection cost more CPU than the proxies).
fn oneshot_threads() -> usize {
    env_usize("ONESHOT_THREADS", 8)
}

fn serve(kind: u8) -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let pool = oneshot_threads();
    if kind == 2 && pool > 0 {
        let l = Arc::new(l);
        for _ in 0..pool {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((mut s, _)) = l.accept() else { continue };
                    let _ = s.set_nodelay(true);
                    if let Ok(n) = s.read(&mut buf)
                        && n > 0
                    {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
            });
        }
        return Ok(port);
    }
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; if kind == 0 { 1 << 20 } else { 64 }];
                match kind {
                    0 => {
                        let mut total = 0u64;
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        let _ = s.write_all(&total.to_le_bytes());
                    }
                    1 => {
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    _ => {
                        if let Ok(n) = s.read(&mut buf)
                            && n > 0
                        {
                            let _ = s.write_all(&buf[..n]);
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A target: where the three jobs connect.
#[derive(Clone, Copy)]
struct Target {
    sink: SocketAddr,
    echo: SocketAddr,
    oneshot: SocketAddr,
}

fn wait_port(a: SocketAddr) -> Res<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{a} did not come up").into())
}

// ---------- jobs ----------

/// Busy and total jiffies of all CPUs (`/proc/stat`'s first line), machine-wide: the CPU
/// figures are only meaningful on an otherwise quiet machine.
fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Counts busy CPUs over a measurement.
struct CpuMeter((u64, u64));

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter(cpu_jiffies())
    }
    /// Average busy cores since `start` (0..=cores).
    fn busy_cores(&self) -> f64 {
        let (b, t) = cpu_jiffies();
        let (db, dt) = (b.saturating_sub(self.0.0), t.saturating_sub(self.0.1));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if dt == 0 {
            0.0
        } else {
            db as f64 / dt as f64 * cores
        }
    }
}

/// Whose CPU is the proxy's, for the per-side split: kubeshard's shard threads in this
/// process (`proxy-N`), a peer's process and its children (HAProxy, nginx's master and
/// workers), or nobody (direct, nftables: their kernel work lands on the bench's threads).
/// Loopback delivery runs in the sender's context, so each side's figure includes the
/// receiving end's TCP processing of what it sends.
#[derive(Clone, Copy)]
enum ProxyCpu {
    Shards,
    Tree(u32),
    Kernel,
}

/// utime + stime (clock ticks) of one `/proc/.../stat` line, and its parent pid.
fn stat_ticks(path: &str) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name: state ppid ... utime(12th) stime(13th).
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ticks, ppid))
}

/// CPU seconds so far of (the proxy, the bench's own threads: clients and backends).
fn split_secs(p: ProxyCpu) -> (f64, f64) {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let own = stat_ticks("/proc/self/stat").map_or(0, |t| t.0);
    let proxy = match p {
        ProxyCpu::Kernel => 0,
        ProxyCpu::Shards => std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("proxy-"))
            })
            .filter_map(|e| stat_ticks(&e.path().join("stat").to_string_lossy()))
            .map(|t| t.0)
            .sum(),
        ProxyCpu::Tree(root) => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let (t, ppid) = stat_ticks(&format!("/proc/{pid}/stat"))?;
                (pid == root || ppid == root).then_some(t)
            })
            .sum(),
    };
    let bench = match p {
        ProxyCpu::Shards => own.saturating_sub(proxy),
        _ => own,
    };
    (proxy as f64 / hz, bench as f64 / hz)
}

/// One stream, `secs` of writing 1 MiB buffers; Gbit/s as the backend counted them.
/// A stalled path fails its measurement after this long instead of hanging the run.
const STALL: Duration = Duration::from_secs(20);

/// Returns (Gbit/s, busy cores).
fn bulk(a: SocketAddr, secs: f64) -> Res<(f64, f64)> {
    let mut s = TcpStream::connect_timeout(&a, STALL)?;
    s.set_write_timeout(Some(STALL))?;
    s.set_read_timeout(Some(STALL))?;
    let buf = vec![7u8; 1 << 20];
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut c = [0u8; 8];
    s.read_exact(&mut c)?;
    let el = t0.elapsed().as_secs_f64();
    Ok((
        u64::from_le_bytes(c) as f64 * 8.0 / el / 1e9,
        cpu.busy_cores(),
    ))
}

/// `threads` clients doing connect / 1 byte there and back / close for `secs`; (conn/s,
/// errors, busy cores).
fn conns(a: SocketAddr, secs: f64, threads: usize) -> Res<(f64, u64, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (done, errors, stop) = (done.clone(), errors.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut b = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.write_all(b"x")?;
                        let n = s.read(&mut b)?;
                        if n != 1 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        while s.read(&mut b)? > 0 {}
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    let el = t0.elapsed().as_secs_f64();
    Ok((
        done.load(Ordering::Relaxed) as f64 / el,
        errors.load(Ordering::Relaxed),
        cpu.busy_cores(),
    ))
}

/// Round trips of 1 byte on one connection; (p50, p99) in microseconds.
fn latency(a: SocketAddr, n: usize) -> Res<(f64, f64)> {
    let mut s = TcpStream::connect_timeout(&a, STALL)?;
    s.set_read_timeout(Some(STALL))?;
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let mut v = Vec::with_capacity(n);
    for i in 0..(n + n / 10) {
        let t = Instant::now();
        s.write_all(b"p")?;
        s.read_exact(&mut b)?;
        if i >= n / 10 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok((pct(&mut v, 0.5), pct(&mut v, 0.99)))
}

#[derive(Default, Clone)]
struct Row {
    gbps: f64,
    cps: f64,
    conn_errors: u64,
    p50: f64,
    p99: f64,
    /// CPU (all cores, machine-wide) per Gbit moved in the bulk job, milliseconds.
    cpu_ms_per_gbit: f64,
    /// CPU (machine-wide) per short connection, microseconds.
    cpu_us_per_conn: f64,
    /// Bulk job: cores busy in the proxy and in the bench's client and sink threads.
    bulk_proxy_cores: f64,
    bulk_bench_cores: f64,
    /// Bulk job: busy cores machine-wide (`/proc/stat`).
    bulk_machine_cores: f64,
    /// Short connections: the proxy's and the bench's (clients, backends) CPU per connection, us.
    conn_proxy_us: f64,
    conn_bench_us: f64,
}

fn measure(name: &str, t: Target, who: ProxyCpu, runs: usize, secs: f64) -> Res<Row> {
    let (mut g, mut c, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bp, mut bb, mut cp, mut cb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bm = Vec::new();
    let (mut cg, mut cc) = (Vec::new(), Vec::new());
    let mut errs = 0;
    // `JOBS` (default all: `bulk,conns,rtt`) picks the measurements, e.g. to profile one.
    let jobs = std::env::var("JOBS").unwrap_or_else(|_| "bulk,conns,rtt".into());
    let job = |j: &str| jobs.split(',').any(|x| x == j);
    for _ in 0..runs {
        if job("bulk") {
            let (p0, t0) = (split_secs(who), Instant::now());
            let (gbps, cores) = bulk(t.sink, secs)?;
            let (p1, el) = (split_secs(who), t0.elapsed().as_secs_f64());
            bp.push((p1.0 - p0.0) / el);
            bb.push((p1.1 - p0.1) / el);
            bm.push(cores);
            g.push(gbps);
            cg.push(cores / gbps * 1e3);
        }
    }
    for _ in 0..runs {
        if !job("conns") {
            break;
        }
        let (p0, t0) = (split_secs(who), Instant::now());
        let (r, e, cores) = conns(t.oneshot, secs, 4)?;
        let (p1, el) = (split_secs(who), t0.elapsed().as_secs_f64());
        let n = r * el;
        cp.push((p1.0 - p0.0) / n * 1e6);
        cb.push((p1.1 - p0.1) / n * 1e6);
        c.push(r);
        cc.push(cores / r * 1e6);
        errs += e;
        // Let TIME_WAIT and the backlog settle between runs.
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..runs.min(3) {
        if !job("rtt") {
            break;
        }
        let (a, b) = latency(t.echo, 5_000)?;
        p50.push(a);
        p99.push(b);
    }
    let row = Row {
        gbps: median(&mut g),
        cps: median(&mut c),
        conn_errors: errs,
        p50: median(&mut p50),
        p99: median(&mut p99),
        cpu_ms_per_gbit: median(&mut cg),
        cpu_us_per_conn: median(&mut cc),
        bulk_proxy_cores: median(&mut bp),
        bulk_bench_cores: median(&mut bb),
        bulk_machine_cores: median(&mut bm),
        conn_proxy_us: median(&mut cp),
        conn_bench_us: median(&mut cb),
    };
    eprintln!(
        "{name}: bulk {:.2} Gbit/s {g:.2?} ({:.0} CPU ms/Gbit; cores proxy {:.2} bench {:.2}); conns {:.0}/s {c:.0?} ({} errors, {:.1} CPU us/conn; proxy {:.1} {cp:.1?} bench {:.1}); rtt p50 {:.1} us p99 {:.1} us {p99:.1?}",
        row.gbps,
        row.cpu_ms_per_gbit,
        row.bulk_proxy_cores,
        row.bulk_bench_cores,
        row.cps,
        row.conn_errors,
        row.cpu_us_per_conn,
        row.conn_proxy_us,
        row.conn_bench_us,
        row.p50,
        row.p99
    );
    Ok(row)
}

// ---------- peers ----------

struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers on it, while a SIGKILL of the
        // master left both workers running (reparented to init) after every run.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("stopped {}", self.1);
    }
}

fn haproxy(b: &Backends, dir: &std::path::Path) -> Res<(Proc, Target)> {
    let ports = [free_port()?, free_port()?, free_port()?];
    let mut cfg = String::from(
        "global\n  nbthread 2\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    // HAProxy copies through 16 KiB user-space buffers unless told to splice;
    // `HAPROXY_SPLICE=1` measures it with `option splice-auto` as well.
    // Splicing needs pipes: HAProxy reserves 2 fds per pipe (maxpipes defaults to
    // maxconn/4) and refused to start ("Cannot raise FD limit to 20017, limit is 20000")
    // under this machine's hard RLIMIT_NOFILE of 20,000, which is why splice-auto "did not
    // come up" in session 6. 1,024 pipes fit.
    if std::env::var("HAPROXY_SPLICE").is_ok_and(|v| v == "1") {
        cfg = cfg.replace("  maxconn 8000\n", "  maxconn 8000\n  maxpipes 1024\n");
        cfg += "  option splice-auto\n";
    }
    for (i, (p, bp)) in ports.iter().zip([b.sink, b.echo, b.oneshot]).enumerate() {
        cfg += &format!("listen l{i}\n  bind 127.0.0.1:{p}\n  server s 127.0.0.1:{bp}\n");
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let proc = Proc(child, "haproxy");
    let t = target_on(ports);
    wait_port(t.sink)?;
    Ok((proc, t))
}

fn nginx(b: &Backends, dir: &std::path::Path) -> Res<(Proc, Target)> {
    let ports = [free_port()?, free_port()?, free_port()?];
    let mut cfg = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 2;\npid {}/nginx.pid;\nerror_log {}/error.log;\nevents {{ worker_connections 8000; }}\nstream {{\n",
        dir.display(),
        dir.display()
    );
    for (p, bp) in ports.iter().zip([b.sink, b.echo, b.oneshot]) {
        cfg += &format!(
            "  server {{ listen 127.0.0.1:{p}; proxy_pass 127.0.0.1:{bp}; proxy_half_close on; }}\n"
        );
    }
    cfg += "}\n";
    let path = dir.join("nginx.conf");
    std::fs::write(&path, cfg)?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-g")
        .arg("daemon off;")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let proc = Proc(child, "nginx");
    let t = target_on(ports);
    wait_port(t.sink)?;
    Ok((proc, t))
}

fn target_on(p: [u16; 3]) -> Target {
    let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
    Target {
        sink: a(p[0]),
        echo: a(p[1]),
        oneshot: a(p[2]),
    }
}

const NFT_VIP: &str = "10.96.234.1";

/// The VIP of the row whose dataplane has `first_bytes` off.
const FIRST_BYTES_OFF_VIP: &str = "10.96.233.6";

/// An nftables DNAT map on the output hook (what kube-proxy's nftables mode does for
/// locally generated traffic), VIP on lo.
struct Nft;

impl Nft {
    fn start(b: &Backends) -> Res<(Nft, Target)> {
        run_ip(&["addr", "add", &format!("{NFT_VIP}/32"), "dev", "lo"])?;
        let rules = format!(
            "table ip kubeshard_bench {{\n map svc {{\n  type ipv4_addr . inet_service : ipv4_addr . inet_service\n  elements = {{ {v} . 81 : 127.0.0.1 . {}, {v} . 82 : 127.0.0.1 . {}, {v} . 83 : 127.0.0.1 . {} }}\n }}\n chain out {{\n  type nat hook output priority -100; policy accept;\n  dnat ip to ip daddr . tcp dport map @svc\n }}\n}}\n",
            b.sink,
            b.echo,
            b.oneshot,
            v = NFT_VIP
        );
        let mut c = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = c.stdin.take() {
            i.write_all(rules.as_bytes())?;
        }
        let nft = Nft;
        if !c.wait()?.success() {
            return Err("nft -f failed".into());
        }
        let ip: IpAddr = NFT_VIP.parse()?;
        Ok((
            nft,
            Target {
                sink: SocketAddr::new(ip, 81),
                echo: SocketAddr::new(ip, 82),
                oneshot: SocketAddr::new(ip, 83),
            },
        ))
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", "kubeshard_bench"])
            .status();
        let _ = run_ip(&["addr", "del", &format!("{NFT_VIP}/32"), "dev", "lo"]);
    }
}

fn run_ip(args: &[&str]) -> Res<()> {
    let st = Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?} failed").into())
    }
}

// ---------- kubeshard ----------

fn meta(name: &str, svc: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("bench".into()),
        labels: svc
            .map(|s| BTreeMap::from([("kubernetes.io/service-name".to_string(), s.to_string())])),
        ..Default::default()
    }
}

fn service(name: &str, vip: &str, ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: meta(name, None),
        spec: Some(ServiceSpec {
            cluster_ips: Some(vec![vip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.to_string()),
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(
    name: &str,
    svc: &str,
    port_name: &str,
    port: i32,
    ips: &[String],
    ready: bool,
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(name, Some(svc)),
        address_type: "IPv4".into(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(port),
            ..Default::default()
        }]),
    }
}

fn kubeshard(
    rt: &tokio::runtime::Runtime,
    b: &Backends,
    mode: ForwardMode,
    kernel: KernelForward,
    vip: &str,
) -> Res<(Dataplane, Target)> {
    // `PIPE_SIZE` (bytes) overrides the dataplane's splice pipe size, for experiments.
    let mut cfg = DataplaneConfig::default()
        .node_name("bench")
        .shards(2)
        .forward_mode(mode)
        .kernel_forward(kernel);
    // The `... first bytes via epoll` row: the client's first bytes wait for epoll to report
    // the client readable (the code before session 8), for before/after in one run.
    if vip == FIRST_BYTES_OFF_VIP {
        cfg = cfg.first_bytes(false);
    }
    if let Ok(Ok(n)) = std::env::var("PIPE_SIZE").map(|v| v.parse::<usize>()) {
        cfg = cfg.pipe_size(n);
    }
    let dp = rt.block_on(Dataplane::start(cfg))?;
    let lo = vec!["127.0.0.1".to_string()];
    let changes = vec![
        Change::Service(Arc::new(service(
            "svc",
            vip,
            &[("sink", 81), ("echo", 82), ("one", 83)],
        ))),
        Change::Slice(Arc::new(slice(
            "svc-sink",
            "svc",
            "sink",
            i32::from(b.sink),
            &lo,
            true,
        ))),
        Change::Slice(Arc::new(slice(
            "svc-echo",
            "svc",
            "echo",
            i32::from(b.echo),
            &lo,
            true,
        ))),
        Change::Slice(Arc::new(slice(
            "svc-one",
            "svc",
            "one",
            i32::from(b.oneshot),
            &lo,
            true,
        ))),
    ];
    rt.block_on(dp.apply(changes))?;
    let ip: IpAddr = vip.parse()?;
    Ok((
        dp,
        Target {
            sink: SocketAddr::new(ip, 81),
            echo: SocketAddr::new(ip, 82),
            oneshot: SocketAddr::new(ip, 83),
        },
    ))
}

fn vip_of(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256)
}

/// Time to apply one change (alternately an EndpointSlice readiness flip and a Service port
/// change) to a core holding `n` Services with 3 endpoints each; (p50, p99) in microseconds.
fn table_update(n: usize, changes: usize) -> Res<(f64, f64, f64)> {
    let mut t = RoutingTable::new("bench");
    let t0 = Instant::now();
    let eps = |i: usize| -> Vec<String> {
        (0..3)
            .map(|k| format!("10.244.{}.{}", (i / 250) % 250, k + 1 + (i % 80) * 3))
            .collect()
    };
    for i in 0..n {
        t.apply_service(&service(&format!("s{i}"), &vip_of(i), &[("p", 80)]))?;
        t.apply_endpoint_slice(&slice(
            &format!("s{i}-a"),
            &format!("s{i}"),
            "p",
            8080,
            &eps(i),
            true,
        ))?;
        while t.poll_effect().is_some() {}
    }
    let build = t0.elapsed().as_secs_f64();
    let mut v = Vec::with_capacity(changes);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for k in 0..changes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        let s = format!("s{i}");
        let (svc, sl) = if k % 2 == 0 {
            (
                None,
                Some(slice(&format!("{s}-a"), &s, "p", 8080, &eps(i), k % 4 == 0)),
            )
        } else {
            (
                Some(service(
                    &s,
                    &vip_of(i),
                    &[("p", if k % 4 == 1 { 81 } else { 80 })],
                )),
                None,
            )
        };
        let t1 = Instant::now();
        if let Some(svc) = &svc {
            t.apply_service(svc)?;
        }
        if let Some(sl) = &sl {
            t.apply_endpoint_slice(sl)?;
        }
        while t.poll_effect().is_some() {}
        v.push(t1.elapsed().as_secs_f64() * 1e6);
    }
    Ok((pct(&mut v, 0.5), pct(&mut v, 0.99), build))
}

/// Through the shell: one EndpointSlice change applied and fanned out to both shards, with
/// `n` Services listening (`n` VIPs on lo); (p50, p99) microseconds.
fn shell_update(rt: &tokio::runtime::Runtime, n: usize, changes: usize) -> Res<(f64, f64)> {
    let dp = rt.block_on(Dataplane::start(
        DataplaneConfig::default().node_name("bench").shards(2),
    ))?;
    let ep = vec!["127.0.0.1".to_string()];
    let mut all = Vec::new();
    for i in 0..n {
        let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        all.push(Change::Service(Arc::new(service(
            &format!("s{i}"),
            &vip,
            &[("p", 80)],
        ))));
        all.push(Change::Slice(Arc::new(slice(
            &format!("s{i}-a"),
            &format!("s{i}"),
            "p",
            9,
            &ep,
            true,
        ))));
    }
    rt.block_on(dp.apply(all))?;
    let mut v = Vec::new();
    for k in 0..changes {
        let i = (k * 7919) % n;
        let c = Change::Slice(Arc::new(slice(
            &format!("s{i}-a"),
            &format!("s{i}"),
            "p",
            9 + (k % 2) as i32,
            &ep,
            true,
        )));
        let t = Instant::now();
        rt.block_on(dp.apply([c]))?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    dp.shutdown()?;
    Ok((pct(&mut v, 0.5), pct(&mut v, 0.99)))
}

/// On SIGINT/SIGTERM, removes what this bench put on the machine (the VIPs on `lo` of every
/// dataplane and of the nftables target, the nftables table) and exits: a run stopped by
/// hand must not leave addresses behind. (Errors inside a run are covered by the guards'
/// `Drop`.) The signals are blocked in every thread and taken by one waiting thread.
fn cleanup_on_signal() -> Res<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        let sig = set.wait();
        eprintln!("{sig:?}: removing the bench's addresses and nftables table");
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", "kubeshard_bench"])
            .stderr(Stdio::null())
            .status();
        if let Ok(out) = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "dev", "lo"])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            let ours = |ip: &str| {
                ip.starts_with("10.96.233.") || ip.starts_with("10.97.") || ip == NFT_VIP
            };
            let mut script = String::new();
            for line in text.lines() {
                let Some(cidr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) else {
                    continue;
                };
                if ours(cidr.split('/').next().unwrap_or_default()) {
                    script += &format!("address del {cidr} dev lo\n");
                }
            }
            if let Ok(mut c) = Command::new("ip")
                .args(["-force", "-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
            {
                if let Some(mut i) = c.stdin.take() {
                    let _ = i.write_all(script.as_bytes());
                }
                let _ = c.wait();
            }
        }
        std::process::exit(130);
    });
    Ok(())
}

fn main() -> Res<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("proxy_vs_haproxy needs root (VIPs on lo, nftables); skipped");
        return Ok(());
    }
    cleanup_on_signal()?;
    let runs = env_usize("RUNS", 5);
    let secs = env_usize("SECS", 2) as f64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let b = Backends {
        sink: serve(0)?,
        echo: serve(1)?,
        oneshot: serve(2)?,
    };
    let mut rows: Vec<(String, Row)> = Vec::new();
    let direct = target_on([b.sink, b.echo, b.oneshot]);
    let only = std::env::var("ONLY").unwrap_or_default();
    let want = |n: &str| only.is_empty() || only.split(',').any(|o| n.starts_with(o));
    if want("direct") {
        rows.push((
            "direct".into(),
            measure("direct", direct, ProxyCpu::Kernel, runs, secs)?,
        ));
    }
    // `KUBESHARD_PROXY_SOCKMAP` (auto/on/off) would override every kubeshard row; the rows
    // below set the kernel path explicitly instead: `sockmap` on, the others off.
    let off = KernelForward::Off;
    for (name, mode, kernel, vip) in [
        (
            "kubeshard (sockmap)",
            ForwardMode::Splice,
            KernelForward::On,
            "10.96.233.5",
        ),
        (
            "kubeshard (adaptive)",
            ForwardMode::Adaptive,
            off,
            "10.96.233.4",
        ),
        (
            "kubeshard (adaptive, first bytes via epoll)",
            ForwardMode::Adaptive,
            off,
            FIRST_BYTES_OFF_VIP,
        ),
        (
            "kubeshard (splice)",
            ForwardMode::Splice,
            off,
            "10.96.233.1",
        ),
        (
            "kubeshard (io_uring splice)",
            ForwardMode::UringSplice,
            off,
            "10.96.233.2",
        ),
        (
            "kubeshard (tokio copy)",
            ForwardMode::Copy,
            off,
            "10.96.233.3",
        ),
    ] {
        if !want(name) {
            continue;
        }
        let (dp, t) = kubeshard(&rt, &b, mode, kernel, vip)?;
        rows.push((name.into(), measure(name, t, ProxyCpu::Shards, runs, secs)?));
        dp.shutdown()?;
    }
    if want("haproxy") {
        let (p, t) = haproxy(&b, dir.path())?;
        let who = ProxyCpu::Tree(p.0.id());
        let name = if std::env::var("HAPROXY_SPLICE").is_ok_and(|v| v == "1") {
            "HAProxy 2 threads (mode tcp, splice-auto)"
        } else {
            "HAProxy 2 threads (mode tcp)"
        };
        rows.push((name.into(), measure("haproxy", t, who, runs, secs)?));
    }
    if want("nginx") {
        let (p, t) = nginx(&b, dir.path())?;
        let who = ProxyCpu::Tree(p.0.id());
        rows.push((
            "nginx stream, 2 workers".into(),
            measure("nginx", t, who, runs, secs)?,
        ));
    }
    if want("nft") {
        let (_n, t) = Nft::start(&b)?;
        rows.push((
            "nftables DNAT map".into(),
            measure("nft", t, ProxyCpu::Kernel, runs, secs)?,
        ));
    }
    let base = rows
        .iter()
        .find(|(n, _)| n == "direct")
        .map(|r| r.1.clone());
    let hap = rows
        .iter()
        .find(|(n, _)| n.starts_with("HAProxy"))
        .map(|r| r.1.clone());
    println!(
        "| path | bulk Gbit/s | vs direct | vs HAProxy | CPU ms/Gbit | short conn/s | vs HAProxy | conn errors | CPU us/conn | added CPU us/conn | RTT p50 us | added p50 us | RTT p99 us | added p99 us |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in &rows {
        let ratio = |a: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}x", a / b));
        println!(
            "| {n} | {:.2} | {} | {} | {:.0} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.gbps,
            ratio(r.gbps, base.as_ref().map(|b| b.gbps)),
            ratio(r.gbps, hap.as_ref().map(|b| b.gbps)),
            r.cpu_ms_per_gbit,
            r.cps,
            ratio(r.cps, hap.as_ref().map(|b| b.cps)),
            r.conn_errors,
            r.cpu_us_per_conn,
            r.cpu_us_per_conn - base.as_ref().map_or(0.0, |b| b.cpu_us_per_conn),
            r.p50,
            r.p50 - base.as_ref().map_or(0.0, |b| b.p50),
            r.p99,
            r.p99 - base.as_ref().map_or(0.0, |b| b.p99),
        );
    }
    println!();
    println!(
        "| path | bulk: proxy cores | bench cores (client + sink) | machine cores | conns: proxy CPU us/conn | HAProxy us / this us | bench CPU us/conn (clients + backends) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, r) in &rows {
        let machine = r.bulk_machine_cores;
        println!(
            "| {n} | {:.2} | {:.2} | {machine:.2} | {:.1} | {} | {:.1} |",
            r.bulk_proxy_cores,
            r.bulk_bench_cores,
            r.conn_proxy_us,
            hap.as_ref()
                .filter(|h| r.conn_proxy_us > 0.0 && h.conn_proxy_us > 0.0)
                .map_or("-".into(), |h| format!(
                    "{:.2}x",
                    h.conn_proxy_us / r.conn_proxy_us
                )),
            r.conn_bench_us,
        );
    }
    if want("table") {
        println!();
        println!("| Services | build s | one change p50 us | p99 us |");
        println!("|---|---|---|---|");
        for n in [1_000, 10_000, 100_000] {
            let (p50, p99, build) = table_update(n, 400)?;
            println!("| {n} (core) | {build:.2} | {p50:.1} | {p99:.1} |");
        }
        let (p50, p99) = shell_update(&rt, 1_000, 200)?;
        println!("| 1000 (shell: apply + fan-out to 2 shards) | - | {p50:.1} | {p99:.1} |");
    }
    Ok(())
}
