//! The kernel data path (sockmap + sk_skb verdict program) with real sockets on loopback:
//! Service VIPs 10.96.78.x on `lo`, plain loopback backends. Needs root (VIPs, BPF); without
//! it each test says so and passes vacuously. Also the fallback to user space when the maps
//! are full, and the user-space-only setting.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_dp::{Change, Dataplane, DataplaneConfig, ForwardMode, KernelForward};

const T: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root (Service VIPs on lo, BPF)");
        false
    }
}

fn svc(name: &str, vip: &str) -> Service {
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
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(svc: &str, port: u16) -> Change {
    Change::Slice(Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-{port}")),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                svc.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("p".into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: vec![Endpoint {
            addresses: vec!["127.0.0.1".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Default::default()
        }],
    }))
}

/// A dataplane with one Service at 10.96.78.`last`:80 -> 127.0.0.1:`port`, on its own
/// current-thread runtime (returned so it outlives the test's blocking sockets).
fn dataplane(
    cfg: DataplaneConfig,
    last: u8,
    port: u16,
) -> (tokio::runtime::Runtime, Dataplane, SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let name = format!("k{last}");
    let dp = rt.block_on(async {
        let dp = Dataplane::start(
            cfg.node_name("n1")
                .shards(2)
                .connect_timeout(Duration::from_millis(500)),
        )
        .await
        .expect("start dataplane");
        dp.apply([
            Change::Service(Arc::new(svc(&name, &format!("10.96.78.{last}")))),
            slice(&name, port),
        ])
        .await
        .expect("apply");
        dp
    });
    (
        rt,
        dp,
        SocketAddr::new(IpAddr::from([10, 96, 78, last]), 80),
    )
}

fn kernel() -> DataplaneConfig {
    DataplaneConfig::default().kernel_forward(KernelForward::On)
}

/// A backend on threads: per connection, calls `f` with the socket.
fn backend(f: fn(std::net::TcpStream)) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let _ = s.set_read_timeout(Some(T));
            let _ = s.set_write_timeout(Some(T));
            std::thread::spawn(move || f(s));
        }
    });
    port
}

/// Greets first ("hi\n", before the client's bytes: data sent before the proxy put the
/// sockets in the map), echoes until EOF, then sends "bye" and closes.
fn echo(mut s: std::net::TcpStream) {
    let _ = s.write_all(b"hi\n");
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.write_all(b"bye");
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 7) as u8
}

/// Sends `len` pattern bytes, half-closes, and checks the echo plus the trailer that came
/// after the half-close. Returns whether every byte matched.
fn echo_transfer(addr: SocketAddr, len: usize) -> bool {
    let s = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.set_write_timeout(Some(T)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = chunk.len().min(len - off);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(off + k);
            }
            w.write_all(&chunk[..n]).expect("write");
            off += n;
        }
        w.shutdown(std::net::Shutdown::Write).expect("half-close");
    });
    let mut all = Vec::with_capacity(len + 8);
    let mut r = s;
    r.read_to_end(&mut all).expect("read to EOF");
    writer.join().expect("writer");
    let ok = all.len() == len + 6
        && &all[..3] == b"hi\n"
        && all[3..3 + len]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i))
        && &all[3 + len..] == b"bye";
    if !ok {
        let bad = all
            .iter()
            .skip(3)
            .enumerate()
            .position(|(i, b)| i >= len || *b != pattern(i));
        eprintln!(
            "echo of {len} bytes: got {} bytes, head {:?}, first difference at {bad:?}, tail {:?}",
            all.len(),
            &all[..all.len().min(3)],
            &all[all.len().saturating_sub(8)..]
        );
    }
    ok
}

