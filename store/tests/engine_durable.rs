//! The engine on its real per-shard WAL: restart, injected storage faults (write error, full
//! disk, fsync failure), and a simulated power cut in the middle of concurrent writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use store::fileio::{CrashMode, Fault, FaultKind, FaultOp, FaultStorage, Storage};
use store::{Backend, Engine, EngineConfig, ObjectValue, RangeRequest, Revision, StoreError};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn v(s: &str) -> ObjectValue {
    ObjectValue::opaque(b(s))
}

fn open(dir: &std::path::Path, storage: Arc<dyn Storage>) -> Arc<Engine> {
    let mut cfg = EngineConfig::durable(dir);
    cfg.shards = 2;
    cfg.storage = storage;
    Engine::open(cfg).unwrap()
}

async fn dump(e: &Engine, rev: Option<u64>) -> Vec<(Bytes, Bytes, Revision, Revision, i64)> {
    e.range(RangeRequest {
        revision: rev.map(Revision),
        ..RangeRequest::prefix(b("/"))
    })
    .await
    .unwrap()
    .kvs
    .into_iter()
    .map(|kv| {
        (
            kv.key,
            kv.value.raw,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    })
    .collect()
}

#[test]
fn restart_on_the_wal_recovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Arc::new(store::fileio::StdStorage));
    let (latest, old) = block_on(async {
        for i in 0..100 {
            e.create(b(&format!("/k/{i:03}")), v(&format!("{i}")), None)
                .await
                .unwrap()
                .unwrap();
        }
        for i in (0..100).step_by(3) {
            let cur = e.get(b(&format!("/k/{i:03}"))).await.unwrap().unwrap();
            e.update(cur.key, cur.mod_revision, v("u"), None)
                .await
                .unwrap()
                .unwrap();
        }
        for i in (0..100).step_by(7) {
            e.delete(b(&format!("/k/{i:03}")), None).await.unwrap();
        }
        (dump(&e, None).await, dump(&e, Some(120)).await)
    });
    let rev = e.revision();
    e.close();
    drop(e);
    let e = open(dir.path(), Arc::new(store::fileio::StdStorage));
    assert_eq!(e.revision(), rev);
    block_on(async {
        assert_eq!(dump(&e, None).await, latest);
        assert_eq!(dump(&e, Some(120)).await, old);
        assert!(e.status().await.unwrap().db_size_bytes > 0);
    });
}

#[test]
fn storage_faults_fail_writes_keep_reads_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new();
    let e = open(dir.path(), Arc::new(storage.clone()));
    block_on(async {
        e.create(b("/a"), v("1"), None).await.unwrap().unwrap();
        for (op, kind) in [
            (FaultOp::Write, FaultKind::Eio),
            (FaultOp::Write, FaultKind::NoSpace),
            (FaultOp::Sync, FaultKind::Eio),
        ] {
            // The fault lasts until cleared (the WAL may retry on a fresh segment).
            storage.inject(Fault {
                op,
                kind,
                skip: 0,
                count: u32::MAX,
            });
            let err = e.create(b("/b"), v("2"), None).await.unwrap_err();
            assert!(matches!(err, StoreError::Io(_)), "{op:?} {kind:?}: {err}");
            // Still readable; the failed write is not visible.
            assert_eq!(&e.get(b("/a")).await.unwrap().unwrap().value.raw[..], b"1");
            assert!(e.get(b("/b")).await.unwrap().is_none());
            storage.clear_faults();
        }
        // The fault cleared: writes work again.
        e.create(b("/b"), v("3"), None).await.unwrap().unwrap();
    });
    let latest = block_on(dump(&e, None));
    let rev = e.revision();
    e.close();
    drop(e);
    let e = open(dir.path(), Arc::new(storage.restarted()));
    assert_eq!(e.revision(), rev);
    assert_eq!(block_on(dump(&e, None)), latest);
}

