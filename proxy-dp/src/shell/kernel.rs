//! The kernel data path's user-space side: a connection handed to the sockmap
//! ([`crate::bpf::SockmapForwarder`]) is watched only for the end of each direction and for
//! errors, through one `epoll` instance per shard registered for `EPOLLRDHUP` (plus the
//! always-reported `EPOLLERR`/`EPOLLHUP`) and *not* `EPOLLIN`: the kernel wakes readers for
//! every segment it redirects, and this keeps those wake-ups away from the shard thread.
//!
//! - End of one direction (FIN from `src`): once every byte `src` received has been handed
//!   to `dst`'s send queue, `shutdown(dst, SHUT_WR)`. The kernel moves redirected bytes to
//!   `dst` from a work queue, so a FIN seen by user space may overtake them; the check
//!   compares `src`'s `TCP_INFO` bytes received (minus the FIN) with `dst`'s bytes written
//!   (sent once + not yet sent) and waits until they meet: a few `sched_yield`s, then
//!   yields to the shard's other tasks, then 1 ms steps; reset after 30 s without progress.
//! - An error on either side (RST, a failed redirect): both sockets are closed with
//!   `SO_LINGER 0`, i.e. reset.
//! - Both directions ended: both sockets are closed, which removes them from the maps.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::forward::Outcome;
use crate::bpf::{self, SockmapForwarder};

/// A direction waiting for its bytes to reach the peer gives up (and resets the
/// connection) after this long without progress.
const DRAIN_STALL: Duration = Duration::from_secs(30);
/// Checks with `sched_yield` between them, then checks with a yield to the shard's other
/// tasks between them, before 1 ms sleeps (see `forward`).
const DRAIN_SPINS: u32 = 4;
const DRAIN_YIELDS: u32 = 256;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// What the watcher saw for one connection (per side: 0 client, 1 backend).
#[derive(Debug, Default)]
struct Signal {
    events: [Cell<u32>; 2],
    notify: Notify,
}

/// One shard's end-of-flow watcher.
pub(crate) struct Watcher {
    ep: AsyncFd<OwnedFd>,
    flows: RefCell<HashMap<u64, Rc<Signal>>>,
    next: Cell<u64>,
}

impl Watcher {
    /// A watcher with its task spawned on the current shard.
    pub(crate) fn start() -> io::Result<Rc<Watcher>> {
        let ep = bpf::async_fd(bpf::epoll_create()?, tokio::io::Interest::READABLE)?;
        let w = Rc::new(Watcher {
            ep,
            flows: RefCell::new(HashMap::new()),
            next: Cell::new(1),
        });
        tokio::task::spawn_local(run(Rc::downgrade(&w)));
        Ok(w)
    }

    fn register(self: &Rc<Self>, client: &TcpStream, backend: &TcpStream) -> io::Result<Reg> {
        let id = self.next.get();
        self.next.set(id + 1);
        let sig = Rc::new(Signal::default());
        self.flows.borrow_mut().insert(id, Rc::clone(&sig));
        let reg = Reg {
            w: Rc::clone(self),
            id,
            sig,
        };
        let ev = (libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        bpf::epoll_add(self.ep.get_ref().as_fd(), client.as_fd(), ev, id << 1)?;
        bpf::epoll_add(
            self.ep.get_ref().as_fd(),
            backend.as_fd(),
            ev,
            (id << 1) | 1,
        )?;
        Ok(reg)
    }
}

/// A registration; dropping it forgets the connection (closing the sockets removes them
/// from the epoll set).
struct Reg {
    w: Rc<Watcher>,
    id: u64,
    sig: Rc<Signal>,
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.w.flows.borrow_mut().remove(&self.id);
    }
}

async fn run(w: std::rc::Weak<Watcher>) {
    let mut evs = Vec::with_capacity(EVENTS);
    loop {
        let Some(w) = w.upgrade() else {
            return;
        };
        let Ok(mut guard) = w.ep.readable().await else {
            return;
        };
        evs.clear();
        if bpf::epoll_poll(w.ep.get_ref().as_fd(), &mut evs, EVENTS).is_err() {
            guard.clear_ready();
            continue;
        }
        if evs.len() < EVENTS {
            guard.clear_ready();
        }
        let flows = w.flows.borrow();
        for (data, events) in evs.iter().copied() {
            if let Some(sig) = flows.get(&(data >> 1)) {
                let side = usize::from(data & 1 == 1);
                sig.events[side].set(sig.events[side].get() | events);
                sig.notify.notify_one();
            }
        }
    }
}

/// The kernel path of one shard.
pub(crate) struct KernelPath {
    pub(crate) maps: Arc<SockmapForwarder>,
    watcher: RefCell<Option<Rc<Watcher>>>,
}

impl KernelPath {
    pub(crate) fn new(maps: Arc<SockmapForwarder>) -> KernelPath {
        KernelPath {
            maps,
            watcher: RefCell::new(None),
        }
    }

    fn watcher(&self) -> io::Result<Rc<Watcher>> {
        if let Some(w) = self.watcher.borrow().as_ref() {
            return Ok(Rc::clone(w));
        }
        let w = Watcher::start()?;
        *self.watcher.borrow_mut() = Some(Rc::clone(&w));
        Ok(w)
    }
}