/// Waits until both maps are empty again (closing a socket removes it from them).
fn maps_drain(dp: &Dataplane) -> (usize, usize) {
    let t0 = Instant::now();
    loop {
        let e = dp
            .kernel_map_entries()
            .expect("kernel path on")
            .expect("walk maps");
        if e == (0, 0) || t0.elapsed() > T {
            return e;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Known broken on Linux 6.18 (so not in the default run): in about 1 run in 6, one
/// loopback-segment's worth of bytes (65,483, the loopback MSS) arrives twice in the middle
/// of a 32-48 MiB echo, i.e. the kernel's redirect/backlog path duplicated an skb under
/// send-buffer pressure. Run with `cargo test -p proxy-dp --test kernel_forward -- --ignored`.
/// This is why the kernel path is off by default (see the crate doc).
#[test]
#[ignore = "the kernel duplicates a segment under pressure in ~1 of 6 runs (see the doc)"]
fn large_transfers_arrive_intact_both_ways_and_the_maps_empty_afterwards() {
    if !is_root() {
        return;
    }
    let port = backend(echo);
    let (_rt, dp, addr) = dataplane(kernel(), 1, port);
    assert!(dp.kernel_forwarding());
    let m = dp.metrics();
    let flows = || m.kernel_flows.load(std::sync::atomic::Ordering::Relaxed);
    for len in [1, 100_000, 48 << 20] {
        assert!(echo_transfer(addr, len), "{len} bytes: echo differs");
    }
    assert_eq!(maps_drain(&dp), (0, 0), "sockets left in the maps");
    // Short ones may half-close before the proxy gets to them (then user space takes them);
    // the 48 MiB one is still sending then.
    let before = flows();
    assert!(before >= 1);
    assert!(echo_transfer(addr, 32 << 20), "second big transfer differs");
    assert_eq!(maps_drain(&dp), (0, 0));
    let t0 = Instant::now();
    while flows() == before && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        flows(),
        before + 1,
        "the big transfer did not take the kernel path"
    );
    assert_eq!(m.kernel_full.load(std::sync::atomic::Ordering::Relaxed), 0);
    dp.shutdown().expect("shutdown");
}

/// The backend half-closes first: it sends 3 MiB and its FIN while the client keeps
/// sending; the client sees the data and EOF, then sends 2 MiB more and half-closes; the
/// backend reports what it received.
#[test]
fn half_close_from_the_backend_keeps_the_other_direction() {
    if !is_root() {
        return;
    }
    static GOT: std::sync::Mutex<Option<mpsc::Sender<(usize, bool)>>> = std::sync::Mutex::new(None);
    let (tx, rx) = mpsc::channel();
    *GOT.lock().expect("lock") = Some(tx);
    let port = backend(|mut s| {
        let data: Vec<u8> = (0..3 << 20).map(pattern).collect();
        let _ = s.write_all(&data);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let ok = got.iter().enumerate().all(|(i, b)| *b == pattern(i + 7));
        if let Some(tx) = GOT.lock().expect("lock").as_ref() {
            let _ = tx.send((got.len(), ok));
        }
    });
    let (_rt, dp, addr) = dataplane(kernel(), 2, port);
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to the backend's EOF");
    assert_eq!(got.len(), 3 << 20);
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    // The client's direction is still open after the backend's FIN.
    let more: Vec<u8> = (0..2 << 20).map(|i| pattern(i + 7)).collect();
    s.write_all(&more).expect("write after the peer's FIN");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let (n, ok) = rx.recv_timeout(T).expect("backend report");
    assert_eq!(n, 2 << 20);
    assert!(ok, "bytes after the backend's half-close differ");
    assert_eq!(maps_drain(&dp), (0, 0));
    dp.shutdown().expect("shutdown");
}

/// A reset on either side reaches the other as a reset.
#[test]
fn resets_propagate_both_ways() {
    if !is_root() {
        return;
    }
    // Backend resets after the client's first byte.
    let port = backend(|mut s| {
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let (_rt, dp, addr) = dataplane(kernel(), 3, port);
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(b"x").expect("write");
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "backend reset: want RST at the client, got {r:?}"
    );
    dp.shutdown().expect("shutdown");

    // Client resets; the backend, blocked reading, sees a reset too.
    static SEEN: std::sync::Mutex<Option<mpsc::Sender<String>>> = std::sync::Mutex::new(None);
    let (tx, rx) = mpsc::channel();
    *SEEN.lock().expect("lock") = Some(tx);
    let port = backend(|mut s| {
        let _ = s.write_all(b"ready");
        let mut buf = [0u8; 64];
        let r = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof".to_string(),
                Ok(_) => continue,
                Err(e) => break format!("{:?}", e.kind()),
            }
        };
        if let Some(tx) = SEEN.lock().expect("lock").as_ref() {
            let _ = tx.send(r);
        }
    });
    let (_rt2, dp, addr) = dataplane(kernel(), 4, port);
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).expect("ready");
    s.write_all(b"some").expect("write");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(s);
    let seen = rx.recv_timeout(T).expect("backend report");
    assert_eq!(
        seen, "ConnectionReset",
        "client reset: the backend saw {seen}"
    );
    assert_eq!(maps_drain(&dp), (0, 0));
    dp.shutdown().expect("shutdown");
}

