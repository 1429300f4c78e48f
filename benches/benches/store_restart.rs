//! Restart time and resident memory of the durable engine holding N objects of 1 KiB
//! (default 1,000,000; `STORE_RESTART_OBJECTS` overrides). A bench binary, not criterion:
//! it fills a data directory, closes the engine (which snapshots), then re-opens it in a
//! fresh child process and reports the open time and the child's RSS against the raw data.
//!
//! Run: `cargo bench -p kubeshard-benches --bench store_restart`.

use std::time::Instant;

use bytes::Bytes;
use futures::executor::block_on;
use store::{Backend, Engine, EngineConfig, ObjectValue, Txn, TxnOp};

const VALUE_BYTES: usize = 1024;
const BATCH: usize = 500;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn child(dir: &str, objects: u64) {
    let start = Instant::now();
    let e = Engine::open(EngineConfig::durable(dir)).expect("reopen");
    let open = start.elapsed();
    let count = block_on(e.range(store::RangeRequest {
        count_only: true,
        ..store::RangeRequest::prefix(Bytes::from_static(b"/registry/"))
    }))
    .expect("count")
    .count;
    assert_eq!(count, objects, "every object is back");
    let rss = rss_kib();
    let raw_kib = objects * VALUE_BYTES as u64 / 1024;
    println!(
        "store_restart objects={objects} open_ms={} rss_mib={} raw_mib={} rss_over_raw={:.2}",
        open.as_millis(),
        rss / 1024,
        raw_kib / 1024,
        rss as f64 / raw_kib as f64
    );
    // Not a clean close: the measurement is done, and close would snapshot again.
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let objects: u64 = std::env::var("STORE_RESTART_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dir = args.get(i + 1).expect("--child DIR");
        child(dir, objects);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes; nothing to list.
    }
    // `STORE_RESTART_DIR` keeps the data directory (for profiling the open with `--child`).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = std::env::var("STORE_RESTART_DIR")
        .unwrap_or_else(|_| dir.path().to_str().expect("utf-8 path").to_owned());
    let e = Engine::open(EngineConfig::durable(&path)).expect("open");
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let fill = Instant::now();
    let mut i = 0u64;
    while i < objects {
        let n = (objects - i).min(BATCH as u64);
        let ops = (i..i + n)
            .map(|k| TxnOp::Put {
                key: Bytes::from(format!("/registry/pods/ns-{}/pod-{k:08}", k % 100)),
                value: ObjectValue::opaque(value.clone()),
                lease: None,
                prev_kv: false,
            })
            .collect();
        block_on(e.txn(Txn {
            success: ops,
            ..Txn::default()
        }))
        .expect("fill");
        i += n;
    }
    let filled = fill.elapsed();
    let close = Instant::now();
    e.close();
    drop(e);
    println!(
        "store_restart fill_s={:.1} close_with_snapshot_ms={}",
        filled.as_secs_f64(),
        close.elapsed().as_millis()
    );
    let status = std::process::Command::new(&args[0])
        .arg("--child")
        .arg(&path)
        .env("STORE_RESTART_OBJECTS", objects.to_string())
        .status()
        .expect("spawn child");
    assert!(status.success(), "child failed: {status}");
}
