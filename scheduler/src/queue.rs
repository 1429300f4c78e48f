//! The scheduling queue, as upstream's: an active queue (priority, then time of arrival), a
//! backoff queue (1 s doubling to 10 s per failed attempt), and the unschedulable pods, which
//! move back when a cluster event one of their rejecting plugins cares about happens (or
//! after five minutes). Gated pods (`schedulingGates`) wait until an update removes the gates.
//!
//! Sans-IO: every method takes `now`; nothing reads the clock.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;
use crate::model::{PodInfo, PodKey};

/// Cluster changes that can make a rejected pod schedulable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterEvent {
    /// A node was added.
    NodeAdd,
    /// A node changed (labels, taints, allocatable, unschedulable).
    NodeUpdate,
    /// A pod was assigned to a node.
    PodAdd,
    /// A pod was deleted (frees resources, ports, anti-affinity).
    PodDelete,
}

/// Every event (the default interest of a plugin).
pub const ALL_EVENTS: &[ClusterEvent] = &[
    ClusterEvent::NodeAdd,
    ClusterEvent::NodeUpdate,
    ClusterEvent::PodAdd,
    ClusterEvent::PodDelete,
];

/// First backoff.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often.
pub const MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// A pod in the queue.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it (re-)entered the queue; orders pods of equal priority.
    pub timestamp: Instant,
    /// Plugins that rejected it last time (empty: any event moves it).
    pub rejected_by: Vec<&'static str>,
    /// When it first entered the queue (for the end-to-end latency).
    pub initial: Instant,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    Gated,
    InFlight,
}

/// Sizes of the sub-queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLen {
    /// Ready to schedule.
    pub active: usize,
    /// Waiting for their backoff to pass.
    pub backoff: usize,
    /// Waiting for a cluster event.
    pub unschedulable: usize,
    /// Waiting for their scheduling gates to go.
    pub gated: usize,
}

/// The scheduling queue.
#[derive(Debug)]
pub struct SchedulingQueue {
    pods: HashMap<PodKey, (QueuedPod, Place)>,
    active: BinaryHeap<(i32, Reverse<Instant>, Reverse<u64>, PodKey)>,
    backoff: BTreeSet<(Instant, u64, PodKey)>,
    next_seq: u64,
    capacity: usize,
    interests: HashMap<&'static str, &'static [ClusterEvent]>,
    /// Bumped on every move event; a pod popped before a move goes to backoff, not to the
    /// unschedulable pods, when it fails (it may have missed the event).
    move_epoch: u64,
    popped_epoch: HashMap<PodKey, u64>,
}

