//! Fault injection under the WAL: write errors, full disk, fsync failures. The WAL refuses
//! the write with a typed error, never acknowledges what is not durable, keeps what was
//! durable, and works again once the fault clears.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use store::fileio::{CrashMode, Fault, FaultKind, FaultOp, FaultStorage};
use store::wal::{Wal, WalOptions, WalRecord};
use store::{Revision, StoreError};

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("value-{i}"))
}

fn open(dir: &std::path::Path, fs: &FaultStorage) -> (Wal, Vec<WalRecord>) {
    let mut o = WalOptions::with_storage(Arc::new(fs.clone()));
    o.segment_bytes = 1 << 20;
    Wal::open(dir, 0, o).unwrap()
}

fn revisions(records: &[WalRecord]) -> Vec<u64> {
    assert!(records.iter().all(|r| r.payload == payload(r.revision.0)));
    records.iter().map(|r| r.revision.0).collect()
}

fn fault(op: FaultOp, kind: FaultKind, count: u32) -> Fault {
    Fault {
        op,
        kind,
        skip: 0,
        count,
    }
}

fn io_kind(e: &StoreError) -> io::ErrorKind {
    match e {
        StoreError::Io(e) => e.kind(),
        other => panic!("expected StoreError::Io, got {other}"),
    }
}

#[tokio::test]
async fn write_error_is_refused_then_recovers() {
    for kind in [FaultKind::Eio, FaultKind::ShortWriteEio] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultStorage::new();
        let (wal, _) = open(dir.path(), &fs);
        for i in 1..=5 {
            wal.append(payload(i), Revision(i)).await.unwrap();
        }
        fs.inject(fault(FaultOp::Write, kind, 1));
        let err = wal.append(payload(6), Revision(6)).await.unwrap_err();
        io_kind(&err);
        assert_eq!(wal.durable_revision(), Revision(5));
        assert_eq!(wal.stats().failed_batches, 1);
        // The fault has cleared: the same revision goes through, into a fresh segment.
        wal.append(payload(6), Revision(6)).await.unwrap();
        wal.append(payload(7), Revision(7)).await.unwrap();
        assert_eq!(wal.stats().segments, 2);
        wal.close().await.unwrap();
        let (_wal, records) = open(dir.path(), &fs);
        assert_eq!(revisions(&records), vec![1, 2, 3, 4, 5, 6, 7], "{kind:?}");
    }
}

#[tokio::test]
async fn full_disk_refuses_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultStorage::new();
    let (wal, _) = open(dir.path(), &fs);
    wal.append(payload(1), Revision(1)).await.unwrap();
    // The disk is full: the write fails, and so does every attempt at a new segment.
    fs.inject(fault(FaultOp::Write, FaultKind::NoSpace, u32::MAX));
    fs.inject(fault(FaultOp::Allocate, FaultKind::NoSpace, u32::MAX));
    for i in 2..=4 {
        let err = wal.append(payload(i), Revision(i)).await.unwrap_err();
        assert_eq!(io_kind(&err), io::ErrorKind::StorageFull, "{err}");
    }
    assert_eq!(wal.durable_revision(), Revision(1));
    fs.clear_faults();
    wal.append(payload(2), Revision(2)).await.unwrap();
    wal.close().await.unwrap();
    let (_wal, records) = open(dir.path(), &fs);
    assert_eq!(revisions(&records), vec![1, 2]);
}

/// After a failed fdatasync the written bytes may sit in the file, but they were never
/// acknowledged: they must not come back, even if truncating them fails as well.
#[tokio::test]
async fn fsync_failure_is_never_acknowledged_nor_replayed() {
    for truncation_fails in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultStorage::new();
        let (wal, _) = open(dir.path(), &fs);
        for i in 1..=3 {
            wal.append(payload(i), Revision(i)).await.unwrap();
        }
        fs.inject(fault(FaultOp::Sync, FaultKind::Eio, 1));
        if truncation_fails {
            fs.inject(fault(FaultOp::Allocate, FaultKind::Eio, 1));
        }
        let err = wal.append(payload(100), Revision(100)).await.unwrap_err();
        io_kind(&err);
        assert_eq!(wal.durable_revision(), Revision(3));
        wal.append(payload(4), Revision(4)).await.unwrap();
        wal.close().await.unwrap();
        let (_wal, records) = open(dir.path(), &fs);
        assert_eq!(
            revisions(&records),
            vec![1, 2, 3, 4],
            "truncation_fails={truncation_fails}"
        );
    }
}

