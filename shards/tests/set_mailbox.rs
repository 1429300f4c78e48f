//! Cross-shard mailboxes: results, back-pressure when full, `try_invoke_on`'s `Full`,
//! broadcast, calls between shards and from other runtimes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shards::{ShardConfig, ShardHandle, ShardId, ShardSet, TryInvokeError};
use tokio::sync::Notify;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Occupies shard 0: its one in-flight place runs a job blocked on `gate`.
fn block_shard0(h: &ShardHandle, gate: &Arc<Notify>) {
    let g = Arc::clone(gate);
    let _running = h
        .try_invoke_on(ShardId(0), move || async move { g.notified().await })
        .expect("room");
}

#[test]
fn a_full_mailbox_fails_try_invoke_and_applies_back_pressure_to_invoke() {
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .mailbox_capacity(4)
            .max_in_flight(1),
    )
    .expect("start");
    let h = set.handle().clone();
    let gate = Arc::new(Notify::new());
    block_shard0(&h, &gate);
    let rt = rt();
    // Wait until the pump took the blocker out of the mailbox (it then waits on the gate).
    rt.block_on(async {
        for _ in 0..500 {
            if h.mailbox_len(ShardId(0)) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // The in-flight place is taken: 4 more jobs fill the mailbox, the fifth is refused.
    let ran = Arc::new(AtomicUsize::new(0));
    let mut queued = Vec::new();
    for _ in 0..4 {
        let ran = Arc::clone(&ran);
        queued.push(
            h.try_invoke_on(ShardId(0), move || async move {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .expect("room in the mailbox"),
        );
    }
    assert_eq!(h.mailbox_len(ShardId(0)), 4);
    assert_eq!(
        h.try_invoke_on(ShardId(0), || async {}).err(),
        Some(TryInvokeError::Full(ShardId(0)))
    );
    // Shard 1 is unaffected.
    assert_eq!(rt.block_on(h.invoke_on(ShardId(1), || async { 1 })), Ok(1));

    rt.block_on(async {
        // invoke_on waits (does not grow the queue) while full...
        let waiting = h.invoke_on(ShardId(0), || async { "late" });
        tokio::pin!(waiting);
        let r = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await;
        assert!(r.is_err(), "invoke_on must wait while the mailbox is full");
        assert_eq!(
            h.mailbox_len(ShardId(0)),
            4,
            "the queue never exceeds its capacity"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        // ...and completes once the shard drains.
        gate.notify_one();
        let r = tokio::time::timeout(Duration::from_secs(5), &mut waiting).await;
        assert_eq!(r.expect("completes after the gate opens"), Ok("late"));
        for q in queued {
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(5), q)
                    .await
                    .expect("in time"),
                Ok(())
            );
        }
    });
    assert_eq!(ran.load(Ordering::SeqCst), 4);
    set.shutdown().expect("shutdown");
}

#[test]
fn many_waiting_senders_all_get_through_in_bounded_space() {
    // 8 sender threads x 200 jobs through a 2-slot mailbox: everything arrives exactly once.
    let set = ShardSet::start(
        ShardConfig::default()
            .shards(2)
            .mailbox_capacity(2)
            .max_in_flight(2),
    )
    .expect("start");
    let h = set.handle().clone();
    let sum = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8usize)
        .map(|t| {
            let h = h.clone();
            let sum = Arc::clone(&sum);
            std::thread::spawn(move || {
                let rt = rt();
                rt.block_on(async {
                    for i in 0..200usize {
                        let sum = Arc::clone(&sum);
                        let v = t * 1000 + i;
                        let r = h
                            .invoke_on(ShardId((v % 2) as u16), move || async move {
                                sum.fetch_add(v, Ordering::SeqCst);
                                v
                            })
                            .await;
                        assert_eq!(r, Ok(v));
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }
    let want: usize = (0..8usize)
        .flat_map(|t| (0..200usize).map(move |i| t * 1000 + i))
        .sum();
    assert_eq!(sum.load(Ordering::SeqCst), want);
    assert_eq!(h.submitted(), 1600);
    set.shutdown().expect("shutdown");
}

#[test]
fn shards_call_each_other_and_broadcast() {
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let h = set.handle().clone();
    let rt = rt();
    // Shard 0 asks shard 1 for its id, from inside a shard-local future.
    let r = rt
        .block_on(h.invoke_on(ShardId(0), || async {
            let ctx = shards::ShardContext::current().expect("shard");
            let other = ctx
                .handle()
                .invoke_on(ShardId(1), || async { shards::current_shard() })
                .await;
            (shards::current_shard(), other)
        }))
        .expect("invoke");
    assert_eq!(r, (Some(ShardId(0)), Ok(Some(ShardId(1)))));
    // Broadcast returns one result per shard, in shard order.
    let all = rt
        .block_on(h.invoke_on_all(|| async { shards::current_shard().map(|s| s.0 * 10) }))
        .expect("all");
    assert_eq!(all, vec![Some(0), Some(10)]);
    // A shard invoking itself goes through its own mailbox and works.
    let me = rt
        .block_on(h.invoke_on(ShardId(1), || async {
            let ctx = shards::ShardContext::current().expect("shard");
            ctx.handle().invoke_on(ShardId(1), || async { 5 }).await
        }))
        .expect("invoke");
    assert_eq!(me, Ok(5));
    set.shutdown().expect("shutdown");
}

#[test]
fn the_handle_works_without_any_tokio_runtime_and_its_future_moves_threads() {
    let set = ShardSet::start(ShardConfig::default().shards(2)).expect("start");
    let h = set.handle().clone();
    // Built on this thread, awaited on another by a non-tokio executor: the future is Send
    // and needs no runtime on the caller's side.
    let fut = h.invoke_on(ShardId(1), || async { 40 + 2 });
    let r = std::thread::spawn(move || futures::executor::block_on(fut))
        .join()
        .expect("join");
    assert_eq!(r, Ok(42));
    set.shutdown().expect("shutdown");
}

#[test]
fn keys_route_to_the_same_shard_as_the_free_function() {
    let set = ShardSet::start(ShardConfig::default().shards(3)).expect("start");
    let h = set.handle();
    for k in ["/registry/core/pods/a/b", "x", ""] {
        assert_eq!(
            h.shard_for_key(k.as_bytes()),
            shards::shard_for_key(k.as_bytes(), 3)
        );
    }
    set.shutdown().expect("shutdown");
}

#[test]
fn public_types_are_send_and_sync_as_documented() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ShardHandle>();
    send_sync::<ShardSet>();
    send_sync::<ShardId>();
    send_sync::<shards::InvokeError>();
    send_sync::<shards::TryInvokeError>();
    send::<shards::StartError>();
    // The future returned by invoke_on is Send (so any runtime can await it).
    fn assert_send<F: Send>(_: &F) {}
    let set = ShardSet::start(ShardConfig::default().shards(1)).expect("start");
    let fut = set.handle().invoke_on(ShardId(0), || async {});
    assert_send(&fut);
    drop(fut);
    set.shutdown().expect("shutdown");
}
