//! The `Backend` conformance suite: one set of checks, written once over `Arc<dyn Backend>`,
//! that every implementation must pass (the embedded engine, a real etcd through
//! [`EtcdBackend`](crate::etcd_backend::EtcdBackend), and the etcd face over the engine
//! reached through that same client).
//!
//! Each check takes a *fresh* backend (revisions start at 1) and panics on a violation.
//! [`conformance_tests!`](crate::conformance_tests) turns them into one `#[tokio::test]`
//! each for a given factory. Every wait is bounded.
//!
//! Built with the `conformance` feature (and in this crate's own tests).

pub mod etcd_process;
pub mod harness;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{
    Backend, Compare, CompareOp, CompareTarget, ContentType, KeyValue, LeaseId, ObjectValue,
    RangeEnd, RangeRequest, Requirement, Revision, Txn, TxnOp, TxnOpResponse, WatchEvent,
    WatchFilter, WatchRequest, WatchStream,
};
use crate::error::{MAX_VALUE_BYTES, StoreError};

/// Longest any single wait in the suite may take.
const WAIT: Duration = Duration::from_secs(15);

/// The names of every check, for the macro and for reports.
pub const CHECKS: &[&str] = &[
    "crud_and_cas",
    "range_prefix_limit_continuation",
    "range_at_old_revisions",
    "compaction",
    "txn_compares_and_branches",
    "txn_multi_key_atomicity",
    "delete_range_prev_kv",
    "leases",
    "lease_expiry_deletes_keys",
    "watch_from_revision",
    "watch_live_ordering",
    "watch_filters",
    "watch_progress",
    "value_metadata_round_trip",
    "value_too_large",
    "list_raw_filters_and_pages",
];

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn v(s: &str) -> ObjectValue {
    ObjectValue::opaque(b(s))
}

fn put(key: &str, val: &str) -> TxnOp {
    TxnOp::Put {
        key: b(key),
        value: v(val),
        lease: None,
        prev_kv: false,
    }
}

async fn put_now(be: &Arc<dyn Backend>, key: &str, val: &str) -> Revision {
    let r = be
        .txn(Txn {
            compare: vec![],
            success: vec![put(key, val)],
            failure: vec![],
        })
        .await
        .expect("put");
    assert!(r.succeeded);
    r.revision
}

fn raw_of(kv: &KeyValue) -> &[u8] {
    &kv.value.raw
}

/// Reads watch batches until `want` events (not progress) arrived or `WAIT` passed.
async fn collect_events(s: &mut WatchStream, want: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < want {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(batch))) => {
                out.extend(
                    batch
                        .into_iter()
                        .filter(|e| !matches!(e, WatchEvent::Progress(_))),
                );
            }
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
            Ok(None) => panic!("watch ended after {} events", out.len()),
            Err(_) => panic!(
                "timed out waiting for {want} events; got {}: {out:?}",
                out.len()
            ),
        }
    }
    out
}

/// Expects no event (other than progress) for `d`.
async fn expect_quiet(s: &mut WatchStream, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Err(_) => return,
            Ok(Some(Ok(batch))) => {
                let real: Vec<_> = batch
                    .into_iter()
                    .filter(|e| !matches!(e, WatchEvent::Progress(_)))
                    .collect();
                assert!(real.is_empty(), "unexpected events: {real:?}");
            }
            Ok(other) => panic!("watch ended unexpectedly: {other:?}"),
        }
    }
}

fn key_of(e: &WatchEvent) -> Bytes {
    match e {
        WatchEvent::Put { kv, .. } => kv.key.clone(),
        WatchEvent::Delete { key, .. } => key.clone(),
        WatchEvent::Progress(_) => Bytes::new(),
    }
}

