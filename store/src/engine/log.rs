//! The seam between the engine and its write-ahead log.
//!
//! The engine writes one record per shard a revision touches and acknowledges the write
//! once every record of it, and of every revision before it, is durable. [`LogStore`] is the
//! log as the engine sees it: per-shard append futures that resolve when durable, and the
//! records recovered at open. The production implementation is the per-shard WAL; [`MemLog`]
//! keeps records in memory across engine instances, with injectable append failures, so the
//! model tests can restart the engine and exercise the failure path.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::StoreError;

/// Recovered records: per shard, `(revision, payload)` in append order.
pub type Recovered = Vec<Vec<(u64, Bytes)>>;

/// A future resolving once an appended record is durable.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A per-shard write-ahead log, as the engine uses it.
///
/// Owed by implementations: `append` keeps call order per shard; it resolves `Ok` only once
/// the record and every record appended before it on that shard are durable; records of a
/// failed append never come back from recovery.
pub trait LogStore: Send + Sync + fmt::Debug + 'static {
    /// Number of shard logs (the engine uses as many data shards).
    fn shards(&self) -> usize;

    /// Appends `payload` (with its `revision`, non-decreasing per shard) to shard `shard`.
    fn append(&self, shard: usize, payload: Bytes, revision: u64) -> AppendFuture;

    /// The records recovered at open, per shard, in append order (handed out once).
    fn take_recovered(&self) -> Result<Recovered, StoreError>;

    /// Bytes the logs occupy (for status and the disk quota).
    fn disk_bytes(&self) -> u64;

    /// Stops the log after queued appends finish.
    fn close(&self);

    /// Drops records below `revision` (a durable snapshot covers them). Best effort.
    fn truncate_before(&self, _revision: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Where this log's shard snapshots live, if it keeps any.
    fn snapshot_dir(&self) -> Option<(std::path::PathBuf, Arc<dyn crate::fileio::Storage>)> {
        None
    }
}

/// An in-memory [`LogStore`] whose records outlive the engine (tests): "restart" opens a
/// new engine on the same `MemLog`.
#[derive(Default)]
pub struct MemLog {
    shards: Mutex<Vec<Vec<(u64, Bytes)>>>,
    fail: AtomicBool,
    bytes: AtomicU64,
}

impl fmt::Debug for MemLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemLog")
            .field("shards", &self.shards.lock().len())
            .finish()
    }
}

impl MemLog {
    /// An empty log of `shards` shards.
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: Mutex::new(vec![Vec::new(); shards.max(1)]),
            ..Self::default()
        })
    }

    /// While set, every append fails with an I/O error (nothing is stored).
    pub fn fail_appends(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    /// Loses every record of `revision` in every shard, as a crash does to a revision whose
    /// shards' `fdatasync` had not finished while a later revision's, on another shard, had.
    /// Returns how many records were dropped.
    pub fn lose_revision(&self, revision: u64) -> usize {
        let mut shards = self.shards.lock();
        let before: usize = shards.iter().map(Vec::len).sum();
        for log in shards.iter_mut() {
            log.retain(|(rev, _)| *rev != revision);
        }
        before - shards.iter().map(Vec::len).sum::<usize>()
    }

    /// Records stored so far, all shards.
    pub fn record_count(&self) -> usize {
        self.shards.lock().iter().map(Vec::len).sum()
    }
}

impl LogStore for MemLog {
    fn shards(&self) -> usize {
        self.shards.lock().len()
    }

    fn append(&self, shard: usize, payload: Bytes, revision: u64) -> AppendFuture {
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(StoreError::Io(
                std::io::Error::other("injected append failure"),
            ))));
        }
        let mut shards = self.shards.lock();
        let Some(log) = shards.get_mut(shard) else {
            return Box::pin(std::future::ready(Err(StoreError::InvalidRequest(
                format!("no shard {shard}"),
            ))));
        };
        self.bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        log.push((revision, payload));
        Box::pin(std::future::ready(Ok(())))
    }

    fn take_recovered(&self) -> Result<Recovered, StoreError> {
        Ok(self.shards.lock().clone())
    }

    fn disk_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn close(&self) {}
}
