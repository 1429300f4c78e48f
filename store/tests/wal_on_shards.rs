//! The WAL driven from `shards`' per-core `current_thread` runtimes (the engine's setting):
//! each shard opens its own log and appends from many local tasks at once.

use bytes::Bytes;
use shards::{ShardConfig, ShardId, ShardSet};
use store::Revision;
use store::wal::{Wal, WalOptions};

#[test]
fn each_shard_appends_to_its_own_wal() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .thread_name_prefix("walshard"),
    )
    .expect("start shards");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for shard in 0..2u16 {
        let path = dir.path().join(format!("shard-{shard}"));
        let done = rt.block_on(set.handle().invoke_on(ShardId(shard), move || async move {
            let (wal, replay) = Wal::open(&path, shard, WalOptions::new()).expect("open");
            assert!(replay.is_empty());
            let wal = std::rc::Rc::new(wal);
            // Calls in revision order; the acks are awaited by local tasks in any order.
            let tasks: Vec<_> = (1..=200u64)
                .map(|i| {
                    let ack = wal.append(Bytes::from(format!("{shard}-{i}")), Revision(i));
                    tokio::task::spawn_local(ack)
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("durable");
            }
            let stats = wal.stats();
            std::rc::Rc::try_unwrap(wal)
                .expect("sole owner")
                .close()
                .await
                .expect("close");
            stats
        }));
        let stats = done.expect("invoke");
        assert_eq!(stats.records, 200);
        assert!(stats.batches < 200, "grouped: {} batches", stats.batches);
    }
    set.shutdown().expect("shutdown");
    for shard in 0..2u16 {
        let (_wal, records) = Wal::open(
            &dir.path().join(format!("shard-{shard}")),
            shard,
            WalOptions::new(),
        )
        .unwrap();
        let want: Vec<Bytes> = (1..=200u64)
            .map(|i| Bytes::from(format!("{shard}-{i}")))
            .collect();
        let got: Vec<Bytes> = records.into_iter().map(|r| r.payload).collect();
        assert_eq!(got, want);
    }
}