/// Create, compare-and-swap update, conditional delete; revisions are consecutive from 1.
pub async fn crud_and_cas(be: Arc<dyn Backend>) {
    assert_eq!(
        be.create(b("/a"), v("1"), None).await.unwrap(),
        Some(Revision(1))
    );
    assert_eq!(be.create(b("/a"), v("again"), None).await.unwrap(), None);
    assert_eq!(
        be.create(b("/b"), v("2"), None).await.unwrap(),
        Some(Revision(2))
    );
    let kv = be.get(b("/a")).await.unwrap().expect("/a exists");
    assert_eq!(raw_of(&kv), b"1");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (Revision(1), Revision(1), 1)
    );
    assert_eq!(kv.lease, None);

    let stale = be
        .update(b("/a"), Revision(2), v("no"), None)
        .await
        .unwrap();
    let current = stale
        .expect_err("stale CAS must fail")
        .expect("current value returned");
    assert_eq!(current.mod_revision, Revision(1));
    assert_eq!(
        be.update(b("/a"), Revision(1), v("3"), None).await.unwrap(),
        Ok(Revision(3))
    );
    let kv = be.get(b("/a")).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (Revision(1), Revision(3), 2)
    );
    assert_eq!(raw_of(&kv), b"3");
    // CAS on a missing key fails with no current value.
    assert_eq!(
        be.update(b("/none"), Revision(1), v("x"), None)
            .await
            .unwrap(),
        Err(None)
    );

    assert_eq!(
        be.delete(b("/a"), Some(Revision(1))).await.unwrap(),
        None,
        "stale delete"
    );
    let (gone, rev) = be
        .delete(b("/a"), Some(Revision(3)))
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(rev, Revision(4));
    assert_eq!(raw_of(&gone), b"3");
    assert_eq!(be.get(b("/a")).await.unwrap(), None);
    assert_eq!(
        be.delete(b("/a"), None).await.unwrap(),
        None,
        "deleting a missing key"
    );
    // Re-creating starts a new life: version 1, create revision = mod revision.
    assert_eq!(
        be.create(b("/a"), v("new"), None).await.unwrap(),
        Some(Revision(5))
    );
    let kv = be.get(b("/a")).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (Revision(5), Revision(5), 1)
    );
    assert_eq!(be.status().await.unwrap().revision, Revision(5));
}

/// Prefix ranges in key order, `limit` with `more`/`count`, continuation, keys/count only.
pub async fn range_prefix_limit_continuation(be: Arc<dyn Backend>) {
    put_now(&be, "/q/after", "x").await;
    for i in (0..10).rev() {
        put_now(&be, &format!("/p/k{i:02}"), &format!("v{i}")).await;
    }
    put_now(&be, "/o/before", "x").await;
    put_now(&be, "/p", "not under the prefix /p/").await;

    let mut req = RangeRequest::prefix(b("/p/"));
    req.limit = Some(3);
    let first = be.range(req.clone()).await.unwrap();
    assert_eq!(first.kvs.len(), 3);
    assert!(first.more);
    assert_eq!(first.count, 10);
    assert_eq!(first.revision, Revision(13));
    let keys: Vec<_> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("/p/k00"), b("/p/k01"), b("/p/k02")]);

    // Page through with a fixed revision, as the apiserver's `continue` does.
    let mut all = first.kvs.clone();
    let mut next = {
        let mut k = first.kvs.last().unwrap().key.to_vec();
        k.push(0);
        Bytes::from(k)
    };
    for _ in 0..10 {
        let page = be
            .range(RangeRequest {
                key: next.clone(),
                range_end: RangeEnd::Until(crate::etcd_wire::prefix_end(b"/p/")),
                revision: Some(first.revision),
                limit: Some(3),
                keys_only: false,
                count_only: false,
                skip_count: false,
            })
            .await
            .unwrap();
        all.extend(page.kvs.iter().cloned());
        if !page.more {
            break;
        }
        let mut k = page.kvs.last().unwrap().key.to_vec();
        k.push(0);
        next = Bytes::from(k);
    }
    let got: Vec<_> = all
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.raw.clone()))
        .collect();
    let want: Vec<_> = (0..10)
        .map(|i| (b(&format!("/p/k{i:02}")), b(&format!("v{i}"))))
        .collect();
    assert_eq!(got, want);

    let mut ko = RangeRequest::prefix(b("/p/"));
    ko.keys_only = true;
    let r = be.range(ko).await.unwrap();
    assert_eq!(r.kvs.len(), 10);
    assert!(
        r.kvs.iter().all(|kv| kv.value.raw.is_empty()),
        "keys_only returns no values"
    );
    let mut co = RangeRequest::prefix(b("/p/"));
    co.count_only = true;
    let r = be.range(co).await.unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 10);
    // Unbounded from a key, and an explicit [start, end).
    let r = be
        .range(RangeRequest {
            range_end: RangeEnd::Unbounded,
            ..RangeRequest::single(b("/p/k08"))
        })
        .await
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b("/p/k08"), b("/p/k09"), b("/q/after")]
    );
    let r = be
        .range(RangeRequest {
            range_end: RangeEnd::Until(b("/p/k03")),
            ..RangeRequest::single(b("/p/k01"))
        })
        .await
        .unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert_eq!(
        be.range(RangeRequest::single(b("/p/missing")))
            .await
            .unwrap()
            .kvs,
        vec![]
    );
}

