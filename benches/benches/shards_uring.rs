//! io_uring write + fdatasync against std (`File::write_at` + `sync_data`) for 4 KiB and
//! 64 KiB records on the same file system (a temp dir under the target dir, not tmpfs).
//!
//! `cargo bench -p kubeshard-benches --bench shards_uring -- --warm-up-time 1 --measurement-time 5`
//!
//! Each iteration writes one record at the next offset and waits for fdatasync, as a WAL
//! group commit of one record would. Offsets wrap inside an 8 MiB region that is written once
//! before measuring, so both peers overwrite allocated blocks (no allocation in the timing).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::uring::Ring;

const REGION: u64 = 8 << 20;

fn prepared_file(dir: &tempfile::TempDir, name: &str) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join(name))
        .expect("open");
    let chunk = vec![0u8; 1 << 20];
    for i in 0..(REGION >> 20) {
        f.write_all_at(&chunk, i << 20).expect("prefill");
    }
    f.sync_all().expect("sync");
    f
}

fn uring_vs_std(c: &mut Criterion) {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ring = rt
        .block_on(async { Ring::current() })
        .expect("io_uring available");

    let mut g = c.benchmark_group("shards_uring/write_fdatasync");
    for size in [4096usize, 65536] {
        g.throughput(Throughput::Bytes(size as u64));
        let slots = REGION / size as u64;

        let file = prepared_file(&dir, &format!("std-{size}"));
        let mut next = 0u64;
        g.bench_with_input(BenchmarkId::new("std", size), &size, |b, &size| {
            let rec = vec![0x5au8; size];
            b.iter(|| {
                let off = (next % slots) * size as u64;
                next += 1;
                file.write_all_at(&rec, off).expect("write");
                file.sync_data().expect("fdatasync");
            });
        });

        let file = prepared_file(&dir, &format!("uring-{size}"));
        let mut next = 0u64;
        g.bench_with_input(BenchmarkId::new("io_uring", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut rec = vec![0x5au8; size];
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let off = (next % slots) * size as u64;
                        next += 1;
                        let (r, back) = ring.write_all_at(&file, rec, off).await;
                        r.expect("write");
                        rec = back;
                        ring.fdatasync(&file).await.expect("fdatasync");
                    }
                    t0.elapsed()
                })
            });
        });

        // The same, submitted as one linked write -> fdatasync pair (one io_uring_enter).
        let file = prepared_file(&dir, &format!("linked-{size}"));
        let mut next = 0u64;
        g.bench_with_input(
            BenchmarkId::new("io_uring_linked", size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut rec = vec![0x5au8; size];
                        let t0 = Instant::now();
                        for _ in 0..iters {
                            let off = (next % slots) * size as u64;
                            next += 1;
                            let (r, back) = ring.write_at_fdatasync(&file, rec, off).await;
                            r.expect("write+fdatasync");
                            rec = back;
                        }
                        t0.elapsed()
                    })
                });
            },
        );

        // Paired: std and io_uring alternate record by record on one file, so both see the
        // same device conditions (on a shared machine fdatasync latency drifts by several x
        // between runs of the separate benches above). The reported time is io_uring's; the
        // per-sample ratio io_uring/std is printed as a median.
        let file = prepared_file(&dir, &format!("paired-{size}"));
        let mut next = 0u64;
        let mut ratios: Vec<f64> = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("paired_io_uring", size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    let mut rec = vec![0x5au8; size];
                    let (mut t_std, mut t_uring) = (Duration::ZERO, Duration::ZERO);
                    for _ in 0..iters {
                        let off = (next % slots) * size as u64;
                        next += 1;
                        let t0 = Instant::now();
                        file.write_all_at(&rec, off).expect("write");
                        file.sync_data().expect("fdatasync");
                        t_std += t0.elapsed();
                        let t0 = Instant::now();
                        rec = rt.block_on(async {
                            let (r, back) = ring.write_all_at(&file, rec, off).await;
                            r.expect("write");
                            ring.fdatasync(&file).await.expect("fdatasync");
                            back
                        });
                        t_uring += t0.elapsed();
                    }
                    if !t_std.is_zero() {
                        ratios.push(t_uring.as_secs_f64() / t_std.as_secs_f64());
                    }
                    t_uring
                });
            },
        );
        ratios.sort_by(f64::total_cmp);
        if let Some(m) = ratios.get(ratios.len() / 2) {
            println!(
                "paired io_uring/std ratio, {size} B records: median {m:.3} over {} samples",
                ratios.len()
            );
        }
    }
    g.finish();
}

criterion_group!(benches, uring_vs_std);
criterion_main!(benches);
