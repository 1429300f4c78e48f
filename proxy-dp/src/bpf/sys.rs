//! The raw system calls under the kernel data path: `bpf(2)` (maps, program load, attach),
//! `getsockopt` for `SO_COOKIE` and `TCP_INFO`, and `epoll` for the end-of-flow watcher.
//! This is the one module of proxy-dp with `#[allow(unsafe_code)]` (see the crate doc):
//! every call passes pointers to buffers that live across the call and sizes that match
//! them, and each block says so.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::insn::Insn;

// bpf(2) commands and constants (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

/// `union bpf_attr`, as the bytes the kernel reads (144 bytes on 6.x; the kernel accepts a
/// shorter or equal size and requires the bytes it knows beyond ours to be zero).
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        // BPF_OBJ_NAME_LEN is 16 with the NUL; the kernel accepts [A-Za-z0-9_.].
        let n = name.len().min(15);
        self.0[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable 144-byte buffer for the whole call and its size is
    // passed with it; every pointer stored in it (keys, values, instructions, log) points at
    // memory the caller keeps alive and sized as the attribute says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn fd_of(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(r).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a map (`BPF_MAP_CREATE`).
pub(crate) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .name(28, name);
    fd_of(bpf(BPF_MAP_CREATE, &mut a)?)
}

/// Loads a program (`BPF_PROG_LOAD`); with `log`, the verifier writes its log there.
pub(crate) fn prog_load(
    prog_type: u32,
    insns: &[Insn],
    license: &std::ffi::CStr,
    log: Option<&mut [u8]>,
    name: &str,
) -> io::Result<OwnedFd> {
    let code: Vec<[u8; 8]> = insns.iter().map(Insn::encode).collect();
    let mut a = Attr::new();
    a.u32(0, prog_type)
        .u32(
            4,
            u32::try_from(code.len()).map_err(|_| io::Error::other("program too long"))?,
        )
        .u64(8, ptr(code.as_ptr()))
        .u64(16, ptr(license.as_ptr()))
        .name(48, name);
    if let Some(log) = log {
        a.u32(24, 1)
            .u32(28, u32::try_from(log.len()).unwrap_or(u32::MAX))
            .u64(32, ptr(log.as_mut_ptr()));
        return fd_of(bpf(BPF_PROG_LOAD, &mut a)?);
    }
    fd_of(bpf(BPF_PROG_LOAD, &mut a)?)
}

/// Attaches `prog` to `target` (a map for sockmap programs) as `attach_type`.
pub(crate) fn prog_attach(
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(target)?)
        .u32(4, fd_u32(prog)?)
        .u32(8, attach_type);
    bpf(BPF_PROG_ATTACH, &mut a).map(drop)
}

fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// `map[key] = value` with `flags` (`BPF_ANY` 0, `BPF_NOEXIST` 1).
pub(crate) fn map_update(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(map)?)
        .u64(8, ptr(key.as_ptr()))
        .u64(16, ptr(value.as_ptr()))
        .u64(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Removes `key` from `map`.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(map)?).u64(8, ptr(key.as_ptr()));
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(drop)
}

/// The key after `key` (the first with `None`) into `next`; `false` when there is none.
pub(crate) fn map_next_key(
    map: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(map)?)
        .u64(8, key.map_or(0, |k| ptr(k.as_ptr())))
        .u64(16, ptr(next.as_mut_ptr()));
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn getsockopt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `buf` is writable for `len` bytes and `len` is a live socklen_t; the kernel
    // writes at most `len` bytes and stores the length it wrote back into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(len).unwrap_or(0))
}

/// The socket's cookie (`SO_COOKIE`), the key the verdict program computes with
/// `bpf_get_socket_cookie`.
pub(crate) fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    let n = getsockopt(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut b)?;
    if n != 8 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(u64::from_ne_bytes(b))
}

/// The `TCP_INFO` counters the half-close propagation needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TcpCounters {
    /// `tcpi_bytes_received`: sequence space received in order (data, plus 1 once a FIN is in).
    pub(crate) bytes_received: u64,
    /// `tcpi_bytes_sent`: payload bytes transmitted, retransmissions included.
    pub(crate) bytes_sent: u64,
    /// `tcpi_bytes_retrans`: payload bytes retransmitted.
    pub(crate) bytes_retrans: u64,
    /// `tcpi_notsent_bytes`: bytes written but not yet transmitted.
    pub(crate) notsent: u64,
}

impl TcpCounters {
    /// Payload bytes handed to this socket for sending (written), whether sent yet or not.
    pub(crate) fn written(&self) -> u64 {
        self.bytes_sent.saturating_sub(self.bytes_retrans) + self.notsent
    }
}

/// Reads `TCP_INFO` (offsets of `struct tcp_info` in include/uapi/linux/tcp.h, stable ABI:
/// fields are only ever appended).
pub(crate) fn tcp_counters(fd: BorrowedFd<'_>) -> io::Result<TcpCounters> {
    let mut b = [0u8; 232];
    let n = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b)?;
    if n < 216 {
        // Kernels before 4.19 have no tcpi_bytes_sent/retrans.
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_ne_bytes(w)
    };
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[144..148]);
    Ok(TcpCounters {
        bytes_received: u64_at(128),
        bytes_sent: u64_at(200),
        bytes_retrans: u64_at(208),
        notsent: u64::from(u32::from_ne_bytes(w)),
    })
}

/// A new epoll instance (close-on-exec).
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked before it is owned.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `fd` to `ep` for `events`, reported with `data`.
pub(crate) fn epoll_add(
    ep: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a live epoll_event for the call; the kernel copies it.
    let r =
        unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ready events without waiting; returns (data, events) pairs into `out`.
pub(crate) fn epoll_poll(
    ep: BorrowedFd<'_>,
    out: &mut Vec<(u64, u32)>,
    max: usize,
) -> io::Result<()> {
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
    let cap = libc::c_int::try_from(evs.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `evs` has room for `cap` events and lives across the call.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), cap, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for ev in evs.iter().take(usize::try_from(n).unwrap_or(0)) {
        let (data, events) = (ev.u64, ev.events);
        out.push((data, events));
    }
    Ok(())
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: one system call for what
/// `std::net::TcpListener::accept` plus `set_nonblocking` take two for.
pub(crate) fn accept_nonblocking(
    l: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    let fd = l.as_raw_fd();
    // SAFETY: `try_init` hands the closure a zeroed sockaddr_storage and its length, both
    // live for the call; accept4 writes at most `len` bytes there and the new length back.
    let (sock, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let r = libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(OwnedFd::from_raw_fd(r))
        })
    }?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
    Ok((std::net::TcpStream::from(sock), peer))
}

/// Types that own their file descriptor for their whole life (it is closed only when they
/// are dropped), so tokio may keep it registered while it holds them.
pub(crate) trait OwnsFd: AsRawFd {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for std::net::TcpStream {}
impl OwnsFd for std::net::TcpListener {}

/// Registers `inner` with the current tokio reactor for `interest`.
pub(crate) fn async_fd<T: OwnsFd>(
    inner: T,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: OwnsFd` owns an open descriptor that stays open and the same until `T`
    // is dropped, and the AsyncFd owns `T` (it is dropped with the AsyncFd or handed back by
    // `into_inner`, which deregisters it first).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }
        .map_err(io::Error::from)
}
