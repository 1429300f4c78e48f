//! The engine's single-operation semantics: CRUD, CAS, ranges, revisions, transactions,
//! compaction, leases (on a manual clock), limits and quotas.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use store::{
    Backend, Compare, CompareOp, CompareTarget, ContentType, Engine, EngineConfig, LeaseId,
    MAX_VALUE_BYTES, ManualClock, ObjectValue, RangeEnd, RangeRequest, Revision, StoreError, Txn,
    TxnOp, TxnOpResponse,
};

fn engine() -> Arc<Engine> {
    let mut cfg = EngineConfig::in_memory();
    cfg.shards = 3;
    Engine::open(cfg).unwrap()
}

fn v(s: &str) -> ObjectValue {
    ObjectValue::opaque(Bytes::copy_from_slice(s.as_bytes()))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn create_update_delete_and_revisions() {
    let e = engine();
    block_on(async {
        assert_eq!(
            e.create(b("/a"), v("1"), None).await.unwrap(),
            Some(Revision(1))
        );
        assert_eq!(e.create(b("/a"), v("x"), None).await.unwrap(), None);
        assert_eq!(
            e.create(b("/b"), v("2"), None).await.unwrap(),
            Some(Revision(2))
        );
        let kv = e.get(b("/a")).await.unwrap().unwrap();
        assert_eq!(&kv.value.raw[..], b"1");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (Revision(1), Revision(1), 1)
        );
        // CAS with a stale revision fails and returns the current value.
        let stale = e.update(b("/a"), Revision(2), v("no"), None).await.unwrap();
        assert_eq!(stale.unwrap_err().unwrap().mod_revision, Revision(1));
        let r = e
            .update(b("/a"), Revision(1), v("3"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, Revision(3));
        let kv = e.get(b("/a")).await.unwrap().unwrap();
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (Revision(1), Revision(3), 2)
        );
        // Update of a missing key fails with None.
        assert_eq!(
            e.update(b("/zz"), Revision(1), v("q"), None).await.unwrap(),
            Err(None)
        );
        // Conditional delete.
        assert!(
            e.delete(b("/a"), Some(Revision(1)))
                .await
                .unwrap()
                .is_none()
        );
        let (old, rev) = e.delete(b("/a"), Some(Revision(3))).await.unwrap().unwrap();
        assert_eq!((&old.value.raw[..], rev), (&b"3"[..], Revision(4)));
        assert!(e.get(b("/a")).await.unwrap().is_none());
        assert!(e.delete(b("/a"), None).await.unwrap().is_none());
        // Reads at older revisions.
        let at = |r| RangeRequest {
            revision: Some(Revision(r)),
            ..RangeRequest::single(b("/a"))
        };
        assert_eq!(&e.range(at(2)).await.unwrap().kvs[0].value.raw[..], b"1");
        assert_eq!(&e.range(at(3)).await.unwrap().kvs[0].value.raw[..], b"3");
        assert!(e.range(at(4)).await.unwrap().kvs.is_empty());
        assert!(matches!(
            e.range(at(5)).await,
            Err(StoreError::FutureRevision { .. })
        ));
        assert_eq!(e.status().await.unwrap().revision, Revision(4));
        // Recreating starts a new generation.
        e.create(b("/a"), v("4"), None).await.unwrap().unwrap();
        let kv = e.get(b("/a")).await.unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.version), (Revision(5), 1));
    });
}

