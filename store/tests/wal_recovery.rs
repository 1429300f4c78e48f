//! WAL recovery: round trips, torn tails at every byte, mid-log corruption, crashes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use store::fileio::{CrashMode, FaultStorage, StdStorage, Storage};
use store::wal::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use store::wal::{Wal, WalOptions, WalRecord};
use store::{Revision, StoreError};

fn opts(storage: Arc<dyn Storage>) -> WalOptions {
    let mut o = WalOptions::with_storage(storage);
    o.segment_bytes = 1 << 20;
    o
}

fn payload(i: u64) -> Bytes {
    // Varying lengths exercise the 16-byte padding.
    Bytes::from(format!("record-{i}-{}", "x".repeat((i % 37) as usize)))
}

async fn append_n(wal: &Wal, from: u64, to: u64) {
    for i in from..to {
        wal.append(payload(i), Revision(i)).await.expect("append");
    }
}

fn assert_records(records: &[WalRecord], from: u64, to: u64) {
    let want: Vec<WalRecord> = (from..to)
        .map(|i| WalRecord {
            revision: Revision(i),
            payload: payload(i),
        })
        .collect();
    assert_eq!(records, &want[..]);
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

#[tokio::test]
async fn round_trip_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, records) = Wal::open(dir.path(), 3, opts(Arc::new(StdStorage))).unwrap();
    assert!(records.is_empty());
    append_n(&wal, 1, 50).await;
    assert_eq!(wal.durable_revision(), Revision(49));
    wal.close().await.unwrap();

    let (wal, records) = Wal::open(dir.path(), 3, opts(Arc::new(StdStorage))).unwrap();
    assert_records(&records, 1, 50);
    append_n(&wal, 50, 60).await;
    wal.close().await.unwrap();
    let (_wal, records) = Wal::open(dir.path(), 3, opts(Arc::new(StdStorage))).unwrap();
    assert_records(&records, 1, 60);
}

#[tokio::test]
async fn a_log_of_another_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), 1, opts(Arc::new(StdStorage))).unwrap();
    append_n(&wal, 1, 3).await;
    wal.close().await.unwrap();
    let err = Wal::open(dir.path(), 2, opts(Arc::new(StdStorage))).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn revisions_must_not_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), 0, opts(Arc::new(StdStorage))).unwrap();
    wal.append(payload(5), Revision(5)).await.unwrap();
    wal.append(payload(5), Revision(5)).await.unwrap();
    let err = wal.append(payload(4), Revision(4)).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    let big = Bytes::from(vec![0u8; (16 << 20) + 1]);
    let err = wal.append(big, Revision(6)).await.unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
}

/// Cuts the last record at every byte offset (with and without preallocated zeros after
/// it, and with garbage instead of zeros): recovery returns exactly the earlier records and
/// the log accepts appends again.
#[tokio::test]
async fn torn_tail_at_every_byte_offset_is_truncated() {
    for preallocate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(Arc::new(StdStorage));
        o.preallocate = preallocate;
        let (wal, _) = Wal::open(dir.path(), 0, o.clone()).unwrap();
        append_n(&wal, 1, 4).await;
        let before_last = wal.logical_bytes();
        append_n(&wal, 4, 5).await;
        let full = wal.logical_bytes();
        wal.close().await.unwrap();
        let seg = only_segment(dir.path());
        let pristine = std::fs::read(&seg).unwrap();
        assert!(full - before_last > RECORD_HEADER_LEN as u64);

        for cut in before_last..full {
            for garbage in [false, true] {
                let mut bytes = pristine.clone();
                let (cut, full) = (cut as usize, full as usize);
                for (i, b) in bytes[cut..full].iter_mut().enumerate() {
                    *b = if garbage {
                        (i as u8).wrapping_mul(31).wrapping_add(7)
                    } else {
                        0
                    };
                }
                if !preallocate && !garbage {
                    bytes.truncate(cut);
                }
                std::fs::write(&seg, &bytes).unwrap();
                let (wal, records) = Wal::open(dir.path(), 0, o.clone())
                    .unwrap_or_else(|e| panic!("cut at {cut} garbage={garbage}: {e}"));
                // Zeroing only the padding after the payload leaves the record whole.
                let data_end = before_last as usize + RECORD_HEADER_LEN + payload(4).len();
                let intact = preallocate && !garbage && cut >= data_end;
                assert_records(&records, 1, if intact { 5 } else { 4 });
                // The log goes on from the cut, and the new record survives a reopen.
                wal.append(payload(9), Revision(9)).await.unwrap();
                wal.close().await.unwrap();
                let (wal, records) = Wal::open(dir.path(), 0, o.clone()).unwrap();
                assert_eq!(records.len(), if intact { 5 } else { 4 }, "cut at {cut}");
                assert_eq!(records.last().unwrap().revision, Revision(9));
                wal.close().await.unwrap();
            }
        }
        std::fs::write(&seg, &pristine).unwrap();
    }
}

