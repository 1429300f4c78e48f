//! Cluster DNS: the record core (lookups, full packet path, updates) and the UDP server on
//! loopback, side by side with Debian's `unbound` serving the same names as a static local
//! zone (CoreDNS is not packaged by Debian).
//!
//! `cargo bench -p kubeshard-benches --bench dns`
//!
//! The server group sends a bounded number of queries per iteration with a window of
//! outstanding queries over one UDP socket; a lost reply ends its slot after a timeout, so
//! every iteration finishes.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::RwLock;
use proxy_dp::dns::metrics::DnsMetrics;
use proxy_dp::dns::zone::SERVICE_NAME_LABEL;
use proxy_dp::dns::{
    ClusterZone, DnsServer, HandlerConfig, ServerConfig, Transport, ZoneConfig, handle_query,
};
use shards::{ShardConfig, ShardSet};

const SERVICES: u32 = 10_000;
const HEADLESS: u32 = 1_000;
const QUERIES_PER_ITER: usize = 2_000;
const WINDOW: usize = 32;

fn service(ns: &str, name: &str, ip: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn ip_of(i: u32) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

/// 10,000 ClusterIP Services over 100 namespaces and 1,000 headless ones with 10 endpoints.
fn big_zone() -> ClusterZone {
    let mut z = ClusterZone::new(ZoneConfig::cluster_local());
    for i in 0..SERVICES {
        z.apply_service(&service(
            &format!("ns{}", i % 100),
            &format!("svc{i}"),
            &ip_of(i),
        ));
    }
    for i in 0..HEADLESS {
        let ns = format!("ns{}", i % 100);
        z.apply_service(&service(&ns, &format!("hl{i}"), "None"));
        z.apply_endpoint_slice(&slice(&ns, &format!("hl{i}"), i));
    }
    z
}

fn slice(ns: &str, svc: &str, i: u32) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(format!("{svc}-x")),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                svc.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: (0..10)
            .map(|e| Endpoint {
                addresses: vec![format!("10.{}.{}.{}", 100 + i / 250, i % 250, e + 1)],
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
    }
}

fn packet(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    m.to_vec().expect("encode")
}

fn core(c: &mut Criterion) {
    let z = big_zone();
    let mut g = c.benchmark_group("dns_core");
    g.throughput(Throughput::Elements(1));
    let q = Name::from_ascii("svc4242.ns42.svc.cluster.local.").expect("name");
    g.bench_function("lookup_clusterip_a", |b| {
        b.iter(|| black_box(z.lookup(black_box(&q), RecordType::A)))
    });
    let q = Name::from_ascii("hl42.ns42.svc.cluster.local.").expect("name");
    g.bench_function("lookup_headless_a_10", |b| {
        b.iter(|| black_box(z.lookup(black_box(&q), RecordType::A)))
    });
    let q = Name::from_ascii("nope.ns42.svc.cluster.local.").expect("name");
    g.bench_function("lookup_nxdomain", |b| {
        b.iter(|| black_box(z.lookup(black_box(&q), RecordType::A)))
    });
    let metrics = DnsMetrics::default();
    let cfg = HandlerConfig {
        max_udp_payload: 1232,
        forwarding: false,
    };
    let p = packet("svc4242.ns42.svc.cluster.local.", RecordType::A, 1);
    g.bench_function("packet_clusterip_a", |b| {
        b.iter(|| {
            black_box(handle_query(
                &z,
                &cfg,
                black_box(&p),
                Transport::Udp,
                &metrics,
            ))
        })
    });
    drop(g);

    let mut g = c.benchmark_group("dns_update");
    for n in [1_000u32, 10_000, 100_000] {
        let mut z = ClusterZone::new(ZoneConfig::cluster_local());
        for i in 0..n {
            z.apply_service(&service(
                &format!("ns{}", i % 100),
                &format!("svc{i}"),
                &ip_of(i % 60_000),
            ));
        }
        let svc = service("ns7", "svc7", "10.200.0.1");
        g.bench_with_input(BenchmarkId::new("apply_service", n), &n, |b, _| {
            b.iter(|| z.apply_service(black_box(&svc)))
        });
    }
}

/// Sends `n` queries with up to `WINDOW` outstanding; returns replies received.
fn blast(sock: &UdpSocket, server: SocketAddr, queries: &[Vec<u8>], n: usize) -> usize {
    let mut buf = [0u8; 4096];
    let (mut sent, mut done, mut got) = (0usize, 0usize, 0usize);
    while done < n {
        while sent < n && sent - done < WINDOW {
            let q = &queries[sent % queries.len()];
            if sock.send_to(q, server).is_err() {
                done += 1;
            }
            sent += 1;
        }
        match sock.recv(&mut buf) {
            Ok(_) => {
                got += 1;
                done += 1;
            }
            // A lost reply: give up on everything outstanding and refill.
            Err(_) => done = sent,
        }
    }
    got
}

fn unbound_conf(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let mut conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  \
         directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  \
         num-threads: 2\n  so-reuseport: yes\n  module-config: \"iterator\"\n  do-ip6: no\n  \
         access-control: 127.0.0.0/8 allow\n  local-zone: \"cluster.local.\" static\n",
        d = dir.display()
    );
    for i in (0..SERVICES).step_by(10) {
        conf.push_str(&format!(
            "  local-data: \"svc{i}.ns{}.svc.cluster.local. 5 IN A {}\"\n",
            i % 100,
            ip_of(i)
        ));
    }
    conf.push_str("remote-control:\n  control-enable: no\n");
    let path = dir.join("unbound.conf");
    std::fs::write(&path, conf).expect("write unbound.conf");
    path
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(15353)
}