#[test]
fn ranges_limits_and_order_across_shards() {
    let e = engine();
    block_on(async {
        for i in (0..50).rev() {
            e.create(b(&format!("/p/{i:03}")), v(&i.to_string()), None)
                .await
                .unwrap()
                .unwrap();
        }
        e.create(b("/q/x"), v("q"), None).await.unwrap().unwrap();
        let all = e.range(RangeRequest::prefix(b("/p/"))).await.unwrap();
        assert_eq!(all.count, 50);
        assert!(!all.more);
        let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 50);
        let lim = e
            .range(RangeRequest {
                limit: Some(7),
                ..RangeRequest::prefix(b("/p/"))
            })
            .await
            .unwrap();
        assert_eq!((lim.kvs.len(), lim.more, lim.count), (7, true, 50));
        assert_eq!(&lim.kvs[0].key[..], b"/p/000");
        // Without the total, pages hold the same keys and `more` stays exact (the three
        // shards stop early, so `count` is only a lower bound).
        for limit in [1, 7, 49, 50, 51] {
            let counted = e
                .range(RangeRequest {
                    limit: Some(limit),
                    ..RangeRequest::prefix(b("/p/"))
                })
                .await
                .unwrap();
            let skipped = e
                .range(RangeRequest {
                    limit: Some(limit),
                    skip_count: true,
                    ..RangeRequest::prefix(b("/p/"))
                })
                .await
                .unwrap();
            let keys = |r: &store::RangeResponse| -> Vec<Bytes> {
                r.kvs.iter().map(|kv| kv.key.clone()).collect()
            };
            assert_eq!(keys(&skipped), keys(&counted), "limit {limit}");
            assert_eq!(skipped.more, counted.more, "limit {limit}");
            assert_eq!(skipped.more, limit < 50, "limit {limit}");
            assert!(skipped.count <= counted.count && skipped.count >= skipped.kvs.len() as u64);
            if limit < 40 {
                assert!(
                    skipped.count < 50,
                    "limit {limit}: the scan did not stop early"
                );
            }
        }
        assert_eq!(&lim.kvs[6].key[..], b"/p/006");
        let until = e
            .range(RangeRequest {
                range_end: RangeEnd::Until(b("/p/010")),
                ..RangeRequest::single(b("/p/005"))
            })
            .await
            .unwrap();
        assert_eq!(until.count, 5);
        let count = e
            .range(RangeRequest {
                count_only: true,
                ..RangeRequest::prefix(b("/"))
            })
            .await
            .unwrap();
        assert_eq!((count.count, count.kvs.len()), (51, 0));
        let unb = e
            .range(RangeRequest {
                range_end: RangeEnd::Unbounded,
                ..RangeRequest::single(b("/q"))
            })
            .await
            .unwrap();
        assert_eq!(unb.count, 1);
        let ko = e
            .range(RangeRequest {
                keys_only: true,
                ..RangeRequest::prefix(b("/q/"))
            })
            .await
            .unwrap();
        assert!(ko.kvs[0].value.raw.is_empty());
    });
}

#[test]
fn multi_key_txn_is_atomic_at_one_revision() {
    let e = engine();
    block_on(async {
        e.create(b("/t/a"), v("a"), None).await.unwrap().unwrap();
        let txn = Txn {
            compare: vec![Compare {
                key: b("/t/a"),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::Value(b("a")),
            }],
            success: (0..10)
                .map(|i| TxnOp::Put {
                    key: b(&format!("/t/k{i}")),
                    value: v("n"),
                    lease: None,
                    prev_kv: false,
                })
                .chain([TxnOp::Delete {
                    key: b("/t/a"),
                    range_end: RangeEnd::Single,
                    prev_kv: true,
                }])
                .chain([TxnOp::Range(RangeRequest::prefix(b("/t/")))])
                .collect(),
            failure: vec![],
        };
        let r = e.txn(txn.clone()).await.unwrap();
        assert!(r.succeeded);
        assert_eq!(r.revision, Revision(2));
        match &r.responses[10] {
            TxnOpResponse::Delete { deleted, prev_kvs } => {
                assert_eq!((*deleted, prev_kvs.len()), (1, 1));
            }
            other => panic!("{other:?}"),
        }
        match &r.responses[11] {
            TxnOpResponse::Range(rr) => assert_eq!(rr.count, 10, "the txn reads its own writes"),
            other => panic!("{other:?}"),
        }
        let all = e.range(RangeRequest::prefix(b("/t/"))).await.unwrap();
        assert!(all.kvs.iter().all(|kv| kv.mod_revision == Revision(2)));
        // The compare now fails: failure branch (empty) consumes no revision.
        let r = e.txn(txn).await.unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.revision, Revision(2));
        // Duplicate keys are refused and leave nothing behind.
        let dup = Txn {
            success: vec![
                TxnOp::Put {
                    key: b("/d"),
                    value: v("1"),
                    lease: None,
                    prev_kv: false,
                },
                TxnOp::Put {
                    key: b("/d"),
                    value: v("2"),
                    lease: None,
                    prev_kv: false,
                },
            ],
            ..Txn::default()
        };
        assert!(matches!(
            e.txn(dup).await,
            Err(StoreError::InvalidRequest(_))
        ));
        assert!(e.get(b("/d")).await.unwrap().is_none());
        assert_eq!(e.status().await.unwrap().revision, Revision(2));
        // Range compare: every key must satisfy it.
        let cmp = |op, rev| Txn {
            compare: vec![Compare {
                key: b("/t/"),
                range_end: RangeEnd::Prefix,
                op,
                target: CompareTarget::ModRevision(Revision(rev)),
            }],
            ..Txn::default()
        };
        assert!(e.txn(cmp(CompareOp::Equal, 2)).await.unwrap().succeeded);
        assert!(!e.txn(cmp(CompareOp::Less, 2)).await.unwrap().succeeded);
        // Deleting nothing consumes no revision.
        let del = Txn {
            success: vec![TxnOp::Delete {
                key: b("/none/"),
                range_end: RangeEnd::Prefix,
                prev_kv: false,
            }],
            ..Txn::default()
        };
        assert_eq!(e.txn(del).await.unwrap().revision, Revision(2));
    });
}

