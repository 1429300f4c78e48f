//! Watch behaviour of the engine, one property per test: live delivery, catch-up from the
//! ring and from MVCC history, filters and the field index, prev kv, bookmarks, slow-watcher
//! cut-off without blocking writers, compaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use store::{
    Backend, ContentType, Engine, EngineConfig, ObjectValue, RangeEnd, Requirement, Revision,
    StoreError, WatchEvent, WatchFilter, WatchRequest, WatchStream,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn pod(name: &str, node: &str, app: &str) -> ObjectValue {
    ObjectValue {
        uid: format!("uid-{name}"),
        kind: "Pod".into(),
        namespace: "ns".into(),
        name: name.into(),
        labels: vec![("app".into(), app.into())],
        fields: vec![("spec.nodeName".into(), node.into())],
        content_type: ContentType::Json,
        raw: b(&format!(r#"{{"name":"{name}","node":"{node}"}}"#)),
        rv_slot: None,
    }
}

fn engine_with(f: impl FnOnce(&mut EngineConfig)) -> Arc<Engine> {
    let mut cfg = EngineConfig::in_memory();
    cfg.shards = 4;
    f(&mut cfg);
    Engine::open(cfg).unwrap()
}

fn req(prefix: &str, start: Option<u64>) -> WatchRequest {
    WatchRequest {
        key: b(prefix),
        range_end: RangeEnd::Prefix,
        start_revision: start.map(Revision),
        filter: WatchFilter::default(),
        prev_kv: false,
        progress_notify: false,
    }
}

/// Reads events until `n` non-progress events arrived (bounded by a timeout).
async fn collect(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out with {out:?}"
        );
        let batch =
            match futures::future::select(w.next(), futures_timer(Duration::from_millis(50))).await
            {
                futures::future::Either::Left((x, _)) => Some(x),
                futures::future::Either::Right(_) => None,
            };
        if let Some(Some(Ok(evs))) = batch {
            out.extend(
                evs.into_iter()
                    .filter(|e| !matches!(e, WatchEvent::Progress(_))),
            );
        } else if let Some(x) = batch {
            panic!("stream ended or failed: {x:?}");
        }
    }
    out
}

use futures::FutureExt;

/// A thread-based timer future (the store crate has no runtime of its own).
fn futures_timer(d: Duration) -> impl std::future::Future<Output = ()> {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    rx.map(|_| ())
}

fn key_rev(e: &WatchEvent) -> (Bytes, u64) {
    match e {
        WatchEvent::Put { kv, .. } => (kv.key.clone(), kv.mod_revision.0),
        WatchEvent::Delete { key, revision, .. } => (key.clone(), revision.0),
        WatchEvent::Progress(r) => (Bytes::new(), r.0),
    }
}

#[test]
fn live_events_in_order_with_deletes() {
    let e = engine_with(|_| {});
    block_on(async {
        let mut w = e.watch(req("/w/", None)).await.unwrap();
        e.create(b("/w/a"), pod("a", "n1", "x"), None)
            .await
            .unwrap()
            .unwrap();
        e.create(b("/other"), pod("o", "n1", "x"), None)
            .await
            .unwrap()
            .unwrap();
        e.create(b("/w/b"), pod("b", "n1", "x"), None)
            .await
            .unwrap()
            .unwrap();
        e.delete(b("/w/a"), None).await.unwrap().unwrap();
        let evs = collect(&mut w, 3).await;
        let kr: Vec<_> = evs.iter().map(key_rev).collect();
        assert_eq!(kr, vec![(b("/w/a"), 1), (b("/w/b"), 3), (b("/w/a"), 4)]);
        assert!(matches!(&evs[2], WatchEvent::Delete { prev_kv: None, .. }));
    });
}

#[test]
fn catch_up_from_ring_and_from_mvcc_history() {
    for history in [100_000, 1] {
        let e = engine_with(|c| c.event_history_events = history);
        block_on(async {
            for i in 0..20 {
                e.create(b(&format!("/h/{i:02}")), pod("p", "n", "x"), None)
                    .await
                    .unwrap()
                    .unwrap();
            }
            e.delete(b("/h/05"), None).await.unwrap().unwrap(); // rev 21
            let mut w = e
                .watch(WatchRequest {
                    prev_kv: true,
                    ..req("/h/", Some(5))
                })
                .await
                .unwrap();
            e.create(b("/h/new"), pod("p", "n", "x"), None)
                .await
                .unwrap()
                .unwrap(); // 22
            let evs = collect(&mut w, 18).await;
            let revs: Vec<u64> = evs.iter().map(|e| key_rev(e).1).collect();
            assert_eq!(revs, (5..=22).collect::<Vec<_>>(), "history {history}");
            match &evs[16] {
                WatchEvent::Delete {
                    key,
                    prev_kv: Some(p),
                    ..
                } => {
                    assert_eq!(key, &b("/h/05"));
                    assert_eq!(p.mod_revision, Revision(6));
                }
                other => panic!("{other:?}"),
            }
        });
    }
}