/// A crash right after failures: every acknowledged record is there, no refused one is.
#[tokio::test]
async fn crash_after_faults_keeps_exactly_the_acknowledged() {
    for (op, kind) in [
        (FaultOp::Write, FaultKind::ShortWriteEio),
        (FaultOp::Sync, FaultKind::Eio),
        (FaultOp::Write, FaultKind::NoSpace),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultStorage::new();
        let (wal, _) = open(dir.path(), &fs);
        let mut acked = Vec::new();
        for i in 1..=30u64 {
            if i % 7 == 0 {
                fs.inject(fault(op, kind, 1));
            }
            if wal.append(payload(i), Revision(i)).await.is_ok() {
                acked.push(i);
            }
        }
        assert!(
            acked.len() < 30 && acked.len() >= 26,
            "{op:?} {kind:?}: {acked:?}"
        );
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsyncedBytes(1 << 20),
        ] {
            fs.crash(mode).unwrap();
            let fs = fs.restarted();
            let (wal2, records) = open(dir.path(), &fs);
            assert_eq!(revisions(&records), acked, "{op:?} {kind:?} {mode:?}");
            wal2.close().await.unwrap();
        }
        drop(wal);
    }
}

/// A dead disk: every append fails, the log's durable state is untouched and readable.
#[tokio::test]
async fn appends_fail_cleanly_while_the_disk_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultStorage::new();
    let (wal, _) = open(dir.path(), &fs);
    wal.append(payload(1), Revision(1)).await.unwrap();
    for op in [
        FaultOp::Write,
        FaultOp::Sync,
        FaultOp::Create,
        FaultOp::Allocate,
        FaultOp::SyncDir,
    ] {
        fs.inject(fault(op, FaultKind::Eio, u32::MAX));
    }
    let futs: Vec<_> = (2..=20)
        .map(|i| wal.append(payload(i), Revision(i)))
        .collect();
    for f in futs {
        io_kind(&f.await.unwrap_err());
    }
    assert_eq!(wal.durable_revision(), Revision(1));
    // Recovery reads the same durable state from another handle meanwhile.
    let reader = FaultStorage::new();
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
    }
    let (_r, records) = open(copy.path(), &reader);
    assert_eq!(revisions(&records), vec![1]);
    fs.clear_faults();
    wal.append(payload(2), Revision(2)).await.unwrap();
    wal.close().await.unwrap();
    let (_wal, records) = open(dir.path(), &fs);
    assert_eq!(revisions(&records), vec![1, 2]);
}

/// Found by `wal_model`: a failed batch followed by a clean shutdown (no further append to
/// trigger a rotation) must not come back on restart, though its bytes reached the file.
#[tokio::test]
async fn failed_batch_then_clean_shutdown_is_not_replayed() {
    for (op, kind) in [
        (FaultOp::Sync, FaultKind::Eio),
        (FaultOp::Write, FaultKind::ShortWriteEio),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultStorage::new();
        let (wal, _) = open(dir.path(), &fs);
        wal.append(payload(1), Revision(1)).await.unwrap();
        fs.inject(fault(op, kind, 1));
        io_kind(&wal.append(payload(2), Revision(2)).await.unwrap_err());
        fs.clear_faults();
        wal.close().await.unwrap();
        let (_wal, records) = open(dir.path(), &fs);
        assert_eq!(revisions(&records), vec![1], "{op:?}");
    }
}

