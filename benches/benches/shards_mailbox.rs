//! Cross-shard mailbox: round-trip latency (shard to shard, and from a non-shard thread) and
//! throughput (many invocations in flight).
//!
//! `cargo bench -p kubeshard-benches --bench shards_mailbox -- --warm-up-time 1 --measurement-time 5`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shards::{ShardConfig, ShardHandle, ShardId, ShardSet};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn start(pin: bool) -> ShardSet {
    ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .pin(pin)
            .stall_threshold(None),
    )
    .expect("start")
}

/// `iters` sequential invoke_on round trips from shard 0 to shard 1, timed on shard 0.
fn shard_to_shard(rt: &tokio::runtime::Runtime, h: &ShardHandle, iters: u64) -> Duration {
    let h2 = h.clone();
    let elapsed = rt.block_on(h.invoke_on(ShardId(0), move || async move {
        let t0 = Instant::now();
        for i in 0..iters {
            let r = h2.invoke_on(ShardId(1), move || async move { i }).await;
            std::hint::black_box(r.ok());
        }
        t0.elapsed()
    }));
    elapsed.unwrap_or(Duration::ZERO)
}

fn mailbox(c: &mut Criterion) {
    let rt = rt();

    // Pinned (the production setting) and unpinned: on a loaded machine a pinned thread waits
    // for its own core, which shows up directly in wake-up latency.
    for pin in [true, false] {
        let set = start(pin);
        let h = set.handle().clone();
        let name = if pin {
            "shards_mailbox/round_trip_shard_to_shard"
        } else {
            "shards_mailbox/round_trip_shard_to_shard_unpinned"
        };
        c.bench_function(name, |b| {
            b.iter_custom(|iters| shard_to_shard(&rt, &h, iters))
        });
        set.shutdown().expect("shutdown");
    }

    let set = start(true);
    let h = set.handle().clone();

    // From a non-shard thread's runtime to shard 1 and back.
    c.bench_function("shards_mailbox/round_trip_external_to_shard", |b| {
        b.iter(|| rt.block_on(h.invoke_on(ShardId(1), || async { 1u64 })));
    });

    // Throughput: shard 0 keeps 256 invocations in flight towards shard 1.
    const BATCH: u64 = 256;
    let mut g = c.benchmark_group("shards_mailbox");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("throughput_256_in_flight_shard_to_shard", |b| {
        b.iter_custom(|iters| {
            let h2 = h.clone();
            let elapsed = rt.block_on(h.invoke_on(ShardId(0), move || async move {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let calls =
                        (0..BATCH).map(|i| h2.invoke_on(ShardId(1), move || async move { i }));
                    let rs = futures::future::join_all(calls).await;
                    std::hint::black_box(rs.len());
                }
                t0.elapsed()
            }));
            elapsed.unwrap_or(Duration::ZERO)
        });
    });
    g.finish();
    set.shutdown().expect("shutdown");
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