#[test]
fn power_cut_during_concurrent_writes_keeps_every_acknowledged_write() {
    for (seed, keep) in [(1u64, 0u64), (2, 700)] {
        let dir = tempfile::tempdir().unwrap();
        let storage = FaultStorage::new();
        let e = open(dir.path(), Arc::new(storage.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let (e, stop) = (e.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    block_on(async {
                        for i in 0..2000u32 {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            let k = b(&format!("/c/{t}/{i:05}"));
                            match e
                                .create(k.clone(), v(&format!("{seed}-{t}-{i}")), None)
                                .await
                            {
                                Ok(Some(r)) => acked.push((k, r)),
                                Ok(None) => panic!("key reused"),
                                Err(_) => break,
                            }
                        }
                    });
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        storage.crash(CrashMode::KeepUnsyncedBytes(keep)).unwrap();
        stop.store(true, Ordering::SeqCst);
        let acked: Vec<(Bytes, Revision)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        e.close();
        drop(e);
        assert!(
            !acked.is_empty(),
            "no write was acknowledged before the crash"
        );
        let e = open(dir.path(), Arc::new(storage.restarted()));
        let head = e.revision();
        block_on(async {
            for (k, r) in &acked {
                let kv = e.get(k.clone()).await.unwrap();
                let kv = kv.unwrap_or_else(|| panic!("acknowledged {k:?}@{r} lost"));
                assert_eq!(kv.mod_revision, *r);
                assert!(*r <= head);
            }
            // No holes: every revision up to the head created exactly one key.
            let all = e.range(RangeRequest::prefix(b("/c/"))).await.unwrap();
            let mut revs: Vec<u64> = all.kvs.iter().map(|kv| kv.mod_revision.0).collect();
            revs.sort_unstable();
            assert_eq!(revs, (1..=head.0).collect::<Vec<_>>(), "seed {seed}");
            // And the store takes writes after recovery.
            // (Numbers of revisions that were written but never acknowledged are not reused.)
            let r = e.create(b("/after"), v("x"), None).await.unwrap().unwrap();
            assert!(r > head);
        });
    }
}

#[test]
fn recovery_from_a_snapshot_plus_the_wal_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new();
    let e = open(dir.path(), Arc::new(storage.clone()));
    let (latest, old, lease) = block_on(async {
        for i in 0..40 {
            e.create(b(&format!("/s/{i:02}")), v(&format!("{i}")), None)
                .await
                .unwrap()
                .unwrap();
        }
        e.delete(b("/s/03"), None).await.unwrap().unwrap();
        let lease = e.lease_grant(60, None).await.unwrap().id;
        e.compact(Revision(10)).await.unwrap();
        assert_eq!(e.snapshot().unwrap(), Revision(41));
        // After the snapshot: more writes that only the WAL holds.
        for i in 0..10 {
            let cur = e.get(b(&format!("/s/{i:02}"))).await.unwrap();
            if let Some(cur) = cur {
                e.update(cur.key, cur.mod_revision, v("after"), Some(lease))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        e.delete(b("/s/20"), None).await.unwrap().unwrap();
        (dump(&e, None).await, dump(&e, Some(30)).await, lease)
    });
    let rev = e.revision();
    // Power cut with everything acknowledged (so durable): no close, no second snapshot.
    storage.crash(CrashMode::DropUnsynced).unwrap();
    drop(e);
    let e = open(dir.path(), Arc::new(storage.restarted()));
    assert_eq!(e.revision(), rev);
    block_on(async {
        assert_eq!(dump(&e, None).await, latest);
        assert_eq!(dump(&e, Some(30)).await, old, "history from the snapshot");
        assert_eq!(e.status().await.unwrap().compact_revision, Revision(10));
        let ttl = e.lease_time_to_live(lease, true).await.unwrap();
        assert_eq!(
            ttl.keys.len(),
            9,
            "lease from the snapshot, keys from the WAL"
        );
    });
}

#[test]
fn disk_quota_refuses_puts_allows_deletes_and_frees_after_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::durable(dir.path());
    cfg.shards = 2;
    cfg.disk_quota_bytes = Some(48 * 1024);
    let e = Engine::open(cfg).unwrap();
    block_on(async {
        let mut n = 0;
        let err = loop {
            match e
                .create(
                    b(&format!("/q/{n}")),
                    ObjectValue::opaque(vec![7u8; 4096]),
                    None,
                )
                .await
            {
                Ok(r) => assert!(r.is_some()),
                Err(err) => break err,
            }
            n += 1;
            assert!(n < 100, "disk quota never hit");
        };
        assert!(matches!(err, StoreError::QuotaExceeded(_)), "{err}");
        assert!(e.get(b("/q/0")).await.unwrap().is_some(), "still readable");
        for i in 0..n {
            e.delete(b(&format!("/q/{i}")), None)
                .await
                .unwrap()
                .unwrap();
        }
        let rev = e.revision();
        e.compact(rev).await.unwrap();
        e.snapshot().unwrap();
        e.create(b("/q/again"), ObjectValue::opaque(vec![7u8; 4096]), None)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn idle_restarts_do_not_move_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let std: Arc<dyn Storage> = Arc::new(store::fileio::StdStorage);
    for _ in 0..2 {
        let e = open(dir.path(), std.clone());
        assert_eq!(e.revision(), Revision(0));
        e.close();
    }
    let e = open(dir.path(), std.clone());
    let r = block_on(e.create(b("/first"), v("1"), None))
        .unwrap()
        .unwrap();
    assert_eq!(r, Revision(1), "the first write of a store is revision 1");
    e.close();
    drop(e);
    // A close after writes snapshots (skipping one revision number); idle ones do not.
    let e = open(dir.path(), std.clone());
    e.close();
    drop(e);
    let e = open(dir.path(), std.clone());
    assert_eq!(e.revision(), Revision(1));
    let r = block_on(e.create(b("/second"), v("2"), None))
        .unwrap()
        .unwrap();
    assert_eq!(r, Revision(3));
}
