//! Moving bytes between an accepted client connection and its backend connection.
//!
//! Three engines, chosen by [`ForwardMode`]; all propagate a half-close (EOF on one side
//! becomes `shutdown(SHUT_WR)` on the other, and the other direction keeps going) and a
//! reset (an error on one side closes the other with `SO_LINGER 0`, i.e. an RST):
//!
//! - [`ForwardMode::Splice`]: `splice(2)` socket → pipe → socket, driven by tokio readiness
//!   (zero-copy: the payload never enters user space).
//! - [`ForwardMode::UringSplice`]: the same pipe, driven by the shard's io_uring ring alone:
//!   each side is a poll linked to a splice (`shards::uring::Ring::poll_splice`). The kernel
//!   runs io_uring splices in its worker pool (they are always punted), which costs a thread
//!   hop per operation.
//! - [`ForwardMode::Copy`]: `tokio::io::copy_bidirectional` through user-space buffers.
//! - [`ForwardMode::Adaptive`]: per direction, copy while reads are short (request/response
//!   traffic: fewer system calls and no pipe round trip), splice once a read fills the
//!   16 KiB buffer (bulk data). The default: it measured best (BENCHMARKS.md, `## proxy-dp`).

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::AsyncReadExt as _;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// How TCP payload is moved (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// `splice(2)` through a pipe, on tokio readiness.
    Splice,
    /// `splice` through a pipe, submitted to the shard's io_uring ring.
    UringSplice,
    /// User-space copy (`tokio::io::copy_bidirectional`).
    Copy,
    /// Per direction: copy through a user-space buffer while reads come back short (small
    /// request/response exchanges: one `read` and one `write` each, no pipe), and switch to
    /// `splice(2)` for the rest of the connection once a read fills the buffer (bulk data).
    /// The default: it measured best on bulk and on short connections (BENCHMARKS.md).
    #[default]
    Adaptive,
}

impl std::str::FromStr for ForwardMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(ForwardMode::Splice),
            "uring" | "uring-splice" => Ok(ForwardMode::UringSplice),
            "copy" => Ok(ForwardMode::Copy),
            "adaptive" | "auto" => Ok(ForwardMode::Adaptive),
            other => Err(format!(
                "unknown forward mode {other:?} (splice, uring, copy, adaptive)"
            )),
        }
    }
}

/// Bytes one pipe holds by default (`F_SETPIPE_SZ`; the kernel may round up or refuse,
/// then its default 64 KiB stays). See `DataplaneConfig::pipe_size`.
pub const PIPE_SIZE: usize = 256 * 1024;

/// A pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

impl Pipe {
    /// A new non-blocking pipe, enlarged to `size` bytes when the kernel allows (an
    /// unprivileged process is bounded by `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let want = i32::try_from(size).unwrap_or(i32::MAX);
        let cap = match fcntl(&w, FcntlArg::F_SETPIPE_SZ(want)) {
            Ok(n) => usize::try_from(n).unwrap_or(65_536),
            Err(_) => 65_536,
        };
        Ok(Pipe { r, w, cap })
    }
}

/// Closes `s` with an RST (SO_LINGER 0) when it is dropped.
pub fn set_rst_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// How one forwarded connection ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Bytes client → backend.
    pub up: u64,
    /// Bytes backend → client.
    pub down: u64,
    /// Whether one side failed (reset) and the other was reset too.
    pub reset: bool,
}

/// Pipes kept per shard for reuse (each is two fds).
pub(crate) const PIPE_POOL: usize = 64;

/// Adaptive copy buffers kept per shard for reuse (16 KiB each: 4 MiB at most).
pub(crate) const BUF_POOL: usize = 256;

/// One shard's free lists of pipes and copy buffers, so that after warm-up a connection
/// costs no `pipe2`/`F_SETPIPE_SZ` and no 16 KiB allocation and zeroing. Bounded by
/// [`PIPE_POOL`] and [`BUF_POOL`]; what does not fit is freed.
#[derive(Debug)]
pub(crate) struct Pools {
    pipes: RefCell<Vec<Pipe>>,
    bufs: RefCell<Vec<Box<[u8]>>>,
    pipe_size: usize,
}

impl Pools {
    /// Empty pools whose new pipes are asked for `pipe_size` bytes.
    pub(crate) fn new(pipe_size: usize) -> Pools {
        Pools {
            pipes: RefCell::new(Vec::new()),
            bufs: RefCell::new(Vec::new()),
            pipe_size,
        }
    }

