//! io_uring operations against real files and pipes, on plain current_thread runtimes and on
//! shards: round trips, short reads, errors, splice, concurrency, back-pressure, and dropping
//! a future while the kernel still owns its buffer.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use shards::uring::{Ring, RingConfig, SetupError, UringError};
use shards::{ShardConfig, ShardId, ShardSet};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A file on a real file system (not tmpfs): under the target dir.
fn scratch() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::tempdir_in(base).expect("tempdir")
}

fn open_rw(dir: &tempfile::TempDir, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join(name))
        .expect("open")
}

/// Runs `f` on a fresh current_thread runtime with a bound on its duration.
fn run<F: std::future::Future<Output = ()>>(f: F) {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("test timed out");
    });
}

#[test]
fn write_read_fsync_fdatasync_round_trip() {
    let dir = scratch();
    let file = open_rw(&dir, "rt");
    run(async {
        let ring = Ring::current().expect("io_uring available");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (r, back) = ring.write_at(&file, data.clone(), 4096).await;
        assert_eq!(r.expect("write"), data.len());
        assert_eq!(back, data, "the buffer is handed back unchanged");
        ring.fsync(&file).await.expect("fsync");
        ring.fdatasync(&file).await.expect("fdatasync");
        // Read back through io_uring...
        let (r, got) = ring
            .read_at(&file, Vec::with_capacity(data.len()), 4096)
            .await;
        assert_eq!(r.expect("read"), data.len());
        assert_eq!(got, data);
        // ...and through std, which sees the same bytes (a real file, not a ring artifact).
        let mut std_buf = vec![0u8; data.len()];
        file.read_exact_at(&mut std_buf, 4096).expect("std read");
        assert_eq!(std_buf, data);
        // The hole before 4096 reads as zeros.
        let (r, hole) = ring
            .read_at(&file, vec![0xffu8; 16].into_boxed_slice(), 0)
            .await;
        assert_eq!(r.expect("read hole"), 16);
        assert!(hole.iter().all(|&b| b == 0));
    });
}

#[test]
fn linked_write_and_fdatasync() {
    let dir = scratch();
    let file = open_rw(&dir, "linked");
    let path = dir.path().join("ro-linked");
    std::fs::write(&path, b"x").expect("seed");
    let ro = std::fs::File::open(&path).expect("ro");
    run(async {
        let ring = Ring::current().expect("ring");
        let (r, buf) = ring.write_at_fdatasync(&file, vec![4u8; 8192], 4096).await;
        assert_eq!(r.expect("write+sync"), 8192);
        assert_eq!(buf.len(), 8192);
        // The write fails, so the linked sync is cancelled: the write's error is reported.
        let (r, _) = ring.write_at_fdatasync(&ro, vec![4u8; 16], 0).await;
        let e = r.expect_err("read-only");
        assert!(matches!(e, UringError::Os { op: "write", .. }), "{e:?}");
        // A short write (at ext4's size limit) skips the sync and says so.
        let off = u64::from(u32::MAX) * 4096 - 100;
        let (r, _) = ring.write_at_fdatasync(&file, vec![4u8; 1000], off).await;
        assert!(
            matches!(
                r,
                Err(UringError::ShortWrite {
                    written: 100,
                    len: 1000
                })
            ),
            "{r:?}"
        );
        let s = ring.stats();
        assert_eq!((s.in_flight, s.abandoned), (0, 0));
        // A ring allowing a single op in flight still runs a linked pair (it takes 2 places).
        let tiny = Ring::new(RingConfig::default().entries(2).max_in_flight(1)).expect("ring");
        let (r, _) = tiny.write_at_fdatasync(&file, vec![6u8; 512], 0).await;
        assert_eq!(r.expect("linked on a 1-place ring"), 512);
    });
    file.set_len(0).expect("truncate");
}

