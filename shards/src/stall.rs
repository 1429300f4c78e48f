//! The stall detector: reports a shard whose running task held the thread longer than a
//! threshold without yielding (STYLE.md 1.4, glommio's `StallDetectionHandler`).
//!
//! How: each shard runs a tiny heartbeat task that stamps the time every `threshold / 4`.
//! A task that blocks the thread also stops the heartbeat, so a watchdog thread that sees a
//! stamp older than `threshold` knows the shard has not returned to its scheduler for that
//! long. (tokio's per-poll hooks need `tokio_unstable`, which this project does not use, and its
//! park hooks do not fire while a busy runtime only yields.) Each stall episode is reported
//! once, with a `tracing` warning and a counter, when it is first seen; the report names the
//! shard and how long it has been stalled so far.
//!
//! Cost: one timer wake-up per shard per `threshold / 4` and one watchdog thread per set.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::id::ShardId;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

/// Per-shard heartbeats and stall counters, shared by the shards and the watchdog.
#[derive(Debug)]
pub(crate) struct Heartbeats {
    base: Instant,
    /// Nanoseconds since `base` of each shard's last heartbeat; 0 = not started yet.
    beats: Vec<AtomicU64>,
    /// Whether the current stall of each shard was already reported.
    reported: Vec<AtomicBool>,
    stalls: Vec<AtomicU64>,
    threshold: Duration,
}

impl Heartbeats {
    pub(crate) fn new(count: usize, threshold: Duration) -> Self {
        Self {
            base: Instant::now(),
            beats: (0..count).map(|_| AtomicU64::new(0)).collect(),
            reported: (0..count).map(|_| AtomicBool::new(false)).collect(),
            stalls: (0..count).map(|_| AtomicU64::new(0)).collect(),
            threshold,
        }
    }

    fn now_nanos(&self) -> u64 {
        // Saturates after ~584 years of uptime; 0 is reserved for "not started".
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Stamps shard `id`'s heartbeat (called on the shard).
    pub(crate) fn beat(&self, id: ShardId) {
        if let Some(b) = self.beats.get(id.index()) {
            b.store(self.now_nanos(), Ordering::Release);
        }
    }

    /// Marks shard `id` as stopped: an exiting shard is not stalled.
    pub(crate) fn stop(&self, id: ShardId) {
        if let Some(b) = self.beats.get(id.index()) {
            b.store(0, Ordering::Release);
        }
    }

    /// The heartbeat period for a shard.
    pub(crate) fn tick(&self) -> Duration {
        (self.threshold / 4).max(Duration::from_millis(1))
    }

    /// Stalls reported so far, per shard.
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.stalls
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    /// One watchdog pass: reports every shard stalled for longer than the threshold.
    fn check(&self) {
        let now = self.now_nanos();
        let threshold = u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX);
        for (i, beat) in self.beats.iter().enumerate() {
            let last = beat.load(Ordering::Acquire);
            if last == 0 {
                continue;
            }
            let age = now.saturating_sub(last);
            if age > threshold {
                if !self.reported[i].swap(true, Ordering::AcqRel) {
                    self.stalls[i].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        shard = i,
                        stalled_ms = age / 1_000_000,
                        threshold_ms = self.threshold.as_millis() as u64,
                        "shard stalled: a task ran without yielding past the threshold"
                    );
                }
            } else {
                self.reported[i].store(false, Ordering::Release);
            }
        }
    }
}

/// The watchdog thread; stops and joins on drop.
pub(crate) struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(beats: Arc<Heartbeats>, name: String) -> std::io::Result<Watchdog> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let period = beats.tick();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Ends when the sender is dropped (Disconnected) or sends.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                beats.check();
            }
        })?;
        Ok(Watchdog {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The watchdog never panics on its own; a join error would be a bug in `check`.
            let _ = t.join();
        }
    }
}

/// The shard-side heartbeat task: stamps until the shard stops.
pub(crate) async fn heartbeat(beats: Arc<Heartbeats>, id: ShardId) {
    let period = beats.tick();
    loop {
        beats.beat(id);
        tokio::time::sleep(period).await;
    }
}
