//! TCP: accept on a frontend, pick and connect a backend (retrying others within the
//! connect timeout), forward, release.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::forward::{self, set_rst_on_close};
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

fn refuse(client: TcpStream) {
    // Accept-then-RST: the client learns at once (no SYN timeout).
    set_rst_on_close(&client);
    drop(client);
}

/// Accepts on one shard's listener of `f` until the task is aborted (route removed).
pub(crate) async fn accept_loop(f: Frontend, l: TcpListener) {
    let Some(st) = shard_state() else {
        return;
    };
    loop {
        let (client, peer) = match l.accept().await {
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
                let Ok(std) = client.into_std() else {
                    continue;
                };
                let sent = ctx.handle().try_invoke_on(owner, move || async move {
                    if let Ok(c) = TcpStream::from_std(std)
                        && let Some(st) = shard_state()
                    {
                        tokio::task::spawn_local(handle(st, f, c, peer));
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
async fn handle(st: Rc<ShardState>, f: Frontend, client: TcpStream, peer: SocketAddr) {
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
    forward::forward(st.settings.mode, client, backend, &metrics.bytes, &st.pools).await;
    metrics.active.fetch_sub(1, Ordering::Relaxed);
    release(&st, f, addr);
}

/// Connects to a backend (with `TCP_NODELAY`) before `deadline`. On loopback and fast local
/// links the handshake has usually completed by the time the non-blocking `connect`
/// returns `EINPROGRESS` (the SYN-ACK is processed before the call returns): `getpeername`
/// says so, and the connection goes on at once instead of waiting one event-loop round for
/// epoll to report it writable (what `TcpStream::connect` does).
async fn connect_backend(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
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
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    // ENOTCONN while the SYN is unanswered (SYN_SENT) or after a refusal (CLOSE).
    if stream.peer_addr().is_ok() {
        return Ok(stream);
    }
    tokio::time::timeout_at(deadline, stream.writable())
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
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
