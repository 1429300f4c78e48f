//! The stall detector: a task blocking its shard is reported; well-behaved shards are not.

use std::time::Duration;

use shards::{ShardConfig, ShardId, ShardSet};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_blocking_task_is_reported_and_yielding_work_is_not() {
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .stall_threshold(Some(Duration::from_millis(250))),
    )
    .expect("start");
    let h = set.handle().clone();
    let rt = rt();
    // Shard 1: busy but well-behaved for ~600 ms (short slices, yielding between them).
    let busy = h.invoke_on(ShardId(1), || async {
        let end = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < end {
            let slice = std::time::Instant::now() + Duration::from_millis(2);
            while std::time::Instant::now() < slice {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
    });
    // Shard 0: one task blocks the thread for 1 s (4x the threshold).
    let blocking = h.invoke_on(ShardId(0), || async {
        std::thread::sleep(Duration::from_millis(1000));
    });
    rt.block_on(async {
        let (a, b) = tokio::join!(busy, blocking);
        assert_eq!(a, Ok(()));
        assert_eq!(b, Ok(()));
    });
    // Give the watchdog a period to look after the stall ended; it reported during it.
    std::thread::sleep(Duration::from_millis(100));
    let counts = h.stall_counts();
    assert_eq!(counts[0], 1, "one stall episode on shard 0: {counts:?}");
    assert_eq!(counts[1], 0, "yielding work is not a stall: {counts:?}");
    // Idle shards are not stalls either.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(h.stall_counts(), counts);
    set.shutdown().expect("shutdown");
}

#[test]
fn the_detector_can_be_disabled() {
    let set =
        ShardSet::start(ShardConfig::default().shards(1).stall_threshold(None)).expect("start");
    let h = set.handle().clone();
    let r = rt().block_on(h.invoke_on(ShardId(0), || async {
        std::thread::sleep(Duration::from_millis(200))
    }));
    assert_eq!(r, Ok(()));
    assert_eq!(h.stall_counts(), vec![0]);
    set.shutdown().expect("shutdown");
}
