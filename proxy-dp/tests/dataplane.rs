//! The forwarding shell with real sockets on loopback: Service VIPs (10.96.77.x) on `lo`,
//! plain loopback backend servers, connections through the VIPs and a NodePort.
//! Needs root (to add the VIPs); without it each test says so and passes vacuously.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::{Change, Dataplane, DataplaneConfig, ForwardMode, KernelForward};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root to add Service VIPs to lo");
        false
    }
}

fn svc(name: &str, vip: &str, port: i32, proto: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ips: Some(vec![vip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("p".into()),
                port,
                protocol: Some(proto.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Loopback backends differ by port, and a slice has one port list; so each backend gets its
/// own slice `svc-<port>` with one endpoint 127.0.0.1.
fn slices(svc: &str, proto: &str, eps: &[(u16, bool)]) -> Vec<Change> {
    slices_at(svc, proto, "IPv4", "127.0.0.1", eps)
}

/// [`slices`] with endpoints at `addr` of family `family` ("IPv4" or "IPv6").
fn slices_at(svc: &str, proto: &str, family: &str, addr: &str, eps: &[(u16, bool)]) -> Vec<Change> {
    eps.iter()
        .map(|(port, ready)| {
            let s = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{svc}-{port}")),
                    namespace: Some("default".into()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/service-name".to_string(),
                        svc.to_string(),
                    )])),
                    ..Default::default()
                },
                address_type: family.into(),
                ports: Some(vec![EndpointPort {
                    name: Some("p".into()),
                    port: Some(i32::from(*port)),
                    protocol: Some(proto.into()),
                    ..Default::default()
                }]),
                endpoints: vec![Endpoint {
                    addresses: vec![addr.into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    node_name: Some("n1".into()),
                    ..Default::default()
                }],
            };
            Change::Slice(Arc::new(s))
        })
        .collect()
}

/// A TCP backend on 127.0.0.1: sends its id line, then echoes until EOF, then sends "bye"
/// and closes (so a half-close from the client is visible).
async fn tcp_backend(id: usize) -> (u16, tokio::task::JoinHandle<()>) {
    tcp_backend_on("127.0.0.1:0", id).await
}

/// [`tcp_backend`] bound to `bind` (e.g. `[::1]:0`).
async fn tcp_backend_on(bind: &str, id: usize) -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind(bind).await.expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("b{id}\n").as_bytes()).await;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, h)
}

/// A dataplane forwarding TCP in user space with `mode` (the kernel path has its own tests
/// in `kernel_forward.rs`).
async fn dataplane(mode: ForwardMode) -> Dataplane {
    Dataplane::start(
        DataplaneConfig::default()
            .node_name("n1")
            .shards(2)
            .forward_mode(mode)
            .kernel_forward(KernelForward::Off)
            .connect_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("start dataplane")
}

/// Connects and reads the backend's id line.
async fn which(addr: SocketAddr) -> String {
    let mut s = tokio::time::timeout(T, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while tokio::time::timeout(T, s.read(&mut b))
        .await
        .expect("read in time")
        .expect("read")
        == 1
    {
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf8")
}

fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 96, 77, last]), port)
}

#[tokio::test]
async fn round_robin_reaches_every_ready_endpoint_and_unready_stops_at_once() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    let mut ports = Vec::new();
    for i in 0..3 {
        ports.push(tcp_backend(i).await.0);
    }
    let mut changes = vec![Change::Service(Arc::new(svc(
        "rr",
        "10.96.77.1",
        80,
        "TCP",
    )))];
    changes.extend(slices(
        "rr",
        "TCP",
        &[(ports[0], true), (ports[1], true), (ports[2], true)],
    ));
    dp.apply(changes).await.expect("apply");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        *seen.entry(which(vip(1, 80)).await).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every backend reached: {seen:?}");
    assert!(seen.values().all(|n| *n >= 2), "{seen:?}");

    // b1 turns unready: the table change is in force when `apply` returns, within ms.
    let t0 = Instant::now();
    dp.apply(slices("rr", "TCP", &[(ports[1], false)]))
        .await
        .expect("apply");
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(100), "update took {took:?}");
    for _ in 0..12 {
        assert_ne!(which(vip(1, 80)).await, "b1");
    }
}