#[test]
fn many_concurrent_flows_are_intact() {
    if !is_root() {
        return;
    }
    let port = backend(echo);
    let (_rt, dp, addr) = dataplane(kernel(), 5, port);
    let hs: Vec<_> = (0..48)
        .map(|i| std::thread::spawn(move || echo_transfer(addr, 64 * 1024 + i * 997)))
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert!(h.join().expect("flow thread"), "flow {i} differs");
    }
    assert_eq!(maps_drain(&dp), (0, 0), "sockets left in the maps");
    // A client that half-closed before the proxy got to its socket (CLOSE_WAIT) cannot be
    // put in a sockmap (EOPNOTSUPP): such flows are forwarded in user space.
    let m = dp.metrics();
    let kernel = m.kernel_flows.load(std::sync::atomic::Ordering::Relaxed);
    let other = m.kernel_errors.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(kernel + other, 48);
    assert!(kernel > 0, "no flow took the kernel path");
    dp.shutdown().expect("shutdown");
}

/// With room for one connection in the maps, a second concurrent one is forwarded in user
/// space (splice), counted, and intact; both paths at once on one dataplane.
#[test]
fn full_maps_fall_back_to_user_space() {
    if !is_root() {
        return;
    }
    let port = backend(echo);
    let (_rt, dp, addr) = dataplane(
        kernel()
            .kernel_max_connections(1)
            .forward_mode(ForwardMode::Splice),
        6,
        port,
    );
    // Hold one connection in the kernel path.
    let mut held = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    held.set_read_timeout(Some(T)).expect("timeout");
    let mut b = [0u8; 3];
    held.read_exact(&mut b).expect("greeting");
    assert_eq!(dp.kernel_map_entries().expect("on").expect("walk"), (2, 2));
    assert!(echo_transfer(addr, 4 << 20), "fallback flow differs");
    let m = dp.metrics();
    assert_eq!(m.kernel_full.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The held one still works.
    held.write_all(b"ping").expect("write");
    let mut p = [0u8; 4];
    held.read_exact(&mut p).expect("echo");
    assert_eq!(&p, b"ping");
    drop(held);
    assert_eq!(maps_drain(&dp), (0, 0));
    dp.shutdown().expect("shutdown");
}

/// `Off` keeps everything in user space, with no maps.
#[test]
fn off_forwards_in_user_space() {
    if !is_root() {
        return;
    }
    let port = backend(echo);
    let (_rt, dp, addr) = dataplane(
        DataplaneConfig::default().kernel_forward(KernelForward::Off),
        7,
        port,
    );
    assert!(!dp.kernel_forwarding());
    assert!(dp.kernel_map_entries().is_none());
    assert!(echo_transfer(addr, 1 << 20));
    assert_eq!(
        dp.metrics()
            .kernel_flows
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    dp.shutdown().expect("shutdown");
}

/// The bench's short-connection job: connect, one byte there and back, the backend closes
/// first. Every one must complete through the kernel path (its FIN waits for the byte).
#[test]
fn short_connections_complete() {
    if !is_root() {
        return;
    }
    let port = backend(|mut s| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    });
    let (_rt, dp, addr) = dataplane(kernel(), 8, port);
    for i in 0..300 {
        let mut s = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(b"x").expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(got, b"x", "connection {i}");
    }
    let m = dp.metrics();
    let o = std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "kernel flows {}, fin waits {}, user space {}",
        m.kernel_flows.load(o),
        m.kernel_fin_waits.load(o),
        m.kernel_errors.load(o)
    );
    assert_eq!(maps_drain(&dp), (0, 0));
    dp.shutdown().expect("shutdown");
}