/// Waits (bounded) until `n` syncs sit at the held gate.
async fn wait_for_held_syncs(fs: &FaultStorage, n: u64) {
    for _ in 0..1000 {
        if fs.syncs_waiting() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{} syncs held, expected {n}", fs.syncs_waiting());
}

/// Overlapped group commit: the second batch is written and its fdatasync started while the
/// first batch's is still running; neither is acknowledged before a sync covering it
/// returns. A crash then loses the first batch and keeps the second (out-of-order
/// writeback): recovery sees a torn tail inside the overlap window, not corruption, and
/// returns exactly the acknowledged records.
#[tokio::test]
async fn overlapped_batches_are_acknowledged_only_once_covered() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultStorage::new();
    let (wal, _) = open(dir.path(), &fs);
    for i in 1..=3 {
        wal.append(payload(i), Revision(i)).await.unwrap();
    }
    fs.hold_syncs();
    let mut first = Box::pin(wal.append(payload(4), Revision(4)));
    wait_for_held_syncs(&fs, 1).await;
    let mut second = Box::pin(wal.append(payload(5), Revision(5)));
    // Two fdatasyncs in flight at once: the writer did not wait for the first.
    wait_for_held_syncs(&fs, 2).await;
    let short = std::time::Duration::from_millis(50);
    assert!(tokio::time::timeout(short, &mut first).await.is_err());
    assert!(tokio::time::timeout(short, &mut second).await.is_err());
    assert_eq!(wal.durable_revision(), Revision(3));

    // Power cut: batch 4's bytes never reached the disk, batch 5's did.
    fs.crash(CrashMode::DropFirstUnsyncedWrites(1)).unwrap();
    fs.release_syncs();
    assert!(
        first.await.is_err(),
        "a sync on a dead disk never acknowledges"
    );
    assert!(second.await.is_err());
    drop(wal);
    let fs = fs.restarted();
    let (wal, records) = open(dir.path(), &fs);
    assert_eq!(revisions(&records), vec![1, 2, 3]);
    // The log goes on from there.
    wal.append(payload(4), Revision(4)).await.unwrap();
    wal.close().await.unwrap();
    let (_wal, records) = open(dir.path(), &fs);
    assert_eq!(revisions(&records), vec![1, 2, 3, 4]);
}

/// With syncs overlapping, a failed fdatasync fails its batch and every later one still in
/// flight (their syncs may succeed, but after a failed writeback nothing on that segment is
/// trusted); the batches acknowledged before survive a crash, the failed ones are never
/// replayed.
#[tokio::test]
async fn a_failed_overlapped_sync_fails_every_later_batch() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultStorage::new();
    let (wal, _) = open(dir.path(), &fs);
    wal.append(payload(1), Revision(1)).await.unwrap();
    fs.hold_syncs();
    let first = wal.append(payload(2), Revision(2));
    wait_for_held_syncs(&fs, 1).await;
    let second = wal.append(payload(3), Revision(3));
    wait_for_held_syncs(&fs, 2).await;
    // Whichever held sync takes the fault first fails; the other may succeed, but neither
    // batch may be acknowledged if batch 2's covering sync failed.
    fs.inject(fault(FaultOp::Sync, FaultKind::Eio, 1));
    fs.release_syncs();
    let (a, b) = (first.await, second.await);
    // Acknowledgements are a prefix: batch 3 never acked without batch 2.
    assert!(!(a.is_err() && b.is_ok()), "{a:?} {b:?}");
    let mut acked = vec![1];
    if a.is_ok() {
        acked.push(2);
    }
    if b.is_ok() {
        acked.push(3);
    }
    assert!(
        acked.len() < 3,
        "one of two overlapped syncs failed: {a:?} {b:?}"
    );
    fs.crash(CrashMode::KeepUnsyncedBytes(1 << 20)).unwrap();
    drop(wal);
    let fs = fs.restarted();
    let (_wal, records) = open(dir.path(), &fs);
    assert_eq!(revisions(&records), acked);
}