#[tokio::test]
async fn session_affinity_sticks_across_connections() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    let mut ports = Vec::new();
    for i in 0..3 {
        ports.push(tcp_backend(i).await.0);
    }
    let mut s = svc("aff", "10.96.77.2", 80, "TCP");
    let spec = s.spec.as_mut().expect("spec");
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(60),
        }),
    });
    let mut changes = vec![Change::Service(Arc::new(s))];
    changes.extend(slices(
        "aff",
        "TCP",
        &[(ports[0], true), (ports[1], true), (ports[2], true)],
    ));
    dp.apply(changes).await.expect("apply");
    let first = which(vip(2, 80)).await;
    for _ in 0..10 {
        assert_eq!(which(vip(2, 80)).await, first);
    }
}

/// Writes `len` bytes of a pattern while reading the echo; returns (echo bytes equal?, trailer).
async fn transfer(addr: SocketAddr, len: usize) -> (bool, Vec<u8>) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let pattern = |i: usize| (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    let writer = tokio::spawn(async move {
        let mut off = 0;
        let mut chunk = vec![0u8; 1 << 20];
        while off < len {
            let n = chunk.len().min(len - off);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(off + k);
            }
            w.write_all(&chunk[..n]).await.expect("write");
            off += n;
        }
        w.shutdown().await.expect("half-close");
        w
    });
    let mut all = Vec::with_capacity(len + 16);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut all))
        .await
        .expect("transfer in time")
        .expect("read");
    let _w = writer.await.expect("writer");
    let nl = all.iter().position(|b| *b == b'\n').expect("id line");
    let body = &all[nl + 1..];
    if body.len() < len {
        return (false, Vec::new());
    }
    let ok = body[..len]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i));
    (ok, body[len..].to_vec())
}

#[tokio::test]
async fn big_transfer_is_byte_identical_both_ways_with_half_close_in_every_mode() {
    if !is_root() {
        return;
    }
    for (i, (mode, len)) in [
        (ForwardMode::Splice, 64 << 20),
        (ForwardMode::UringSplice, 8 << 20),
        (ForwardMode::Copy, 8 << 20),
        (ForwardMode::Adaptive, 32 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let dp = dataplane(mode).await;
        let (port, _h) = tcp_backend(7).await;
        let last = 10 + i as u8;
        let mut changes = vec![Change::Service(Arc::new(svc(
            "big",
            &format!("10.96.77.{last}"),
            80,
            "TCP",
        )))];
        changes.extend(slices("big", "TCP", &[(port, true)]));
        dp.apply(changes).await.expect("apply");
        let (ok, trailer) = transfer(vip(last, 80), len).await;
        assert!(ok, "{mode:?}: echo differs");
        // "bye" came after our half-close reached the backend: the other direction lived on.
        assert_eq!(trailer, b"bye", "{mode:?}");
        dp.shutdown().expect("shutdown");
    }
}

#[tokio::test]
async fn no_endpoints_refuse_promptly_and_dead_backends_are_retried() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    dp.apply([Change::Service(Arc::new(svc(
        "empty",
        "10.96.77.3",
        80,
        "TCP",
    )))])
    .await
    .expect("apply");
    let t0 = Instant::now();
    // Accept-then-RST: on loopback the reset may already fail the connect, or the first read.
    let r = match tokio::time::timeout(T, TcpStream::connect(vip(3, 80)))
        .await
        .expect("in time")
    {
        Err(e) => Err(e),
        Ok(mut s) => {
            let mut b = [0u8; 1];
            tokio::time::timeout(T, s.read(&mut b))
                .await
                .expect("in time")
        }
    };
    let took = t0.elapsed();
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "want RST, got {r:?}"
    );
    assert!(took < Duration::from_millis(100), "refused after {took:?}");

    // One dead backend (closed port) and one live one: every connection reaches the live one.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (live, _h) = tcp_backend(1).await;
    dp.apply(slices("empty", "TCP", &[(dead, true), (live, true)]))
        .await
        .expect("apply");
    for _ in 0..6 {
        assert_eq!(which(vip(3, 80)).await, "b1");
    }
    let m = dp
        .metrics()
        .service_metrics(&proxy_dp::core::ServiceKey::new("default", "empty"))
        .expect("metrics");
    assert!(m.connect_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(m.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn udp_request_response_through_a_vip() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    let backend = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = backend.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = backend.send_to(&reply, from).await;
        }
    });
    let mut changes = vec![Change::Service(Arc::new(svc(
        "dns",
        "10.96.77.4",
        53,
        "UDP",
    )))];
    changes.extend(slices("dns", "UDP", &[(port, true)]));
    dp.apply(changes).await.expect("apply");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    for i in 0..5 {
        let msg = format!("q{i}");
        client
            .send_to(msg.as_bytes(), vip(4, 53))
            .await
            .expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(T, client.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .expect("recv");
        assert_eq!(from, vip(4, 53), "reply comes from the VIP");
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
    }
}

