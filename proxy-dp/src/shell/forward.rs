//! Moving bytes between an accepted client connection and its backend connection.
//!
//! Three engines, chosen by [`ForwardMode`]; all propagate a half-close (EOF on one side
//! becomes `shutdown(SHUT_WR)` on the other, and the other direction keeps going) and a
//! reset (an error on one side closes the other with `SO_LINGER 0`, i.e. an RST):
//!
//! - [`ForwardMode::Splice`]: `splice(2)` socket → pipe → socket, driven by tokio readiness
//!   (zero-copy: the payload never enters user space). The default: it measured fastest
//!   (see BENCHMARKS.md, `## proxy-dp`).
//! - [`ForwardMode::UringSplice`]: the same pipe, with each splice submitted to the shard's
//!   io_uring ring (`shards::uring::Ring::splice`). The kernel runs io_uring splices in its
//!   worker pool (they are always punted), which costs a thread hop per operation.
//! - [`ForwardMode::Copy`]: `tokio::io::copy_bidirectional` through user-space buffers.

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
    #[default]
    Splice,
    /// `splice` through a pipe, submitted to the shard's io_uring ring.
    UringSplice,
    /// User-space copy (`tokio::io::copy_bidirectional`).
    Copy,
}

impl std::str::FromStr for ForwardMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(ForwardMode::Splice),
            "uring" | "uring-splice" => Ok(ForwardMode::UringSplice),
            "copy" => Ok(ForwardMode::Copy),
            other => Err(format!(
                "unknown forward mode {other:?} (splice, uring, copy)"
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
        ForwardMode::Splice | ForwardMode::UringSplice => {
            let uring = mode == ForwardMode::UringSplice;
            let [p1, p2] = pipes;
            // No pipe (fd limit): fall back to copying rather than refusing.
            let (Ok(p1), Ok(p2)) = (p1.map_or_else(Pipe::new, Ok), p2.map_or_else(Pipe::new, Ok))
            else {
                return (copy(client, backend, bytes).await, Vec::new());
            };
            spliced(client, backend, bytes, p1, p2, uring).await
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

async fn spliced(
    client: TcpStream,
    backend: TcpStream,
    bytes: &AtomicU64,
    p1: Pipe,
    p2: Pipe,
    uring: bool,
) -> (Outcome, Vec<Pipe>) {
    let (mut up_done, mut down_done) = (None, None);
    let mut out = Outcome::default();
    {
        let up = one_way(&client, &backend, &p1, bytes, uring);
        let down = one_way(&backend, &client, &p2, bytes, uring);
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
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let ring = if uring {
        shards::uring::Ring::current().ok()
    } else {
        None
    };
    let mut in_pipe = 0usize;
    let mut eof = false;
    let mut total = 0u64;
    loop {
        let mut progressed = false;
        if !eof && in_pipe < pipe.cap {
            let room = pipe.cap - in_pipe;
            let r = match &ring {
                Some(ring) => {
                    src.readable().await?;
                    match ring.splice(src, None, &pipe.w, None, room as u32).await {
                        Ok(n) => Ok(n),
                        Err(e) if e.raw_os_error() == Some(nix::libc::EAGAIN) => {
                            // Clear tokio's readiness so the next `readable` waits.
                            let _ = src.try_io(Interest::READABLE, || {
                                Err::<(), _>(io::ErrorKind::WouldBlock.into())
                            });
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        Err(e) => Err(io::Error::from_raw_os_error(
                            e.raw_os_error().unwrap_or(nix::libc::EIO),
                        )),
                    }
                }
                None => src.try_io(Interest::READABLE, || {
                    splice(src.as_fd(), None, pipe.w.as_fd(), None, room, flags)
                        .map_err(io::Error::from)
                }),
            };
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
            let r = match &ring {
                Some(ring) => {
                    dst.writable().await?;
                    match ring.splice(&pipe.r, None, dst, None, in_pipe as u32).await {
                        Ok(n) => Ok(n),
                        Err(e) if e.raw_os_error() == Some(nix::libc::EAGAIN) => {
                            let _ = dst.try_io(Interest::WRITABLE, || {
                                Err::<(), _>(io::ErrorKind::WouldBlock.into())
                            });
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        Err(e) => Err(io::Error::from_raw_os_error(
                            e.raw_os_error().unwrap_or(nix::libc::EIO),
                        )),
                    }
                }
                None => dst.try_io(Interest::WRITABLE, || {
                    splice(pipe.r.as_fd(), None, dst.as_fd(), None, in_pipe, flags)
                        .map_err(io::Error::from)
                }),
            };
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
