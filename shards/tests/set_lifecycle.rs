//! ShardSet start, identity, pinning, shutdown with work in flight, no leaked threads.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shards::{
    InvokeError, ShardConfig, ShardContext, ShardId, ShardSet, ShutdownError, StartError,
    TryInvokeError,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Names of this process's threads (from /proc), to check none leak.
fn thread_names() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(c) = std::fs::read_to_string(e.path().join("comm")) {
                out.push(c.trim().to_owned());
            }
        }
    }
    out
}

/// Shard threads (`{prefix}-{n}`) alive now, plus the set's watchdog (`{prefix}-watch`) if
/// `watch`. Positive counts use shards only: a just-spawned watchdog may not carry its name
/// yet (it inherits its parent's until it names itself).
fn count_named(prefix: &str, watch: bool) -> usize {
    thread_names()
        .iter()
        .filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| (watch && rest == "watch") || rest.parse::<u32>().is_ok())
        })
        .count()
}

fn count_prefixed(prefix: &str) -> usize {
    count_named(prefix, false)
}

/// Waits (bounded) until no thread of the set is left. A joined thread can linger in
/// /proc for a moment after `join` returns, so poll briefly.
fn assert_no_threads_left(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while count_named(prefix, true) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        count_named(prefix, true),
        0,
        "threads left: {:?}",
        thread_names()
    );
}

#[test]
fn shards_know_their_id_count_and_thread_name() {
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(3)
            .thread_name_prefix("idtest"),
    )
    .expect("start");
    assert_eq!(set.shard_count(), 3);
    assert_eq!(
        count_prefixed("idtest-"),
        3,
        "one named thread per shard: {:?}",
        thread_names()
    );
    let h = set.handle().clone();
    assert_eq!(h.current_shard(), None, "the test thread is not a shard");
    let got = rt().block_on(h.invoke_on_all(|| async {
        let ctx = ShardContext::current().expect("on a shard");
        let name = std::thread::current().name().map(str::to_owned);
        (ctx.id(), ctx.count(), name, ctx.handle().current_shard())
    }));
    let got = got.expect("invoke_on_all");
    for (i, (id, count, name, via_handle)) in got.into_iter().enumerate() {
        assert_eq!(id, ShardId(i as u16));
        assert_eq!(count, 3);
        assert_eq!(name.as_deref(), Some(format!("idtest-{i}").as_str()));
        assert_eq!(via_handle, Some(id));
    }
    set.shutdown().expect("shutdown");
    assert_no_threads_left("idtest-");
}

#[test]
fn shards_are_pinned_when_asked() {
    let cores = core_affinity_count();
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .pin(true)
            .thread_name_prefix("pintest"),
    )
    .expect("start");
    let allowed = rt()
        .block_on(set.handle().invoke_on_all(|| async { allowed_cpus() }))
        .expect("invoke");
    if cores > 1 {
        // Pinned: each shard may run on exactly one CPU, shard i on core i.
        for (i, cpus) in allowed.iter().enumerate() {
            assert_eq!(cpus.len(), 1, "shard {i} allowed on {cpus:?}");
        }
        assert_ne!(allowed[0], allowed[1]);
    }
    set.shutdown().expect("shutdown");
}

fn core_affinity_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPUs this thread may run on, from /proc/thread-self/status.
fn allowed_cpus() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap_or("");
    let list = line.split(':').nth(1).unwrap_or("").trim();
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let mut it = part.split('-').map(|x| x.parse::<u32>().unwrap_or(0));
        let a = it.next().unwrap_or(0);
        let b = it.next().unwrap_or(a);
        out.extend(a..=b);
    }
    out
}

#[test]
fn invalid_configs_are_typed_errors() {
    assert!(matches!(
        ShardSet::start(ShardConfig::default().shards(0)),
        Err(StartError::InvalidShardCount(0))
    ));
    assert!(matches!(
        ShardSet::start(ShardConfig::default().shards(70_000)),
        Err(StartError::InvalidShardCount(70_000))
    ));
    assert!(matches!(
        ShardSet::start(ShardConfig::default().shards(1).mailbox_capacity(0)),
        Err(StartError::InvalidConfig(_))
    ));
}

#[test]
fn shard_local_state_is_not_send_and_persists_across_invocations() {
    thread_local! {
        static COUNTER: Rc<RefCell<u32>> = Rc::new(RefCell::new(0));
    }
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let h = set.handle().clone();
    let rt = rt();
    for _ in 0..5 {
        let v = rt
            .block_on(h.invoke_on(ShardId(1), || async {
                let c = COUNTER.with(Rc::clone);
                // Hold the Rc across an await: the future is !Send, which the shard allows.
                tokio::task::yield_now().await;
                *c.borrow_mut() += 1;

                *c.borrow()
            }))
            .expect("invoke");
        assert!(v >= 1);
    }
    let per_shard = rt
        .block_on(h.invoke_on_all(|| async { COUNTER.with(|c| *c.borrow()) }))
        .expect("all");
    assert_eq!(per_shard, vec![0, 5]);
    set.shutdown().expect("shutdown");
}