/// A damaged record followed by valid later batches is corruption, not a torn tail.
#[tokio::test]
async fn corrupt_middle_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(Arc::new(StdStorage));
    let (wal, _) = Wal::open(dir.path(), 0, o.clone()).unwrap();
    append_n(&wal, 1, 3).await;
    let second_end = wal.logical_bytes() as usize;
    append_n(&wal, 3, 10).await;
    wal.close().await.unwrap();
    let seg = only_segment(dir.path());
    let pristine = std::fs::read(&seg).unwrap();

    // Flip one byte in the payload, then in the header, of record 3.
    for at in [
        second_end + RECORD_HEADER_LEN + 2,
        second_end + 9,
        second_end,
    ] {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let err = Wal::open(dir.path(), 0, o.clone()).unwrap_err();
        match err {
            StoreError::Corrupt(msg) => assert!(msg.contains("later batch"), "{msg}"),
            other => panic!("expected Corrupt, got {other}"),
        }
        // Recovery changed nothing on disk.
        assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    }
    // A damaged segment header is corruption too.
    let mut bytes = pristine.clone();
    bytes[20] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), 0, o.clone()),
        Err(StoreError::Corrupt(_))
    ));
    // Restored, it opens with everything.
    std::fs::write(&seg, &pristine).unwrap();
    let (_wal, records) = Wal::open(dir.path(), 0, o).unwrap();
    assert_records(&records, 1, 10);
}

/// Crash (drop without flush, power cut): every acknowledged record survives, whatever the
/// unsynced tail looked like.
#[tokio::test]
async fn crash_keeps_every_acknowledged_record() {
    for keep in [0u64, 1, 17, 100, 333, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultStorage::new();
        let (wal, _) = Wal::open(dir.path(), 0, opts(Arc::new(fs.clone()))).unwrap();
        append_n(&wal, 1, 20).await;
        // Queue more without waiting: some may be durable, none is acknowledged to us.
        let unacked: Vec<_> = (20..40)
            .map(|i| wal.append(payload(i), Revision(i)))
            .collect();
        fs.crash(CrashMode::KeepUnsyncedBytes(keep)).unwrap();
        drop(unacked);
        drop(wal);

        let fs = fs.restarted();
        let (wal, records) = Wal::open(dir.path(), 0, opts(Arc::new(fs.clone())))
            .unwrap_or_else(|e| panic!("keep {keep}: {e}"));
        assert!(
            records.len() >= 19,
            "keep {keep}: {} records",
            records.len()
        );
        assert_records(&records[..19], 1, 20);
        // Whatever else came back is a prefix of what was appended, in order.
        let n = records.len() as u64;
        assert_records(&records, 1, n + 1);
        append_n(&wal, n + 1, n + 5).await;
        wal.close().await.unwrap();
        let (_wal, records) = Wal::open(dir.path(), 0, opts(Arc::new(fs))).unwrap();
        assert_records(&records, 1, n + 5);
    }
}

/// A segment whose creation was cut short (all zeros) is removed; one missing in the middle
/// is corruption.
#[tokio::test]
async fn half_created_and_missing_segments() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(Arc::new(StdStorage));
    let (wal, _) = Wal::open(dir.path(), 0, o.clone()).unwrap();
    append_n(&wal, 1, 5).await;
    wal.close().await.unwrap();
    std::fs::write(dir.path().join("0000000000000001.wal"), vec![0u8; 4096]).unwrap();
    let (wal, records) = Wal::open(dir.path(), 0, o.clone()).unwrap();
    assert_records(&records, 1, 5);
    assert!(!dir.path().join("0000000000000001.wal").exists());
    wal.close().await.unwrap();

    std::fs::write(
        dir.path().join("0000000000000002.wal"),
        vec![0u8; SEGMENT_HEADER_LEN],
    )
    .unwrap();
    let err = Wal::open(dir.path(), 0, o).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("missing")),
        "{err}"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Wal>();
    send_sync::<WalOptions>();
    send_sync::<store::snapshot::Snapshot>();
    send_sync::<FaultStorage>();
    send_sync::<store::fileio::UringStorage>();
    send::<store::wal::AppendFuture>();
}