#[tokio::test]
async fn node_port_and_admin_endpoints() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    let (port, _h) = tcp_backend(5).await;
    let node_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut s = svc("np", "10.96.77.5", 80, "TCP");
    let spec = s.spec.as_mut().expect("spec");
    spec.type_ = Some("NodePort".into());
    spec.ports.as_mut().expect("ports")[0].node_port = Some(i32::from(node_port));
    let mut changes = vec![Change::Service(Arc::new(s))];
    changes.extend(slices("np", "TCP", &[(port, true)]));
    dp.apply(changes).await.expect("apply");
    assert_eq!(
        which(SocketAddr::from(([127, 0, 0, 1], node_port))).await,
        "b5"
    );
    assert_eq!(which(vip(5, 80)).await, "b5");

    let admin = dp
        .serve_admin(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("admin");
    let get = |path: &'static str| async move {
        let mut s = TcpStream::connect(admin).await.expect("admin connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        tokio::time::timeout(T, s.read_to_string(&mut out))
            .await
            .expect("in time")
            .expect("read");
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let m = get("/metrics").await;
    assert!(
        m.contains("kubeshard_proxy_connections_total{namespace=\"default\",service=\"np\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("kubeshard_proxy_table_update_seconds_count 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_backend_reset_reaches_the_client_as_a_reset() {
    if !is_root() {
        return;
    }
    let dp = dataplane(ForwardMode::Splice).await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"b9\n").await;
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await; // wait for the client's byte, then reset
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let mut changes = vec![Change::Service(Arc::new(svc(
        "rst",
        "10.96.77.6",
        80,
        "TCP",
    )))];
    changes.extend(slices("rst", "TCP", &[(port, true)]));
    dp.apply(changes).await.expect("apply");
    let mut s = TcpStream::connect(vip(6, 80)).await.expect("connect");
    let mut line = [0u8; 3];
    s.read_exact(&mut line).await.expect("id");
    s.write_all(b"x").await.expect("write");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("in time");
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "want RST, got {r:?}"
    );
}

/// A sink backend on blocking threads (the bench's): reads until EOF, then replies with the
/// byte count (8 bytes, little endian) and closes. It sends nothing before the client's EOF.
/// Its receive buffer is small (16 KiB, inherited by accepted sockets) and it reads 4 KiB at
/// a time, so the proxy's writes toward it keep finding the send buffer full (EAGAIN) and
/// waiting for write space: the cycle whose wake-up the first io_uring engine could lose.
fn sink_backend() -> u16 {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind sink");
    sock.listen(64).expect("listen");
    let l: std::net::TcpListener = sock.into();
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 4096];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_le_bytes());
            });
        }
    });
    port
}

/// The bench's bulk job, bounded: 1 MiB writes for `dur`, half-close, read the sink's count.
/// Every step has a socket timeout, so a stalled engine fails the test instead of hanging it.
fn bulk_to_sink(addr: SocketAddr, dur: Duration) -> std::io::Result<(u64, u64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, T)?;
    s.set_write_timeout(Some(T))?;
    s.set_read_timeout(Some(T))?;
    let buf = vec![7u8; 1 << 20];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < dur {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut c = [0u8; 8];
    s.read_exact(&mut c)?;
    Ok((sent, u64::from_le_bytes(c)))
}