/// A catch-up of several chunks (from the ring and from MVCC history), with writes going on
/// while it is read: every revision arrives once, in order, and the live events follow
/// without a gap; a filtered watcher gets exactly its node's events.
#[test]
fn catch_up_larger_than_a_chunk_is_read_as_it_is_consumed() {
    const WRITES: u64 = 20_000; // > 2 chunks of catch-up
    for history in [100_000, 100] {
        let e = engine_with(|c| c.event_history_events = history);
        block_on(async {
            for i in 0..WRITES {
                let node = format!("n{}", i % 4);
                e.create(b(&format!("/c/{i:06}")), pod("p", &node, "x"), None)
                    .await
                    .unwrap()
                    .unwrap();
            }
            let mut all = e.watch(req("/c/", Some(1))).await.unwrap();
            let mut node1 = e
                .watch(WatchRequest {
                    filter: WatchFilter {
                        labels: vec![],
                        fields: vec![Requirement::Equals("spec.nodeName".into(), "n1".into())],
                    },
                    ..req("/c/", Some(1))
                })
                .await
                .unwrap();
            // Writes while the watchers are still catching up.
            let writer = {
                let e = e.clone();
                std::thread::spawn(move || {
                    block_on(async {
                        for i in WRITES..WRITES + 400 {
                            let node = format!("n{}", i % 4);
                            e.create(b(&format!("/c/{i:06}")), pod("p", &node, "x"), None)
                                .await
                                .unwrap()
                                .unwrap();
                        }
                    })
                })
            };
            let total = WRITES + 400;
            let evs = collect(&mut all, total as usize).await;
            writer.join().unwrap();
            let revs: Vec<u64> = evs.iter().map(|e| key_rev(e).1).collect();
            assert_eq!(revs, (1..=total).collect::<Vec<_>>(), "history {history}");
            let evs = collect(&mut node1, (total / 4) as usize).await;
            let revs: Vec<u64> = evs.iter().map(|e| key_rev(e).1).collect();
            let want: Vec<u64> = (1..=total).filter(|r| (r - 1) % 4 == 1).collect();
            assert_eq!(revs, want, "history {history}");
        });
    }
}

#[test]
fn filters_and_index_route_events() {
    let e = engine_with(|_| {});
    block_on(async {
        let on_node = |n: &str| WatchRequest {
            filter: WatchFilter {
                labels: vec![],
                fields: vec![Requirement::Equals("spec.nodeName".into(), n.into())],
            },
            ..req("/registry/pods/", None)
        };
        let mut n1 = e.watch(on_node("n1")).await.unwrap();
        let mut web = e
            .watch(WatchRequest {
                filter: WatchFilter {
                    labels: vec![Requirement::In(
                        "app".into(),
                        vec!["web".into(), "api".into()],
                    )],
                    fields: vec![Requirement::NotEquals("spec.nodeName".into(), "n3".into())],
                },
                ..req("/registry/pods/", None)
            })
            .await
            .unwrap();
        let k = |n: &str| b(&format!("/registry/pods/ns/{n}"));
        e.create(k("a"), pod("a", "n1", "web"), None)
            .await
            .unwrap()
            .unwrap(); // 1: n1, web
        e.create(k("b"), pod("b", "n2", "db"), None)
            .await
            .unwrap()
            .unwrap(); // 2: none
        e.create(k("c"), pod("c", "n3", "web"), None)
            .await
            .unwrap()
            .unwrap(); // 3: none
        // Move a from n1 to n2: n1 watcher sees it (prev matched) with prev kv.
        let cur = e.get(k("a")).await.unwrap().unwrap();
        e.update(k("a"), cur.mod_revision, pod("a", "n2", "web"), None)
            .await
            .unwrap()
            .unwrap(); // 4
        e.create(k("d"), pod("d", "n1", "api"), None)
            .await
            .unwrap()
            .unwrap(); // 5
        let evs = collect(&mut n1, 3).await;
        assert_eq!(
            evs.iter().map(|e| key_rev(e).1).collect::<Vec<_>>(),
            vec![1, 4, 5]
        );
        match &evs[1] {
            WatchEvent::Put {
                kv,
                prev_kv: Some(p),
            } => {
                assert_eq!(kv.value.fields[0].1, "n2");
                assert_eq!(p.value.fields[0].1, "n1");
            }
            other => panic!("{other:?}"),
        }
        let evs = collect(&mut web, 3).await;
        assert_eq!(
            evs.iter().map(|e| key_rev(e).1).collect::<Vec<_>>(),
            vec![1, 4, 5]
        );
    });
}