/// Waits (bounded) until `addr` answers a query.
fn wait_ready(sock: &UdpSocket, addr: SocketAddr, q: &[u8]) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let _ = sock.send_to(q, addr);
        if sock.recv(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// Round trips of single queries (one outstanding), after 10% warm-up; (p50, p99) in
/// microseconds. Lost replies are skipped (counted by the caller's q/s run).
fn latency(sock: &UdpSocket, server: SocketAddr, queries: &[Vec<u8>], n: usize) -> (f64, f64) {
    let mut buf = [0u8; 4096];
    let mut v = Vec::with_capacity(n);
    for i in 0..(n + n / 10) {
        let q = &queries[i % queries.len()];
        let t = Instant::now();
        if sock.send_to(q, server).is_err() {
            continue;
        }
        if sock.recv(&mut buf).is_ok() && i >= n / 10 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99))
}

/// Starts kubeshard's server and the peer (unbound), both running for the whole group so
/// they are measured side by side in one run: first
/// the single-query round-trip p50/p99 of each (printed), then criterion's q/s of each.
fn udp_server(c: &mut Criterion) {
    let queries: Vec<Vec<u8>> = (0..SERVICES)
        .step_by(10)
        .map(|i| {
            packet(
                &format!("svc{i}.ns{}.svc.cluster.local.", i % 100),
                RecordType::A,
                (i % 65_000) as u16,
            )
        })
        .collect();
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    // kubeshard: 2 shards (unpinned: the machine is shared).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let set = ShardSet::start(ShardConfig::default().shards(2).pin(false)).expect("shards");
    let zone = Arc::new(RwLock::new(big_zone()));
    let server = rt
        .block_on(DnsServer::start(
            set.handle(),
            zone,
            ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
        ))
        .expect("dns server");
    let mut targets: Vec<(&str, SocketAddr)> = Vec::new();
    let ks = server.local_addr();
    assert!(wait_ready(&client, ks, &queries[0]), "kubeshard dns up");
    targets.push(("kubeshard", ks));

    // unbound, same names as a static local zone, 2 threads.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let conf = unbound_conf(dir.path(), port);
    let _guard = match Command::new("unbound")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => {
            let guard = Killed(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if wait_ready(&client, addr, &queries[0]) {
                targets.push(("unbound", addr));
            } else {
                eprintln!("unbound did not answer on {addr}; skipping the peer");
            }
            Some(guard)
        }
        Err(e) => {
            eprintln!("unbound not runnable ({e}); install Debian's `unbound` for the peer");
            None
        }
    };

    let n = std::env::var("DNS_LATENCY_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    for (name, addr) in &targets {
        let (p50, p99) = latency(&client, *addr, &queries, n);
        eprintln!(
            "dns_udp_loopback/{name}: single-query round trip p50 {p50:.1} us, p99 {p99:.1} us ({n} queries, 1 outstanding)"
        );
    }

    let mut g = c.benchmark_group("dns_udp_loopback");
    g.throughput(Throughput::Elements(QUERIES_PER_ITER as u64));
    g.sample_size(20);
    for (name, addr) in &targets {
        let addr = *addr;
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    black_box(blast(&client, addr, &queries, QUERIES_PER_ITER));
                }
                t0.elapsed()
            })
        });
    }
    g.finish();
    drop(server);
    let _ = set.shutdown();
}

criterion_group!(benches, core, udp_server);
criterion_main!(benches);
