//! Segment rotation, truncation after a snapshot, and the disk quota.

use std::sync::Arc;

use bytes::Bytes;
use store::fileio::StdStorage;
use store::wal::{Wal, WalOptions};
use store::{Revision, StoreError};

fn opts() -> WalOptions {
    let mut o = WalOptions::with_storage(Arc::new(StdStorage));
    o.segment_bytes = 4096;
    o
}

fn payload(i: u64) -> Bytes {
    Bytes::from(vec![i as u8; 300])
}

#[tokio::test]
async fn rotation_then_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), 0, opts()).unwrap();
    for i in 1..=100 {
        wal.append(payload(i), Revision(i)).await.unwrap();
    }
    let segments = wal.stats().segments;
    // 100 records of 336 framed bytes in 4 KiB segments.
    assert!(segments >= 9, "{segments} segments");
    assert!(wal.disk_bytes() >= segments * 4096);
    wal.close().await.unwrap();

    let (wal, records) = Wal::open(dir.path(), 0, opts()).unwrap();
    assert_eq!(records.len(), 100);
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.revision.0 == i as u64 + 1 && r.payload == payload(i as u64 + 1))
    );

    // A snapshot covers revisions < 50: whole segments below it go.
    let before = wal.logical_bytes();
    let removed = wal.truncate_before(Revision(50)).await.unwrap();
    assert!(removed >= 3, "{removed}");
    assert!(wal.logical_bytes() < before);
    wal.close().await.unwrap();
    let (wal, records) = Wal::open(dir.path(), 0, opts()).unwrap();
    assert!(
        records.first().unwrap().revision.0 <= 50,
        "nothing at or above 50 lost"
    );
    assert!(
        records.first().unwrap().revision.0 > 1,
        "something was truncated"
    );
    assert_eq!(records.last().unwrap().revision, Revision(100));
    let first = records.first().unwrap().revision.0;
    assert!(records.iter().zip(first..).all(|(r, i)| r.revision.0 == i));

    // Covering everything empties the log, which then goes on.
    wal.truncate_before(Revision(101)).await.unwrap();
    wal.append(payload(101), Revision(101)).await.unwrap();
    wal.close().await.unwrap();
    let (_wal, records) = Wal::open(dir.path(), 0, opts()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].revision, Revision(101));
}

#[tokio::test]
async fn quota_refuses_then_recovers_after_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.quota_bytes = Some(16 * 1024);
    let (wal, _) = Wal::open(dir.path(), 0, o.clone()).unwrap();
    let mut accepted = 0;
    let mut refused = None;
    for i in 1..=200 {
        match wal.append(payload(i), Revision(i)).await {
            Ok(()) => accepted = i,
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = refused.expect("the quota must stop appends");
    assert!(matches!(err, StoreError::QuotaExceeded(_)), "{err}");
    assert!(wal.logical_bytes() <= 16 * 1024);
    assert!(wal.logical_bytes() + 336 > 16 * 1024);
    // Still refused, and nothing written.
    assert!(matches!(
        wal.append(payload(at), Revision(at)).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    // A snapshot lets old segments go; appends work again.
    wal.truncate_before(Revision(accepted)).await.unwrap();
    wal.append(payload(at), Revision(at)).await.unwrap();
    wal.close().await.unwrap();
    let (_wal, records) = Wal::open(dir.path(), 0, o).unwrap();
    assert_eq!(records.last().unwrap().revision, Revision(at));
}