/// Why a connection was not taken by the kernel path (the caller forwards it in user space).
pub(crate) enum NotTaken {
    /// The maps are full.
    Full(TcpStream, TcpStream),
    /// Another failure (logged by the caller).
    Failed(TcpStream, TcpStream, bpf::BpfError),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Open,
    /// FIN seen from the source, which had received this many payload bytes; waiting for
    /// them to reach the peer's send queue.
    Draining(u64),
    Done,
}

/// Forwards `client` <-> `backend` in the kernel until both directions end (or either
/// fails). `bytes` gets the payload moved. Returns the sockets untouched when the maps
/// cannot take them.
pub(crate) async fn forward(
    k: &KernelPath,
    client: TcpStream,
    backend: TcpStream,
    bytes: &AtomicU64,
    fin_waits: &AtomicU64,
) -> Result<Outcome, NotTaken> {
    let keys = (|| -> io::Result<(u64, u64)> {
        Ok((
            bpf::socket_cookie(client.as_fd())?,
            bpf::socket_cookie(backend.as_fd())?,
        ))
    })();
    let (kc, kb) = match keys {
        Ok(k) => k,
        Err(source) => {
            return Err(NotTaken::Failed(
                client,
                backend,
                bpf::BpfError::Socket {
                    what: "socket cookie",
                    source,
                },
            ));
        }
    };
    let w = match k.watcher() {
        Ok(w) => w,
        Err(source) => {
            return Err(NotTaken::Failed(
                client,
                backend,
                bpf::BpfError::Socket {
                    what: "epoll watcher",
                    source,
                },
            ));
        }
    };
    match k.maps.insert_pair(client.as_fd(), kc, backend.as_fd(), kb) {
        Ok(()) => {}
        Err(bpf::BpfError::Full) => return Err(NotTaken::Full(client, backend)),
        Err(e) => return Err(NotTaken::Failed(client, backend, e)),
    }
    // From here the sockets belong to the kernel path: any failure resets them.
    let socks = [client, backend];
    let Ok(reg) = w.register(&socks[0], &socks[1]) else {
        return Ok(reset(socks));
    };
    // Bytes that arrived before the sockets were in the map sit in their receive queues
    // with no wake-up to come: a non-blocking read makes the kernel run them through the
    // verdict (tcp_bpf_recvmsg_parser); it returns EAGAIN, or 0 at an early EOF.
    for (i, s) in socks.iter().enumerate() {
        let mut b = [0u8; 1];
        match nix::sys::socket::recv(
            s.as_raw_fd(),
            &mut b,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Err(nix::errno::Errno::EAGAIN) => {}
            Ok(0) => reg.sig.events[i].set(reg.sig.events[i].get() | libc::EPOLLRDHUP as u32),
            // Data handed to user space would be out of order with what the kernel moves:
            // the program never passes data, so this is a failure.
            Ok(_) | Err(_) => return Ok(reset(socks)),
        }
    }
    let mut dir = [Dir::Open; 2];
    let mut moved = [0u64; 2];
    let mut rounds = 0u32;
    let mut last_progress = tokio::time::Instant::now();
    let mut last_written = [0u64; 2];
    loop {
        for ((d, events), src) in dir.iter_mut().zip(&reg.sig.events).zip(&socks) {
            let ev = events.replace(0);
            if ev & libc::EPOLLERR as u32 != 0 {
                return Ok(reset(socks));
            }
            if ev & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 && *d == Dir::Open {
                // Every byte before the FIN is in: bytes_received counts the FIN's sequence
                // number too.
                let Ok(c) = bpf::tcp_counters(src.as_fd()) else {
                    return Ok(reset(socks));
                };
                *d = Dir::Draining(c.bytes_received.saturating_sub(1));
            }
        }
        let mut waiting = false;
        for side in 0..2 {
            let Dir::Draining(target) = dir[side] else {
                continue;
            };
            let dst = &socks[1 - side];
            let Ok(d) = bpf::tcp_counters(dst.as_fd()) else {
                return Ok(reset(socks));
            };
            let written = d.written();
            if written >= target {
                moved[side] = target;
                let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                dir[side] = Dir::Done;
            } else {
                if rounds == 0 {
                    fin_waits.fetch_add(1, Ordering::Relaxed);
                }
                waiting = true;
                if written != last_written[side] {
                    last_written[side] = written;
                    last_progress = tokio::time::Instant::now();
                }
            }
        }
        if dir == [Dir::Done; 2] {
            break;
        }
        if !waiting {
            rounds = 0;
            reg.sig.notify.notified().await;
            continue;
        }
        if last_progress.elapsed() > DRAIN_STALL {
            return Ok(reset(socks));
        }
        rounds += 1;
        if rounds <= DRAIN_SPINS {
            // The work queue may be waiting for this CPU.
            std::thread::yield_now();
        } else if rounds <= DRAIN_SPINS + DRAIN_YIELDS {
            // Let the shard's other tasks run meanwhile; the queue usually empties within
            // tens of microseconds, well under the timer's 1 ms.
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                () = reg.sig.notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }
    let total = moved[0] + moved[1];
    bytes.fetch_add(total, Ordering::Relaxed);
    drop(reg);
    Ok(Outcome {
        up: moved[0],
        down: moved[1],
        reset: false,
    })
}

fn reset(socks: [TcpStream; 2]) -> Outcome {
    for s in &socks {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
    drop(socks);
    Outcome {
        reset: true,
        ..Outcome::default()
    }
}
