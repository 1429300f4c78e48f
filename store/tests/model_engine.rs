//! Model-based property test: random operation sequences against the engine and against a
//! `BTreeMap<(key, revision), value>` model, compared after every step (sled/redb style).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use proptest::prelude::*;
use store::{
    Backend, Compare, CompareOp, CompareTarget, Engine, EngineConfig, KeyValue, MemLog,
    ObjectValue, RangeEnd, RangeRequest, Revision, StoreError, Txn, TxnOp,
};

const KEYS: usize = 6;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("/m/{i}"))
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8),
    Create(usize, u8),
    /// CAS with the model's current mod revision (if `fresh`) or a stale one.
    Update(usize, u8, bool),
    Delete(usize, Option<bool>),
    DeleteAll,
    /// Two puts guarded by a version compare on the first key.
    Txn(usize, usize, u8, i64),
    Range {
        back: u64,
        limit: u64,
    },
    Get(usize, u64),
    Compact(u64),
    /// Close the engine and open a new one on the same log.
    Restart,
    /// Drop the engine without closing it, then reopen on the same log.
    Crash,
    /// A put whose log append fails: it must fail and leave no trace.
    FailPut(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    let k2 = 0..KEYS;
    prop_oneof![
        4 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        3 => (k.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, f)| Op::Update(k, v, f)),
        2 => (k.clone(), proptest::option::of(any::<bool>())).prop_map(|(k, f)| Op::Delete(k, f)),
        1 => Just(Op::DeleteAll),
        2 => (k.clone(), k.clone(), any::<u8>(), 0i64..3).prop_map(|(a, b, v, ver)| Op::Txn(a, b, v, ver)),
        2 => (0u64..6, 0u64..4).prop_map(|(back, limit)| Op::Range { back, limit }),
        2 => (k, 0u64..6).prop_map(|(k, back)| Op::Get(k, back)),
        1 => (0u64..4).prop_map(Op::Compact),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => (k2, any::<u8>()).prop_map(|(k, v)| Op::FailPut(k, v)),
    ]
}

/// The model: every (key, revision) write; `None` is a delete.
#[derive(Default)]
struct Model {
    writes: BTreeMap<(Bytes, u64), Option<Bytes>>,
    rev: u64,
    compacted: u64,
    /// Highest revision number the engine has issued (failed writes consume one).
    issued: u64,
    /// Highest revision number in the log (what a restarted engine continues from).
    stored_max: u64,
}

/// What a key looks like at a revision: (value, create, mod, version).
type State = Option<(Bytes, u64, u64, i64)>;

impl Model {
    fn bump(&mut self) {
        self.issued = self.issued.max(self.rev) + 1;
        self.rev = self.issued;
        self.stored_max = self.stored_max.max(self.rev);
    }

    fn state(&self, k: &Bytes, rev: u64) -> State {
        let mut st: State = None;
        for ((_, r), v) in self.writes.range((k.clone(), 0)..=(k.clone(), rev)) {
            st = match (v, st) {
                (None, _) => None,
                (Some(v), None) => Some((v.clone(), *r, *r, 1)),
                (Some(v), Some((_, c, _, n))) => Some((v.clone(), c, *r, n + 1)),
            };
        }
        st
    }

    fn write(&mut self, k: &Bytes, v: Option<Bytes>) {
        self.writes.insert((k.clone(), self.rev), v);
    }

    fn live(&self, rev: u64) -> Vec<(Bytes, State)> {
        (0..KEYS)
            .map(key)
            .map(|k| {
                let s = self.state(&k, rev);
                (k, s)
            })
            .filter(|(_, s)| s.is_some())
            .collect()
    }
}

fn check_kv(kv: &KeyValue, st: &State) -> Result<(), TestCaseError> {
    let Some((v, c, m, n)) = st else {
        return Err(TestCaseError::fail(format!(
            "engine has {kv:?}, model has none"
        )));
    };
    prop_assert_eq!(&kv.value.raw, v);
    prop_assert_eq!(kv.create_revision, Revision(*c));
    prop_assert_eq!(kv.mod_revision, Revision(*m));
    prop_assert_eq!(kv.version, *n);
    Ok(())
}

