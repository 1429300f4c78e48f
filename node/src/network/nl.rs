//! Netlink work and network namespaces.
//!
//! A netlink socket acts in the network namespace it was created in, whichever thread uses it
//! later. So each piece of work runs on a short-lived thread of its own (never a tokio worker)
//! that `setns(2)`s into the node's host namespace and, when it needs to, into the pod's,
//! opening one rtnetlink connection in each; the thread, its current-thread runtime, the
//! sockets and the namespace fds all end with the work. `nft` is started from that thread
//! while it is in the host namespace, so it acts there too.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetworkError;

/// The route protocol number marking the peer routes this module owns (values above
/// `RTPROT_STATIC` are free for daemons; `ip route` shows it as a number).
pub(crate) const RTPROT_KUBESHARD: u8 = 0x4b;

/// Longest one netlink request may take before the work fails (the kernel answers in
/// microseconds; this only bounds a wedged socket).
const NL_TIMEOUT: Duration = Duration::from_secs(5);

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

/// The errno of a netlink error answer.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Netlink { op, source }
}

/// Awaits one netlink request with the module's timeout.
pub(crate) async fn bounded<T>(
    op: &str,
    f: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<Result<T, rtnetlink::Error>, NetworkError> {
    tokio::time::timeout(NL_TIMEOUT, f)
        .await
        .map_err(|_| NetworkError::Timeout(op.to_string()))
}

/// Moves the calling thread into the network namespace behind `ns`.
pub(crate) fn enter(ns: &File) -> Result<(), NetworkError> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetworkError::Netns(format!("setns: {e}")))
}

/// Opens an rtnetlink connection in the calling thread's current network namespace; its
/// driver task runs on the thread's runtime until the handle is dropped.
pub(crate) fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `work` on a fresh thread, inside `host` (entered first), with a current-thread tokio
/// runtime; returns its result to the async caller.
pub(crate) async fn on_thread<T, F, Fut>(host: Arc<File>, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_worker(host, work, move |r| {
        let _ = tx.send(r);
    })?;
    rx.await
        .map_err(|_| NetworkError::Netns("network worker thread died".into()))?
}

/// Like [`on_thread`], for synchronous callers: blocks until the work is done.
pub(crate) fn on_thread_blocking<T, F, Fut>(host: Arc<File>, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    spawn_worker(host, work, move |r| {
        let _ = tx.send(r);
    })?;
    rx.recv()
        .map_err(|_| NetworkError::Netns("network worker thread died".into()))?
}

fn spawn_worker<T, F, Fut>(
    host: Arc<File>,
    work: F,
    done: impl FnOnce(Result<T, NetworkError>) + Send + 'static,
) -> Result<(), NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    std::thread::Builder::new()
        .name("podnet".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let r = (|| {
                enter(&host)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()?;
                rt.block_on(work())
            })();
            done(r);
        })?;
    Ok(())
}

/// The index of the link called `name`, if there is one.
pub(crate) async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match bounded("get link", s.try_next()).await? {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
        Err(e) => Err(nl_err(format!("get link {name}"))(e)),
    }
}

/// Deletes the link called `name`; false if there was none.
pub(crate) async fn del_link(h: &Handle, name: &str) -> Result<bool, NetworkError> {
    let Some(idx) = link_index(h, name).await? else {
        return Ok(false);
    };
    match bounded("del link", h.link().del(idx).execute()).await? {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(false),
        Err(e) => Err(nl_err(format!("del link {name}"))(e)),
    }
}