    /// A pooled pipe, or a new one.
    fn pipe(&self) -> io::Result<Pipe> {
        match self.pipes.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.pipe_size),
        }
    }

    /// Returns a pipe (it must be empty).
    fn put_pipe(&self, p: Pipe) {
        let mut pool = self.pipes.borrow_mut();
        if pool.len() < PIPE_POOL {
            pool.push(p);
        }
    }

    fn buf(&self) -> Box<[u8]> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; ADAPTIVE_COPY_BUFFER].into_boxed_slice())
    }

    fn put_buf(&self, b: Box<[u8]>) {
        let mut pool = self.bufs.borrow_mut();
        if pool.len() < BUF_POOL {
            pool.push(b);
        }
    }
}

/// A copy buffer that goes back to its pool however the direction ends (a buffer, unlike
/// a pipe, holds nothing that outlives the connection).
struct PooledBuf<'a> {
    buf: Option<Box<[u8]>>,
    pools: &'a Pools,
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pools.put_buf(b);
        }
    }
}

/// Sends what the client has already sent on to the backend, before either socket is
/// registered with tokio. A client that speaks first (HTTP, TLS, the bench) has usually
/// written its request by the time the proxy has accepted and connected, so one
/// non-blocking `recv` finds it and the backend gets it at once, instead of one event-loop
/// round later when epoll reports the new socket readable. A client that has sent nothing
/// yet costs one `recv` returning `EAGAIN`; an EOF is left for the engine to read again.
///
/// Returns the bytes read but not taken by the backend's socket (empty unless its send
/// buffer was full, which a fresh connection's is not), for the caller to write first.
pub(crate) fn first_bytes(
    client: &std::net::TcpStream,
    backend: &std::net::TcpStream,
    pools: &Pools,
    bytes: &AtomicU64,
) -> io::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let mut guard = PooledBuf {
        buf: Some(pools.buf()),
        pools,
    };
    let Some(buf) = guard.buf.as_deref_mut() else {
        return Ok(Vec::new());
    };
    // Both sockets are non-blocking (accept4 and `connect_backend`).
    let n = match (&*client).read(buf) {
        Ok(n) => n,
        Err(e) if would_block(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut off = 0;
    while off < n {
        match (&*backend).write(&buf[off..n]) {
            Ok(0) => break,
            Ok(k) => off += k,
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(e),
        }
    }
    bytes.fetch_add(off as u64, Ordering::Relaxed);
    Ok(buf[off..n].to_vec())
}

/// Forwards until both directions end. `bytes` is incremented as data moves. Pipes and
/// buffers come from `pools` and go back when their direction ends cleanly.
pub(crate) async fn forward(
    mode: ForwardMode,
    client: TcpStream,
    backend: TcpStream,
    bytes: &AtomicU64,
    pools: &Pools,
) -> Outcome {
    match mode {
        ForwardMode::Copy => copy(client, backend, bytes).await,
        // Adaptive takes a pipe only when a direction turns to splice: short connections
        // never touch one.
        ForwardMode::Adaptive => {
            spliced(
                client,
                backend,
                bytes,
                pools,
                Engine::Adaptive,
                [None, None],
            )
            .await
        }
        ForwardMode::Splice | ForwardMode::UringSplice => {
            let engine = if mode == ForwardMode::UringSplice {
                Engine::Uring
            } else {
                Engine::Splice
            };
            // No pipe (fd limit): fall back to copying rather than refusing.
            let (Ok(p1), Ok(p2)) = (pools.pipe(), pools.pipe()) else {
                return copy(client, backend, bytes).await;
            };
            spliced(client, backend, bytes, pools, engine, [Some(p1), Some(p2)]).await
        }
    }
}

async fn copy(mut client: TcpStream, mut backend: TcpStream, bytes: &AtomicU64) -> Outcome {
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => {
            bytes.fetch_add(up + down, Ordering::Relaxed);
            Outcome {
                up,
                down,
                reset: false,
            }
        }
        Err(_) => {
            set_rst_on_close(&client);
            set_rst_on_close(&backend);
            Outcome {
                reset: true,
                ..Outcome::default()
            }
        }
    }
}

/// How [`spliced`] moves each direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Splice,
    Uring,
    Adaptive,
}