fn put(k: Bytes, v: Bytes) -> TxnOp {
    TxnOp::Put {
        key: k,
        value: ObjectValue::opaque(v),
        lease: None,
        prev_kv: false,
    }
}

fn open(log: &Arc<MemLog>) -> Arc<Engine> {
    Engine::open_with_log(EngineConfig::in_memory(), log.clone()).unwrap()
}

fn step(
    eng: &mut Arc<Engine>,
    log: &Arc<MemLog>,
    m: &mut Model,
    op: Op,
) -> Result<(), TestCaseError> {
    match op {
        Op::Restart => {
            eng.close();
            *eng = open(log);
            m.issued = m.stored_max;
            prop_assert_eq!(eng.revision(), Revision(m.rev));
            return Ok(());
        }
        Op::Crash => {
            let old = std::mem::replace(eng, open(log));
            drop(old);
            m.issued = m.stored_max;
            prop_assert_eq!(eng.revision(), Revision(m.rev));
            return Ok(());
        }
        _ => {}
    }
    let e = &*eng;
    block_on(async {
        match op {
            Op::Put(k, v) => {
                let r = e
                    .txn(Txn {
                        success: vec![put(key(k), Bytes::from(vec![v]))],
                        ..Txn::default()
                    })
                    .await
                    .unwrap();
                m.bump();
                m.write(&key(k), Some(Bytes::from(vec![v])));
                prop_assert_eq!(r.revision, Revision(m.rev));
            }
            Op::Create(k, v) => {
                let r = e
                    .create(key(k), ObjectValue::opaque(vec![v]), None)
                    .await
                    .unwrap();
                if m.state(&key(k), m.rev).is_none() {
                    m.bump();
                    m.write(&key(k), Some(Bytes::from(vec![v])));
                    prop_assert_eq!(r, Some(Revision(m.rev)));
                } else {
                    prop_assert_eq!(r, None);
                }
            }
            Op::Update(k, v, fresh) => {
                let cur = m.state(&key(k), m.rev);
                let expected = match (&cur, fresh) {
                    (Some((_, _, md, _)), true) => *md,
                    (Some((_, _, md, _)), false) => md.saturating_sub(1),
                    (None, _) => m.rev,
                };
                let r = e
                    .update(
                        key(k),
                        Revision(expected),
                        ObjectValue::opaque(vec![v]),
                        None,
                    )
                    .await
                    .unwrap();
                let cur_mod = cur.as_ref().map_or(0, |c| c.2);
                match cur {
                    _ if cur_mod == expected => {
                        m.bump();
                        m.write(&key(k), Some(Bytes::from(vec![v])));
                        prop_assert_eq!(r, Ok(Revision(m.rev)));
                    }
                    _ => match r {
                        Err(Some(kv)) => check_kv(&kv, &cur)?,
                        Err(None) => prop_assert!(cur.is_none()),
                        Ok(rev) => return Err(TestCaseError::fail(format!("CAS won at {rev}"))),
                    },
                }
            }
            Op::Delete(k, expect) => {
                let cur = m.state(&key(k), m.rev);
                let expected = match (&cur, expect) {
                    (_, None) => None,
                    (Some((_, _, md, _)), Some(true)) => Some(*md),
                    (_, Some(_)) => Some(m.rev + 7),
                };
                let r = e.delete(key(k), expected.map(Revision)).await.unwrap();
                let hit = match (&cur, expected) {
                    (Some(_), None) => true,
                    (Some((_, _, md, _)), Some(x)) => *md == x,
                    _ => false,
                };
                if hit {
                    m.bump();
                    let (kv, rev) = r.unwrap();
                    check_kv(&kv, &cur)?;
                    prop_assert_eq!(rev, Revision(m.rev));
                    m.write(&key(k), None);
                } else {
                    prop_assert!(r.is_none());
                }
            }
            Op::DeleteAll => {
                let live = m.live(m.rev);
                let r = e
                    .txn(Txn {
                        success: vec![TxnOp::Delete {
                            key: Bytes::from_static(b"/m/"),
                            range_end: RangeEnd::Prefix,
                            prev_kv: false,
                        }],
                        ..Txn::default()
                    })
                    .await
                    .unwrap();
                if !live.is_empty() {
                    m.bump();
                    for (k, _) in live {
                        m.write(&k, None);
                    }
                }
                prop_assert_eq!(r.revision, Revision(m.rev));
            }
            Op::Txn(a, b, v, ver) => {
                let txn = Txn {
                    compare: vec![Compare {
                        key: key(a),
                        range_end: RangeEnd::Single,
                        op: CompareOp::Equal,
                        target: CompareTarget::Version(ver),
                    }],
                    success: if a == b {
                        vec![put(key(a), Bytes::from(vec![v]))]
                    } else {
                        vec![
                            put(key(a), Bytes::from(vec![v])),
                            put(key(b), Bytes::from(vec![v])),
                        ]
                    },
                    failure: vec![put(key(b), Bytes::from(vec![v, v]))],
                };
                let r = e.txn(txn).await.unwrap();
                let cur_ver = m.state(&key(a), m.rev).map_or(0, |s| s.3);
                m.bump();
                if cur_ver == ver {
                    prop_assert!(r.succeeded);
                    m.write(&key(a), Some(Bytes::from(vec![v])));
                    m.write(&key(b), Some(Bytes::from(vec![v])));
                } else {
                    prop_assert!(!r.succeeded);
                    m.write(&key(b), Some(Bytes::from(vec![v, v])));
                }
                prop_assert_eq!(r.revision, Revision(m.rev));
            }
            Op::Range { back, limit } => {
                let at = m.rev.saturating_sub(back);
                let r = e
                    .range(RangeRequest {
                        revision: Some(Revision(at)),
                        limit: Some(limit),
                        ..RangeRequest::prefix(Bytes::from_static(b"/m/"))
                    })
                    .await;
                if at == 0 {
                    // Revision 0 means "latest".
                    return Ok(());
                }
                if at < m.compacted {
                    prop_assert!(matches!(r, Err(StoreError::Compacted { .. })), "{:?}", r);
                    return Ok(());
                }
                let r = r.unwrap();
                let live = m.live(at);
                prop_assert_eq!(r.count, live.len() as u64);
                let n = if limit == 0 {
                    live.len()
                } else {
                    live.len().min(limit as usize)
                };
                prop_assert_eq!(r.kvs.len(), n);
                prop_assert_eq!(r.more, n < live.len());
                for (kv, (k, st)) in r.kvs.iter().zip(&live) {
                    prop_assert_eq!(&kv.key, k);
                    check_kv(kv, st)?;
                }
            }
            Op::Get(k, back) => {
                let at = m.rev.saturating_sub(back).max(1);
                if m.rev == 0 {
                    return Ok(());
                }
                let r = e
                    .range(RangeRequest {
                        revision: Some(Revision(at)),
                        ..RangeRequest::single(key(k))
                    })
                    .await;
                if at < m.compacted {
                    prop_assert!(matches!(r, Err(StoreError::Compacted { .. })), "{:?}", r);
                    return Ok(());
                }
                let r = r.unwrap();
                let st = m.state(&key(k), at);
                match r.kvs.first() {
                    Some(kv) => check_kv(kv, &st)?,
                    None => prop_assert!(st.is_none()),
                }
            }
            Op::FailPut(k, v) => {
                log.fail_appends(true);
                let r = e
                    .txn(Txn {
                        success: vec![put(key(k), Bytes::from(vec![v]))],
                        ..Txn::default()
                    })
                    .await;
                log.fail_appends(false);
                prop_assert!(matches!(r, Err(StoreError::Io(_))), "{:?}", r);
                m.issued = m.issued.max(m.rev) + 1;
            }
            Op::Restart | Op::Crash => {}
            Op::Compact(back) => {
                let at = m.rev.saturating_sub(back);
                let r = e.compact(Revision(at)).await;
                if at <= m.compacted {
                    prop_assert!(matches!(r, Err(StoreError::Compacted { .. })), "{:?}", r);
                } else {
                    r.unwrap();
                    m.compacted = at;
                    m.stored_max = m.stored_max.max(m.issued.max(m.rev));
                }
            }
        }
        let st = e.status().await.unwrap();
        prop_assert_eq!(st.revision, Revision(m.rev));
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60), shards in 1usize..4) {
        let log = MemLog::new(shards);
        let mut e = open(&log);
        let mut m = Model::default();
        for op in ops {
            step(&mut e, &log, &mut m, op)?;
        }
        e.close();
    }
}
