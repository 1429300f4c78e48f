//! The WAL over io_uring (`shards`' ring on the writer thread): same behaviour as std I/O.

use std::sync::Arc;

use bytes::Bytes;
use store::Revision;
use store::fileio::UringStorage;
use store::wal::{Wal, WalOptions};

#[tokio::test]
async fn uring_round_trip_with_concurrent_appends() {
    // Where io_uring is unavailable the writer falls back to std I/O; the test still checks
    // the WAL's behaviour and says which path ran.
    match UringStorage::probe() {
        Ok(()) => eprintln!("io_uring available"),
        Err(e) => eprintln!("io_uring unavailable ({e}); testing the fallback"),
    }
    let dir = tempfile::tempdir().unwrap();
    let mut o = WalOptions::with_storage(Arc::new(UringStorage));
    o.segment_bytes = 64 << 10;
    o.max_batch_records = 16;
    let (wal, _) = Wal::open(dir.path(), 1, o.clone()).unwrap();
    let futs: Vec<_> = (1..=300u64)
        .map(|i| {
            wal.append(
                Bytes::from(vec![i as u8; (i * 7 % 1000) as usize]),
                Revision(i),
            )
        })
        .collect();
    for f in futs {
        f.await.unwrap();
    }
    assert!(wal.stats().segments > 1, "rotated at least once");
    assert!(wal.stats().batches < 300, "grouped");
    wal.close().await.unwrap();
    let (_wal, records) = Wal::open(dir.path(), 1, o).unwrap();
    assert_eq!(records.len(), 300);
    for (i, r) in (1..=300u64).zip(&records) {
        assert_eq!(r.revision, Revision(i));
        assert_eq!(
            r.payload,
            Bytes::from(vec![i as u8; (i * 7 % 1000) as usize])
        );
    }
}
