//! The I/O shell: per-shard `SO_REUSEPORT` UDP and TCP sockets on one port, each shard
//! answering from the shared [`ClusterZone`] through [`handle_query`], forwarding names
//! outside the zone to the upstreams with a bounded timeout.
//!
//! Bounds: one receive buffer per shard; at most `max_forwards_per_shard` forwards in
//! flight per shard (more get SERVFAIL at once); at most `max_tcp_connections_per_shard`
//! TCP connections per shard (more are closed at once); a TCP connection idle for
//! `tcp_idle_timeout` is closed; each upstream attempt is bounded by `forward_timeout` and
//! at most [`MAX_UPSTREAMS`] are tried.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use parking_lot::RwLock;
use shards::ShardHandle;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};

use super::error::{ConfigError, ServeError};
use super::message::{
    DEFAULT_MAX_UDP_PAYLOAD, HandlerConfig, Outcome, Transport, UDP_MIN_PAYLOAD, error_reply,
    handle_query, packet_id, reply_rcode,
};
use super::metrics::{DnsMetrics, Event};
use super::resolv::MAX_UPSTREAMS;
use super::zone::ClusterZone;

/// The zone as the shards share it: the informer writes, every shard reads (a read lock is
/// held only while one answer is built).
pub type SharedZone = Arc<RwLock<ClusterZone>>;

/// Largest UDP query we read; longer datagrams arrive cut and are answered FORMERR.
const UDP_RECV_BUFFER: usize = 4096;
/// How many attempts are made to find a port free for both UDP and TCP when port 0 is asked.
const BIND_ATTEMPTS: usize = 8;
/// Stray datagrams (wrong id) tolerated on one upstream socket before giving up on it.
const MAX_STRAY_REPLIES: usize = 8;

/// The server's settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP and TCP listen address (same port for both); port 0 picks a free one.
    pub listen: SocketAddr,
    /// Upstream resolvers for names outside the zone; empty = refuse them.
    pub upstreams: Vec<SocketAddr>,
    /// Time limit of one upstream attempt.
    pub forward_timeout: Duration,
    /// Largest UDP response sent (client EDNS sizes are clamped to it).
    pub max_udp_payload: u16,
    /// Concurrent forwards per shard.
    pub max_forwards_per_shard: usize,
    /// Concurrent TCP connections per shard.
    pub max_tcp_connections_per_shard: usize,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl ServerConfig {
    /// Defaults around `listen`: no upstreams, 2 s forward timeout, 1232-byte UDP payload,
    /// 256 forwards and 256 TCP connections per shard, 10 s TCP idle timeout.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            upstreams: Vec::new(),
            forward_timeout: Duration::from_secs(2),
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            max_forwards_per_shard: 256,
            max_tcp_connections_per_shard: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name, reason| Err(ConfigError::InvalidLimit { name, reason });
        if self.max_udp_payload < UDP_MIN_PAYLOAD {
            return bad("max_udp_payload", "must be at least 512");
        }
        if self.max_forwards_per_shard == 0 || self.max_tcp_connections_per_shard == 0 {
            return bad("max_*_per_shard", "must be at least 1");
        }
        if self.forward_timeout.is_zero() || self.tcp_idle_timeout.is_zero() {
            return bad("timeouts", "must be positive");
        }
        Ok(())
    }
}

struct Ctx {
    zone: SharedZone,
    handler: HandlerConfig,
    metrics: Arc<DnsMetrics>,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
    max_forwards: usize,
    max_tcp: usize,
    tcp_idle: Duration,
}

impl Ctx {
    fn answer(&self, packet: &[u8], transport: Transport) -> Outcome {
        let zone = self.zone.read();
        handle_query(&zone, &self.handler, packet, transport, &self.metrics)
    }

    fn servfail(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.metrics.response(ResponseCode::ServFail);
        error_reply(packet, ResponseCode::ServFail, self.handler.forwarding)
    }
}

/// A running DNS server. Dropping it (or [`stop`](Self::stop)) stops its tasks on every
/// shard; the shards themselves keep running.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    metrics: Arc<DnsMetrics>,
    stop: watch::Sender<bool>,
}