/// One direction with its engine. `pipe` is pre-taken for the splice engines; the
/// adaptive engine takes one from `pools` when it switches. The pipe goes back to the pool
/// when the direction ends cleanly (then it is empty).
///
/// At EOF the direction half-closes `dst` (`shutdown(SHUT_WR)`: the other direction goes
/// on), unless the other direction has already ended (`ended`): then both sockets are
/// closed as soon as this returns and `close` sends the FIN itself, which saves a system
/// call per connection. `close` sends a FIN and not an RST there because both receive
/// queues are empty: each direction has read its source to EOF.
async fn direction(
    mut src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    pools: &Pools,
    bytes: &AtomicU64,
    engine: Engine,
    pipe: Option<Pipe>,
    ended: &Cell<bool>,
) -> io::Result<u64> {
    let (n, pipe) = match (engine, pipe) {
        (Engine::Adaptive, _) => one_way_adaptive(&mut src, dst.as_ref(), pools, bytes).await?,
        (_, None) => return Err(io::Error::other("no pipe for a splice engine")),
        (e, Some(p)) => {
            let n = one_way(src.as_ref(), dst.as_ref(), &p, bytes, e == Engine::Uring).await?;
            (n, Some(p))
        }
    };
    if !ended.replace(true) {
        let _ = socket2::SockRef::from(dst.as_ref()).shutdown(std::net::Shutdown::Write);
    }
    if let Some(p) = pipe {
        pools.put_pipe(p);
    }
    Ok(n)
}

