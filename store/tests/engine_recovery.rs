//! The engine over a log: restart recovers exactly the acknowledged state (values, history,
//! leases, compaction); a failed log append fails the write and every write sequenced after
//! it, leaves the store readable, and the store takes writes again once the fault clears.
//! A crash that kept a later revision's record but lost an earlier one's recovers the chain
//! up to the hole and never reuses the orphan's revision number.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use store::{
    Backend, Engine, EngineConfig, LeaseId, ManualClock, MemLog, ObjectValue, RangeRequest,
    Revision, StoreError,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn v(s: &str) -> ObjectValue {
    ObjectValue::opaque(b(s))
}

fn open(log: &Arc<MemLog>, clock: &Arc<ManualClock>) -> Arc<Engine> {
    let mut cfg = EngineConfig::in_memory();
    cfg.clock = clock.clone();
    cfg.lease_check_interval = Duration::from_secs(3600);
    Engine::open_with_log(cfg, log.clone()).unwrap()
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
fn restart_recovers_values_history_leases_and_compaction() {
    let log = MemLog::new(3);
    let clock = ManualClock::new();
    let e = open(&log, &clock);
    let (before, before_old, lease) = block_on(async {
        for i in 0..30 {
            e.create(b(&format!("/k/{i:02}")), v(&format!("v{i}")), None)
                .await
                .unwrap()
                .unwrap();
        }
        for i in 0..10 {
            let cur = e.get(b(&format!("/k/{i:02}"))).await.unwrap().unwrap();
            e.update(cur.key, cur.mod_revision, v("updated"), None)
                .await
                .unwrap()
                .unwrap();
        }
        e.delete(b("/k/29"), None).await.unwrap().unwrap();
        let lease = e.lease_grant(30, None).await.unwrap().id;
        e.create(b("/l/a"), v("leased"), Some(lease))
            .await
            .unwrap()
            .unwrap();
        e.compact(Revision(20)).await.unwrap();
        (dump(&e, None).await, dump(&e, Some(25)).await, lease)
    });
    let rev = e.revision();
    e.close();
    drop(e);

    let e = open(&log, &clock);
    assert_eq!(e.revision(), rev);
    block_on(async {
        assert_eq!(dump(&e, None).await, before);
        assert_eq!(dump(&e, Some(25)).await, before_old);
        let st = e.status().await.unwrap();
        assert_eq!(st.compact_revision, Revision(20));
        assert!(matches!(
            e.range(RangeRequest {
                revision: Some(Revision(19)),
                ..RangeRequest::single(b("/k/00"))
            })
            .await,
            Err(StoreError::Compacted { .. })
        ));
        let ttl = e.lease_time_to_live(lease, true).await.unwrap();
        assert_eq!(ttl.keys, vec![b("/l/a")]);
        // Revisions continue after the recovered one.
        let r = e.create(b("/after"), v("x"), None).await.unwrap().unwrap();
        assert_eq!(r, Revision(rev.0 + 1));
        // The recovered lease still expires and deletes its key.
        clock.advance(Duration::from_secs(31));
        assert_eq!(e.expire_leases().unwrap(), 1);
        assert!(e.get(b("/l/a")).await.unwrap().is_none());
    });
    e.close();
    drop(e);
    // And the revocation itself survives another restart.
    let e = open(&log, &clock);
    block_on(async {
        assert!(e.get(b("/l/a")).await.unwrap().is_none());
        assert!(matches!(
            e.lease_keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
    });
}

#[test]
fn failed_append_fails_the_write_and_the_store_recovers() {
    let log = MemLog::new(2);
    let clock = ManualClock::new();
    let e = open(&log, &clock);
    block_on(async {
        e.create(b("/a"), v("1"), None).await.unwrap().unwrap();
        log.fail_appends(true);
        let err = e.create(b("/b"), v("2"), None).await.unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err}");
        let err = e.lease_grant(10, Some(LeaseId(5))).await.unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err}");
        // Readable, and the failed writes left nothing behind.
        assert_eq!(&e.get(b("/a")).await.unwrap().unwrap().value.raw[..], b"1");
        assert!(e.get(b("/b")).await.unwrap().is_none());
        assert_eq!(e.revision(), Revision(1));
        assert_eq!(
            e.lease_time_to_live(LeaseId(5), false)
                .await
                .unwrap()
                .ttl_seconds,
            -1
        );
        log.fail_appends(false);
        let r = e.create(b("/b"), v("3"), None).await.unwrap().unwrap();
        assert!(r > Revision(1));
        let cur = e.get(b("/a")).await.unwrap().unwrap();
        e.update(b("/a"), cur.mod_revision, v("4"), None)
            .await
            .unwrap()
            .unwrap();
        e.lease_grant(10, Some(LeaseId(5))).await.unwrap();
    });
    let before = block_on(dump(&e, None));
    let rev = e.revision();
    e.close();
    drop(e);
    let e = open(&log, &clock);
    assert_eq!(e.revision(), rev);
    assert_eq!(block_on(dump(&e, None)), before);
}

#[test]
fn writes_are_visible_only_once_durable_and_reads_wait_for_them() {
    // With a log, an acknowledged write is readable right after its ack, and concurrent
    // writers on many threads all land (group commit through the pump).
    let log = MemLog::new(2);
    let clock = ManualClock::new();
    let e = open(&log, &clock);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                block_on(async {
                    for i in 0..50 {
                        let k = b(&format!("/c/{t}/{i}"));
                        let r = e.create(k.clone(), v("x"), None).await.unwrap().unwrap();
                        let got = e.get(k).await.unwrap().unwrap();
                        assert_eq!(got.mod_revision, r);
                        assert!(e.revision() >= r);
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(e.revision(), Revision(200));
    assert_eq!(log.record_count(), 200);
}

#[test]
fn crash_orphans_past_a_lost_revision_are_dropped_and_their_numbers_never_reused() {
    let log = MemLog::new(2);
    let clock = ManualClock::new();
    let e = open(&log, &clock);
    let mut revs = Vec::new();
    block_on(async {
        for i in 0..12 {
            let r = e
                .create(b(&format!("/k/{i:02}")), v(&format!("v{i}")), None)
                .await
                .unwrap()
                .unwrap();
            revs.push(r.0);
        }
    });
    e.close();
    drop(e);
    // The crash: revision of /k/05 never reached its shard's disk; the later ones did.
    let lost = revs[5];
    assert_eq!(log.lose_revision(lost), 1);
    let e = open(&log, &clock);
    assert_eq!(
        e.revision(),
        Revision(lost - 1),
        "the chain stops at the hole"
    );
    let keys: Vec<Bytes> = block_on(dump(&e, None)).into_iter().map(|r| r.0).collect();
    let want: Vec<Bytes> = (0..5).map(|i| b(&format!("/k/{i:02}"))).collect();
    assert_eq!(keys, want, "writes past the hole are not applied");
    // New writes take numbers above every one issued before the crash.
    let newest_orphan = *revs.last().unwrap();
    let after = block_on(async {
        let mut after = Vec::new();
        for i in 0..4 {
            let r = e
                .create(b(&format!("/n/{i}")), v(&format!("n{i}")), None)
                .await
                .unwrap()
                .unwrap();
            assert!(r.0 > newest_orphan, "revision {} reused", r.0);
            after.push(r.0);
        }
        after
    });
    let before = block_on(dump(&e, None));
    e.close();
    drop(e);
    // A second restart reads the orphans and the new records side by side and rebuilds the
    // same state: no revision appears twice in the log.
    let e = open(&log, &clock);
    assert_eq!(e.revision(), Revision(*after.last().unwrap()));
    assert_eq!(block_on(dump(&e, None)), before);
}