/// Upstream's backoff: 1 s doubling per attempt, at most 10 s.
pub fn backoff_duration(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// A queue holding at most `capacity` pods; `interests` maps plugin names to the events
    /// that can undo their rejections.
    pub fn new(capacity: usize, interests: HashMap<&'static str, &'static [ClusterEvent]>) -> Self {
        SchedulingQueue {
            pods: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BTreeSet::new(),
            next_seq: 0,
            capacity,
            interests,
            move_epoch: 0,
            popped_epoch: HashMap::new(),
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn push_active(&mut self, mut qp: QueuedPod) {
        qp.seq = self.seq();
        self.active.push((
            qp.pod.priority,
            Reverse(qp.timestamp),
            Reverse(qp.seq),
            qp.pod.key.clone(),
        ));
        self.pods.insert(qp.pod.key.clone(), (qp, Place::Active));
    }

    fn push_backoff(&mut self, mut qp: QueuedPod, until: Instant) {
        qp.seq = self.seq();
        self.backoff.insert((until, qp.seq, qp.pod.key.clone()));
        self.pods
            .insert(qp.pod.key.clone(), (qp, Place::Backoff(until)));
    }

    /// Adds a new pending pod (replaces one with the same key).
    pub fn add(&mut self, pod: Arc<PodInfo>, now: Instant) -> Result<(), Error> {
        if !self.pods.contains_key(&pod.key) && self.pods.len() >= self.capacity {
            return Err(Error::QueueFull(self.capacity));
        }
        let qp = QueuedPod {
            pod,
            attempts: 0,
            timestamp: now,
            rejected_by: Vec::new(),
            initial: now,
            seq: 0,
        };
        if qp.pod.gated {
            self.pods.insert(qp.pod.key.clone(), (qp, Place::Gated));
        } else {
            self.push_active(qp);
        }
        Ok(())
    }

    /// A pending pod changed: gates removed activate it; an unschedulable pod is retried.
    pub fn update(&mut self, pod: Arc<PodInfo>, now: Instant) -> Result<(), Error> {
        let Some((qp, place)) = self.pods.remove(&pod.key) else {
            return self.add(pod, now);
        };
        // Upstream `isPodUpdated`: an update that changes nothing the plugins read (the
        // scheduler's own PodScheduled condition or nominatedNodeName echoed back, a status
        // change) leaves an unschedulable pod where it is; otherwise each of our own
        // status writes would retry the pod at once.
        let relevant = !status_only(&qp.pod, &pod);
        let qp = QueuedPod { pod, ..qp };
        match place {
            _ if qp.pod.gated => {
                self.pods.insert(qp.pod.key.clone(), (qp, Place::Gated));
            }
            Place::Unschedulable(t) if !relevant => {
                self.pods
                    .insert(qp.pod.key.clone(), (qp, Place::Unschedulable(t)));
            }
            Place::Gated | Place::Unschedulable(_) => self.push_active(qp),
            Place::Backoff(t) => self.push_backoff(qp, t),
            Place::Active => self.push_active(qp),
            Place::InFlight => {
                self.pods.insert(qp.pod.key.clone(), (qp, Place::InFlight));
            }
        }
        Ok(())
    }

    /// A pod left (deleted, or bound by someone else).
    pub fn delete(&mut self, key: &PodKey) {
        self.pods.remove(key);
        self.popped_epoch.remove(key);
    }

    fn flush_backoff(&mut self, now: Instant) {
        while let Some((t, seq, key)) = self.backoff.first().cloned() {
            if t > now {
                break;
            }
            self.backoff.pop_first();
            if let Some((qp, Place::Backoff(_))) = self.pods.get(&key)
                && qp.seq == seq
            {
                let (qp, _) = self.pods.remove(&key).expect("present");
                self.push_active(qp);
            }
        }
    }

    /// Moves pods whose backoff passed to active, and pods unschedulable for too long back.
    pub fn flush(&mut self, now: Instant) {
        self.flush_backoff(now);
        let stale: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(_, (_, p))| matches!(p, Place::Unschedulable(t) if now.duration_since(*t) >= MAX_IN_UNSCHEDULABLE))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.requeue_moved(&k, now);
        }
    }

    /// Pops up to `max` pods, highest priority first, after flushing the backoff queue. The
    /// popped pods are in flight until `done`, `unschedulable` or `error` is called for them.
    pub fn pop_batch(&mut self, max: usize, now: Instant) -> Vec<QueuedPod> {
        self.flush_backoff(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some((_, _, Reverse(seq), key)) = self.active.pop() else {
                break;
            };
            let Some((qp, place)) = self.pods.get_mut(&key) else {
                continue;
            };
            if *place != Place::Active || qp.seq != seq {
                continue;
            }
            *place = Place::InFlight;
            self.popped_epoch.insert(key, self.move_epoch);
            out.push(qp.clone());
        }
        out
    }

    /// The pod was scheduled (assumed): it leaves the queue.
    pub fn done(&mut self, key: &PodKey) {
        self.delete(key);
    }

    /// The pod fits nowhere: it waits for an event its rejecting plugins care about (or goes
    /// to backoff at once if such an event happened while it was in flight).
    pub fn unschedulable(&mut self, key: &PodKey, rejected_by: Vec<&'static str>, now: Instant) {
        let popped = self.popped_epoch.remove(key);
        let Some((qp, Place::InFlight)) = self.pods.get_mut(key) else {
            return;
        };
        qp.attempts += 1;
        qp.rejected_by = rejected_by;
        qp.timestamp = now;
        if popped.is_some_and(|e| e < self.move_epoch) {
            let (qp, _) = self.pods.remove(key).expect("present");
            let until = now + backoff_duration(qp.attempts);
            self.push_backoff(qp, until);
        } else if let Some(e) = self.pods.get_mut(key) {
            e.1 = Place::Unschedulable(now);
        }
    }

    /// Scheduling failed with an error (or the bind failed): retry after the backoff.
    pub fn error(&mut self, key: &PodKey, now: Instant) {
        self.popped_epoch.remove(key);
        let Some((mut qp, _)) = self.pods.remove(key) else {
            return;
        };
        qp.attempts += 1;
        let until = now + backoff_duration(qp.attempts);
        self.push_backoff(qp, until);
    }

    /// Re-adds a pod whose binding failed (it had left the queue).
    pub fn requeue_after_failed_bind(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let qp = QueuedPod {
            pod,
            attempts: 1,
            timestamp: now,
            rejected_by: Vec::new(),
            initial: now,
            seq: 0,
        };
        self.push_backoff(qp, now + INITIAL_BACKOFF);
    }

    fn requeue_moved(&mut self, key: &PodKey, now: Instant) {
        let Some((qp, _)) = self.pods.remove(key) else {
            return;
        };
        let until = qp.timestamp + backoff_duration(qp.attempts);
        if until > now {
            self.push_backoff(qp, until)
        } else {
            self.push_active(qp)
        }
    }

    /// A cluster event happened: unschedulable pods that a plugin interested in it rejected
    /// move to backoff (if still backing off) or active. Returns how many moved.
    pub fn on_event(&mut self, ev: ClusterEvent, now: Instant) -> usize {
        self.move_epoch += 1;
        let keys: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(_, (qp, p))| {
                matches!(p, Place::Unschedulable(_))
                    && (qp.rejected_by.is_empty()
                        || qp
                            .rejected_by
                            .iter()
                            .any(|n| self.interests.get(n).is_none_or(|evs| evs.contains(&ev))))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.requeue_moved(k, now);
        }
        keys.len()
    }

    /// Sizes of the sub-queues.
    pub fn len(&self) -> QueueLen {
        let mut l = QueueLen::default();
        for (_, p) in self.pods.values() {
            match p {
                Place::Active => l.active += 1,
                Place::Backoff(_) => l.backoff += 1,
                Place::Unschedulable(_) => l.unschedulable += 1,
                Place::Gated => l.gated += 1,
                Place::InFlight => {}
            }
        }
        l
    }

    /// Whether no pod is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The earliest time a backing-off pod becomes active.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.first().map(|(t, _, _)| *t)
    }
}

