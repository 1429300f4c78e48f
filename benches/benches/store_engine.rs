//! In-process benches of the embedded store engine (`store::Engine`): put throughput (in
//! memory, and durable on the WAL with 1/16/64 concurrent clients), get, a range of 10,000
//! keys, and watch fan-out of one event to 1,000 and 10,000 watchers.
//!
//! Run: `cargo bench -p kubeshard-benches --bench store_engine`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::FutureExt;
use futures::StreamExt;
use futures::executor::block_on;
use store::{
    Backend, Engine, EngineConfig, ObjectValue, RangeEnd, RangeRequest, Txn, TxnOp, WatchEvent,
    WatchFilter, WatchRequest,
};

fn engine() -> Arc<Engine> {
    let mut cfg = EngineConfig::in_memory();
    cfg.shards = 2;
    cfg.watch_buffer_events = 100_000;
    Engine::open(cfg).expect("open engine")
}

fn put(key: Bytes, value: Bytes) -> Txn {
    Txn {
        success: vec![TxnOp::Put {
            key,
            value: ObjectValue::opaque(value),
            lease: None,
            prev_kv: false,
        }],
        ..Txn::default()
    }
}

fn bench_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_engine/put");
    for size in [256usize, 4096] {
        let e = engine();
        let value = Bytes::from(vec![b'x'; size]);
        let mut i = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                i += 1;
                // 10,000 distinct keys, overwritten in turn (history compacted below).
                let key = Bytes::from(format!("/registry/pods/ns/p{}", i % 10_000));
                block_on(e.txn(put(key, value.clone()))).expect("put");
                if i.is_multiple_of(50_000) {
                    let rev = e.revision();
                    block_on(e.compact(rev)).expect("compact");
                }
            });
        });
        e.close();
    }
    g.finish();
}

/// Durable puts (acknowledged after fdatasync) from `clients` threads at once: throughput
/// under group commit. Each sample spreads its iterations over the clients.
fn bench_durable_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_engine/durable_put");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(1));
    // overlap 1: one fdatasync in flight per shard (classic group commit, the "before");
    // overlap 4: the default overlapped group commit. Side by side in one run.
    for size in [256usize, 4096] {
        for overlap in [1usize, 4] {
            for clients in [1u64, 16, 64] {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut cfg = EngineConfig::durable(dir.path());
                cfg.shards = 2;
                cfg.wal_inflight_syncs = overlap;
                let e = Engine::open(cfg).expect("open durable engine");
                let value = Bytes::from(vec![b'd'; size]);
                let mut round = 0u64;
                let id = BenchmarkId::new(format!("{size}B/overlap{overlap}"), clients);
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        round += 1;
                        let per = iters.div_ceil(clients);
                        let start = std::time::Instant::now();
                        let threads: Vec<_> = (0..clients)
                            .map(|t| {
                                let (e, value) = (e.clone(), value.clone());
                                std::thread::spawn(move || {
                                    for i in 0..per {
                                        let key = Bytes::from(format!(
                                            "/registry/pods/ns/c{t}-{}",
                                            (round * 7 + i) % 1000
                                        ));
                                        block_on(e.txn(put(key, value.clone()))).expect("put");
                                    }
                                })
                            })
                            .collect();
                        for t in threads {
                            t.join().expect("client thread");
                        }
                        let elapsed = start.elapsed();
                        // Scale to exactly `iters` operations.
                        elapsed.mul_f64(iters as f64 / (per * clients) as f64)
                    });
                });
                e.close();
            }
        }
    }
    g.finish();
}

fn fill(e: &Engine, n: usize, size: usize) {
    let value = Bytes::from(vec![b'y'; size]);
    for i in 0..n {
        let key = Bytes::from(format!("/registry/pods/ns/p{i:06}"));
        block_on(e.txn(put(key, value.clone()))).expect("fill");
    }
}

fn bench_get(c: &mut Criterion) {
    let e = engine();
    fill(&e, 10_000, 1024);
    let mut g = c.benchmark_group("store_engine/get");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("1KiB", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let key = Bytes::from(format!("/registry/pods/ns/p{i:06}"));
            let kv = block_on(e.get(key)).expect("get");
            assert!(kv.is_some());
        });
    });
    g.finish();
    let mut g = c.benchmark_group("store_engine/range");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("10000x1KiB", |b| {
        b.iter(|| {
            let r = block_on(e.range(RangeRequest::prefix(Bytes::from_static(b"/registry/pods/"))))
                .expect("range");
            assert_eq!(r.kvs.len(), 10_000);
        });
    });
    g.finish();
    e.close();
}

fn bench_watch(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_engine/watch_fanout");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    for n in [1_000usize, 10_000] {
        let e = engine();
        let mut streams: Vec<_> = (0..n)
            .map(|_| {
                block_on(e.watch(WatchRequest {
                    key: Bytes::from_static(b"/registry/pods/"),
                    range_end: RangeEnd::Prefix,
                    start_revision: None,
                    filter: WatchFilter::default(),
                    prev_kv: false,
                    progress_notify: false,
                }))
                .expect("watch")
            })
            .collect();
        let value = Bytes::from(vec![b'z'; 1024]);
        let mut i = 0u64;
        g.throughput(Throughput::Elements(n as u64));
        // One put, then every watcher receives it: put-to-delivery of one event to all.
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i += 1;
                let key = Bytes::from(format!("/registry/pods/ns/w{}", i % 1000));
                let rev = block_on(e.txn(put(key, value.clone())))
                    .expect("put")
                    .revision;
                for s in &mut streams {
                    loop {
                        match s.next().now_or_never() {
                            Some(Some(Ok(evs))) => {
                                if evs.iter().any(|ev| {
                                    !matches!(ev, WatchEvent::Progress(_)) && ev.revision() >= rev
                                }) {
                                    break;
                                }
                            }
                            Some(other) => panic!("watch ended: {other:?}"),
                            None => std::thread::yield_now(),
                        }
                    }
                }
            });
        });
        drop(streams);
        e.close();
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_put,
    bench_durable_put,
    bench_get,
    bench_watch
);
criterion_main!(benches);