/// The io_uring-splice engine once hung here (the bench's first bulk run). It awaited tokio's
/// readiness, spliced through the ring and, on EAGAIN, cleared the readiness *after* the
/// splice had completed: a write-space edge that arrived meanwhile was cleared with it, and
/// TCP signals write space once per EAGAIN, so the direction waited forever. A slow sink
/// makes that cycle happen thousands of times per run. Each engine must deliver every byte
/// and the reply, twice in a row on one dataplane, within the socket timeouts.
#[test]
fn bulk_into_a_silent_sink_completes_in_every_mode() {
    if !is_root() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = sink_backend();
    for (i, mode) in [
        ForwardMode::UringSplice,
        ForwardMode::Splice,
        ForwardMode::Copy,
        ForwardMode::Adaptive,
    ]
    .into_iter()
    .enumerate()
    {
        let last = 20 + i as u8;
        let dp = rt.block_on(async {
            let dp = dataplane(mode).await;
            let mut changes = vec![Change::Service(Arc::new(svc(
                "sink",
                &format!("10.96.77.{last}"),
                80,
                "TCP",
            )))];
            changes.extend(slices("sink", "TCP", &[(port, true)]));
            dp.apply(changes).await.expect("apply");
            dp
        });
        for run in 0..2 {
            let (sent, counted) = bulk_to_sink(vip(last, 80), Duration::from_millis(500))
                .unwrap_or_else(|e| panic!("{mode:?} run {run}: bulk transfer stalled: {e}"));
            assert_eq!(sent, counted, "{mode:?} run {run}: bytes lost");
        }
        dp.shutdown().expect("shutdown");
    }
}

/// Addresses on `lo` as `ip -6 -o addr show dev lo` lists them.
fn lo_v6_addresses() -> String {
    let out = std::process::Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", "lo"])
        .output()
        .expect("ip -6 addr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An IPv6 ClusterIP: its VIP goes on `lo` (`ip -6` lists it), TCP through it reaches every
/// IPv6 endpoint by round-robin, a large transfer is byte-identical, UDP works through it,
/// and deleting the Service takes the VIP off `lo` again.
#[tokio::test]
async fn ipv6_cluster_ip_forwards_tcp_and_udp_and_its_vip_comes_and_goes() {
    if !is_root() {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: IPv6 is disabled on lo");
        return;
    }
    const VIP6: &str = "fd00:96::77:1";
    let vip6 = |port: u16| SocketAddr::new(VIP6.parse().expect("v6"), port);
    let dp = dataplane(ForwardMode::Adaptive).await;
    let (p1, _h1) = tcp_backend_on("[::1]:0", 61).await;
    let (p2, _h2) = tcp_backend_on("[::1]:0", 62).await;
    let udp = UdpSocket::bind("[::1]:0").await.expect("bind udp6");
    let up = udp.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let mut reply = b"echo6:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from).await;
        }
    });
    let mut changes = vec![
        Change::Service(Arc::new(svc("v6", VIP6, 80, "TCP"))),
        Change::Service(Arc::new(svc("v6u", VIP6, 53, "UDP"))),
    ];
    changes.extend(slices_at(
        "v6",
        "TCP",
        "IPv6",
        "::1",
        &[(p1, true), (p2, true)],
    ));
    changes.extend(slices_at("v6u", "UDP", "IPv6", "::1", &[(up, true)]));
    dp.apply(changes).await.expect("apply");
    assert!(
        lo_v6_addresses().contains(&format!("{VIP6}/128")),
        "VIP on lo: {}",
        lo_v6_addresses()
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        *seen.entry(which(vip6(80)).await).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both IPv6 endpoints reached: {seen:?}");
    let (ok, trailer) = transfer(vip6(80), 4 << 20).await;
    assert!(ok, "echo over IPv6 differs");
    assert_eq!(trailer, b"bye");

    let client = UdpSocket::bind("[::1]:0").await.expect("client6");
    client.send_to(b"q6", vip6(53)).await.expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(T, client.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    assert_eq!(from, vip6(53), "the reply comes from the IPv6 VIP");
    assert_eq!(&buf[..n], b"echo6:q6");

    for name in ["v6", "v6u"] {
        dp.apply([Change::ServiceDeleted {
            namespace: "default".into(),
            name: name.into(),
        }])
        .await
        .expect("delete");
    }
    assert!(
        !lo_v6_addresses().contains(VIP6),
        "VIP still on lo: {}",
        lo_v6_addresses()
    );
    dp.shutdown().expect("shutdown");
}

/// A request/response backend that never speaks first: it reads the request (until `len`
/// bytes, or until EOF when `until_eof`), answers with its length and a checksum
/// ("<len> <sum>\n") and closes. Request lengths and EOFs it saw are counted in `seen`.
async fn request_backend(until_eof: bool, len: usize) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = vec![0u8; 64 * 1024];
                let outcome = loop {
                    if !until_eof && req.len() >= len {
                        break "len";
                    }
                    match s.read(&mut b).await {
                        Ok(0) => break "eof",
                        Ok(n) => req.extend_from_slice(&b[..n]),
                        Err(_) => break "error",
                    }
                };
                let sum = req
                    .iter()
                    .fold(0u64, |a, x| a.wrapping_mul(31) + u64::from(*x));
                let _ = s
                    .write_all(format!("{} {sum}\n", req.len()).as_bytes())
                    .await;
                log.lock()
                    .expect("log")
                    .push(format!("{} {outcome}", req.len()));
            });
        }
    });
    (port, seen)
}

