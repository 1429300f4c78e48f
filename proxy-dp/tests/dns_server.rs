//! The DNS server end to end: real UDP and TCP sockets on 127.0.0.1, queried with Debian's
//! `dig` (package bind9-dnsutils) and with raw packets built by hickory-proto.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::RwLock;
use proxy_dp::dns::metrics::Event;
use proxy_dp::dns::zone::SERVICE_NAME_LABEL;
use proxy_dp::dns::{ClusterZone, DnsServer, ServerConfig, SharedZone, ZoneConfig};
use shards::{ShardConfig, ShardSet};

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, p)| ServicePort {
                        name: Some((*n).into()),
                        protocol: Some((*proto).into()),
                        port: *p,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn headless_slice(ns: &str, svc: &str, n: u8) -> EndpointSlice {
    let mut m = meta(ns, &format!("{svc}-1"));
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_owned(),
        svc.to_owned(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: (0..n)
            .map(|i| Endpoint {
                addresses: vec![format!("10.2.0.{}", u16::from(i) + 1)],
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("peer".into()),
            port: Some(7000),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn test_zone(zone: &str) -> SharedZone {
    let mut z = ClusterZone::new(ZoneConfig::new(zone, 5).expect("zone"));
    z.apply_service(&service(
        "default",
        "web",
        "10.96.0.10",
        &[("http", "TCP", 80)],
    ));
    z.apply_service(&service("default", "big", "None", &[("peer", "TCP", 7000)]));
    z.apply_endpoint_slice(&headless_slice("default", "big", 100));
    z.apply_service(&service("default", "mid", "None", &[]));
    z.apply_endpoint_slice(&headless_slice("default", "mid", 40));
    Arc::new(RwLock::new(z))
}

struct Running {
    server: DnsServer,
    set: Option<ShardSet>,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(set) = self.set.take() {
            let _ = set.shutdown();
        }
    }
}

async fn start(zone: SharedZone, cfg: ServerConfig) -> Running {
    let set = ShardSet::start(ShardConfig::default().shards(2).pin(false)).expect("shards");
    let server = DnsServer::start(set.handle(), zone, cfg)
        .await
        .expect("dns server");
    Running {
        server,
        set: Some(set),
    }
}

fn local_cfg() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0".parse().expect("addr"))
}

/// Runs dig against `addr` and returns its full output.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian package bind9-dnsutils, listed in scripts/apt-packages.txt)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn udp_exchange(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(wait)).expect("timeout");
    sock.send_to(packet, addr).expect("send");
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn tcp_exchange(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let len = u16::try_from(packet.len()).expect("small");
    s.write_all(&len.to_be_bytes()).expect("write");
    s.write_all(packet).expect("write");
    let mut lb = [0u8; 2];
    s.read_exact(&mut lb).expect("read len");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
    s.read_exact(&mut buf).expect("read msg");
    buf
}

#[tokio::test]
async fn dig_a_srv_nxdomain_nodata() {
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    let out = dig(r.addr(), &["+short", "web.default.svc.cluster.local", "A"]);
    assert_eq!(out.trim(), "10.96.0.10", "{out}");
    let out = dig(
        r.addr(),
        &["+short", "_http._tcp.web.default.svc.cluster.local", "SRV"],
    );
    assert_eq!(
        out.trim(),
        "0 100 80 web.default.svc.cluster.local.",
        "{out}"
    );

    let out = dig(r.addr(), &["nope.default.svc.cluster.local", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "SOA in authority: {out}");
    assert!(
        out.contains("IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{out}"
    );
    assert!(out.contains(" aa"), "authoritative: {out}");

    let out = dig(r.addr(), &["web.default.svc.cluster.local", "AAAA"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "NODATA: {out}"
    );
    assert!(out.contains("AUTHORITY: 1"), "{out}");

    // A zone change is visible to the next query.
    let zone = test_zone("cluster.local");
    let r2 = start(zone.clone(), local_cfg()).await;
    zone.write()
        .apply_service(&service("default", "late", "10.96.0.77", &[]));
    let out = dig(r2.addr(), &["+short", "late.default.svc.cluster.local"]);
    assert_eq!(out.trim(), "10.96.0.77", "{out}");
    zone.write().delete_service("default", "late");
    let out = dig(r2.addr(), &["late.default.svc.cluster.local"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");

    let m = r.server.metrics();
    assert!(m.queries_of(RecordType::A) >= 2);
    assert!(m.responses_of(ResponseCode::NXDomain) >= 1);
    assert!(
        m.render_prometheus()
            .contains("kubeshard_dns_queries_total{type=\"SRV\"} 1")
    );
}

#[tokio::test]
async fn truncation_then_tcp_fallback() {
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    // 100 A records do not fit 512 bytes: TC set, no answers.
    let out = dig(
        r.addr(),
        &["+ignore", "+noedns", "big.default.svc.cluster.local", "A"],
    );
    assert!(out.contains(" tc"), "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    // dig's default retries over TCP on TC and gets them all.
    let out = dig(r.addr(), &["+short", "big.default.svc.cluster.local", "A"]);
    assert_eq!(out.lines().count(), 100, "{out}");
    let out = dig(
        r.addr(),
        &[
            "+tcp",
            "+short",
            "_peer._tcp.big.default.svc.cluster.local",
            "SRV",
        ],
    );
    assert_eq!(out.lines().count(), 100, "{out}");

    // Raw packets: 40 A records (about 700 bytes) are cut at 512 without EDNS and fit with
    // EDNS; 100 (about 1,700 bytes) do not fit even EDNS 4096, clamped to our 1232.
    let q = query("mid.default.svc.cluster.local.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    let reply = udp_exchange(r.addr(), &q, Duration::from_secs(3)).expect("udp reply");
    assert!(reply.len() <= 512);
    let m = Message::from_vec(&reply).expect("decode");
    assert!(m.metadata.truncation && m.answers.is_empty());
    let q = query("mid.default.svc.cluster.local.", RecordType::A, Some(4096))
        .to_vec()
        .expect("encode");
    let reply = udp_exchange(r.addr(), &q, Duration::from_secs(3)).expect("udp reply");
    let m = Message::from_vec(&reply).expect("decode");
    assert!(reply.len() > 512 && reply.len() <= 1232, "{}", reply.len());
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert!(m.edns.is_some(), "OPT echoed");
    let q = query("big.default.svc.cluster.local.", RecordType::A, Some(4096))
        .to_vec()
        .expect("encode");
    let reply = udp_exchange(r.addr(), &q, Duration::from_secs(3)).expect("udp reply");
    assert!(reply.len() <= 1232);
    assert!(
        Message::from_vec(&reply)
            .expect("decode")
            .metadata
            .truncation
    );

    let q = query(
        "_peer._tcp.big.default.svc.cluster.local.",
        RecordType::SRV,
        None,
    );
    let reply = tcp_exchange(r.addr(), &q.to_vec().expect("encode"));
    let m = Message::from_vec(&reply).expect("decode");
    assert_eq!(m.metadata.id, 0x4242);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    assert_eq!(m.additionals.len(), 100);
    assert!(matches!(m.answers[0].data, RData::SRV(_)));
    assert!(r.server.metrics().events_of(Event::Truncated) >= 2);
}

#[tokio::test]
async fn malformed_packets_formerr_or_dropped() {
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    let short = Duration::from_millis(300);
    // Shorter than a header: dropped.
    assert!(udp_exchange(r.addr(), &[1, 2, 3], short).is_none());
    // A response: dropped (no reflection).
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A, None);
    resp.metadata.message_type = MessageType::Response;
    assert!(udp_exchange(r.addr(), &resp.to_vec().expect("encode"), short).is_none());
    // A header announcing a question that is not there: FORMERR with the same id.
    let hdr = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let reply = udp_exchange(r.addr(), &hdr, Duration::from_secs(3)).expect("formerr");
    let m = Message::from_vec(&reply).expect("decode");
    assert_eq!(m.metadata.id, 0xabcd);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Two questions: FORMERR.
    let mut two = query("web.default.svc.cluster.local.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("x.").expect("n"),
        RecordType::A,
    ));
    let reply = udp_exchange(
        r.addr(),
        &two.to_vec().expect("encode"),
        Duration::from_secs(3),
    )
    .expect("reply");
    assert_eq!(
        Message::from_vec(&reply)
            .expect("decode")
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // A label pointer loop: FORMERR, no hang.
    let mut lp = hdr.to_vec();
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let reply = udp_exchange(r.addr(), &lp, Duration::from_secs(3)).expect("reply");
    assert_eq!(
        Message::from_vec(&reply)
            .expect("decode")
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // Not a query opcode: NOTIMP.
    let mut upd = query("web.default.svc.cluster.local.", RecordType::A, None);
    upd.metadata.op_code = OpCode::Status;
    let reply = udp_exchange(
        r.addr(),
        &upd.to_vec().expect("encode"),
        Duration::from_secs(3),
    )
    .expect("reply");
    assert_eq!(
        Message::from_vec(&reply)
            .expect("decode")
            .metadata
            .response_code,
        ResponseCode::NotImp
    );

    // TCP: a frame that promises more than it sends, then a close; a zero-length frame.
    for bytes in [&[0u8, 100, 1, 2, 3][..], &[0u8, 0][..]] {
        let mut s = TcpStream::connect(r.addr()).expect("connect");
        s.write_all(bytes).expect("write");
        drop(s);
    }
    // Still serving, on both transports.
    let out = dig(r.addr(), &["+short", "web.default.svc.cluster.local"]);
    assert_eq!(out.trim(), "10.96.0.10");
    let out = dig(
        r.addr(),
        &["+tcp", "+short", "web.default.svc.cluster.local"],
    );
    assert_eq!(out.trim(), "10.96.0.10");
    let m = r.server.metrics();
    assert!(m.events_of(Event::Dropped) >= 2);
    assert!(m.responses_of(ResponseCode::FormErr) >= 3);
}

/// A UDP socket that receives and never answers: a dead upstream.
fn black_hole() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    (s, a)
}

#[tokio::test]
async fn forwarding_refusing_and_upstream_timeout() {
    // The upstream is another instance serving another zone.
    let upstream = start(test_zone("upstream.test"), local_cfg()).await;
    let mut cfg = local_cfg();
    cfg.upstreams = vec![upstream.addr()];
    let r = start(test_zone("cluster.local"), cfg).await;
    let out = dig(r.addr(), &["+short", "web.default.svc.upstream.test"]);
    assert_eq!(out.trim(), "10.96.0.10", "forwarded over UDP: {out}");
    let out = dig(
        r.addr(),
        &["+tcp", "+short", "web.default.svc.upstream.test"],
    );
    assert_eq!(out.trim(), "10.96.0.10", "forwarded over TCP: {out}");
    let out = dig(r.addr(), &["nope.default.svc.upstream.test"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(
        out.contains(" ra"),
        "recursion available when forwarding: {out}"
    );
    assert!(r.server.metrics().events_of(Event::Forwarded) >= 3);

    // No upstream: names outside the zone are refused.
    let alone = start(test_zone("cluster.local"), local_cfg()).await;
    let out = dig(alone.addr(), &["example.org"]);
    assert!(out.contains("status: REFUSED"), "{out}");

    // A dead upstream: SERVFAIL after the bounded timeout, not a hang.
    let (_hole, hole_addr) = black_hole();
    let mut cfg = local_cfg();
    cfg.upstreams = vec![hole_addr];
    cfg.forward_timeout = Duration::from_millis(300);
    let dead = start(test_zone("cluster.local"), cfg).await;
    let t0 = Instant::now();
    let out = dig(dead.addr(), &["example.org"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(dead.server.metrics().events_of(Event::ForwardFailed), 1);
}

#[tokio::test]
async fn tcp_connections_are_bounded() {
    let mut cfg = local_cfg();
    cfg.max_tcp_connections_per_shard = 1;
    let r = start(test_zone("cluster.local"), cfg).await;
    // Two shards, one connection each: of three idle connections at least one is closed.
    let conns: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(r.addr()).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while r.server.metrics().events_of(Event::TcpRejected) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.server.metrics().events_of(Event::TcpRejected) >= 1);
    drop(conns);
}

#[tokio::test]
async fn reverse_lookups_answer_ptr() {
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    let out = dig(r.addr(), &["+short", "-x", "10.96.0.10"]);
    assert_eq!(out.trim(), "web.default.svc.cluster.local.", "{out}");
    // A headless endpoint's address names the endpoint (hostless: its dashed IP).
    let out = dig(r.addr(), &["+short", "-x", "10.2.0.77"]);
    assert_eq!(
        out.trim(),
        "10-2-0-77.big.default.svc.cluster.local.",
        "{out}"
    );
    // Unknown with no upstream: refused (outside what we serve).
    let out = dig(r.addr(), &["-x", "192.0.2.1"]);
    assert!(out.contains("status: REFUSED"), "{out}");
}

/// Many queries in flight at once from several sockets: every one is answered, with its own
/// id, through the batched receive/send path (bounded: 2 s read timeout per socket).
#[tokio::test]
async fn bursts_of_queries_are_all_answered() {
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    let addr = r.addr();
    let lost = tokio::task::spawn_blocking(move || {
        let mut lost = 0;
        for round in 0..4u16 {
            let socks: Vec<UdpSocket> = (0..4)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                    s.set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    s
                })
                .collect();
            for (k, s) in socks.iter().enumerate() {
                for i in 0..32u16 {
                    let mut q = query("web.default.svc.cluster.local.", RecordType::A, None);
                    q.metadata.id = round * 1000 + u16::try_from(k).expect("k") * 100 + i;
                    s.send_to(&q.to_vec().expect("encode"), addr).expect("send");
                }
            }
            for (k, s) in socks.iter().enumerate() {
                let mut ids = std::collections::BTreeSet::new();
                let mut buf = vec![0u8; 4096];
                while ids.len() < 32 {
                    let Ok(n) = s.recv(&mut buf) else { break };
                    let m = Message::from_vec(&buf[..n]).expect("decode");
                    assert_eq!(m.answers.len(), 1);
                    ids.insert(m.metadata.id);
                }
                let base = round * 1000 + u16::try_from(k).expect("k") * 100;
                let want: std::collections::BTreeSet<u16> = (base..base + 32).collect();
                lost += want.difference(&ids).count();
            }
        }
        lost
    })
    .await
    .expect("client");
    // 512 datagrams on loopback, 128 outstanding at once (well inside the default socket
    // buffers): none may be lost.
    assert_eq!(lost, 0, "answers lost");
}

/// Resolves `short` the way a pod's stub resolver does with the resolv.conf the kubelet
/// writes: fewer dots than `ndots` means each search domain is tried in order, first answer
/// wins. Returns the A addresses and the name that answered.
fn resolve_with_search(addr: SocketAddr, conf: &str, short: &str) -> Option<(String, Vec<String>)> {
    let search: Vec<&str> = conf
        .lines()
        .find_map(|l| l.strip_prefix("search "))
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    let ndots: usize = conf
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .and_then(|o| o.split_whitespace().find_map(|w| w.strip_prefix("ndots:")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut candidates: Vec<String> = Vec::new();
    if short.matches('.').count() >= ndots {
        candidates.push(format!("{short}."));
    }
    candidates.extend(search.iter().map(|d| format!("{short}.{d}.")));
    candidates.push(format!("{short}."));
    for c in candidates {
        let q = query(&c, RecordType::A, None);
        let reply = udp_exchange(addr, &q.to_vec().ok()?, Duration::from_secs(2))?;
        let m = Message::from_vec(&reply).ok()?;
        if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() {
            let ips = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect();
            return Some((c, ips));
        }
    }
    None
}

#[tokio::test]
async fn pod_resolv_conf_search_paths_resolve_short_names() {
    use proxy_dp::dns::resolv::{PodDns, pod_resolv_conf};
    let host = "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";
    let dns: Vec<IpAddr> = vec!["10.96.0.10".parse().expect("ip")];
    let conf = pod_resolv_conf(
        &PodDns {
            namespace: "default",
            ..PodDns::default()
        },
        &dns,
        "cluster.local",
        host,
    );
    assert_eq!(
        conf,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
    );
    // Default: the host's file; hostNetwork + ClusterFirst falls back to it too.
    let d = pod_resolv_conf(
        &PodDns {
            namespace: "default",
            policy: Some("Default"),
            ..PodDns::default()
        },
        &dns,
        "cluster.local",
        host,
    );
    assert_eq!(
        d,
        "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
    );
    let hn = pod_resolv_conf(
        &PodDns {
            namespace: "default",
            host_network: true,
            ..PodDns::default()
        },
        &dns,
        "cluster.local",
        host,
    );
    assert_eq!(hn, d);
    // None + dnsConfig: exactly what was asked; options replace by name.
    let ns = vec!["1.1.1.1".to_string()];
    let se = vec!["a.example".to_string()];
    let op = vec![
        ("ndots".to_string(), Some("2".to_string())),
        ("rotate".to_string(), None),
    ];
    let none = pod_resolv_conf(
        &PodDns {
            namespace: "default",
            policy: Some("None"),
            nameservers: &ns,
            searches: &se,
            options: &op,
            ..PodDns::default()
        },
        &dns,
        "cluster.local",
        host,
    );
    assert_eq!(
        none,
        "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 rotate\n"
    );

    // The search list against the real server: `web` and `web.default` both find the
    // Service; a name in no search domain does not.
    let r = start(test_zone("cluster.local"), local_cfg()).await;
    let addr = r.addr();
    let conf2 = conf.clone();
    let (a, b, c) = tokio::task::spawn_blocking(move || {
        (
            resolve_with_search(addr, &conf2, "web"),
            resolve_with_search(addr, &conf2, "web.default"),
            resolve_with_search(addr, &conf2, "nope"),
        )
    })
    .await
    .expect("resolver");
    assert_eq!(
        a,
        Some((
            "web.default.svc.cluster.local.".to_string(),
            vec!["10.96.0.10".to_string()]
        ))
    );
    assert_eq!(
        b,
        Some((
            "web.default.svc.cluster.local.".to_string(),
            vec!["10.96.0.10".to_string()]
        ))
    );
    assert_eq!(c, None);
}