#[test]
fn shutdown_drains_queued_and_in_flight_work_and_joins_every_thread() {
    let done = Arc::new(AtomicUsize::new(0));
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .max_in_flight(4)
            .mailbox_capacity(64)
            .thread_name_prefix("drain"),
    )
    .expect("start");
    let h = set.handle().clone();
    // 40 jobs of 20 ms each, 4 at a time per shard: most are still queued at shutdown.
    let mut results = Vec::new();
    for i in 0..40u32 {
        let done = Arc::clone(&done);
        let fut = h
            .try_invoke_on(ShardId((i % 2) as u16), move || async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                done.fetch_add(1, Ordering::SeqCst);
                i
            })
            .expect("mailbox has room");
        results.push(fut);
    }
    assert!(
        done.load(Ordering::SeqCst) < 40,
        "work must still be in flight at shutdown"
    );
    let t0 = Instant::now();
    set.shutdown().expect("shutdown");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Every accepted job ran to completion before the threads exited.
    assert_eq!(done.load(Ordering::SeqCst), 40);
    let rt = rt();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(rt.block_on(r), Ok(i as u32));
    }
    assert_no_threads_left("drain-");
    // New work after shutdown is refused, typed.
    assert_eq!(
        rt.block_on(h.invoke_on(ShardId(0), || async {})),
        Err(InvokeError::ShuttingDown)
    );
    assert!(matches!(
        h.try_invoke_on(ShardId(0), || async {}),
        Err(TryInvokeError::ShuttingDown)
    ));
}

#[test]
fn shutdown_cancels_work_past_the_drain_timeout_and_still_joins() {
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(1)
            .drain_timeout(Duration::from_millis(200))
            .thread_name_prefix("slowdrain"),
    )
    .expect("start");
    let h = set.handle().clone();
    let fut = h
        .try_invoke_on(ShardId(0), || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .expect("queued");
    // Let the job start.
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    set.shutdown().expect("shutdown");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(rt().block_on(fut), Err(InvokeError::Cancelled(ShardId(0))));
    assert_no_threads_left("slowdrain-");
}

#[test]
fn drop_shuts_down_too() {
    {
        let set = ShardSet::start(
            ShardConfig::default()
                .shards(2)
                .thread_name_prefix("droptest"),
        )
        .expect("start");
        assert_eq!(count_prefixed("droptest-"), 2, "{:?}", thread_names());
        drop(set);
    }
    assert_no_threads_left("droptest-");
}

#[test]
fn shutdown_from_a_shard_is_refused() {
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(1)
            .thread_name_prefix("selfstop"),
    )
    .expect("start");
    let h = set.handle().clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = Arc::new(std::sync::Mutex::new(Some(set)));
    let holder2 = Arc::clone(&holder);
    let fut = h.invoke_on(ShardId(0), move || async move {
        let set = holder2.lock().ok().and_then(|mut g| g.take());
        if let Some(set) = set {
            let r = set.shutdown();
            let _ = tx.send(matches!(r, Err(ShutdownError::CalledFromShard(ShardId(0)))));
        }
    });
    // The attempt fails typed, but still stops the set: its shard drains and exits, detached.
    let _ = rt().block_on(fut);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
    assert_no_threads_left("selfstop-");
}

#[test]
fn a_panicking_closure_is_reported_and_the_shard_survives() {
    let set = ShardSet::start(ShardConfig::default().shards(1)).expect("start");
    let h = set.handle().clone();
    let rt = rt();
    let r: Result<(), _> = rt.block_on(h.invoke_on(ShardId(0), || async {
        panic!("boom (expected by the test)")
    }));
    assert_eq!(r, Err(InvokeError::Cancelled(ShardId(0))));
    assert_eq!(rt.block_on(h.invoke_on(ShardId(0), || async { 7 })), Ok(7));
    assert_eq!(
        rt.block_on(h.invoke_on(ShardId(9), || async {})),
        Err(InvokeError::NoSuchShard {
            shard: ShardId(9),
            count: 1
        })
    );
    set.shutdown().expect("shutdown");
}

#[test]
fn shard_local_services_are_per_shard_and_dropped_at_stop() {
    struct Counter {
        shard: ShardId,
        hits: RefCell<u32>,
        dropped: Arc<AtomicUsize>,
    }
    impl Drop for Counter {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let h = set.handle().clone();
    let rt = rt();
    let d = Arc::clone(&dropped);
    rt.block_on(h.install_local(move |shard| Counter {
        shard,
        hits: RefCell::new(0),
        dropped: Arc::clone(&d),
    }))
    .expect("install");
    for _ in 0..3 {
        rt.block_on(h.invoke_on(ShardId(1), || async {
            let c = shards::local::<Counter>().expect("installed");
            *c.hits.borrow_mut() += 1;
        }))
        .expect("invoke");
    }
    let seen = rt
        .block_on(h.invoke_on_all(|| async {
            let c = shards::local::<Counter>().expect("installed");
            let hits = *c.hits.borrow();
            (c.shard, hits)
        }))
        .expect("all");
    assert_eq!(seen, vec![(ShardId(0), 0), (ShardId(1), 3)]);
    // Off a shard there is no local instance, and nothing can be installed.
    assert!(shards::local::<Counter>().is_none());
    assert!(!shards::set_local(5u8));
    set.shutdown().expect("shutdown");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "each shard dropped its instance"
    );
}
