//! etcd's watch guarantees as executable validators (Ordered, Unique, Atomic, Bookmarkable,
//! Reliable, Resumable), run over randomized histories written by concurrent writers, for
//! plain, filtered (label and indexed-field) and deliberately slow watchers.
//!
//! The ground truth is built from the writers' own acknowledged results: every revision is
//! produced by exactly one writer's transaction, whose response says which keys it wrote.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use store::engine::watch::filter_matches_kv;
use store::{
    Backend, ContentType, Engine, EngineConfig, KeyValue, ObjectValue, RangeEnd, Requirement,
    Revision, StoreError, Txn, TxnOp, TxnOpResponse, WatchEvent, WatchFilter, WatchRequest,
};

/// A tiny deterministic PRNG (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn value(v: u64) -> ObjectValue {
    ObjectValue {
        uid: format!("u{v}"),
        kind: "Pod".into(),
        namespace: "ns".into(),
        name: format!("p{v}"),
        labels: vec![("g".into(), (v % 3).to_string())],
        fields: vec![("spec.nodeName".into(), format!("n{}", v % 2))],
        content_type: ContentType::Json,
        raw: Bytes::from(format!("{{\"v\":{v}}}")),
        rv_slot: None,
    }
}

fn key(bucket: u64, k: u64) -> Bytes {
    Bytes::from(format!("/g/{bucket}/{k:02}"))
}

/// One change, as the ground truth knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    rev: u64,
    key: Bytes,
    /// New value, `None` for a delete.
    new: Option<KeyValue>,
}

/// Runs one writer: `n` random transactions; returns the changes it made.
fn writer(e: Arc<Engine>, seed: u64, n: usize) -> Vec<Change> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    block_on(async {
        for _ in 0..n {
            let bucket = rng.below(2);
            let ops: Vec<TxnOp> = match rng.below(10) {
                0..=4 => vec![TxnOp::Put {
                    key: key(bucket, rng.below(12)),
                    value: value(rng.below(1000)),
                    lease: None,
                    prev_kv: false,
                }],
                5..=6 => vec![TxnOp::Delete {
                    key: key(bucket, rng.below(12)),
                    range_end: RangeEnd::Single,
                    prev_kv: true,
                }],
                7..=8 => {
                    let a = rng.below(6);
                    let b = 6 + rng.below(6);
                    vec![
                        TxnOp::Put {
                            key: key(bucket, a),
                            value: value(rng.below(1000)),
                            lease: None,
                            prev_kv: false,
                        },
                        TxnOp::Put {
                            key: key(1 - bucket, b),
                            value: value(rng.below(1000)),
                            lease: None,
                            prev_kv: false,
                        },
                    ]
                }
                _ => vec![TxnOp::Delete {
                    key: Bytes::from(format!("/g/{bucket}/0")),
                    range_end: RangeEnd::Prefix,
                    prev_kv: true,
                }],
            };
            let resp = e
                .txn(Txn {
                    success: ops.clone(),
                    ..Txn::default()
                })
                .await
                .unwrap();
            for (op, r) in ops.into_iter().zip(resp.responses) {
                match (op, r) {
                    (TxnOp::Put { key, .. }, TxnOpResponse::Put { .. }) => {
                        // The value as stored: read it back at that revision.
                        let kv = e
                            .range(store::RangeRequest {
                                revision: Some(resp.revision),
                                ..store::RangeRequest::single(key.clone())
                            })
                            .await
                            .unwrap()
                            .kvs
                            .pop()
                            .unwrap();
                        out.push(Change {
                            rev: resp.revision.0,
                            key,
                            new: Some(kv),
                        });
                    }
                    (TxnOp::Delete { .. }, TxnOpResponse::Delete { prev_kvs, .. }) => {
                        for p in prev_kvs {
                            out.push(Change {
                                rev: resp.revision.0,
                                key: p.key,
                                new: None,
                            });
                        }
                    }
                    other => panic!("unexpected response {other:?}"),
                }
            }
        }
    });
    out
}

/// What a watcher recorded: its batches, per session (a resume starts a new session).
#[derive(Debug, Default)]
struct Recording {
    batches: Vec<Vec<WatchEvent>>,
    resumes: Vec<Revision>,
}

#[derive(Clone)]
struct Spec {
    name: &'static str,
    prefix: &'static str,
    start: u64,
    filter: WatchFilter,
    slow: bool,
}