impl DnsServer {
    /// Binds the per-shard UDP and TCP sockets and starts serving `zone` on every shard of
    /// `shards`.
    pub async fn start(
        shards: &ShardHandle,
        zone: SharedZone,
        cfg: ServerConfig,
    ) -> Result<Self, ServeError> {
        cfg.validate()?;
        let n = shards.shard_count();
        let (addr, udp, tcp) = bind_both(cfg.listen, n)?;
        // A resolver that forwards to itself would loop until the timeout.
        let upstreams: Vec<SocketAddr> = cfg
            .upstreams
            .iter()
            .copied()
            .filter(|u| *u != addr)
            .take(MAX_UPSTREAMS)
            .collect();
        let metrics = Arc::new(DnsMetrics::default());
        let ctx = Arc::new(Ctx {
            zone,
            handler: HandlerConfig {
                max_udp_payload: cfg.max_udp_payload,
                forwarding: !upstreams.is_empty(),
            },
            metrics: metrics.clone(),
            upstreams,
            forward_timeout: cfg.forward_timeout,
            max_forwards: cfg.max_forwards_per_shard,
            max_tcp: cfg.max_tcp_connections_per_shard,
            tcp_idle: cfg.tcp_idle_timeout,
        });
        let (stop, stop_rx) = watch::channel(false);
        for ((shard, u), t) in shards.shard_ids().zip(udp).zip(tcp) {
            let ctx = ctx.clone();
            let stop_rx = stop_rx.clone();
            shards
                .invoke_on(shard, move || async move {
                    let u = UdpSocket::from_std(u)?;
                    let t = TcpListener::from_std(t)?;
                    tokio::task::spawn_local(serve_udp(u, ctx.clone(), stop_rx.clone()));
                    tokio::task::spawn_local(serve_tcp(t, ctx, stop_rx));
                    Ok::<(), std::io::Error>(())
                })
                .await??;
        }
        tracing::info!(%addr, shards = n, "cluster DNS listening (UDP and TCP)");
        Ok(Self {
            addr,
            metrics,
            stop,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<DnsMetrics> {
        &self.metrics
    }

    /// Stops accepting and answering on every shard (connections in progress end at their
    /// next read).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

type Bound = (
    SocketAddr,
    Vec<std::net::UdpSocket>,
    Vec<std::net::TcpListener>,
);

/// Binds `n` UDP sockets and `n` TCP listeners on one port. With port 0 the UDP bind picks
/// the port and TCP follows it; if TCP finds it taken, a new port is tried (bounded).
fn bind_both(listen: SocketAddr, n: usize) -> Result<Bound, ServeError> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let (addr, udp) =
            shards::listen::bind_udp(listen, n).map_err(|source| ServeError::Listen {
                addr: listen,
                source,
            })?;
        match shards::listen::bind_tcp(addr, n, shards::listen::DEFAULT_BACKLOG) {
            Ok((_, tcp)) => return Ok((addr, udp, tcp)),
            Err(source) if listen.port() == 0 => last = Some(ServeError::Listen { addr, source }),
            Err(source) => return Err(ServeError::Listen { addr, source }),
        }
    }
    Err(
        last.unwrap_or(ServeError::Config(ConfigError::InvalidLimit {
            name: "listen",
            reason: "no port free for both UDP and TCP",
        })),
    )
}

// === UDP ===

/// Datagrams received (and replies sent) per system call: one `recvmmsg` drains up to this
/// many queries, and their answers leave in one `sendmmsg`.
pub const UDP_BATCH: usize = 32;

/// One received datagram of a batch: its length in its buffer, and the sender.
type Received = (usize, Option<SockaddrStorage>);

/// Receives up to `bufs.len()` datagrams with one `recvmmsg(MSG_DONTWAIT)`. `WouldBlock`
/// when none is queued.
fn recv_batch(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [Vec<u8>],
) -> std::io::Result<Vec<Received>> {
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
        .collect();
    let res = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
        .map_err(std::io::Error::from)?;
    Ok(res.map(|m| (m.bytes, m.address)).collect())
}

/// Sends every reply with as few `sendmmsg` calls as the socket takes; what the socket
/// refuses (a full send buffer) is dropped, as a lost datagram (the client retries).
fn send_batch(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[(Vec<u8>, SockaddrStorage)],
) -> usize {
    let mut sent = 0;
    // Each call sends a prefix; bounded by the batch size since every call sends >= 1.
    while sent < replies.len() {
        let rest = &replies[sent..];
        let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = rest.iter().map(|(_, a)| Some(*a)).collect();
        match sendmmsg(fd, headers, iovs.iter(), &addrs, [], MsgFlags::MSG_DONTWAIT) {
            Ok(r) => {
                let n = r.count();
                if n == 0 {
                    break;
                }
                sent += n;
            }
            Err(_) => break,
        }
    }
    sent
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
        .or_else(|| {
            a.as_sockaddr_in6()
                .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
        })
}

async fn serve_udp(sock: UdpSocket, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let sock = Rc::new(sock);
    let fd = sock.as_raw_fd();
    let forwards = Arc::new(Semaphore::new(ctx.max_forwards));
    let mut bufs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| vec![0u8; UDP_RECV_BUFFER]).collect();
    let mut rx_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut tx_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut replies: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
    loop {
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::debug!(error = %e, "DNS UDP readiness");
                continue;
            },
            _ = stop.changed() => return,
        }
        // `try_io` notes the readiness before the call: clearing it on EAGAIN loses nothing.
        let got = match sock.try_io(Interest::READABLE, || {
            recv_batch(fd, &mut rx_headers, &mut bufs)
        }) {
            Ok(g) => g,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive");
                continue;
            }
        };
        replies.clear();
        for (i, (len, from)) in got.into_iter().enumerate() {
            let (Some(from), Some(buf)) = (from, bufs.get(i)) else {
                continue;
            };
            let packet = &buf[..len.min(buf.len())];
            let Some(peer) = std_addr(&from) else {
                continue;
            };
            match ctx.answer(packet, Transport::Udp) {
                Outcome::Reply(bytes) => replies.push((bytes, from)),
                Outcome::Drop => {}
                Outcome::Forward => match forwards.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (sock, ctx, packet) = (sock.clone(), ctx.clone(), packet.to_vec());
                        tokio::task::spawn_local(async move {
                            let reply = match forward_udp(&ctx, &packet).await {
                                Some(r) => Some(r),
                                None => {
                                    ctx.metrics.event(Event::ForwardFailed);
                                    ctx.servfail(&packet)
                                }
                            };
                            if let Some(r) = reply {
                                let _ = sock.send_to(&r, peer).await;
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        ctx.metrics.event(Event::ForwardOverload);
                        if let Some(r) = ctx.servfail(packet) {
                            replies.push((r, from));
                        }
                    }
                },
            }
        }
        if !replies.is_empty() {
            let sent = send_batch(fd, &mut tx_headers, &replies);
            // Whatever a full send buffer refused goes out one by one, waiting for room.
            for (bytes, to) in replies.drain(..).skip(sent) {
                if let Some(peer) = std_addr(&to) {
                    let _ = sock.send_to(&bytes, peer).await;
                }
            }
        }
    }
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Marks a relayed reply "recursion available": we did recurse, through the upstream.
fn set_ra(reply: &mut [u8]) {
    if let Some(b) = reply.get_mut(3) {
        *b |= 0x80;
    }
}

