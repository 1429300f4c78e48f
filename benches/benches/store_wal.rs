//! Durable WAL append throughput and latency: 1, 16 and 64 concurrent appenders, 256 B and
//! 4 KiB payloads, io_uring vs std file I/O, with and without segment preallocation; plus the
//! naive peer (one `write` + one `fdatasync` per record, no group commit).
//!
//! Runs on the real disk (`/var/tmp`, override with `KUBESHARD_BENCH_DIR`), never tmpfs.
//! criterion reports time per durable record (so 1/throughput); after each configuration the
//! bench prints the per-append latency p50/p99 it observed.
//!
//! `cargo bench -p kubeshard-benches --bench store_wal`

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use store::Revision;
use store::fileio::{StdStorage, Storage, UringStorage};
use store::wal::{Wal, WalOptions};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("KUBESHARD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    tempfile::Builder::new()
        .prefix("kubeshard-wal-bench")
        .tempdir_in(base)
        .expect("bench dir")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Config {
    io: &'static str,
    storage: Arc<dyn Storage>,
    preallocate: bool,
}

fn wal_appends(c: &mut Criterion) {
    let uring_ok = UringStorage::probe();
    if let Err(e) = &uring_ok {
        eprintln!("io_uring unavailable ({e}): io_uring rows fall back to std");
    }
    let configs = [
        Config {
            io: "std",
            storage: Arc::new(StdStorage),
            preallocate: true,
        },
        Config {
            io: "io_uring",
            storage: Arc::new(UringStorage),
            preallocate: true,
        },
        Config {
            io: "std-noprealloc",
            storage: Arc::new(StdStorage),
            preallocate: false,
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("store_wal_append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    for cfg in &configs {
        for payload_len in [256usize, 4096] {
            for appenders in [1u64, 16, 64] {
                if cfg.io == "std-noprealloc" && appenders == 16 {
                    continue;
                }
                let dir = bench_dir();
                let mut opts = WalOptions::with_storage(cfg.storage.clone());
                opts.preallocate = cfg.preallocate;
                let (wal, _) = Wal::open(dir.path(), 0, opts).expect("open wal");
                let wal = Arc::new(wal);
                let rev = Arc::new(AtomicU64::new(1));
                let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
                let payload = Bytes::from(vec![0x5au8; payload_len]);
                let id = BenchmarkId::new(format!("{}/{}B", cfg.io, payload_len), appenders);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        rt.block_on(run_appenders(
                            &wal, &rev, &latencies, &payload, appenders, iters,
                        ));
                        let elapsed = start.elapsed();
                        // Keep the log small between samples (not timed).
                        let upto = Revision(rev.load(Ordering::Relaxed));
                        rt.block_on(wal.truncate_before(upto)).expect("truncate");
                        elapsed
                    });
                });
                let mut lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
                lat.sort_unstable();
                let stats = wal.stats();
                eprintln!(
                    "store_wal {}/{}B/{}: append latency p50 {:?} p99 {:?}; {:.1} records per fdatasync",
                    cfg.io,
                    payload_len,
                    appenders,
                    percentile(&lat, 0.5),
                    percentile(&lat, 0.99),
                    stats.records as f64 / stats.batches.max(1) as f64,
                );
                drop(wal);
            }
        }
    }
    group.finish();
}

async fn run_appenders(
    wal: &Arc<Wal>,
    rev: &Arc<AtomicU64>,
    latencies: &Arc<Mutex<Vec<Duration>>>,
    payload: &Bytes,
    appenders: u64,
    iters: u64,
) {
    let remaining = Arc::new(AtomicU64::new(iters));
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (wal, rev, remaining, payload) =
            (wal.clone(), rev.clone(), remaining.clone(), payload.clone());
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            // Bounded by `iters` in total across the appenders.
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let r = Revision(rev.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                wal.append(payload.clone(), r).await.expect("append");
                local.push(t.elapsed());
            }
            latencies.lock().expect("latencies").extend(local);
        }));
    }
    for t in tasks {
        t.await.expect("appender task");
    }
}

/// The naive peer: one `pwrite` + one `fdatasync` per record (what a log without group
/// commit does), on a preallocated file.
fn naive_peer(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_wal_naive_peer");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    for payload_len in [256usize, 4096] {
        let dir = bench_dir();
        let path = dir.path().join("naive.log");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&vec![0u8; 64 << 20]).expect("prealloc");
        file.sync_all().expect("sync");
        let buf = vec![0x5au8; payload_len + 32];
        let mut off = 0u64;
        group.bench_function(BenchmarkId::new(format!("std/{payload_len}B"), 1), |b| {
            b.iter(|| {
                file.write_all_at(&buf, off).expect("write");
                file.sync_data().expect("fdatasync");
                off = (off + buf.len() as u64) % (60 << 20);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, wal_appends, naive_peer);
criterion_main!(benches);