async fn spliced(
    mut client: TcpStream,
    mut backend: TcpStream,
    bytes: &AtomicU64,
    pools: &Pools,
    engine: Engine,
    pipes: [Option<Pipe>; 2],
) -> Outcome {
    let (mut up_done, mut down_done) = (None, None);
    let mut out = Outcome::default();
    let [p1, p2] = pipes;
    {
        // Split halves: their `AsyncRead` clears read readiness after a short read (the
        // socket is drained), which saves the `EAGAIN` read per exchange that `try_read`
        // needs.
        let (cr, cw) = client.split();
        let (br, bw) = backend.split();
        let ended = Cell::new(false);
        let up = direction(cr, bw, pools, bytes, engine, p1, &ended);
        let down = direction(br, cw, pools, bytes, engine, p2, &ended);
        tokio::pin!(up, down);
        // Both directions run until each ends; the first error resets both sides at once.
        while up_done.is_none() || down_done.is_none() {
            let failed = tokio::select! {
                r = &mut up, if up_done.is_none() => { let f = r.is_err(); up_done = Some(r); f }
                r = &mut down, if down_done.is_none() => { let f = r.is_err(); down_done = Some(r); f }
            };
            if failed {
                out.reset = true;
                break;
            }
        }
    }
    if out.reset {
        set_rst_on_close(&client);
        set_rst_on_close(&backend);
    }
    if let Some(Ok(n)) = up_done {
        out.up = n;
    }
    if let Some(Ok(n)) = down_done {
        out.down = n;
    }
    out
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One direction: `src` → pipe → `dst`, then `shutdown(SHUT_WR)` on `dst` at EOF. Returns
/// the bytes moved; the pipe is empty when this returns `Ok`.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
    uring: bool,
) -> io::Result<u64> {
    if uring && let Ok(ring) = shards::uring::Ring::current() {
        return one_way_uring(src, dst, pipe, bytes, &ring).await;
    }
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut in_pipe = 0usize;
    let mut eof = false;
    let mut total = 0u64;
    loop {
        let mut progressed = false;
        if !eof && in_pipe < pipe.cap {
            let room = pipe.cap - in_pipe;
            // `try_io` notes the readiness before the syscall, so clearing it on EAGAIN
            // cannot swallow an event that arrived meanwhile.
            let r = src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, pipe.w.as_fd(), None, room, flags)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(0) => {
                    eof = true;
                    progressed = true;
                }
                Ok(n) => {
                    in_pipe += n;
                    progressed = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if in_pipe > 0 {
            let r = dst.try_io(Interest::WRITABLE, || {
                splice(pipe.r.as_fd(), None, dst.as_fd(), None, in_pipe, flags)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => {
                    in_pipe -= n;
                    total += n as u64;
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    progressed = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if eof && in_pipe == 0 {
            // The caller half-closes `dst` (see `direction`).
            return Ok(total);
        }
        if !progressed {
            // Neither side could move: wait for whichever can.
            if in_pipe == 0 {
                src.readable().await?;
            } else if in_pipe >= pipe.cap || eof {
                dst.writable().await?;
            } else {
                tokio::select! {
                    r = src.readable() => r?,
                    r = dst.writable() => r?,
                }
            }
        }
    }
}

/// The adaptive engine's copy buffer (per direction). A read that fills it means bulk data
/// is flowing, and the direction switches to splice.
pub const ADAPTIVE_COPY_BUFFER: usize = 16 * 1024;

/// [`ForwardMode::Adaptive`] for one direction: copy while reads are short, then [`one_way`]
/// by splice through a pipe taken from `pools` (if none can be had, it keeps copying).
/// Every copied byte is written before the switch, so the pipe starts empty. Returns the
/// bytes moved and the pipe used, if any.
async fn one_way_adaptive(
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    pools: &Pools,
    bytes: &AtomicU64,
) -> io::Result<(u64, Option<Pipe>)> {
    let mut guard = PooledBuf {
        buf: Some(pools.buf()),
        pools,
    };
    let Some(buf) = guard.buf.as_deref_mut() else {
        return Err(io::Error::other("copy buffer missing"));
    };
    let (n, eof) = copy_through(src, dst, buf, bytes, true).await?;
    if eof {
        return Ok((n, None));
    }
    match pools.pipe() {
        Ok(pipe) => {
            drop(guard);
            let m = one_way(src.as_ref(), dst, &pipe, bytes, false).await?;
            Ok((n + m, Some(pipe)))
        }
        // Out of fds for a pipe: stay on copy for the rest of the connection.
        Err(_) => {
            let (m, _) = copy_through(src, dst, buf, bytes, false).await?;
            Ok((n + m, None))
        }
    }
}

/// Copies `src` → `dst` through `buf` until EOF (then half-closes `dst` and returns
/// `(bytes, true)`) or, with `until_full`, until a read fills `buf` (returns
/// `(bytes, false)`, everything read written).
async fn copy_through(
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    buf: &mut [u8],
    bytes: &AtomicU64,
    until_full: bool,
) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    loop {
        let n = src.read(buf).await?;
        if n == 0 {
            // The caller half-closes `dst` (see `direction`).
            return Ok((total, true));
        }
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(k) => off += k,
                Err(e) if would_block(&e) => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if until_full && n == buf.len() {
            return Ok((total, false));
        }
    }
}

fn uring_err(e: shards::uring::UringError) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

/// [`one_way`] through the shard's io_uring ring alone: each side is a linked
/// poll-then-splice ([`shards::uring::Ring::poll_splice`]), so readiness and data movement
/// come from the same place. (The first version awaited tokio's readiness, spliced through
/// the ring, and on `EAGAIN` cleared the readiness *after* the splice: an edge that arrived
/// during the splice was cleared with it, and a sender blocked on a full window never sent
/// another. It also waited for the source while the pipe still held data for the
/// destination. Both hung the bench's first bulk run.)
///
/// The read (socket → pipe) and the write (pipe → socket) run concurrently, at most one of
/// each in flight: a read asks for at most the room left when it is submitted and a write
/// for at most what the pipe held then, so the pipe never overflows whatever completes
/// first. Futures are only dropped once complete, except when this whole direction is
/// dropped (the other direction failed): then the ring cancels them.
async fn one_way_uring(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
    ring: &shards::uring::Ring,
) -> io::Result<u64> {
    use shards::uring::PollEvents;
    use std::task::Poll;
    let mut in_pipe = 0usize;
    let mut eof = false;
    let mut total = 0u64;
    let mut rd = None;
    let mut wr = None;
    loop {
        if rd.is_none() && !eof && in_pipe < pipe.cap {
            let room = u32::try_from(pipe.cap - in_pipe).unwrap_or(u32::MAX);
            rd = Some(ring.poll_splice(src, PollEvents::Readable, src, &pipe.w, room));
        }
        if wr.is_none() && in_pipe > 0 {
            let len = u32::try_from(in_pipe).unwrap_or(u32::MAX);
            wr = Some(ring.poll_splice(dst, PollEvents::Writable, &pipe.r, dst, len));
        }
        if rd.is_none() && wr.is_none() {
            // EOF read and the pipe drained; the caller half-closes `dst` (see `direction`).
            return Ok(total);
        }
        let (r, w) = std::future::poll_fn(|cx| {
            let r = rd
                .as_mut()
                .map(|op| std::pin::Pin::new(op).poll(cx))
                .and_then(|p| match p {
                    Poll::Ready(v) => Some(v),
                    Poll::Pending => None,
                });
            let w = wr
                .as_mut()
                .map(|op| std::pin::Pin::new(op).poll(cx))
                .and_then(|p| match p {
                    Poll::Ready(v) => Some(v),
                    Poll::Pending => None,
                });
            if r.is_some() || w.is_some() {
                Poll::Ready((r, w))
            } else {
                Poll::Pending
            }
        })
        .await;
        if let Some(res) = r {
            rd = None;
            match res {
                Ok(0) => eof = true,
                Ok(n) => in_pipe += n,
                // Readiness without data (a spurious wake-up): poll again.
                Err(e) if e.raw_os_error() == Some(nix::libc::EAGAIN) => {}
                Err(e) => return Err(uring_err(e)),
            }
        }
        if let Some(res) = w {
            wr = None;
            match res {
                Ok(n) => {
                    in_pipe = in_pipe.saturating_sub(n);
                    total += n as u64;
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EAGAIN) => {}
                Err(e) => return Err(uring_err(e)),
            }
        }
    }
}