#[test]
fn writev_writes_buffers_in_order() {
    let dir = scratch();
    let file = open_rw(&dir, "writev");
    run(async {
        let ring = Ring::current().expect("ring");
        let bufs = vec![
            b"alpha ".to_vec(),
            Vec::new(),
            b"beta ".to_vec(),
            b"gamma".to_vec(),
        ];
        let (r, back) = ring.writev_at(&file, bufs.clone(), 10).await;
        assert_eq!(r.expect("writev"), 16);
        assert_eq!(back, bufs);
        let too_many: Vec<Vec<u8>> = (0..1025).map(|_| vec![1u8]).collect();
        let (r, back) = ring.writev_at(&file, too_many, 0).await;
        assert!(matches!(r, Err(UringError::TooLarge { len: 1025 })));
        assert_eq!(back.len(), 1025);
    });
    let mut got = vec![0u8; 16];
    file.read_exact_at(&mut got, 10).expect("read");
    assert_eq!(&got, b"alpha beta gamma");
}

#[test]
fn short_read_past_eof_and_at_eof() {
    let dir = scratch();
    let file = open_rw(&dir, "short");
    file.write_all_at(b"hello world", 0).expect("seed");
    run(async {
        let ring = Ring::current().expect("ring");
        // Ask for 4096 bytes from offset 6: only 5 exist.
        let (r, buf) = ring.read_at(&file, Vec::with_capacity(4096), 6).await;
        assert_eq!(r.expect("read"), 5);
        assert_eq!(buf, b"world");
        // At EOF: 0 bytes, an empty buffer.
        let (r, buf) = ring.read_at(&file, Vec::with_capacity(64), 11).await;
        assert_eq!(r.expect("read at eof"), 0);
        assert!(buf.is_empty());
    });
}

#[test]
fn short_write_at_the_file_size_limit() {
    // A write that crosses the file system's maximum file size is cut short by the kernel.
    // ext4 (4 KiB blocks) caps files at (2^32 - 1) * 4096 bytes; std's pwrite is the reference
    // for what the kernel does on this file system, io_uring must report the same short count.
    let dir = scratch();
    let file = open_rw(&dir, "limit");
    let ext4_max: u64 = (u64::from(u32::MAX)) * 4096;
    let off = ext4_max - 100;
    let std_n = file
        .write_at(&[7u8; 1000], off)
        .expect("std pwrite near the size limit (ext4 expected)");
    assert_eq!(
        std_n, 100,
        "the reference write must be short on this file system"
    );
    file.set_len(0).expect("truncate");
    run(async {
        let ring = Ring::current().expect("ring");
        let (r, buf) = ring.write_at(&file, vec![9u8; 1000], off).await;
        assert_eq!(r.expect("write"), 100, "io_uring reports the short write");
        assert_eq!(buf.len(), 1000, "the whole buffer comes back");
        // Past the limit: EFBIG, typed.
        let (r, _) = ring.write_at(&file, vec![9u8; 10], ext4_max).await;
        assert_eq!(
            r.expect_err("beyond the limit").raw_os_error(),
            Some(nix::errno::Errno::EFBIG as i32)
        );
        // write_all_at stops with an error rather than looping forever.
        let (r, _) = ring.write_all_at(&file, vec![9u8; 1000], off).await;
        assert!(r.is_err());
    });
    let mut tail = [0u8; 100];
    file.read_exact_at(&mut tail, off).expect("read back");
    assert!(tail.iter().all(|&b| b == 9));
    file.set_len(0).expect("truncate");
}

#[test]
fn write_all_at_delivers_everything_to_a_slow_reader() {
    run(async {
        let ring = Ring::current().expect("ring");
        let (mut rx, tx) = std::io::pipe().expect("pipe");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = rx.read(&mut chunk).expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let (r, back) = ring.write_all_at(&tx, payload.clone(), 0).await;
        r.expect("write_all_at");
        assert_eq!(back, payload);
        drop(tx);
        assert_eq!(reader.join().expect("reader"), payload);
    });
}

