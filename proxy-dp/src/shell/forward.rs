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

use std::future::Future as _;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

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

/// Bytes one pipe holds (`F_SETPIPE_SZ`; the kernel may round up or refuse, then the
/// default 64 KiB stays).
pub const PIPE_SIZE: usize = 256 * 1024;

/// A pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

impl Pipe {
    /// A new non-blocking pipe, enlarged to [`PIPE_SIZE`] when the kernel allows.
    pub fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let cap = match fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
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

/// Forwards until both directions end. `bytes` is incremented as data moves. Pipes are
/// taken from `pipes` and handed back when they end empty (the caller pools them).
pub async fn forward(
    mode: ForwardMode,
    client: TcpStream,
    backend: TcpStream,
    bytes: &AtomicU64,
    pipes: [Option<Pipe>; 2],
) -> (Outcome, Vec<Pipe>) {
    match mode {
        ForwardMode::Copy => (copy(client, backend, bytes).await, Vec::new()),
        ForwardMode::Splice | ForwardMode::UringSplice | ForwardMode::Adaptive => {
            let engine = match mode {
                ForwardMode::UringSplice => Engine::Uring,
                ForwardMode::Adaptive => Engine::Adaptive,
                _ => Engine::Splice,
            };
            let [p1, p2] = pipes;
            // No pipe (fd limit): fall back to copying rather than refusing.
            let (Ok(p1), Ok(p2)) = (p1.map_or_else(Pipe::new, Ok), p2.map_or_else(Pipe::new, Ok))
            else {
                return (copy(client, backend, bytes).await, Vec::new());
            };
            spliced(client, backend, bytes, p1, p2, engine).await
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

async fn direction(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
    engine: Engine,
) -> io::Result<u64> {
    match engine {
        Engine::Splice => one_way(src, dst, pipe, bytes, false).await,
        Engine::Uring => one_way(src, dst, pipe, bytes, true).await,
        Engine::Adaptive => one_way_adaptive(src, dst, pipe, bytes).await,
    }
}

async fn spliced(
    client: TcpStream,
    backend: TcpStream,
    bytes: &AtomicU64,
    p1: Pipe,
    p2: Pipe,
    engine: Engine,
) -> (Outcome, Vec<Pipe>) {
    let (mut up_done, mut down_done) = (None, None);
    let mut out = Outcome::default();
    {
        let up = direction(&client, &backend, &p1, bytes, engine);
        let down = direction(&backend, &client, &p2, bytes, engine);
        tokio::pin!(up, down);
        // Both directions run until each ends; the first error resets both sides at once.
        while up_done.is_none() || down_done.is_none() {
            let failed = tokio::select! {
                r = &mut up, if up_done.is_none() => { let f = r.is_err(); up_done = Some(r); f }
                r = &mut down, if down_done.is_none() => { let f = r.is_err(); down_done = Some(r); f }
            };
            if failed {
                set_rst_on_close(&client);
                set_rst_on_close(&backend);
                out.reset = true;
                break;
            }
        }
    }
    let mut pipes = Vec::new();
    if let Some(Ok(n)) = up_done {
        out.up = n;
        pipes.push(p1);
    }
    if let Some(Ok(n)) = down_done {
        out.down = n;
        pipes.push(p2);
    }
    (out, pipes)
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
            // Half-close: tell the other side no more data comes; the other direction goes on.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
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
/// by splice. Every copied byte is written before the switch, so the pipe starts empty.
async fn one_way_adaptive(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
) -> io::Result<u64> {
    let mut buf = vec![0u8; ADAPTIVE_COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = loop {
            // Try first: data is often there already (a request that opened the
            // connection); `try_read` clears the readiness only on a real EAGAIN.
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if would_block(&e) => src.readable().await?,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(total);
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
        if n == buf.len() {
            break;
        }
    }
    drop(buf);
    Ok(total + one_way(src, dst, pipe, bytes, false).await?)
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
            // EOF read and the pipe drained: half-close, the other direction goes on.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
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