/// Short connections whose client speaks first, in both close orders, through every
/// user-space engine: the proxy sends the client's first bytes on before registering the
/// sockets (`forward::first_bytes`, which must neither lose nor repeat a byte, whatever
/// their size), and the direction that ends last is closed without a `shutdown` (the
/// `close` must send a FIN, not an RST, or the reply is cut or reset).
/// - "backend closes first": request of `len` bytes, the backend answers and closes, the
///   client reads the answer to EOF and closes.
/// - "client half-closes first": request then `shutdown(SHUT_WR)` at once; the backend
///   reads to EOF, answers and closes; the client must read the whole answer and a clean EOF.
#[tokio::test]
async fn client_first_short_connections_in_both_close_orders_in_every_mode() {
    if !is_root() {
        return;
    }
    let modes = [
        ForwardMode::Adaptive,
        ForwardMode::Splice,
        ForwardMode::UringSplice,
        ForwardMode::Copy,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        for (k, half_close) in [false, true].into_iter().enumerate() {
            // 1 byte, a typical request, more than the adaptive buffer, more than a socket
            // buffer takes at once.
            for (j, len) in [1usize, 700, 40_000, 3 << 20].into_iter().enumerate() {
                let (port, seen) = request_backend(half_close, len).await;
                let dp = dataplane(mode).await;
                let last = 40 + (i * 8 + k * 4 + j) as u8;
                let mut changes = vec![Change::Service(Arc::new(svc(
                    "first",
                    &format!("10.96.77.{last}"),
                    80,
                    "TCP",
                )))];
                changes.extend(slices("first", "TCP", &[(port, true)]));
                dp.apply(changes).await.expect("apply");
                let req: Vec<u8> = (0..len).map(|x| (x * 7 + 3) as u8).collect();
                let want_sum = req
                    .iter()
                    .fold(0u64, |a, x| a.wrapping_mul(31) + u64::from(*x));
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let req = req.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut s = TcpStream::connect(vip(last, 80)).await.expect("connect");
                        let (mut r, mut w) = s.split();
                        let write = async {
                            w.write_all(&req).await.expect("write request");
                            if half_close {
                                w.shutdown().await.expect("half-close");
                            }
                        };
                        let mut answer = Vec::new();
                        let read = tokio::time::timeout(T, r.read_to_end(&mut answer));
                        let ((), got) = tokio::join!(write, read);
                        got.expect("answer in time")
                            .expect("answer and a clean EOF");
                        String::from_utf8(answer).expect("utf8")
                    }));
                }
                for t in tasks {
                    let answer = t.await.expect("client");
                    assert_eq!(
                        answer,
                        format!("{len} {want_sum}\n"),
                        "{mode:?} half_close={half_close} len={len}"
                    );
                }
                let want = if half_close { "eof" } else { "len" };
                let log = seen.lock().expect("log").clone();
                assert_eq!(log.len(), 8, "{mode:?} {half_close} {len}: {log:?}");
                assert!(
                    log.iter().all(|l| *l == format!("{len} {want}")),
                    "{mode:?} half_close={half_close} len={len}: backend saw {log:?}"
                );
                dp.shutdown().expect("shutdown");
            }
        }
    }
}
