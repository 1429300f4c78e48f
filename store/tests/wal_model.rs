//! Random operation sequences (appends, injected faults, crashes, clean restarts) checked
//! against a model: after every restart the log holds exactly the acknowledged records, in
//! order, whatever faults and crashes happened (STYLE 2.5; redb/sled style).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use store::fileio::{CrashMode, Fault, FaultKind, FaultOp, FaultStorage};
use store::wal::{Wal, WalOptions, WalRecord};
use store::{Revision, StoreError};

#[derive(Debug, Clone)]
enum Op {
    /// Append this many records concurrently (lengths derived from the revision).
    Append(u8),
    Fault(FaultOp, FaultKind, u32, u32),
    Crash(Option<u64>),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let fault_op = prop_oneof![
        Just(FaultOp::Write),
        Just(FaultOp::Sync),
        Just(FaultOp::Create),
        Just(FaultOp::Allocate),
        Just(FaultOp::SyncDir),
    ];
    let kind = prop_oneof![
        Just(FaultKind::Eio),
        Just(FaultKind::NoSpace),
        Just(FaultKind::ShortWriteEio)
    ];
    prop_oneof![
        6 => (1u8..12).prop_map(Op::Append),
        2 => (fault_op, kind, 0u32..3, 1u32..3).prop_map(|(o, k, s, c)| Op::Fault(o, k, s, c)),
        1 => proptest::option::of(0u64..5000).prop_map(Op::Crash),
        1 => Just(Op::Restart),
    ]
}

fn payload(rev: u64) -> Bytes {
    Bytes::from(vec![(rev % 251) as u8; (rev * 37 % 700) as usize])
}

fn options(fs: &FaultStorage) -> WalOptions {
    let mut o = WalOptions::with_storage(Arc::new(fs.clone()));
    o.segment_bytes = 4096;
    o
}

/// Opens, retrying (bounded) while an injected fault makes opening fail.
fn open(dir: &Path, fs: &FaultStorage) -> (Wal, Vec<WalRecord>) {
    for _ in 0..10 {
        match Wal::open(dir, 0, options(fs)) {
            Ok(opened) => return opened,
            Err(StoreError::Io(_)) => continue,
            Err(e) => panic!("open failed: {e}"),
        }
    }
    fs.clear_faults();
    Wal::open(dir, 0, options(fs)).expect("open without faults")
}

fn check(records: &[WalRecord], acked: &[u64]) {
    let got: Vec<u64> = records.iter().map(|r| r.revision.0).collect();
    assert_eq!(got, acked, "the log holds exactly the acknowledged records");
    for r in records {
        assert_eq!(r.payload, payload(r.revision.0));
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut fs = FaultStorage::new();
    let (first, records) = open(dir.path(), &fs);
    let mut wal = Some(first);
    check(&records, &[]);
    let mut acked: Vec<u64> = Vec::new();
    let mut next_rev = 1u64;
    for op in ops {
        match op {
            Op::Append(n) => {
                let futs: Vec<_> = (0..n)
                    .map(|_| {
                        let rev = next_rev;
                        next_rev += 1;
                        (
                            rev,
                            wal.as_ref()
                                .expect("open")
                                .append(payload(rev), Revision(rev)),
                        )
                    })
                    .collect();
                for (rev, f) in futs {
                    match rt.block_on(f) {
                        Ok(()) => acked.push(rev),
                        Err(StoreError::Io(_)) => {}
                        Err(e) => panic!("unexpected append error: {e}"),
                    }
                }
            }
            Op::Fault(op, kind, skip, count) => fs.inject(Fault {
                op,
                kind,
                skip,
                count,
            }),
            Op::Crash(keep) => {
                let mode = keep.map_or(CrashMode::DropUnsynced, CrashMode::KeepUnsyncedBytes);
                fs.crash(mode).unwrap();
                fs = fs.restarted();
                drop(wal.take());
                let (w, records) = open(dir.path(), &fs);
                wal = Some(w);
                check(&records, &acked);
            }
            Op::Restart => {
                fs.clear_faults();
                if let Some(old) = wal.take() {
                    rt.block_on(old.close()).unwrap();
                }
                let (w, records) = open(dir.path(), &fs);
                wal = Some(w);
                check(&records, &acked);
            }
        }
    }
    fs.clear_faults();
    if let Some(w) = wal.take() {
        rt.block_on(w.close()).unwrap();
    }
    let (_w, records) = open(dir.path(), &fs);
    check(&records, &acked);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn wal_matches_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops);
    }
}