/// Consumes a watch (resuming after `WatchTooSlow`) until a bookmark at or past `done`
/// arrives after `stop` is set.
fn consume(
    e: Arc<Engine>,
    spec: Spec,
    stop: Arc<AtomicBool>,
    final_rev: Arc<parking_lot::Mutex<u64>>,
    registered: std::sync::mpsc::Sender<()>,
) -> Recording {
    let mut rec = Recording::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    block_on(async {
        let mut from = spec.start;
        'outer: loop {
            let mut w = e
                .watch(WatchRequest {
                    key: Bytes::from(spec.prefix),
                    range_end: RangeEnd::Prefix,
                    start_revision: Some(Revision(from)),
                    filter: spec.filter.clone(),
                    prev_kv: false,
                    progress_notify: true,
                })
                .await
                .unwrap();
            let _ = registered.send(());
            let mut n = 0u64;
            if spec.slow && rec.resumes.is_empty() {
                // Read nothing until the writers are done: the bounded queue must overflow,
                // so the cut-off and resume path always runs (independent of timing).
                while !stop.load(Ordering::SeqCst) {
                    assert!(Instant::now() < deadline, "{}: timed out", spec.name);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            while let Some(item) = w.next().await {
                assert!(Instant::now() < deadline, "{}: timed out", spec.name);
                match item {
                    Ok(batch) => {
                        let last = batch.last().map(WatchEvent::revision);
                        rec.batches.push(batch);
                        n += 1;
                        if spec.slow && n.is_multiple_of(3) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if stop.load(Ordering::SeqCst)
                            && let Some(last) = last
                            && last.0 >= *final_rev.lock()
                        {
                            break 'outer;
                        }
                    }
                    Err(StoreError::WatchTooSlow { resume_from }) => {
                        rec.resumes.push(resume_from);
                        from = resume_from.0;
                        continue 'outer;
                    }
                    Err(other) => panic!("{}: {other}", spec.name),
                }
            }
            panic!("{}: stream ended", spec.name);
        }
    });
    rec
}

/// The events a watcher must see: changes in its range from its start that match its
/// filter by new or previous value.
fn expected(spec: &Spec, truth: &[Change]) -> Vec<(u64, Bytes)> {
    let mut prev: HashMap<Bytes, KeyValue> = HashMap::new();
    let mut out = Vec::new();
    let empty = spec.filter.labels.is_empty() && spec.filter.fields.is_empty();
    for c in truth {
        let p = prev.get(&c.key).cloned();
        let in_range = c.key.starts_with(spec.prefix.as_bytes());
        let matches = empty
            || c.new
                .as_ref()
                .is_some_and(|kv| filter_matches_kv(&spec.filter, kv))
            || p.as_ref()
                .is_some_and(|kv| filter_matches_kv(&spec.filter, kv));
        if in_range && c.rev >= spec.start && matches {
            out.push((c.rev, c.key.clone()));
        }
        match &c.new {
            Some(kv) => {
                prev.insert(c.key.clone(), kv.clone());
            }
            None => {
                prev.remove(&c.key);
            }
        }
    }
    out
}

fn ev_key(e: &WatchEvent) -> Option<(u64, Bytes)> {
    match e {
        WatchEvent::Put { kv, .. } => Some((kv.mod_revision.0, kv.key.clone())),
        WatchEvent::Delete { key, revision, .. } => Some((revision.0, key.clone())),
        WatchEvent::Progress(_) => None,
    }
}

/// Ordered + Unique + Atomic + Bookmarkable + Reliable (+ Resumable, across sessions).
fn validate(spec: &Spec, rec: &Recording, truth: &[Change]) {
    let name = spec.name;
    let want = expected(spec, truth);
    let want_by_rev: BTreeMap<u64, HashSet<Bytes>> =
        want.iter().fold(BTreeMap::new(), |mut m, (r, k)| {
            m.entry(*r).or_default().insert(k.clone());
            m
        });
    let mut got: Vec<(u64, Bytes)> = Vec::new();
    let mut seen = HashSet::new();
    let mut last_rev = 0u64;
    for batch in &rec.batches {
        // Atomic: every revision in this batch is complete in it.
        let mut in_batch: BTreeMap<u64, HashSet<Bytes>> = BTreeMap::new();
        for e in batch {
            match ev_key(e) {
                Some((r, k)) => {
                    // Ordered.
                    assert!(r >= last_rev, "{name}: revision {r} after {last_rev}");
                    last_rev = r;
                    // Unique.
                    assert!(
                        seen.insert((r, k.clone())),
                        "{name}: duplicate ({r}, {k:?})"
                    );
                    in_batch.entry(r).or_default().insert(k.clone());
                    got.push((r, k));
                }
                None => {
                    let WatchEvent::Progress(p) = e else {
                        unreachable!()
                    };
                    // Bookmarkable: nothing at or below p may still be missing, and p does
                    // not go back behind delivered events.
                    assert!(
                        p.0 >= last_rev,
                        "{name}: bookmark {p} behind event {last_rev}"
                    );
                    let missing = want.iter().filter(|(r, _)| *r <= p.0).count();
                    let delivered = got.iter().filter(|(r, _)| *r <= p.0).count();
                    assert_eq!(
                        missing, delivered,
                        "{name}: bookmark {p} before all its events"
                    );
                    last_rev = p.0;
                }
            }
        }
        for (r, keys) in in_batch {
            let w = want_by_rev.get(&r).cloned().unwrap_or_default();
            assert_eq!(keys, w, "{name}: revision {r} split or wrong");
        }
    }
    // Reliable: exactly the expected events (a watcher stops at the final revision).
    if got != want {
        let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        panic!(
            "{name}: delivered events differ from the ground truth at index {i}: got {:?}, want {:?} ({} vs {} events)",
            got.get(i),
            want.get(i),
            got.len(),
            want.len()
        );
    }
    // Resumable: resumes pick up exactly where the cut-off left.
    for r in &rec.resumes {
        assert!(r.0 >= spec.start);
    }
}

fn run(seed: u64) {
    let mut cfg = EngineConfig::in_memory();
    cfg.shards = 3;
    cfg.progress_interval = Duration::from_millis(10);
    cfg.watch_buffer_events = 8;
    cfg.event_history_events = 64;
    let e = Engine::open(cfg).unwrap();
    // Some history before any watcher exists.
    let early = writer(e.clone(), seed ^ 0xabc, 40);
    let nodes = WatchFilter {
        labels: vec![],
        fields: vec![Requirement::Equals("spec.nodeName".into(), "n1".into())],
    };
    let groups = WatchFilter {
        labels: vec![Requirement::In("g".into(), vec!["0".into(), "2".into()])],
        fields: vec![],
    };
    let specs = [
        Spec {
            name: "all-from-1",
            prefix: "/g/",
            start: 1,
            filter: WatchFilter::default(),
            slow: false,
        },
        Spec {
            name: "bucket0-from-20",
            prefix: "/g/0/",
            start: 20,
            filter: WatchFilter::default(),
            slow: false,
        },
        Spec {
            name: "node-n1",
            prefix: "/g/",
            start: 2,
            filter: nodes,
            slow: false,
        },
        Spec {
            name: "groups",
            prefix: "/g/1/",
            start: 30,
            filter: groups,
            slow: false,
        },
        Spec {
            name: "slow-all",
            prefix: "/g/",
            start: 1,
            filter: WatchFilter::default(),
            slow: true,
        },
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let final_rev = Arc::new(parking_lot::Mutex::new(u64::MAX));
    let (registered_tx, registered) = std::sync::mpsc::channel();
    let watchers: Vec<_> = specs
        .iter()
        .cloned()
        .map(|s| {
            let (e, stop, f) = (e.clone(), stop.clone(), final_rev.clone());
            // Only the slow watcher's first registration is waited for (below): the others
            // register while the writers run.
            let tx = if s.slow {
                registered_tx.clone()
            } else {
                std::sync::mpsc::channel().0
            };
            std::thread::spawn(move || consume(e, s, stop, f, tx))
        })
        .collect();
    // The slow watcher must be registered before the writers start, so that the writes
    // after it overflow its bounded queue whatever the timing (its catch-up, which enlarges
    // the queue, is then only the early history).
    registered
        .recv_timeout(Duration::from_secs(30))
        .expect("the slow watcher registered");
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || writer(e, seed.wrapping_add(i * 7919), 120))
        })
        .collect();
    let mut truth = early;
    for w in writers {
        truth.extend(w.join().unwrap());
    }
    truth.sort_by(|a, b| a.rev.cmp(&b.rev).then_with(|| a.key.cmp(&b.key)));
    let last = e.revision().0;
    // Every revision came from exactly one acknowledged transaction: no holes.
    let revs: HashSet<u64> = truth.iter().map(|c| c.rev).collect();
    assert_eq!(revs.len() as u64, last, "seed {seed}: revisions have holes");
    *final_rev.lock() = last;
    stop.store(true, Ordering::SeqCst);
    for (spec, w) in specs.iter().zip(watchers) {
        let rec = w
            .join()
            .unwrap_or_else(|_| panic!("seed {seed}: watcher {} panicked", spec.name));
        validate(spec, &rec, &truth);
        if spec.slow {
            assert!(
                !rec.resumes.is_empty(),
                "seed {seed}: the slow watcher was never cut off"
            );
        }
    }
    e.close();
}

#[test]
fn guarantees_hold_over_random_concurrent_histories() {
    for seed in [1u64, 0x5eed, 0xdead_beef] {
        eprintln!("seed {seed}");
        run(seed);
    }
}