/// Tries each upstream in turn; the first reply wins. `None` when all fail.
async fn forward_udp(ctx: &Ctx, packet: &[u8]) -> Option<Vec<u8>> {
    let id = packet_id(packet)?;
    for up in &ctx.upstreams {
        match udp_exchange(*up, packet, id, ctx.forward_timeout).await {
            Ok(mut reply) => {
                if let Some(rc) = reply_rcode(&reply) {
                    ctx.metrics.response(rc);
                }
                set_ra(&mut reply);
                return Some(reply);
            }
            Err(e) => tracing::debug!(upstream = %up, error = %e, "DNS forward over UDP failed"),
        }
    }
    None
}

async fn udp_exchange(
    up: SocketAddr,
    packet: &[u8],
    id: u16,
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let sock = UdpSocket::bind(unspecified_for(&up)).await?;
    sock.connect(up).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    for _ in 0..MAX_STRAY_REPLIES {
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timeout"))??;
        if packet_id(&buf[..n]) == Some(id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
    Err(std::io::Error::other(
        "too many stray replies from upstream",
    ))
}

// === TCP ===

async fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let conns = Arc::new(Semaphore::new(ctx.max_tcp));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            ctx.metrics.event(Event::TcpRejected);
            drop(stream);
            continue;
        };
        ctx.metrics.event(Event::TcpAccepted);
        let (ctx, mut stop) = (ctx.clone(), stop.clone());
        tokio::task::spawn_local(async move {
            tokio::select! {
                () = serve_tcp_conn(stream, &ctx) => {}
                _ = stop.changed() => {}
            }
            drop(permit);
        });
    }
}

async fn read_frame(stream: &mut TcpStream, idle: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + idle;
    let len = timeout_at(deadline, stream.read_u16()).await.ok()?.ok()?;
    if len == 0 {
        return None;
    }
    let mut buf = vec![0u8; usize::from(len)];
    timeout_at(deadline, stream.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn serve_tcp_conn(mut stream: TcpStream, ctx: &Ctx) {
    let _ = stream.set_nodelay(true);
    // Queries on one connection are answered in order (RFC 7766 allows it).
    while let Some(packet) = read_frame(&mut stream, ctx.tcp_idle).await {
        let reply = match ctx.answer(&packet, Transport::Tcp) {
            Outcome::Reply(r) => Some(r),
            Outcome::Drop => None,
            Outcome::Forward => match forward_tcp(ctx, &packet).await {
                Some(r) => Some(r),
                None => {
                    ctx.metrics.event(Event::ForwardFailed);
                    ctx.servfail(&packet)
                }
            },
        };
        if let Some(r) = reply
            && write_frame(&mut stream, &r).await.is_err()
        {
            return;
        }
    }
}

async fn forward_tcp(ctx: &Ctx, packet: &[u8]) -> Option<Vec<u8>> {
    for up in &ctx.upstreams {
        let attempt = async {
            let mut s = TcpStream::connect(up).await?;
            write_frame(&mut s, packet).await?;
            let len = s.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match timeout(ctx.forward_timeout, attempt).await {
            Ok(Ok(mut reply)) => {
                if let Some(rc) = reply_rcode(&reply) {
                    ctx.metrics.response(rc);
                }
                set_ra(&mut reply);
                return Some(reply);
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %up, error = %e, "DNS forward over TCP failed")
            }
            Err(_) => tracing::debug!(upstream = %up, "DNS forward over TCP timed out"),
        }
    }
    None
}