/// Reads at older revisions see the past; a future revision is refused.
pub async fn range_at_old_revisions(be: Arc<dyn Backend>) {
    put_now(&be, "/a", "1").await;
    put_now(&be, "/a", "2").await;
    put_now(&be, "/b", "b").await;
    be.delete(b("/a"), None).await.unwrap().expect("deleted");
    let at = |rev: u64| {
        let be = be.clone();
        async move {
            be.range(RangeRequest {
                revision: Some(Revision(rev)),
                ..RangeRequest::prefix(b("/"))
            })
            .await
        }
    };
    let r1 = at(1).await.unwrap();
    assert_eq!(r1.revision, Revision(1));
    assert_eq!(r1.kvs.len(), 1);
    assert_eq!(raw_of(&r1.kvs[0]), b"1");
    let r2 = at(2).await.unwrap();
    assert_eq!(raw_of(&r2.kvs[0]), b"2");
    assert_eq!(r2.kvs[0].version, 2);
    let r3 = at(3).await.unwrap();
    assert_eq!(r3.kvs.len(), 2);
    let r4 = at(4).await.unwrap();
    assert_eq!(
        r4.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b("/b")]
    );
    match at(99).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!(requested, Revision(99));
            assert_eq!(current, Revision(4));
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

/// Compaction: reads and watches below the compaction point fail with `Compacted`; at the
/// compaction point they work.
pub async fn compaction(be: Arc<dyn Backend>) {
    for i in 1..=5 {
        put_now(&be, "/c", &format!("{i}")).await;
    }
    be.compact(Revision(3)).await.unwrap();
    match be
        .range(RangeRequest {
            revision: Some(Revision(2)),
            ..RangeRequest::single(b("/c"))
        })
        .await
    {
        Err(StoreError::Compacted {
            requested,
            compact_revision,
        }) => {
            assert_eq!(requested, Revision(2));
            assert_eq!(compact_revision, Revision(3));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let r = be
        .range(RangeRequest {
            revision: Some(Revision(3)),
            ..RangeRequest::single(b("/c"))
        })
        .await
        .unwrap();
    assert_eq!(
        raw_of(&r.kvs[0]),
        b"3",
        "the compaction revision itself stays readable"
    );
    // Latest reads and writes go on.
    assert_eq!(raw_of(&be.get(b("/c")).await.unwrap().unwrap()), b"5");
    assert_eq!(put_now(&be, "/c", "6").await, Revision(6));
    assert!(be.status().await.unwrap().compact_revision >= Revision(3));

    let req = WatchRequest {
        key: b("/c"),
        range_end: RangeEnd::Single,
        start_revision: Some(Revision(2)),
        filter: WatchFilter::default(),
        prev_kv: false,
        progress_notify: false,
    };
    let err = match be.watch(req).await {
        Err(e) => e,
        Ok(mut s) => match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("watch from a compacted revision must fail, got {other:?}"),
        },
    };
    assert!(
        matches!(err, StoreError::Compacted { compact_revision, .. } if compact_revision == Revision(3)),
        "got {err:?}"
    );
    // Watching from the compaction point itself is allowed (as etcd allows
    // `compactRevision`) and replays history from there.
    let mut s = be
        .watch(WatchRequest {
            key: b("/c"),
            range_end: RangeEnd::Single,
            start_revision: Some(Revision(3)),
            filter: WatchFilter::default(),
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let evs = collect_events(&mut s, 4).await;
    let revs: Vec<_> = evs.iter().map(WatchEvent::revision).collect();
    assert_eq!(
        revs,
        vec![Revision(3), Revision(4), Revision(5), Revision(6)]
    );
}

/// Txn compares on version, create, mod, value and lease; both branches; reads inside.
pub async fn txn_compares_and_branches(be: Arc<dyn Backend>) {
    put_now(&be, "/t", "one").await; // rev 1
    put_now(&be, "/t", "two").await; // rev 2
    let cmp = |target: CompareTarget, op: CompareOp| Compare {
        key: b("/t"),
        range_end: RangeEnd::Single,
        op,
        target,
    };
    let cases: Vec<(Compare, bool)> = vec![
        (cmp(CompareTarget::Version(2), CompareOp::Equal), true),
        (cmp(CompareTarget::Version(1), CompareOp::Greater), true),
        (cmp(CompareTarget::Version(2), CompareOp::Less), false),
        (cmp(CompareTarget::Version(3), CompareOp::NotEqual), true),
        (
            cmp(CompareTarget::CreateRevision(Revision(1)), CompareOp::Equal),
            true,
        ),
        (
            cmp(CompareTarget::ModRevision(Revision(2)), CompareOp::Equal),
            true,
        ),
        (
            cmp(CompareTarget::ModRevision(Revision(3)), CompareOp::Less),
            true,
        ),
        (
            cmp(CompareTarget::ModRevision(Revision(1)), CompareOp::Equal),
            false,
        ),
        (cmp(CompareTarget::Value(b("two")), CompareOp::Equal), true),
        (cmp(CompareTarget::Value(b("one")), CompareOp::Equal), false),
        (cmp(CompareTarget::Value(b("a")), CompareOp::Greater), true),
        (cmp(CompareTarget::Lease(None), CompareOp::Equal), true),
        (
            Compare {
                key: b("/missing"),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            },
            true,
        ),
    ];
    let rev_before = be.status().await.unwrap().revision;
    for (c, want) in cases {
        let r = be
            .txn(Txn {
                compare: vec![c.clone()],
                success: vec![TxnOp::Range(RangeRequest::single(b("/t")))],
                failure: vec![],
            })
            .await
            .unwrap();
        assert_eq!(r.succeeded, want, "compare {c:?}");
        // Read-only transactions do not consume a revision.
        assert_eq!(r.revision, rev_before, "compare {c:?}");
        if want {
            match &r.responses[..] {
                [TxnOpResponse::Range(rr)] => assert_eq!(raw_of(&rr.kvs[0]), b"two"),
                other => panic!("unexpected responses {other:?}"),
            }
        } else {
            assert!(r.responses.is_empty());
        }
    }
    // A failed guard runs the failure branch; a failure branch that writes gets a revision.
    let r = be
        .txn(Txn {
            compare: vec![cmp(CompareTarget::Value(b("nope")), CompareOp::Equal)],
            success: vec![put("/t", "success")],
            failure: vec![
                put("/f", "failure"),
                TxnOp::Range(RangeRequest::single(b("/t"))),
            ],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, Revision(3));
    assert_eq!(r.responses.len(), 2);
    assert!(matches!(r.responses[0], TxnOpResponse::Put { .. }));
    assert_eq!(raw_of(&be.get(b("/t")).await.unwrap().unwrap()), b"two");
    assert_eq!(raw_of(&be.get(b("/f")).await.unwrap().unwrap()), b"failure");
    // A failed guard with an empty failure branch changes nothing.
    let r = be
        .txn(Txn {
            compare: vec![cmp(CompareTarget::Version(99), CompareOp::Equal)],
            success: vec![put("/t", "x")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, Revision(3));
    assert_eq!(be.status().await.unwrap().revision, Revision(3));
    // prev_kv on a put inside a txn.
    let r = be
        .txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: b("/t"),
                value: v("three"),
                lease: None,
                prev_kv: true,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    match &r.responses[..] {
        [TxnOpResponse::Put { prev_kv: Some(p) }] => assert_eq!(raw_of(p), b"two"),
        other => panic!("expected prev_kv, got {other:?}"),
    }
}

/// One transaction's writes share one revision and are seen together by readers and watchers.
pub async fn txn_multi_key_atomicity(be: Arc<dyn Backend>) {
    put_now(&be, "/m/0", "old").await;
    let mut s = be
        .watch(WatchRequest {
            key: b("/m/"),
            range_end: RangeEnd::Prefix,
            start_revision: Some(Revision(2)),
            filter: WatchFilter::default(),
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let r = be
        .txn(Txn {
            compare: vec![],
            success: (0..5)
                .map(|i| put(&format!("/m/{i}"), "new"))
                .chain([TxnOp::Delete {
                    key: b("/m/0"),
                    range_end: RangeEnd::Single,
                    prev_kv: false,
                }])
                .collect(),
            failure: vec![],
        })
        .await;
    // etcd refuses a put and a delete of the same key in one txn; both answers are allowed,
    // but either way nothing may be half-applied.
    match r {
        Err(StoreError::InvalidRequest(_)) => {
            assert_eq!(be.status().await.unwrap().revision, Revision(1));
        }
        Ok(_) => panic!("a put and a delete of one key in one txn must be refused"),
        Err(e) => panic!("unexpected error {e}"),
    }
    let r = be
        .txn(Txn {
            compare: vec![],
            success: (1..6).map(|i| put(&format!("/m/{i}"), "new")).collect(),
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(r.revision, Revision(2));
    let all = be.range(RangeRequest::prefix(b("/m/"))).await.unwrap();
    assert_eq!(all.kvs.len(), 6);
    assert!(
        all.kvs
            .iter()
            .skip(1)
            .all(|kv| kv.mod_revision == Revision(2))
    );
    // The watcher gets all five in revision order, none split from the others.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut first_batch = Vec::new();
    while first_batch.is_empty() {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(batch))) => {
                first_batch = batch
                    .into_iter()
                    .filter(|e| !matches!(e, WatchEvent::Progress(_)))
                    .collect();
            }
            other => panic!("watch: {other:?}"),
        }
    }
    assert_eq!(
        first_batch.len(),
        5,
        "one revision's events arrive in one batch: {first_batch:?}"
    );
    assert!(first_batch.iter().all(|e| e.revision() == Revision(2)));
}

/// Range deletes return their count and previous values.
pub async fn delete_range_prev_kv(be: Arc<dyn Backend>) {
    for i in 0..4 {
        put_now(&be, &format!("/d/{i}"), &format!("{i}")).await;
    }
    put_now(&be, "/e", "keep").await;
    let r = be
        .txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Delete {
                key: b("/d/"),
                range_end: RangeEnd::Prefix,
                prev_kv: true,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(r.revision, Revision(6));
    match &r.responses[..] {
        [TxnOpResponse::Delete { deleted, prev_kvs }] => {
            assert_eq!(*deleted, 4);
            // etcd returns them in key order; the trait does not promise an order.
            let mut got: Vec<_> = prev_kvs.iter().map(|kv| kv.value.raw.clone()).collect();
            got.sort();
            assert_eq!(got, vec![b("0"), b("1"), b("2"), b("3")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        be.range(RangeRequest::prefix(b("/d/")))
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
    assert!(be.get(b("/e")).await.unwrap().is_some());
    // Deleting nothing writes nothing.
    let r = be
        .txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Delete {
                key: b("/d/"),
                range_end: RangeEnd::Prefix,
                prev_kv: false,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(r.revision, Revision(6));
}

/// Lease grant, attach, time-to-live with keys, keep-alive, revoke deleting the keys.
pub async fn leases(be: Arc<dyn Backend>) {
    let g = be.lease_grant(60, None).await.unwrap();
    assert!(g.id.0 != 0);
    assert_eq!(g.ttl_seconds, 60);
    let g2 = be.lease_grant(60, Some(LeaseId(7777))).await.unwrap();
    assert_eq!(g2.id, LeaseId(7777));
    assert!(matches!(
        be.lease_grant(60, Some(LeaseId(7777))).await,
        Err(StoreError::LeaseExists(7777))
    ));

    be.create(b("/l/a"), v("a"), Some(g.id))
        .await
        .unwrap()
        .unwrap();
    be.create(b("/l/b"), v("b"), Some(g.id))
        .await
        .unwrap()
        .unwrap();
    be.create(b("/l/c"), v("c"), None).await.unwrap().unwrap();
    assert_eq!(be.get(b("/l/a")).await.unwrap().unwrap().lease, Some(g.id));
    // A txn guard on the lease.
    let r = be
        .txn(Txn {
            compare: vec![Compare {
                key: b("/l/a"),
                range_end: RangeEnd::Single,
                op: CompareOp::Equal,
                target: CompareTarget::Lease(Some(g.id)),
            }],
            success: vec![],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(r.succeeded);

    let t = be.lease_time_to_live(g.id, true).await.unwrap();
    assert_eq!(t.granted_ttl_seconds, 60);
    assert!(
        t.ttl_seconds > 0 && t.ttl_seconds <= 60,
        "ttl {}",
        t.ttl_seconds
    );
    let mut keys = t.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![b("/l/a"), b("/l/b")]);
    assert_eq!(be.lease_keep_alive(g.id).await.unwrap(), 60);

    let rev_before = be.status().await.unwrap().revision;
    let rev = be.lease_revoke(g.id).await.unwrap();
    assert_eq!(
        rev,
        Revision(rev_before.0 + 1),
        "revoking deletes the keys in one revision"
    );
    assert_eq!(be.get(b("/l/a")).await.unwrap(), None);
    assert_eq!(be.get(b("/l/b")).await.unwrap(), None);
    assert!(be.get(b("/l/c")).await.unwrap().is_some());
    match be.lease_time_to_live(g.id, false).await {
        Ok(t) => assert_eq!(t.ttl_seconds, -1),
        Err(e) => panic!("time-to-live of a revoked lease reports -1, got {e}"),
    }
    assert!(matches!(
        be.lease_keep_alive(g.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        be.lease_revoke(g.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // Attaching a key to a missing lease fails and writes nothing.
    let rev = be.status().await.unwrap().revision;
    match be.create(b("/l/d"), v("d"), Some(LeaseId(123_456))).await {
        Err(StoreError::LeaseNotFound(_)) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(be.status().await.unwrap().revision, rev);
}

/// An expired lease deletes its keys (seen by reads and by a watcher).
pub async fn lease_expiry_deletes_keys(be: Arc<dyn Backend>) {
    let g = be.lease_grant(1, None).await.unwrap();
    assert!(
        g.ttl_seconds >= 1 && g.ttl_seconds <= 5,
        "granted {}",
        g.ttl_seconds
    );
    let rev = be
        .create(b("/x/k"), v("v"), Some(g.id))
        .await
        .unwrap()
        .unwrap();
    let mut s = be
        .watch(WatchRequest {
            key: b("/x/"),
            range_end: RangeEnd::Prefix,
            start_revision: Some(Revision(rev.0 + 1)),
            filter: WatchFilter::default(),
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let evs = collect_events(&mut s, 1).await;
    assert!(
        matches!(&evs[0], WatchEvent::Delete { key, .. } if key == &b("/x/k")),
        "{evs:?}"
    );
    assert_eq!(be.get(b("/x/k")).await.unwrap(), None);
    assert_eq!(
        be.lease_time_to_live(g.id, false)
            .await
            .map(|t| t.ttl_seconds)
            .unwrap_or(-1),
        -1
    );
}

/// A watch from an old revision replays history in order with `prev_kv`, then goes live.
pub async fn watch_from_revision(be: Arc<dyn Backend>) {
    put_now(&be, "/w/a", "a1").await; // 1
    put_now(&be, "/w/b", "b1").await; // 2
    put_now(&be, "/other", "o").await; // 3
    put_now(&be, "/w/a", "a2").await; // 4
    be.delete(b("/w/b"), None).await.unwrap().unwrap(); // 5
    let mut s = be
        .watch(WatchRequest {
            key: b("/w/"),
            range_end: RangeEnd::Prefix,
            start_revision: Some(Revision(2)),
            filter: WatchFilter::default(),
            prev_kv: true,
            progress_notify: false,
        })
        .await
        .unwrap();
    let evs = collect_events(&mut s, 3).await;
    match &evs[..] {
        [
            WatchEvent::Put {
                kv: b2,
                prev_kv: None,
            },
            WatchEvent::Put {
                kv: a2,
                prev_kv: Some(a1),
            },
            WatchEvent::Delete {
                key,
                revision,
                prev_kv: Some(b_last),
            },
        ] => {
            assert_eq!((b2.key.clone(), b2.mod_revision), (b("/w/b"), Revision(2)));
            assert_eq!(
                (raw_of(a2), a2.mod_revision, a2.version),
                (&b"a2"[..], Revision(4), 2)
            );
            assert_eq!(raw_of(a1), b"a1");
            assert_eq!((key.clone(), *revision), (b("/w/b"), Revision(5)));
            assert_eq!(raw_of(b_last), b"b1");
        }
        other => panic!("unexpected history {other:?}"),
    }
    put_now(&be, "/w/c", "c").await; // 6
    let evs = collect_events(&mut s, 1).await;
    assert_eq!(key_of(&evs[0]), b("/w/c"));
    assert_eq!(evs[0].revision(), Revision(6));
}

/// A live watch (no start revision) sees only later writes, in order, exactly once.
pub async fn watch_live_ordering(be: Arc<dyn Backend>) {
    put_now(&be, "/o/before", "x").await;
    let mut s = be
        .watch(WatchRequest {
            key: b("/o/"),
            range_end: RangeEnd::Prefix,
            start_revision: None,
            filter: WatchFilter::default(),
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let writer = {
        let be = be.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                put_now(&be, &format!("/o/k{}", i % 7), &format!("{i}")).await;
            }
        })
    };
    let evs = collect_events(&mut s, 50).await;
    writer.await.unwrap();
    let revs: Vec<u64> = evs.iter().map(|e| e.revision().0).collect();
    assert_eq!(
        revs,
        (2..52).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    for (i, e) in evs.iter().enumerate() {
        match e {
            WatchEvent::Put { kv, .. } => {
                assert_eq!(kv.key, b(&format!("/o/k{}", i % 7)));
                assert_eq!(raw_of(kv), format!("{i}").as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    expect_quiet(&mut s, Duration::from_millis(300)).await;
}

fn labelled(name: &str, app: &str, node: &str) -> ObjectValue {
    ObjectValue {
        uid: format!("uid-{name}"),
        kind: "Pod".into(),
        namespace: "default".into(),
        name: name.into(),
        labels: vec![("app".into(), app.into())],
        fields: vec![("spec.nodeName".into(), node.into())],
        content_type: ContentType::Json,
        raw: Bytes::from(format!("{{\"name\":\"{name}\",\"app\":\"{app}\"}}")),
        rv_slot: None,
    }
}

/// `list_raw`: filtered pages in key order with a resume key, at the first page's revision,
/// carrying exactly the stored bytes.
pub async fn list_raw_filters_and_pages(be: Arc<dyn Backend>) {
    let k = |i: usize| b(&format!("/registry/pods/default/p{i:02}"));
    let app = |i: usize| if i.is_multiple_of(3) { "web" } else { "db" };
    let node = |i: usize| format!("n{}", i % 2);
    for i in 0..30 {
        be.create(k(i), labelled(&format!("p{i:02}"), app(i), &node(i)), None)
            .await
            .unwrap()
            .unwrap();
    }
    be.create(
        b("/registry/pods/other/x"),
        labelled("x", "web", "n0"),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let prefix = b("/registry/pods/default/");
    let all = be
        .list_raw(
            RangeRequest::prefix(prefix.clone()),
            &WatchFilter::default(),
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 30);
    assert_eq!(all.resume, None);
    for (i, item) in all.items.iter().enumerate() {
        assert_eq!(item.key, k(i));
        assert_eq!(
            item.raw,
            labelled(&format!("p{i:02}"), app(i), &node(i)).raw
        );
    }
    let first_rev = all.revision;

    // Pages of 4 web pods on node n0, continued from `resume` at the first page's revision
    // while writes go on.
    let filter = WatchFilter {
        labels: vec![Requirement::Equals("app".into(), "web".into())],
        fields: vec![Requirement::Equals("spec.nodeName".into(), "n0".into())],
    };
    let want: Vec<Bytes> = (0..30).filter(|i| i % 6 == 0).map(k).collect();
    let end = crate::etcd_wire::prefix_end(&prefix);
    let mut got = Vec::new();
    let mut start = prefix.clone();
    let mut revision = None;
    for _ in 0..10 {
        let page = be
            .list_raw(
                RangeRequest {
                    key: start.clone(),
                    range_end: RangeEnd::Until(end.clone()),
                    revision,
                    limit: Some(2),
                    keys_only: false,
                    count_only: false,
                    skip_count: true,
                },
                &filter,
            )
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        if revision.is_none() {
            // A write after the first page is not seen by the later ones.
            be.create(k(90), labelled("p90", "web", "n0"), None)
                .await
                .unwrap()
                .unwrap();
        }
        revision = Some(page.revision);
        got.extend(page.items.into_iter().map(|i| i.key));
        match page.resume {
            Some(r) => start = r,
            None => break,
        }
    }
    assert_eq!(got, want);
    assert!(revision.unwrap() >= first_rev);

    // An older revision still lists what was deleted since.
    let before = be
        .list_raw(RangeRequest::prefix(prefix.clone()), &filter)
        .await
        .unwrap();
    be.delete(k(0), None).await.unwrap().unwrap();
    let mut old = RangeRequest::prefix(prefix.clone());
    old.revision = Some(before.revision);
    let at_old = be.list_raw(old, &filter).await.unwrap();
    assert_eq!(at_old.items, before.items);
    let now = be
        .list_raw(RangeRequest::prefix(prefix), &filter)
        .await
        .unwrap();
    assert_eq!(now.items.len(), before.items.len() - 1);
}

/// Label and field filters: only matching events, plus the event that stops a match.
pub async fn watch_filters(be: Arc<dyn Backend>) {
    let mut by_label = be
        .watch(WatchRequest {
            key: b("/registry/pods/"),
            range_end: RangeEnd::Prefix,
            start_revision: Some(Revision(1)),
            filter: WatchFilter {
                labels: vec![Requirement::Equals("app".into(), "web".into())],
                fields: vec![],
            },
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let mut by_field = be
        .watch(WatchRequest {
            key: b("/registry/pods/"),
            range_end: RangeEnd::Prefix,
            start_revision: Some(Revision(1)),
            filter: WatchFilter {
                labels: vec![],
                fields: vec![Requirement::Equals("spec.nodeName".into(), "n2".into())],
            },
            prev_kv: false,
            progress_notify: false,
        })
        .await
        .unwrap();
    let k = |n: &str| b(&format!("/registry/pods/default/{n}"));
    be.create(k("p1"), labelled("p1", "web", "n1"), None)
        .await
        .unwrap()
        .unwrap(); // 1
    be.create(k("p2"), labelled("p2", "db", "n2"), None)
        .await
        .unwrap()
        .unwrap(); // 2
    be.create(k("p3"), labelled("p3", "db", "n1"), None)
        .await
        .unwrap()
        .unwrap(); // 3
    be.update(k("p1"), Revision(1), labelled("p1", "db", "n1"), None)
        .await
        .unwrap()
        .unwrap(); // 4
    be.delete(k("p2"), None).await.unwrap().unwrap(); // 5
    be.create(k("p4"), labelled("p4", "web", "n2"), None)
        .await
        .unwrap()
        .unwrap(); // 6

    let evs = collect_events(&mut by_label, 3).await;
    let got: Vec<_> = evs.iter().map(|e| (key_of(e), e.revision())).collect();
    assert_eq!(
        got,
        vec![
            (k("p1"), Revision(1)),
            (k("p1"), Revision(4)),
            (k("p4"), Revision(6))
        ]
    );
    expect_quiet(&mut by_label, Duration::from_millis(300)).await;
    let evs = collect_events(&mut by_field, 3).await;
    let got: Vec<_> = evs.iter().map(|e| (key_of(e), e.revision())).collect();
    assert_eq!(
        got,
        vec![
            (k("p2"), Revision(2)),
            (k("p2"), Revision(5)),
            (k("p4"), Revision(6))
        ]
    );
    assert!(matches!(&evs[1], WatchEvent::Delete { .. }));
}

/// An idle watch that asked for progress gets a bookmark at (or past) the current revision.
pub async fn watch_progress(be: Arc<dyn Backend>) {
    put_now(&be, "/elsewhere", "1").await;
    put_now(&be, "/elsewhere", "2").await;
    let mut s = be
        .watch(WatchRequest {
            key: b("/quiet/"),
            range_end: RangeEnd::Prefix,
            start_revision: None,
            filter: WatchFilter::default(),
            prev_kv: false,
            progress_notify: true,
        })
        .await
        .unwrap();
    put_now(&be, "/elsewhere", "3").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(batch))) => {
                assert!(
                    batch.iter().all(|e| matches!(e, WatchEvent::Progress(_))),
                    "{batch:?}"
                );
                if batch.iter().any(|e| e.revision() >= Revision(3)) {
                    return;
                }
            }
            other => panic!("no progress notification at revision 3: {other:?}"),
        }
    }
}

/// Metadata travels with the value; the revision is stamped into `rv_slot`.
pub async fn value_metadata_round_trip(be: Arc<dyn Backend>) {
    put_now(&be, "/pad", "x").await;
    let raw = br#"{"metadata":{"resourceVersion":""},"spec":{}}"#;
    let slot = raw.windows(3).position(|w| w == b"\"\"}").expect("slot") as u32 + 1;
    let mut val = labelled("p", "web", "n1");
    val.raw = Bytes::from_static(raw);
    val.rv_slot = Some(slot);
    let rev = be
        .create(b("/registry/pods/default/p"), val.clone(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rev, Revision(2));
    let kv = be
        .get(b("/registry/pods/default/p"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &kv.value.raw[..],
        br#"{"metadata":{"resourceVersion":"2"},"spec":{}}"#
    );
    assert_eq!(kv.value.labels, val.labels);
    assert_eq!(kv.value.fields, val.fields);
    assert_eq!(
        (
            kv.value.kind.as_str(),
            kv.value.name.as_str(),
            kv.value.uid.as_str()
        ),
        ("Pod", "p", "uid-p")
    );
    assert_eq!(kv.value.content_type, ContentType::Json);
    // Opaque values come back byte for byte, even ones that look like an envelope.
    for raw in [&b""[..], b"\0KSV\x01", b"\xff\x00binary"] {
        put_now(&be, "/raw", "x").await;
        be.txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Put {
                key: b("/raw"),
                value: ObjectValue::opaque(Bytes::copy_from_slice(raw)),
                lease: None,
                prev_kv: false,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
        let kv = be.get(b("/raw")).await.unwrap().unwrap();
        assert_eq!(&kv.value.raw[..], raw);
        assert_eq!(kv.value.content_type, ContentType::Opaque);
    }
}

/// Values over the limit are refused with `ValueTooLarge`, writing nothing.
pub async fn value_too_large(be: Arc<dyn Backend>) {
    let big = ObjectValue::opaque(Bytes::from(vec![b'x'; MAX_VALUE_BYTES + 1]));
    match be.create(b("/big"), big, None).await {
        Err(StoreError::ValueTooLarge { .. }) => {}
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(be.get(b("/big")).await.unwrap(), None);
    let ok = ObjectValue::opaque(Bytes::from(vec![b'y'; 1024 * 1024]));
    be.create(b("/big"), ok, None).await.unwrap().unwrap();
    assert_eq!(
        be.get(b("/big")).await.unwrap().unwrap().value.raw.len(),
        1024 * 1024
    );
}

/// Generates one `#[tokio::test]` per conformance check for a factory
/// `async fn() -> Option<Harness>` (`None` skips, after the factory said why, loudly).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@each $factory;
            crud_and_cas, range_prefix_limit_continuation, range_at_old_revisions, compaction,
            txn_compares_and_branches, txn_multi_key_atomicity, delete_range_prev_kv, leases,
            lease_expiry_deletes_keys, watch_from_revision, watch_live_ordering, watch_filters,
            watch_progress, value_metadata_round_trip, value_too_large,
            list_raw_filters_and_pages);
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(h) = $factory().await else { return };
                let check = $crate::conformance::$name(h.backend.clone());
                tokio::time::timeout(std::time::Duration::from_secs(120), check)
                    .await
                    .expect("conformance check timed out");
                drop(h);
            }
        )*
    };
}
