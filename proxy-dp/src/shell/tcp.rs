//! TCP: accept on a frontend, pick and connect a backend (retrying others within the
//! connect timeout), forward, release.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward;
use super::kernel::{self, NotTaken};
use super::{ShardState, shard_state};
use crate::core::Frontend;

/// Backends tried for one connection at most (each within the connect timeout).
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 4;

/// Decrements the shard's connection count when the connection ends, however it ends.
struct ConnSlot(Rc<ShardState>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.conns.set(self.0.conns.get().saturating_sub(1));
    }
}

fn refuse(client: std::net::TcpStream) {
    // Accept-then-RST: the client learns at once (no SYN timeout).
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

/// Accepts on one shard's listener of `f` until the task is aborted (route removed).
/// Accepted sockets are not registered with tokio: the kernel data path watches them on its
/// own epoll set, and only connections forwarded in user space are registered.
pub(crate) async fn accept_loop(f: Frontend, l: AsyncFd<std::net::TcpListener>) {
    let Some(st) = shard_state() else {
        return;
    };
    loop {
        let accepted = match l.readable().await {
            Ok(mut g) => match g.try_io(|l| crate::bpf::accept_nonblocking(l.get_ref())) {
                Ok(r) => r,
                Err(_would_block) => continue,
            },
            Err(e) => Err(e),
        };
        let (client, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE and the like: back off briefly instead of spinning.
                tracing::debug!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Refuse at once when there is nothing to forward to.
        let affinity = {
            let routes = st.routes.borrow();
            match routes.get(&f) {
                Some(r) if !r.balancer.set().is_empty() => r.balancer.set().affinity.is_some(),
                Some(r) => {
                    r.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    refuse(client);
                    continue;
                }
                None => {
                    refuse(client);
                    continue;
                }
            }
        };
        if affinity && let Some(ctx) = shards::ShardContext::current() {
            // ClientIP affinity: the shard owning the client IP decides, so every connection
            // of one client meets the same affinity entry.
            let ip = peer.ip().to_string();
            let owner = shards::shard_for_key(ip.as_bytes(), ctx.count());
            if owner != ctx.id() {
                let sent = ctx.handle().try_invoke_on(owner, move || async move {
                    if let Some(st) = shard_state() {
                        tokio::task::spawn_local(handle(st, f, client, peer));
                    }
                });
                // A full mailbox drops the connection (closed; the client retries).
                if let Ok(fut) = sent {
                    tokio::task::spawn_local(async move {
                        let _ = fut.await;
                    });
                }
                continue;
            }
        }
        tokio::task::spawn_local(handle(Rc::clone(&st), f, client, peer));
    }
}

/// One client connection on this shard.
async fn handle(st: Rc<ShardState>, f: Frontend, client: std::net::TcpStream, peer: SocketAddr) {
    if st.conns.get() >= st.settings.max_conns {
        st.settings
            .metrics
            .conn_table_full
            .fetch_add(1, Ordering::Relaxed);
        refuse(client);
        return;
    }
    st.conns.set(st.conns.get() + 1);
    let _slot = ConnSlot(Rc::clone(&st));
    let deadline = Instant::now() + st.settings.connect_timeout;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let (addr, backend, metrics) = loop {
        let picked = {
            let mut routes = st.routes.borrow_mut();
            let Some(r) = routes.get_mut(&f) else {
                refuse(client);
                return;
            };
            match r.balancer.pick(peer, std::time::Instant::now(), &tried) {
                Some(a) => (a, std::sync::Arc::clone(&r.metrics)),
                None => {
                    r.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    drop(routes);
                    refuse(client);
                    return;
                }
            }
        };
        let (addr, m) = picked;
        match connect_backend(addr, deadline).await {
            Ok(s) => break (addr, s, m),
            Err(_) => {
                m.connect_errors.fetch_add(1, Ordering::Relaxed);
                release(&st, f, addr);
                tried.push(addr);
                if Instant::now() >= deadline || tried.len() >= MAX_CONNECT_ATTEMPTS {
                    m.refused.fetch_add(1, Ordering::Relaxed);
                    refuse(client);
                    return;
                }
            }
        }
    };
    // The client socket has TCP_NODELAY from its listener already, the backend from
    // `connect_backend`.
    metrics.active.fetch_add(1, Ordering::Relaxed);
    metrics.total.fetch_add(1, Ordering::Relaxed);
    let mut pair = Some((client, backend));
    if let Some(k) = st.kernel.as_ref()
        && let Some((c, b)) = pair.take()
    {
        let m = &st.settings.metrics;
        match kernel::forward(k, c, b, &metrics.bytes, &m.kernel_fin_waits).await {
            Ok(_) => {
                m.kernel_flows.fetch_add(1, Ordering::Relaxed);
            }
            Err(NotTaken::Full(c, b)) => {
                m.kernel_full.fetch_add(1, Ordering::Relaxed);
                pair = Some((c, b));
            }
            Err(NotTaken::Failed(c, b, e)) => {
                m.kernel_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "kernel path refused a connection");
                pair = Some((c, b));
            }
        }
    }
    if let Some((c, b)) = pair {
        // The client's first bytes go on before tokio learns of either socket (see
        // `forward::first_bytes`); a reset while doing so resets both sides.
        let first = if st.settings.first_bytes {
            forward::first_bytes(&c, &b, &st.pools, &metrics.bytes)
        } else {
            Ok(Vec::new())
        };
        match first {
            Err(_) => {
                refuse(b);
                refuse(c);
            }
            Ok(rest) => {
                if let (Ok(client), Ok(mut backend)) =
                    (TcpStream::from_std(c), TcpStream::from_std(b))
                {
                    let sent = rest.is_empty() || {
                        use tokio::io::AsyncWriteExt as _;
                        let ok = backend.write_all(&rest).await.is_ok();
                        if ok {
                            metrics
                                .bytes
                                .fetch_add(rest.len() as u64, Ordering::Relaxed);
                        }
                        ok
                    };
                    if sent {
                        forward::forward(
                            st.settings.mode,
                            client,
                            backend,
                            &metrics.bytes,
                            &st.pools,
                        )
                        .await;
                    } else {
                        forward::set_rst_on_close(&client);
                        forward::set_rst_on_close(&backend);
                    }
                }
            }
        }
    }
    metrics.active.fetch_sub(1, Ordering::Relaxed);
    release(&st, f, addr);
}

/// Connects to a backend (with `TCP_NODELAY`) before `deadline`. On loopback and fast local
/// links the handshake has usually completed by the time the non-blocking `connect`
/// returns `EINPROGRESS` (the SYN-ACK is processed before the call returns): `getpeername`
/// says so, and the connection goes on at once instead of waiting one event-loop round for
/// epoll to report it writable (what `TcpStream::connect` does).
async fn connect_backend(
    addr: SocketAddr,
    deadline: Instant,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = std::net::TcpStream::from(s);
    // ENOTCONN while the SYN is unanswered (SYN_SENT) or after a refusal (CLOSE).
    if stream.peer_addr().is_ok() {
        return Ok(stream);
    }
    // Registered with tokio only while waiting (dropping the AsyncFd deregisters it).
    let afd = crate::bpf::async_fd(stream, tokio::io::Interest::WRITABLE)?;
    tokio::time::timeout_at(deadline, afd.writable())
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
        .retain_ready();
    let stream = afd.into_inner();
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

fn release(st: &ShardState, f: Frontend, addr: SocketAddr) {
    if let Some(r) = st.routes.borrow_mut().get_mut(&f) {
        r.balancer.release(addr);
    }
}