#[test]
fn progress_notifications_are_bookmarks() {
    let e = engine_with(|c| c.progress_interval = Duration::from_millis(20));
    block_on(async {
        e.create(b("/x/a"), pod("a", "n", "x"), None)
            .await
            .unwrap()
            .unwrap();
        let mut w = e
            .watch(WatchRequest {
                progress_notify: true,
                ..req("/p/", None)
            })
            .await
            .unwrap();
        e.create(b("/x/b"), pod("b", "n", "x"), None)
            .await
            .unwrap()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline);
            let batch = w.next().await.unwrap().unwrap();
            if let Some(WatchEvent::Progress(r)) = batch.last()
                && *r == Revision(2)
            {
                break;
            }
        }
    });
}

#[test]
fn slow_watcher_is_cut_off_and_writers_do_not_wait() {
    let e = engine_with(|c| c.watch_buffer_events = 10);
    block_on(async {
        let mut slow = e.watch(req("/s/", None)).await.unwrap();
        let start = std::time::Instant::now();
        for i in 0..200 {
            e.create(b(&format!("/s/{i}")), pod("p", "n", "x"), None)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        let mut got = Vec::new();
        let err = loop {
            match slow.next().await {
                Some(Ok(evs)) => got.extend(evs),
                Some(Err(e)) => break e,
                None => panic!("ended without an error"),
            }
        };
        let StoreError::WatchTooSlow { resume_from } = err else {
            panic!("{err}")
        };
        assert!(slow.next().await.is_none());
        // Everything before resume_from was delivered; resuming fills the rest exactly.
        let revs: Vec<u64> = got.iter().map(|e| key_rev(e).1).collect();
        assert_eq!(revs, (1..resume_from.0).collect::<Vec<_>>());
        // Resuming (again after any further cut-off) fills the rest exactly.
        let mut from = resume_from.0;
        let mut rest = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        'resume: while from <= 200 {
            assert!(std::time::Instant::now() < deadline);
            let mut again = e.watch(req("/s/", Some(from))).await.unwrap();
            while let Some(item) = again.next().await {
                match item {
                    Ok(evs) => {
                        rest.extend(evs.iter().map(|e| key_rev(e).1));
                        if rest.last() == Some(&200) {
                            break 'resume;
                        }
                    }
                    Err(StoreError::WatchTooSlow { resume_from }) => {
                        from = resume_from.0;
                        continue 'resume;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(rest, (resume_from.0..=200).collect::<Vec<_>>());
    });
}

#[test]
fn compacted_start_is_refused() {
    let e = engine_with(|_| {});
    block_on(async {
        for i in 0..5 {
            e.create(b(&format!("/c/{i}")), pod("p", "n", "x"), None)
                .await
                .unwrap()
                .unwrap();
        }
        e.compact(Revision(3)).await.unwrap();
        assert!(matches!(
            e.watch(req("/c/", Some(2))).await.err(),
            Some(StoreError::Compacted { .. })
        ));
        let mut w = e.watch(req("/c/", Some(4))).await.unwrap();
        assert_eq!(collect(&mut w, 2).await.len(), 2);
        // Exactly at the compaction point is allowed, as etcd allows compactRevision.
        let mut w = e.watch(req("/c/", Some(3))).await.unwrap();
        assert_eq!(collect(&mut w, 3).await.len(), 3);
    });
}

#[test]
fn dropped_watchers_are_unregistered() {
    let e = engine_with(|_| {});
    block_on(async {
        let w = e.watch(req("/d/", None)).await.unwrap();
        assert_eq!(e.watcher_count(), 1);
        drop(w);
        assert_eq!(e.watcher_count(), 0);
    });
}
