//! Per-shard `SO_REUSEPORT` listeners: one socket per shard on one address, so the kernel
//! spreads connections (TCP) and flows (UDP) over the shards by 4-tuple hash and each shard
//! accepts on its own, with no shared accept queue (Seastar's and Envoy's model).
//!
//! **Architecture Invariant:** a connection accepted on a shard stays on that shard for its
//! whole life.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::ListenError;
#[cfg(not(loom))]
use crate::{id::ShardId, set::ShardHandle};
#[cfg(not(loom))]
use std::future::Future;

/// The accept backlog of each per-shard TCP listener.
pub const DEFAULT_BACKLOG: i32 = 1024;

fn reuseport_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

fn local_addr(s: &Socket) -> std::io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an inet address"))
}

/// Binds `n` resolved-address sockets, resolving port 0 once from the first socket so all
/// share one port.
fn bind_n<T>(
    addr: SocketAddr,
    n: usize,
    mut make: impl FnMut(SocketAddr) -> std::io::Result<(SocketAddr, T)>,
) -> Result<(SocketAddr, Vec<T>), ListenError> {
    if n == 0 {
        return Err(ListenError::ZeroCount);
    }
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for index in 0..n {
        let (local, t) = make(bound).map_err(|source| ListenError::Bind {
            addr: bound,
            index,
            source,
        })?;
        if index == 0 {
            bound = local;
        }
        out.push(t);
    }
    Ok((bound, out))
}

/// Binds `n` non-blocking TCP listeners with `SO_REUSEPORT` on `addr`. Port 0 is resolved
/// once; the returned address carries the real port shared by all `n`. The std listeners are
/// `Send`: move one to each shard and register it there (`tokio::net::TcpListener::from_std`).
pub fn bind_tcp(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ListenError> {
    bind_n(addr, n, |a| {
        let s = reuseport_socket(a, Type::STREAM, Protocol::TCP)?;
        s.listen(backlog)?;
        Ok((local_addr(&s)?, std::net::TcpListener::from(s)))
    })
}

/// Binds `n` non-blocking UDP sockets with `SO_REUSEPORT` on `addr` (port 0 resolved once).
pub fn bind_udp(
    addr: SocketAddr,
    n: usize,
) -> Result<(SocketAddr, Vec<std::net::UdpSocket>), ListenError> {
    bind_n(addr, n, |a| {
        let s = reuseport_socket(a, Type::DGRAM, Protocol::UDP)?;
        Ok((local_addr(&s)?, std::net::UdpSocket::from(s)))
    })
}

// tokio's `net` module does not exist under `cfg(loom)`; loom runs only the mailbox models.
#[cfg(not(loom))]
impl ShardHandle {
    /// Binds one `SO_REUSEPORT` TCP listener per shard on `addr` and starts `serve` on each
    /// shard with that shard's listener, as a shard-local task (it may be `!Send`). Returns
    /// the bound address (port 0 resolved). The tasks run until they return or the set shuts
    /// down.
    pub async fn serve_tcp<S, Fut>(
        &self,
        addr: SocketAddr,
        serve: S,
    ) -> Result<SocketAddr, ListenError>
    where
        S: FnOnce(ShardId, tokio::net::TcpListener) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (bound, listeners) = bind_tcp(addr, self.shard_count(), DEFAULT_BACKLOG)?;
        for (shard, l) in self.shard_ids().zip(listeners) {
            let serve = serve.clone();
            self.invoke_on(shard, move || async move {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|source| ListenError::Register { shard, source })?;
                tokio::task::spawn_local(serve(shard, l));
                Ok::<(), ListenError>(())
            })
            .await??;
        }
        Ok(bound)
    }

    /// The UDP counterpart of [`serve_tcp`](Self::serve_tcp): one `SO_REUSEPORT` socket per
    /// shard, each handed to `serve` on its shard.
    pub async fn serve_udp<S, Fut>(
        &self,
        addr: SocketAddr,
        serve: S,
    ) -> Result<SocketAddr, ListenError>
    where
        S: FnOnce(ShardId, tokio::net::UdpSocket) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (bound, sockets) = bind_udp(addr, self.shard_count())?;
        for (shard, s) in self.shard_ids().zip(sockets) {
            let serve = serve.clone();
            self.invoke_on(shard, move || async move {
                let s = tokio::net::UdpSocket::from_std(s)
                    .map_err(|source| ListenError::Register { shard, source })?;
                tokio::task::spawn_local(serve(shard, s));
                Ok::<(), ListenError>(())
            })
            .await??;
        }
        Ok(bound)
    }
}
