//! The production [`LogStore`]: one [`Wal`] per shard under `<data_dir>/wal/shard-NNN`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::log::{AppendFuture, LogStore, Recovered};
use crate::backend::Revision;
use crate::error::StoreError;
use crate::fileio::Storage;
use crate::wal::{Wal, WalOptions};

/// Name of the file recording the data directory's shard count (placement depends on it).
const META_FILE: &str = "engine.meta";

/// Per-shard WALs of a data directory.
#[derive(Debug)]
pub(crate) struct WalLog {
    wals: RwLock<Vec<Wal>>,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    recovered: Mutex<Option<Recovered>>,
}

/// The shard count a data directory was created with, or `wanted` for a new one (recorded).
fn shard_count(storage: &dyn Storage, dir: &Path, wanted: usize) -> Result<usize, StoreError> {
    storage.create_dir_all(dir)?;
    let path = dir.join(META_FILE);
    match storage.read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            text.trim()
                .strip_prefix("shards=")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| StoreError::Corrupt(format!("{}: unreadable", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!("{META_FILE}.tmp"));
            let _ = storage.remove(&tmp);
            let mut f = storage.create(&tmp)?;
            f.write_all_at(format!("shards={wanted}\n").as_bytes(), 0)?;
            f.sync_all()?;
            drop(f);
            storage.rename(&tmp, &path)?;
            storage.sync_dir(dir)?;
            Ok(wanted)
        }
        Err(e) => Err(StoreError::Io(e)),
    }
}

impl WalLog {
    /// Opens (recovering) every shard's WAL in `data_dir`. A data directory keeps the shard
    /// count it was created with, whatever `shards` says.
    pub(crate) fn open(
        data_dir: &Path,
        shards: usize,
        storage: Arc<dyn Storage>,
        quota_bytes: Option<u64>,
        inflight_syncs: usize,
    ) -> Result<Self, StoreError> {
        let n = shard_count(storage.as_ref(), data_dir, shards)?;
        // The disk quota is enforced by the engine on puts only (deletes must stay possible
        // when the quota is full, as etcd allows), so the WALs get none of their own.
        let _ = quota_bytes;
        let mut options = WalOptions::with_storage(storage.clone());
        options.max_inflight_syncs = inflight_syncs;
        // Each shard's log is recovered on its own thread (reading and checking segments is
        // independent per shard).
        let opened: Vec<Result<_, StoreError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let options = options.clone();
                    sc.spawn(move || {
                        let dir: PathBuf = data_dir.join("wal").join(format!("shard-{i:03}"));
                        let shard = u16::try_from(i)
                            .map_err(|_| StoreError::InvalidRequest("too many shards".into()))?;
                        Wal::open(&dir, shard, options)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::Corrupt("WAL recovery panicked".into()))
                    })
                })
                .collect()
        });
        let mut wals = Vec::with_capacity(n);
        let mut recovered = Vec::with_capacity(n);
        for o in opened {
            let (wal, records) = o?;
            wals.push(wal);
            recovered.push(
                records
                    .into_iter()
                    .map(|r| (r.revision.0, r.payload))
                    .collect(),
            );
        }
        Ok(Self {
            wals: RwLock::new(wals),
            dir: data_dir.to_path_buf(),
            storage,
            recovered: Mutex::new(Some(recovered)),
        })
    }
}

impl LogStore for WalLog {
    fn shards(&self) -> usize {
        self.wals.read().len()
    }

    fn append(&self, shard: usize, payload: Bytes, revision: u64) -> AppendFuture {
        match self.wals.read().get(shard) {
            Some(wal) => Box::pin(wal.append(payload, Revision(revision))),
            None => Box::pin(std::future::ready(Err(StoreError::Unavailable(
                "the WAL is closed".into(),
            )))),
        }
    }

    fn take_recovered(&self) -> Result<Recovered, StoreError> {
        self.recovered
            .lock()
            .take()
            .ok_or_else(|| StoreError::InvalidRequest("WAL records already taken".into()))
    }

    fn disk_bytes(&self) -> u64 {
        self.wals.read().iter().map(Wal::logical_bytes).sum()
    }

    fn truncate_before(&self, revision: u64) -> Result<(), StoreError> {
        let wals = self.wals.read();
        // Run the async truncations on a helper thread so this works inside any executor.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for w in wals.iter() {
                    futures::executor::block_on(w.truncate_before(Revision(revision)))?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("WAL truncation panicked".into())))
        })
    }

    fn snapshot_dir(&self) -> Option<(PathBuf, Arc<dyn Storage>)> {
        Some((self.dir.join("snap"), self.storage.clone()))
    }

    fn close(&self) {
        let wals = std::mem::take(&mut *self.wals.write());
        // `Wal::close` is async; run it on a helper thread so `close` works from inside any
        // executor (or none).
        let joined = std::thread::Builder::new()
            .name("store-wal-close".into())
            .spawn(move || {
                for w in wals {
                    if let Err(e) = futures::executor::block_on(w.close()) {
                        tracing::warn!(error = %e, "closing a WAL failed");
                    }
                }
            })
            .map(std::thread::JoinHandle::join);
        if !matches!(joined, Ok(Ok(()))) {
            tracing::warn!("the WAL close thread failed");
        }
    }
}
