//! The attach channel between the runtime and a container's shim: a Unix socket
//! (`<container>/attach.sock`) the shim listens on for the container's whole life, so the
//! container's stdin (a pipe, or the pty master with `tty: true`) stays open across attaches
//! and across kubelet restarts, as CRI runtimes keep it.
//!
//! Frames both ways are `[kind u8][len u32 BE][payload]`:
//! - to the shim: [`TO_STDIN`] (bytes for stdin), [`TO_STDIN_EOF`] (this client closed its
//!   stdin), [`TO_RESIZE`] (cols u16 BE, rows u16 BE), [`TO_HELLO_STDIN`] (this client attaches
//!   stdin: with `stdinOnce`, its end closes the container's stdin);
//! - from the shim: [`FROM_STDOUT`] and [`FROM_STDERR`] output from the moment of attaching.
//!
//! The shim closes the connection once the container has exited and its output is drained.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// Bytes for the container's stdin.
pub const TO_STDIN: u8 = 0;
/// The client closed its stdin.
pub const TO_STDIN_EOF: u8 = 1;
/// Terminal size: cols then rows, u16 big-endian each.
pub const TO_RESIZE: u8 = 2;
/// The client attaches stdin (sent first).
pub const TO_HELLO_STDIN: u8 = 3;
/// Container output on stdout (or the terminal).
pub const FROM_STDOUT: u8 = 1;
/// Container output on stderr.
pub const FROM_STDERR: u8 = 2;

/// Largest frame payload accepted (output is sent in pieces of at most 32 KiB).
pub const MAX_FRAME: usize = 1 << 20;

/// The socket's file name in the container directory.
pub const SOCKET: &str = "attach.sock";

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Reads one frame; `None` at a clean end of the connection. Not cancel-safe: run it in a
/// task of its own rather than in a `select!` arm.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, Bytes)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("attach frame of {len} bytes"),
        ));
    }
    let mut b = vec![0u8; len];
    r.read_exact(&mut b).await?;
    Ok(Some((head[0], Bytes::from(b))))
}

/// Runs `f` with a path naming `dir/name` that fits a Unix socket address (108 bytes):
/// the path itself, or `/proc/self/fd/N/name` through a descriptor of `dir`.
pub fn with_socket_path<T>(dir: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let p = dir.join(SOCKET);
    if p.as_os_str().len() < 100 {
        return f(&p);
    }
    let d = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd()));
    let r = f(&short);
    drop(d);
    r
}

/// A pty master (or any non-blocking character device) as an async reader and writer; `EIO`
/// (every slave closed) reads as the end of the stream.
#[derive(Clone)]
pub struct FdIo(Arc<AsyncFd<OwnedFd>>);

impl FdIo {
    /// Wraps `fd`, switching it to non-blocking mode (needs a Tokio reactor).
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let fl = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        fcntl(
            &fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        Ok(FdIo(Arc::new(crate::sys::async_fd(fd)?)))
    }

    /// The descriptor (for terminal ioctls).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

impl AsyncRead for FdIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut g = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match g.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut g = ready!(self.0.poll_write_ready(cx))?;
            match g.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