/// The IPv4 addresses on a link.
pub(crate) async fn addrs_v4(h: &Handle, idx: u32) -> Result<Vec<Ipv4Net>, NetworkError> {
    let mut s = h.address().get().set_link_index_filter(idx).execute();
    let mut out = Vec::new();
    // Bounded: a link carries few addresses; stop reading after a generous cap.
    for _ in 0..4096 {
        let Some(m) = bounded("get addr", s.try_next())
            .await?
            .map_err(nl_err("get addr"))?
        else {
            break;
        };
        if m.header.index != idx {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = a
                && let Ok(n) = Ipv4Net::new(*ip, m.header.prefix_len)
            {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Adds `addr` to a link unless it is there already.
pub(crate) async fn ensure_addr(h: &Handle, idx: u32, addr: Ipv4Net) -> Result<(), NetworkError> {
    let r = bounded(
        "add addr",
        h.address()
            .add(idx, addr.addr().into(), addr.prefix_len())
            .execute(),
    )
    .await?;
    match r {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(EEXIST)) => Ok(()),
        Err(e) => Err(nl_err(format!("add addr {addr}"))(e)),
    }
}

/// Sets a link up.
pub(crate) async fn set_up(h: &Handle, idx: u32) -> Result<(), NetworkError> {
    bounded(
        "link up",
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute(),
    )
    .await?
    .map_err(nl_err("link up"))
}

/// Creates (or adopts) the node bridge: `mac` fixed so the gateway's MAC does not follow the
/// lowest port's as pods come and go, `gw` as its only IPv4 address, up.
pub(crate) async fn ensure_bridge(
    h: &Handle,
    name: &str,
    mtu: u32,
    mac: [u8; 6],
    gw: Ipv4Net,
) -> Result<u32, NetworkError> {
    let idx = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            let msg = LinkBridge::new(name)
                .mtu(mtu)
                .address(mac.to_vec())
                .up()
                .build();
            match bounded("add bridge", h.link().add(msg).execute()).await? {
                Ok(()) => {}
                // Created concurrently by another instance: adopt it.
                Err(e) if matches!(errno(&e), Some(EEXIST)) => {}
                Err(e) => return Err(nl_err(format!("add bridge {name}"))(e)),
            }
            link_index(h, name)
                .await?
                .ok_or_else(|| NetworkError::Netns(format!("bridge {name} vanished")))?
        }
    };
    // A podCIDR change leaves an old gateway behind: drop every other IPv4 address.
    for a in addrs_v4(h, idx).await? {
        if a != gw {
            let mut m = rtnetlink::packet_route::address::AddressMessage::default();
            m.header.family = rtnetlink::packet_route::AddressFamily::Inet;
            m.header.index = idx;
            m.header.prefix_len = a.prefix_len();
            m.attributes.push(AddressAttribute::Local(a.addr().into()));
            m.attributes
                .push(AddressAttribute::Address(a.addr().into()));
            match bounded("del addr", h.address().del(m).execute()).await? {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL)) => {}
                Err(e) => return Err(nl_err(format!("del addr {a}"))(e)),
            }
        }
    }
    ensure_addr(h, idx, gw).await?;
    // An adopted bridge gets the configured MTU too.
    bounded(
        "bridge up",
        h.link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
            .execute(),
    )
    .await?
    .map_err(nl_err(format!("set {name} up")))?;
    Ok(idx)
}

/// Creates a veth pair: `host_name` on this namespace (MTU, enslaved to `bridge`, up) and
/// `pod_name` created directly in the namespace behind `pod_ns` (MTU), so no rename and no
/// name clash on the host is possible. Returns the raw error so the caller can tell EEXIST.
pub(crate) async fn add_veth(
    h: &Handle,
    host_name: &str,
    pod_name: &str,
    pod_ns: &File,
    mtu: u32,
    bridge: u32,
) -> Result<Result<(), rtnetlink::Error>, NetworkError> {
    let peer = LinkUnspec::new_with_name(pod_name)
        .mtu(mtu)
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host_name, pod_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(bridge)
        .up()
        .build();
    bounded("add veth", h.link().add(msg).execute()).await
}

/// Brings `lo` up (the runtime's holder does it too; this makes sure).
pub(crate) async fn lo_up(h: &Handle) -> Result<(), NetworkError> {
    let idx = link_index(h, "lo")
        .await?
        .ok_or_else(|| NetworkError::Netns("no lo in the pod namespace".into()))?;
    set_up(h, idx).await
}

/// Replaces the default route with one via `gw`.
pub(crate) async fn default_route(h: &Handle, gw: Ipv4Addr) -> Result<(), NetworkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
    bounded("default route", h.route().add(msg).replace().execute())
        .await?
        .map_err(nl_err(format!("default route via {gw}")))
}

/// The peer routes (main table, [`RTPROT_KUBESHARD`]) present now: (destination, gateway).
pub(crate) async fn peer_routes(
    h: &Handle,
) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, RouteMessage)>, NetworkError> {
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    // Bounded: a node's main table is small; 100k routes is far beyond any real one.
    for _ in 0..100_000 {
        let Some(m) = bounded("get routes", s.try_next())
            .await?
            .map_err(nl_err("get routes"))?
        else {
            break;
        };
        if m.header.protocol != RouteProtocol::Other(RTPROT_KUBESHARD)
            || m.header.table != RouteHeader::RT_TABLE_MAIN
        {
            continue;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gw = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
            out.push((net, gw, m));
        }
    }
    Ok(out)
}

/// Adds or replaces the route to `dst` via `gw`, marked as ours.
pub(crate) async fn replace_peer_route(
    h: &Handle,
    dst: Ipv4Net,
    gw: Ipv4Addr,
) -> Result<(), NetworkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(gw)
        .protocol(RouteProtocol::Other(RTPROT_KUBESHARD))
        .build();
    bounded("peer route", h.route().add(msg).replace().execute())
        .await?
        .map_err(nl_err(format!("route {dst} via {gw}")))
}

/// Deletes a route (gone already is fine).
pub(crate) async fn del_route(h: &Handle, m: RouteMessage) -> Result<(), NetworkError> {
    match bounded("del route", h.route().del(m).execute()).await? {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
        Err(e) => Err(nl_err("del route")(e)),
    }
}
