//! Opens an existing durable data directory and reports the open time and the process's RSS:
//! the child half of `benches/benches/store_restart.rs` in a binary that builds from this
//! crate alone, for profiling and iterating on the open without relinking the benches.
//!
//! Usage: `store_open DIR [OBJECTS]` on a directory that `store_restart` filled and kept
//! (`STORE_RESTART_DIR=DIR cargo bench -p kubeshard-benches --bench store_restart`). With
//! `OBJECTS`, checks that a count of `/registry/` gives that many keys. Like the bench, it
//! keeps the system allocator, so its RSS compares with the bench's.

use std::time::Instant;

use bytes::Bytes;
use futures::executor::block_on;
use store::{Backend, Engine, EngineConfig};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: store_open DIR [OBJECTS]")?;
    let objects: Option<u64> = args.next().map(|n| n.parse()).transpose()?;
    let start = Instant::now();
    let e = Engine::open(EngineConfig::durable(&dir))?;
    let open = start.elapsed();
    let count = block_on(e.range(store::RangeRequest {
        count_only: true,
        ..store::RangeRequest::prefix(Bytes::from_static(b"/registry/"))
    }))?
    .count;
    if let Some(n) = objects
        && n != count
    {
        return Err(format!("expected {n} objects, found {count}").into());
    }
    println!(
        "store_open objects={count} open_ms={} rss_mib={}",
        open.as_millis(),
        rss_kib() / 1024
    );
    // Not a clean close: close would snapshot again.
    std::process::exit(0);
}
