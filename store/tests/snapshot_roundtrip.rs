//! Snapshots: write, open by mmap zero-copy, validation, replacement, crash safety.

use std::path::Path;

use bytes::Bytes;
use store::fileio::{CrashMode, Fault, FaultKind, FaultOp, FaultStorage, StdStorage};
use store::snapshot::{Snapshot, write_snapshot};
use store::{Revision, StoreError};

fn entries(n: usize, tag: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let key = format!("/registry/pods/default/pod-{i:06}").into_bytes();
            let value = vec![tag.wrapping_add(i as u8); i % 300];
            (key, value)
        })
        .collect()
}

fn write(dir: &Path, rev: u64, data: &[(Vec<u8>, Vec<u8>)]) -> std::path::PathBuf {
    write_snapshot(
        &StdStorage,
        dir,
        2,
        Revision(rev),
        b"engine-meta",
        data.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .unwrap()
}

#[test]
fn round_trip_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = entries(1000, 1);
    let path = write(dir.path(), 42, &data);
    let snap = Snapshot::open_latest(dir.path(), 2).unwrap().unwrap();
    assert_eq!(snap.path(), path);
    assert_eq!(snap.revision(), Revision(42));
    assert_eq!(snap.shard(), 2);
    assert_eq!(snap.meta(), Bytes::from_static(b"engine-meta"));
    assert_eq!(snap.len(), 1000);
    let got: Vec<(Vec<u8>, Vec<u8>)> = snap.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(got, data);
    assert_eq!(snap.get(&data[500].0).unwrap(), data[500].1);
    assert_eq!(snap.get(b"/registry/pods/default/missing"), None);
    // Values point into the mapping and outlive the Snapshot handle.
    let (_, v) = snap.entry(999).unwrap();
    let file = std::fs::read(&path).unwrap();
    let base = file.windows(v.len()).position(|w| w == &v[..]).unwrap();
    assert!(base >= 64);
    drop(snap);
    assert_eq!(v.to_vec(), data[999].1);
    // The archive starts 16-byte aligned and the whole file is what open validated.
    assert_eq!(std::fs::metadata(&path).unwrap().len() % 8, 0);
}

#[test]
fn empty_snapshot_and_wrong_shard() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Snapshot::open_latest(dir.path(), 2).unwrap().is_none());
    write(dir.path(), 1, &[]);
    let snap = Snapshot::open_latest(dir.path(), 2).unwrap().unwrap();
    assert!(snap.is_empty());
    let err = Snapshot::open_latest(dir.path(), 3).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[test]
fn unsorted_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = entries(3, 0);
    data.swap(0, 2);
    let err = write_snapshot(
        &StdStorage,
        dir.path(),
        2,
        Revision(1),
        b"",
        data.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}

/// Any flipped byte, and any truncation, is rejected as Corrupt.
#[test]
fn corrupt_snapshots_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 7, &entries(50, 3));
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len();
    let mut positions: Vec<usize> = (0..64).collect();
    positions.extend((64..len).step_by(len / 97 + 1));
    positions.push(len - 1);
    for at in positions {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        match Snapshot::open(&path, 2) {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    for cut in [0, 10, 63, 64, len / 2, len - 1] {
        std::fs::write(&path, &pristine[..cut]).unwrap();
        assert!(
            matches!(Snapshot::open(&path, 2), Err(StoreError::Corrupt(_))),
            "cut {cut}"
        );
    }
    std::fs::write(&path, &pristine).unwrap();
    assert_eq!(Snapshot::open(&path, 2).unwrap().len(), 50);
}

#[test]
fn a_new_snapshot_replaces_the_old_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), 10, &entries(10, 1));
    let second = write(dir.path(), 20, &entries(20, 2));
    assert!(!first.exists());
    assert!(second.exists());
    let snap = Snapshot::open_latest(dir.path(), 2).unwrap().unwrap();
    assert_eq!(snap.revision(), Revision(20));
    assert_eq!(snap.len(), 20);
}

/// Faults and crashes while writing never lose the previous snapshot.
#[test]
fn failed_or_crashed_writes_keep_the_previous_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = FaultStorage::new();
    let data = entries(100, 1);
    let iter = || data.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
    write_snapshot(&fs, dir.path(), 2, Revision(5), b"m", iter()).unwrap();

    for (op, kind) in [
        (FaultOp::Write, FaultKind::NoSpace),
        (FaultOp::Sync, FaultKind::Eio),
        (FaultOp::SyncDir, FaultKind::Eio),
    ] {
        fs.inject(Fault {
            op,
            kind,
            skip: 0,
            count: 1,
        });
        let err = write_snapshot(&fs, dir.path(), 2, Revision(9), b"m", iter()).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{op:?}: {err}");
        // The rename before a failed directory sync is not durable: a crash undoes it.
        fs.crash(CrashMode::KeepUnsyncedBytes(1 << 30)).unwrap();
        fs = fs.restarted();
        let snap = Snapshot::open_latest(dir.path(), 2).unwrap().unwrap();
        assert_eq!(snap.revision(), Revision(5), "{op:?}");
        assert_eq!(snap.len(), 100);
        drop(snap);
        // Healthy again: the new snapshot goes through and replaces the old one.
        write_snapshot(&fs, dir.path(), 2, Revision(9), b"m", iter()).unwrap();
        assert_eq!(
            Snapshot::open_latest(dir.path(), 2)
                .unwrap()
                .unwrap()
                .revision(),
            Revision(9)
        );
        // Back to revision 5 for the next round.
        std::fs::remove_file(dir.path().join(format!("{:016x}.snap", 9))).unwrap();
        write_snapshot(&fs, dir.path(), 2, Revision(5), b"m", iter()).unwrap();
    }
}
