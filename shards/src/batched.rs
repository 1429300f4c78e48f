//! One `write` per connection wake-up: the socket under a connection's protocol stack (an
//! HTTP/2 server, say) holds back what the stack writes during one poll of the connection,
//! and the serving task writes it all once that poll returns ([`polled_then_flushed`]).
//! Used by the apiserver's connections and the store's etcd face.
//!
//! Why: hyper's HTTP/2 writer (the `h2` crate) copies frames below 256 bytes into its buffer
//! but chains a larger DATA payload (any stored object) and must flush it before it takes the
//! next frame. Three GETs answered in one poll were therefore three `writev` calls, three
//! trips down the loopback TCP stack and up to three wake-ups of the client: a profile of the
//! paced GET load put ~40% of the server's CPU under `writev`, one call per GET. Here those
//! three bodies are copied (cheap next to a syscall) and leave in one `write`.
//!
//! Rules that keep it correct:
//! - Deferring happens only between [`Flusher::begin`] and [`Flusher::end`], around one poll
//!   of the connection future. Outside it (the TLS handshake, an upgraded exec/attach stream
//!   driven by another task after the connection future ended), writes and flushes go to the
//!   socket at once, after whatever is still held, so bytes never change order.
//! - What is held is bounded ([`MAX_HELD`]): past it a write first pushes the held bytes to
//!   the socket and waits (backpressure) if the socket is full.
//! - [`Flusher::end`] writes what is held; if the socket is full it registers for
//!   writability, so the task is woken to finish (and the next poll's `end` does).
//! - Shutdown writes what is held first.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes held back in one poll before writes push them out.
pub const MAX_HELD: usize = 256 * 1024;

struct Shared<I> {
    io: I,
    held: Vec<u8>,
    /// How much of `held` is already written.
    written: usize,
    deferring: bool,
}

impl<I: AsyncWrite + Unpin> Shared<I> {
    /// Writes what is held; `Ready(Ok)` once nothing is.
    fn push_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        // A burst (a large LIST) should not pin its buffer for the connection's life.
        if self.held.capacity() > MAX_HELD {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// The socket as the connection's HTTP stack sees it.
pub struct BatchedWrites<I> {
    shared: Arc<Mutex<Shared<I>>>,
}

/// The serving task's handle on the same socket: marks the polls and writes what they held.
pub struct Flusher<I> {
    shared: Arc<Mutex<Shared<I>>>,
}

/// Drives a connection future, writing what each of its polls held back when that poll
/// returns. `None` when the socket failed first.
pub async fn polled_then_flushed<C: std::future::Future, I: AsyncWrite + Unpin>(
    mut conn: Pin<&mut C>,
    flusher: &Flusher<I>,
) -> Option<C::Output> {
    let mut out = None;
    std::future::poll_fn(|cx| {
        if out.is_none() {
            flusher.begin();
            let polled = conn.as_mut().poll(cx);
            let flushed = flusher.end(cx);
            if let Poll::Ready(o) = polled {
                out = Some(o);
            }
            return match flushed {
                Poll::Ready(Err(_)) => Poll::Ready(()),
                // The socket is full: it wakes the task when it drains.
                Poll::Pending if out.is_some() => Poll::Pending,
                _ if out.is_some() => Poll::Ready(()),
                _ => Poll::Pending,
            };
        }
        // The connection ended; what it wrote last is still being written.
        flusher.end(cx).map(|_| ())
    })
    .await;
    out
}

/// Wraps `io`; the two halves share it.
pub fn batched<I>(io: I) -> (BatchedWrites<I>, Flusher<I>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        held: Vec::new(),
        written: 0,
        deferring: false,
    }));
    (
        BatchedWrites {
            shared: shared.clone(),
        },
        Flusher { shared },
    )
}

fn lock<I>(m: &Mutex<Shared<I>>) -> MutexGuard<'_, Shared<I>> {
    // A panic while holding the lock leaves plain bytes and flags behind: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<I: AsyncWrite + Unpin> Flusher<I> {
    /// A poll of the connection starts: its writes are held until [`Flusher::end`].
    pub fn begin(&self) {
        lock(&self.shared).deferring = true;
    }

    /// The poll ended: write what it held. `Pending` means the socket is full and the task
    /// will be woken when it drains; call again (or `end` after the next poll).
    pub fn end(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.shared);
        s.deferring = false;
        s.push_held(cx)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for BatchedWrites<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> BatchedWrites<I> {
    /// Holds `bufs` (deferring) or writes them through after what is held.
    fn write_bufs(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.shared);
        if !s.deferring {
            ready!(s.push_held(cx))?;
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        if s.held.len() >= MAX_HELD {
            ready!(s.push_held(cx))?;
        }
        // Below MAX_HELD here (pushed out above otherwise): room is at least one byte.
        let room = MAX_HELD - s.held.len();
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(room - taken);
            s.held.extend_from_slice(&b[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bufs(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.shared);
        if s.deferring {
            // The serving task writes it when this poll of the connection returns.
            return Poll::Ready(Ok(()));
        }
        ready!(s.push_held(cx))?;
        Pin::new(&mut s.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.shared);
        ready!(s.push_held(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn end_now<I: AsyncWrite + Unpin>(f: &Flusher<I>) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        f.end(&mut cx)
    }

    #[tokio::test]
    async fn writes_in_a_poll_are_held_until_its_end_and_keep_their_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (mut w, f) = batched(a);
        w.write_all(b"direct ").await.unwrap();
        f.begin();
        w.write_all(b"one ").await.unwrap();
        w.write_all(b"two ").await.unwrap();
        w.flush().await.unwrap();
        let mut probe = [0u8; 64];
        let n = b.read(&mut probe).await.unwrap();
        assert_eq!(
            &probe[..n],
            b"direct ",
            "held bytes left before the poll ended"
        );
        assert!(end_now(&f).is_ready());
        w.write_all(b"after").await.unwrap();
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"one two after");
    }

    #[tokio::test]
    async fn a_full_socket_pushes_back_and_loses_nothing() {
        // A pipe far smaller than what one poll writes.
        let (a, mut b) = tokio::io::duplex(4096);
        let (mut w, f) = batched(a);
        let payload: Vec<u8> = (0..(MAX_HELD * 2 + 123)).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        f.begin();
        // Past MAX_HELD the writer waits for the socket instead of growing without bound.
        w.write_all(&payload).await.unwrap();
        assert!(lock(&f.shared).held.len() <= MAX_HELD);
        std::future::poll_fn(|cx| f.end(cx)).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        drop(f);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let (mut r, _f) = batched(a);
        b.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 7];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"request");
    }
}