#[test]
fn a_closed_or_wrong_mode_fd_gives_a_typed_error_not_a_panic() {
    let dir = scratch();
    let path = dir.path().join("ro");
    std::fs::write(&path, b"data").expect("seed");
    let ro = std::fs::File::open(&path).expect("open read-only");
    run(async {
        let ring = Ring::current().expect("ring");
        let (r, buf) = ring.write_at(&ro, vec![1u8; 8], 0).await;
        let err = r.expect_err("writing a read-only fd fails");
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EBADF as i32));
        assert!(matches!(err, UringError::Os { op: "write", .. }), "{err:?}");
        assert_eq!(buf, vec![1u8; 8], "the buffer comes back on error too");
        // splice between two regular files: EINVAL, typed.
        let e = ring
            .splice(&ro, Some(0), &ro, Some(0), 4)
            .await
            .expect_err("splice needs a pipe");
        assert!(matches!(e, UringError::Os { op: "splice", .. }), "{e:?}");
    });
}

#[test]
fn splice_moves_bytes_between_a_pipe_and_a_file() {
    let dir = scratch();
    let src = open_rw(&dir, "src");
    let dst = open_rw(&dir, "dst");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect();
    src.write_all_at(&content, 0).expect("seed");
    run(async {
        let ring = Ring::current().expect("ring");
        let (rx, tx) = std::io::pipe().expect("pipe");
        let mut moved = 0usize;
        while moved < content.len() {
            // file -> pipe (at an explicit offset), then pipe -> file.
            let n = ring
                .splice(&src, Some(moved as u64), &tx, None, 16_384)
                .await
                .expect("file to pipe");
            assert!(n > 0);
            let mut left = n;
            while left > 0 {
                let m = ring
                    .splice(
                        &rx,
                        None,
                        &dst,
                        Some((moved + n - left) as u64),
                        left as u32,
                    )
                    .await
                    .expect("pipe to file");
                assert!(m > 0);
                left -= m;
            }
            moved += n;
        }
        // End of input: splicing from offset == len gives 0.
        assert_eq!(
            ring.splice(&src, Some(content.len() as u64), &tx, None, 100)
                .await
                .expect("eof"),
            0
        );
    });
    let mut out = Vec::new();
    std::fs::File::open(dir.path().join("dst"))
        .expect("open")
        .read_to_end(&mut out)
        .expect("read");
    assert_eq!(out, content);
}

#[test]
fn many_concurrent_ops_beyond_the_in_flight_bound_all_complete() {
    let dir = scratch();
    let file = open_rw(&dir, "many");
    run(async {
        // A tiny ring: 8 in flight at most, 300 ops at once must queue (back-pressure).
        let ring = Ring::new(RingConfig::default().entries(4).max_in_flight(8)).expect("ring");
        assert_eq!(ring.max_in_flight(), 8);
        let mut ops = Vec::new();
        for i in 0..300u64 {
            let ring = ring.clone();
            let file = &file;
            ops.push(async move {
                let (r, _) = ring
                    .write_at(file, vec![(i % 256) as u8; 512], i * 512)
                    .await;
                assert_eq!(r.expect("write"), 512);
            });
        }
        let ring2 = ring.clone();
        let watcher = async {
            let mut max_seen = 0;
            for _ in 0..50 {
                let s = ring2.stats();
                assert!(s.in_flight <= 8, "bound exceeded: {s:?}");
                max_seen = max_seen.max(s.in_flight);
                tokio::task::yield_now().await;
            }
            max_seen
        };
        let (_, max_seen) = tokio::join!(futures::future::join_all(ops), watcher);
        assert!(max_seen <= 8);
        ring.fdatasync(&file).await.expect("sync");
        let stats = ring.stats();
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.waiting_to_submit, 0);
        assert!(stats.completed >= 301);
    });
    for i in 0..300u64 {
        let mut b = [0u8; 512];
        file.read_exact_at(&mut b, i * 512).expect("read");
        assert!(b.iter().all(|&x| x == (i % 256) as u8), "block {i}");
    }
}