#[test]
fn rv_slot_is_stamped_and_values_are_zero_copy() {
    let e = engine();
    block_on(async {
        let value = ObjectValue {
            uid: "u".into(),
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: vec![("app".into(), "x".into())],
            fields: vec![("spec.nodeName".into(), "n1".into())],
            content_type: ContentType::Json,
            raw: b(r#"{"metadata":{"resourceVersion":""}}"#),
            rv_slot: Some(32),
        };
        e.create(b("/registry/pods/ns/p"), value, None)
            .await
            .unwrap()
            .unwrap();
        let kv = e.get(b("/registry/pods/ns/p")).await.unwrap().unwrap();
        assert_eq!(
            &kv.value.raw[..],
            br#"{"metadata":{"resourceVersion":"1"}}"#
        );
        assert_eq!(kv.value.kind, "Pod");
        assert_eq!(kv.value.content_type, ContentType::Json);
        let again = e.get(b("/registry/pods/ns/p")).await.unwrap().unwrap();
        assert_eq!(
            kv.value.raw.as_ptr(),
            again.value.raw.as_ptr(),
            "reads share the stored bytes"
        );
    });
}

#[test]
fn compaction_drops_history() {
    let e = engine();
    block_on(async {
        for i in 0..5 {
            e.txn(Txn {
                success: vec![TxnOp::Put {
                    key: b("/c"),
                    value: v(&i.to_string()),
                    lease: None,
                    prev_kv: false,
                }],
                ..Txn::default()
            })
            .await
            .unwrap();
        }
        e.create(b("/gone"), v("g"), None).await.unwrap().unwrap(); // 6
        e.delete(b("/gone"), None).await.unwrap().unwrap(); // 7
        let before = e.status().await.unwrap().db_size_in_use_bytes;
        e.compact(Revision(4)).await.unwrap();
        let after = e.status().await.unwrap().db_size_in_use_bytes;
        assert!(after < before);
        let at = |r| RangeRequest {
            revision: Some(Revision(r)),
            ..RangeRequest::single(b("/c"))
        };
        assert!(matches!(
            e.range(at(3)).await,
            Err(StoreError::Compacted { .. })
        ));
        assert_eq!(&e.range(at(4)).await.unwrap().kvs[0].value.raw[..], b"3");
        assert_eq!(&e.range(at(5)).await.unwrap().kvs[0].value.raw[..], b"4");
        assert!(matches!(
            e.compact(Revision(4)).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(matches!(
            e.compact(Revision(99)).await,
            Err(StoreError::FutureRevision { .. })
        ));
        e.compact(Revision(7)).await.unwrap();
        assert!(e.get(b("/gone")).await.unwrap().is_none());
        assert_eq!(e.status().await.unwrap().compact_revision, Revision(7));
    });
}

#[test]
fn leases_expire_on_the_engine_clock() {
    let clock = ManualClock::new();
    let mut cfg = EngineConfig::in_memory();
    cfg.clock = clock.clone();
    cfg.lease_check_interval = Duration::from_secs(3600); // expiry driven by the test
    let e = Engine::open(cfg).unwrap();
    block_on(async {
        let g = e.lease_grant(10, None).await.unwrap();
        assert_eq!(g.ttl_seconds, 10);
        assert!(matches!(
            e.lease_grant(5, Some(g.id)).await,
            Err(StoreError::LeaseExists(_))
        ));
        e.create(b("/l/1"), v("x"), Some(g.id))
            .await
            .unwrap()
            .unwrap();
        e.create(b("/l/2"), v("y"), Some(g.id))
            .await
            .unwrap()
            .unwrap();
        e.create(b("/l/keep"), v("z"), None).await.unwrap().unwrap();
        assert!(matches!(
            e.create(b("/l/3"), v("x"), Some(LeaseId(12345))).await,
            Err(StoreError::LeaseNotFound(12345))
        ));
        let ttl = e.lease_time_to_live(g.id, true).await.unwrap();
        assert_eq!(
            (ttl.ttl_seconds, ttl.granted_ttl_seconds, ttl.keys.len()),
            (10, 10, 2)
        );
        clock.advance(Duration::from_secs(6));
        assert_eq!(e.expire_leases().unwrap(), 0);
        assert_eq!(e.lease_keep_alive(g.id).await.unwrap(), 10);
        clock.advance(Duration::from_secs(6));
        assert_eq!(e.expire_leases().unwrap(), 0, "keep-alive renewed it");
        // Detach one key by overwriting it without a lease.
        let cur = e.get(b("/l/2")).await.unwrap().unwrap();
        e.update(b("/l/2"), cur.mod_revision, v("y2"), None)
            .await
            .unwrap()
            .unwrap();
        clock.advance(Duration::from_secs(11));
        let rev_before = e.status().await.unwrap().revision;
        assert_eq!(e.expire_leases().unwrap(), 1);
        assert_eq!(
            e.status().await.unwrap().revision,
            Revision(rev_before.0 + 1)
        );
        assert!(e.get(b("/l/1")).await.unwrap().is_none());
        assert!(e.get(b("/l/2")).await.unwrap().is_some());
        assert!(e.get(b("/l/keep")).await.unwrap().is_some());
        assert_eq!(
            e.lease_time_to_live(g.id, false).await.unwrap().ttl_seconds,
            -1
        );
        assert!(matches!(
            e.lease_keep_alive(g.id).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        // Explicit revoke.
        let g2 = e.lease_grant(100, Some(LeaseId(77))).await.unwrap();
        e.create(b("/l/r"), v("r"), Some(g2.id))
            .await
            .unwrap()
            .unwrap();
        let rev = e.lease_revoke(g2.id).await.unwrap();
        assert_eq!(rev, e.status().await.unwrap().revision);
        assert!(e.get(b("/l/r")).await.unwrap().is_none());
        assert!(matches!(
            e.lease_revoke(g2.id).await,
            Err(StoreError::LeaseNotFound(77))
        ));
    });
}

#[test]
fn background_task_expires_leases() {
    let clock = ManualClock::new();
    let mut cfg = EngineConfig::in_memory();
    cfg.clock = clock.clone();
    cfg.lease_check_interval = Duration::from_millis(5);
    let e = Engine::open(cfg).unwrap();
    block_on(async {
        let g = e.lease_grant(1, None).await.unwrap();
        e.create(b("/bg"), v("x"), Some(g.id))
            .await
            .unwrap()
            .unwrap();
        clock.advance(Duration::from_secs(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while e.get(b("/bg")).await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "lease never expired");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

#[test]
fn limits_and_quota() {
    let mut cfg = EngineConfig::in_memory();
    cfg.memory_quota_bytes = Some(64 * 1024);
    let e = Engine::open(cfg).unwrap();
    block_on(async {
        let big = ObjectValue::opaque(vec![0u8; MAX_VALUE_BYTES + 1]);
        assert!(matches!(
            e.create(b("/big"), big, None).await,
            Err(StoreError::ValueTooLarge { .. })
        ));
        let mut n = 0;
        let err = loop {
            match e
                .create(
                    b(&format!("/q/{n}")),
                    ObjectValue::opaque(vec![1u8; 4096]),
                    None,
                )
                .await
            {
                Ok(r) => assert!(r.is_some()),
                Err(err) => break err,
            }
            n += 1;
            assert!(n < 100, "quota never hit");
        };
        assert!(matches!(err, StoreError::QuotaExceeded(_)), "{err}");
        // Still readable; deletes allowed; after delete + compact, writes work again.
        assert!(e.get(b("/q/0")).await.unwrap().is_some());
        for i in 0..n {
            e.delete(b(&format!("/q/{i}")), None)
                .await
                .unwrap()
                .unwrap();
        }
        let rev = e.status().await.unwrap().revision;
        e.compact(rev).await.unwrap();
        e.create(b("/q/again"), ObjectValue::opaque(vec![1u8; 4096]), None)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn closed_engine_refuses_writes_but_reads() {
    let e = engine();
    block_on(async {
        e.create(b("/x"), v("1"), None).await.unwrap().unwrap();
        e.close();
        assert!(matches!(
            e.create(b("/y"), v("1"), None).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(e.get(b("/x")).await.unwrap().is_some());
    });
}

#[test]
fn engine_types_are_send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<Engine>();
    ok::<EngineConfig>();
    ok::<store::envelope::Envelope>();
}