/// Whether `new` differs from `old` only where the plugins do not look (status,
/// `nominatedNodeName`).
fn status_only(old: &PodInfo, new: &PodInfo) -> bool {
    if old.nominated_node == new.nominated_node {
        return old.same_class(new);
    }
    let mut n = new.clone();
    n.nominated_node = old.nominated_node.clone();
    old.same_class(&n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::pod;
    use serde_json::json;

    fn p(name: &str, prio: i32, gated: bool) -> Arc<PodInfo> {
        let mut spec = json!({"priority": prio, "containers": []});
        if gated {
            spec["schedulingGates"] = json!([{"name": "wait"}]);
        }
        Arc::new(pod(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        ))
    }

    fn q() -> SchedulingQueue {
        let mut i: HashMap<&'static str, &'static [ClusterEvent]> = HashMap::new();
        i.insert(
            "NodeResourcesFit",
            &[ClusterEvent::NodeAdd, ClusterEvent::PodDelete],
        );
        i.insert("TaintToleration", &[ClusterEvent::NodeUpdate]);
        SchedulingQueue::new(100, i)
    }

    fn names(v: &[QueuedPod]) -> Vec<&str> {
        v.iter().map(|q| q.pod.key.name.as_str()).collect()
    }

    #[test]
    fn active_orders_by_priority_then_arrival() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("low", 1, false), t0).unwrap();
        q.add(p("high", 10, false), t0 + Duration::from_millis(2))
            .unwrap();
        q.add(p("low2", 1, false), t0 + Duration::from_millis(1))
            .unwrap();
        assert_eq!(names(&q.pop_batch(10, t0)), ["high", "low", "low2"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        assert_eq!(backoff_duration(1), Duration::from_secs(1));
        assert_eq!(backoff_duration(2), Duration::from_secs(2));
        assert_eq!(backoff_duration(4), Duration::from_secs(8));
        assert_eq!(backoff_duration(5), Duration::from_secs(10));
        assert_eq!(backoff_duration(40), Duration::from_secs(10));
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("a", 0, false), t0).unwrap();
        let a = q.pop_batch(1, t0);
        q.error(&a[0].pod.key, t0);
        assert!(q.pop_batch(1, t0 + Duration::from_millis(999)).is_empty());
        let a = q.pop_batch(1, t0 + Duration::from_secs(1));
        assert_eq!(names(&a), ["a"]);
        q.error(&a[0].pod.key, t0 + Duration::from_secs(1));
        assert!(q.pop_batch(1, t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(q.pop_batch(1, t0 + Duration::from_secs(3)).len(), 1);
    }

    #[test]
    fn unschedulable_moves_only_on_relevant_events() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("fit", 0, false), t0).unwrap();
        q.add(p("taint", 0, false), t0).unwrap();
        for qp in q.pop_batch(10, t0) {
            let by = if qp.pod.key.name == "fit" {
                "NodeResourcesFit"
            } else {
                "TaintToleration"
            };
            q.unschedulable(&qp.pod.key, vec![by], t0);
        }
        assert_eq!(q.len().unschedulable, 2);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(q.on_event(ClusterEvent::NodeAdd, later), 1);
        assert_eq!(names(&q.pop_batch(10, later)), ["fit"]);
        assert_eq!(q.on_event(ClusterEvent::PodDelete, later), 0);
        // Still backing off (attempt 1 at t0 + 1s > now): goes to backoff, not active.
        assert_eq!(
            q.on_event(ClusterEvent::NodeUpdate, t0 + Duration::from_millis(500)),
            1
        );
        assert_eq!(q.len().backoff, 1);
        assert_eq!(
            names(&q.pop_batch(10, t0 + Duration::from_secs(1))),
            ["taint"]
        );
    }

    #[test]
    fn event_during_flight_sends_to_backoff() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("a", 0, false), t0).unwrap();
        let a = q.pop_batch(1, t0);
        q.on_event(ClusterEvent::NodeAdd, t0);
        q.unschedulable(&a[0].pod.key, vec!["NodeResourcesFit"], t0);
        assert_eq!(
            q.len(),
            QueueLen {
                backoff: 1,
                ..Default::default()
            }
        );
    }

    /// Our own status writes (PodScheduled=False, nominatedNodeName) come back through the
    /// informer: they must not retry an unschedulable pod; a spec change (labels) must.
    #[test]
    fn status_only_updates_keep_unschedulable_pods_waiting() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("x", 0, false), t0).unwrap();
        assert_eq!(names(&q.pop_batch(10, t0)), ["x"]);
        q.unschedulable(
            &PodKey {
                namespace: "default".into(),
                name: "x".into(),
            },
            vec!["NodeResourcesFit"],
            t0,
        );
        let later = t0 + Duration::from_secs(5);
        let nominated = Arc::new(pod(
            json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"priority": 0, "containers": []},
            "status": {"nominatedNodeName": "n1", "conditions": [{"type": "PodScheduled", "status": "False"}]}}),
        ));
        q.update(nominated, later).unwrap();
        assert_eq!(q.len().unschedulable, 1);
        assert!(q.pop_batch(10, later).is_empty());
        let relabelled = Arc::new(pod(
            json!({"metadata": {"name": "x", "namespace": "default", "labels": {"a": "b"}},
            "spec": {"priority": 0, "containers": []}}),
        ));
        q.update(relabelled, later).unwrap();
        assert_eq!(names(&q.pop_batch(10, later)), ["x"]);
    }

    #[test]
    fn gates_hold_pods_until_removed_and_capacity_bounds() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("g", 0, true), t0).unwrap();
        assert!(q.pop_batch(10, t0).is_empty());
        assert_eq!(q.len().gated, 1);
        q.update(p("g", 0, false), t0).unwrap();
        assert_eq!(names(&q.pop_batch(10, t0)), ["g"]);
        let mut small = SchedulingQueue::new(1, HashMap::new());
        small.add(p("a", 0, false), t0).unwrap();
        assert!(matches!(
            small.add(p("b", 0, false), t0),
            Err(Error::QueueFull(1))
        ));
    }

    #[test]
    fn stale_unschedulable_pods_are_retried() {
        let t0 = Instant::now();
        let mut q = q();
        q.add(p("a", 0, false), t0).unwrap();
        let a = q.pop_batch(1, t0);
        q.unschedulable(&a[0].pod.key, vec!["TaintToleration"], t0);
        q.flush(t0 + Duration::from_secs(299));
        assert_eq!(q.len().unschedulable, 1);
        q.flush(t0 + MAX_IN_UNSCHEDULABLE);
        assert_eq!(q.pop_batch(1, t0 + MAX_IN_UNSCHEDULABLE).len(), 1);
    }
}