#[test]
fn concurrent_ops_from_separate_tasks_are_all_woken() {
    // Several tasks (not one joined future) each wait on a pipe read: every one must be woken
    // by the shared eventfd even though only one of them is registered with it at a time.
    run(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut pipes = Vec::new();
                let mut tasks = Vec::new();
                for _ in 0..6 {
                    let (rx, tx) = std::io::pipe().expect("pipe");
                    pipes.push(tx);
                    tasks.push(tokio::task::spawn_local(async move {
                        let ring = Ring::current().expect("ring");
                        let (r, buf) = ring.read_at(&rx, Vec::with_capacity(8), 0).await;
                        assert_eq!(r.expect("read"), 3);
                        buf
                    }));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Complete them in an order unrelated to who polled the eventfd last.
                for i in [2usize, 5, 0, 4, 1, 3] {
                    (&pipes[i]).write_all(b"abc").expect("write");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                for t in tasks {
                    assert_eq!(t.await.expect("task"), b"abc");
                }
            })
            .await;
    });
}

#[test]
fn dropping_a_future_mid_flight_keeps_its_buffer_until_the_kernel_completes() {
    run(async {
        let ring = Ring::current().expect("ring");
        let (rx, mut tx) = std::io::pipe().expect("pipe");
        {
            // A read on an empty pipe stays in the kernel. Poll it once so it is submitted,
            // then drop it.
            let fut = ring.read_at(&rx, Vec::with_capacity(64), 0);
            let mut fut = Box::pin(fut);
            let polled = futures::poll!(fut.as_mut());
            assert!(polled.is_pending());
            assert_eq!(ring.stats().in_flight, 1);
        }
        let s = ring.stats();
        assert_eq!(
            (s.in_flight, s.abandoned),
            (1, 1),
            "the ring holds the dropped op's buffer"
        );
        // Completing it (data arrives) lets the ring free the buffer; later ops still work.
        tx.write_all(b"late data").expect("write");
        for _ in 0..200 {
            ring.nop().await.expect("nop");
            if ring.stats().abandoned == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = ring.stats();
        assert_eq!((s.in_flight, s.abandoned), (0, 0));

        // The same for a linked pair (two completions pending): a write into a full pipe
        // waits in the kernel; dropped, it is released only after both entries complete.
        let mut w = &tx;
        let cap = usize::try_from(
            nix::fcntl::fcntl(&tx, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("size"),
        )
        .expect("size");
        w.write_all(&vec![0u8; cap]).expect("fill");
        {
            let mut fut = Box::pin(ring.write_at_fdatasync(&tx, vec![5u8; 10], 0));
            assert!(futures::poll!(fut.as_mut()).is_pending());
        }
        let s = ring.stats();
        assert_eq!((s.in_flight, s.abandoned), (2, 1));
        let mut rx = rx;
        let mut sink = vec![0u8; cap];
        rx.read_exact(&mut sink).expect("drain");
        for _ in 0..200 {
            ring.nop().await.expect("nop");
            if ring.stats().abandoned == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = ring.stats();
        assert_eq!((s.in_flight, s.abandoned), (0, 0));
        let mut tail = [0u8; 10];
        rx.read_exact(&mut tail)
            .expect("the abandoned write still landed");
        assert_eq!(tail, [5u8; 10]);
    });
}

#[test]
fn a_ring_dropped_with_a_never_completing_op_cancels_it_without_hanging() {
    let t0 = std::time::Instant::now();
    run(async {
        let ring = Ring::new(RingConfig::default()).expect("ring");
        let (rx, _tx) = std::io::pipe().expect("pipe");
        let mut fut = Box::pin(ring.read_at(&rx, Vec::with_capacity(64), 0));
        assert!(futures::poll!(fut.as_mut()).is_pending());
        drop(fut);
        assert_eq!(ring.stats().abandoned, 1);
        drop(ring); // cancels the read, then frees its buffer
    });
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn probe_reports_availability_without_a_runtime() {
    // This machine has io_uring (the suite targets Linux >= 5.19 with io_uring enabled).
    Ring::probe().expect("io_uring available");
}

#[test]
fn ring_without_a_runtime_is_a_typed_error() {
    assert!(matches!(Ring::current(), Err(SetupError::NoRuntime)));
    assert!(matches!(
        Ring::new(RingConfig::default()),
        Err(SetupError::NoRuntime)
    ));
}

#[test]
fn the_thread_ring_is_per_runtime() {
    // Two runtimes one after the other on one thread: the second gets a fresh, working ring.
    for _ in 0..2 {
        run(async {
            let ring = Ring::current().expect("ring");
            ring.nop().await.expect("nop");
        });
    }
}

#[test]
fn rings_work_on_shards() {
    let dir = scratch();
    let path = dir.path().join("shardfile");
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let r = rt().block_on(set.handle().invoke_on_all(move || async move {
        let shard = shards::current_shard().expect("on a shard");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let ring = Ring::current().map_err(std::io::Error::other)?;
        let off = u64::from(shard.0) * 4096;
        let (r, _) = ring
            .write_at(&file, vec![shard.0 as u8 + 1; 4096], off)
            .await;
        r.map_err(std::io::Error::other)?;
        ring.fdatasync(&file).await.map_err(std::io::Error::other)?;
        let (r, buf) = ring.read_at(&file, Vec::with_capacity(4096), off).await;
        r.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(buf.iter().all(|&b| b == shard.0 as u8 + 1))
    }));
    let r = r.expect("invoke");
    assert_eq!(
        r.into_iter().map(|x| x.expect("io")).collect::<Vec<_>>(),
        vec![true, true]
    );
    set.shutdown().expect("shutdown");
    let _ = ShardId(0);
}

/// A non-blocking socket pair on loopback (TCP): (one end, the other end).
fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    (a, b)
}

#[test]
fn poll_splice_waits_for_data_and_cancels_when_dropped() {
    use shards::uring::PollEvents;
    run(async {
        let ring = Ring::current().expect("io_uring available");
        let (mut a, b) = tcp_pair();
        let (rx, tx) = std::io::pipe().expect("pipe");
        // Nothing to read yet: the op waits in the kernel (a bare splice would say EAGAIN).
        let op = ring.poll_splice(&b, PollEvents::Readable, &b, &tx, 4096);
        tokio::pin!(op);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut op)
                .await
                .is_err(),
            "no data yet: still waiting"
        );
        a.write_all(b"hello").expect("write");
        let n = tokio::time::timeout(Duration::from_secs(5), &mut op)
            .await
            .expect("completes once data arrives")
            .expect("splice");
        assert_eq!(n, 5);
        let mut got = [0u8; 5];
        (&rx).read_exact(&mut got).expect("read pipe");
        assert_eq!(&got, b"hello");

        // Pipe -> socket, waiting for write space.
        (&tx).write_all(b"back").expect("fill pipe");
        let n = ring
            .poll_splice(&b, PollEvents::Writable, &rx, &b, 4)
            .await
            .expect("splice out");
        assert_eq!(n, 4);
        let mut got = [0u8; 4];
        a.set_nonblocking(false).expect("blocking");
        a.read_exact(&mut got).expect("read socket");
        assert_eq!(&got, b"back");

        // Dropped while waiting: cancelled, so nothing stays in flight (bounded wait).
        {
            let op = ring.poll_splice(&b, PollEvents::Readable, &b, &tx, 4096);
            tokio::pin!(op);
            let _ = tokio::time::timeout(Duration::from_millis(20), &mut op).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ring.stats().in_flight > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "cancel did not complete"
            );
            // Any op reaps completions; a nop is the cheapest.
            ring.nop().await.expect("nop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ring.stats().abandoned, 0);
    });
}
