//! Per-shard SO_REUSEPORT listeners: one port, every shard accepting on its own.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shards::listen::{DEFAULT_BACKLOG, bind_tcp, bind_udp};
use shards::{ListenError, ShardConfig, ShardId, ShardSet};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[test]
fn port_zero_is_resolved_once_and_shared() {
    let (addr, ls) = bind_tcp(loopback0(), 3, DEFAULT_BACKLOG).expect("bind");
    assert_ne!(addr.port(), 0);
    for l in &ls {
        assert_eq!(l.local_addr().expect("addr"), addr);
    }
    let (uaddr, us) = bind_udp(loopback0(), 2).expect("bind udp");
    assert_ne!(uaddr.port(), 0);
    assert!(us.iter().all(|u| u.local_addr().ok() == Some(uaddr)));
    assert!(matches!(
        bind_tcp(loopback0(), 0, 16),
        Err(ListenError::ZeroCount)
    ));
}

#[test]
fn a_port_held_without_reuseport_is_a_typed_bind_error() {
    let plain = std::net::TcpListener::bind(loopback0()).expect("plain bind");
    let taken = plain.local_addr().expect("addr");
    match bind_tcp(taken, 2, 16) {
        Err(ListenError::Bind { index: 0, .. }) => {}
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[test]
fn tcp_connections_arrive_on_every_shard() {
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let seen: Arc<Mutex<Vec<ShardId>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let addr = rt()
        .block_on(
            set.handle()
                .serve_tcp(loopback0(), move |shard, listener| async move {
                    loop {
                        let Ok((mut s, _)) = listener.accept().await else {
                            return;
                        };
                        if let Ok(mut g) = seen2.lock() {
                            g.push(shard);
                        }
                        // Answer with the shard id, from this shard (a !Send task is fine here).
                        tokio::task::spawn_local(async move {
                            use tokio::io::AsyncWriteExt;
                            let _ = s.write_all(&[shard.0 as u8]).await;
                        });
                    }
                }),
        )
        .expect("serve");
    assert!(addr.ip().is_loopback());
    // The kernel spreads connections by 4-tuple hash: 64 connections from distinct source
    // ports all landing on one of 2 shards has probability 2^-63.
    let mut answered = HashSet::new();
    for _ in 0..64 {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("answer");
        answered.insert(b[0]);
    }
    assert_eq!(
        answered,
        HashSet::from([0u8, 1u8]),
        "both shards accepted connections"
    );
    let seen = seen.lock().map(|g| g.len()).unwrap_or(0);
    assert_eq!(seen, 64);
    set.shutdown().expect("shutdown");
}

#[test]
fn udp_datagrams_arrive_on_every_shard() {
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let addr = rt()
        .block_on(
            set.handle()
                .serve_udp(loopback0(), |shard, sock| async move {
                    let mut buf = [0u8; 64];
                    // Echo each datagram back with the shard id appended.
                    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                        let mut out = buf[..n].to_vec();
                        out.push(shard.0 as u8);
                        let _ = sock.send_to(&out, from).await;
                    }
                }),
        )
        .expect("serve");
    let mut shards_seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..64u8 {
        // A fresh socket (fresh source port) per flow.
        let c = UdpSocket::bind(loopback0()).expect("client");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        c.send_to(&[i], addr).expect("send");
        let mut b = [0u8; 8];
        if let Ok((n, _)) = c.recv_from(&mut b) {
            assert_eq!(n, 2);
            assert_eq!(b[0], i);
            shards_seen.insert(b[1]);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(shards_seen, HashSet::from([0u8, 1u8]));
    set.shutdown().expect("shutdown");
}

#[test]
fn listeners_close_when_the_set_shuts_down() {
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let addr = rt()
        .block_on(set.handle().serve_tcp(loopback0(), |_, l| async move {
            while l.accept().await.is_ok() {}
        }))
        .expect("serve");
    set.shutdown().expect("shutdown");
    // The accept loops were cancelled and the sockets closed: the port refuses connections.
    let r = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    if let Ok(mut s) = r {
        // A connection could only be accepted by a listener still alive; none is, so the
        // peer must be closed.
        let mut b = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let _ = s.write_all(b"x");
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    }
}
