//! The batch-parallel scheduling cycle.
//!
//! 1. A batch of pending pods is popped from the queue (priority order) and each runs
//!    PreFilter/PreScore once (its `PodCycle`).
//! 2. Every worker thread owns a contiguous partition of the nodes and evaluates every pod of
//!    the batch against every node of its partition: filters, then the raw scores. All
//!    feasible nodes are scored: no sampling.
//! 3. The pods are then resolved one by one in priority order. Per pod, the partitions'
//!    results are merged and normalized, and the best node is picked. Pods placed earlier in
//!    the batch changed some nodes ("dirty" nodes): those are re-filtered and re-scored for
//!    this pod; every other node's score is unchanged because the plugins that can see other
//!    nodes' pods are accounted for: a pod whose verdicts depend on other pods' placement
//!    (`Plugin::couples`), or any pod after one whose placement reaches other nodes
//!    (`Plugin::reaches`), or a pod whose normalization could shift when a node drops out, is
//!    re-evaluated in full against the current state. So each pod gets the node a sequential
//!    scheduler would give it in the same order (ties go to the lowest node index).
//! 4. The chosen node is reserved and the pod assumed in the snapshot; the shell binds it
//!    and confirms (`confirm`) or forgets (`forget`) it. Assumptions whose binding finished
//!    but never got confirmed expire (`cleanup_assumed`).
//!
//! Sans-IO: the shell feeds cluster events and `now`, and acts on the returned `Decision`s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;

use crate::Error;
use crate::config::{Config, build_profiles};
use crate::framework::{Framework, NodeScore, PodCycle};
use crate::model::{NodeInfo, PodInfo, PodKey, Snapshot};
use crate::queue::{ClusterEvent, SchedulingQueue};
use crate::status::{Reason, Status};

/// Tunables of the cycle.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (node partitions).
    pub parallelism: usize,
    /// Pods per batch.
    pub batch_size: usize,
    /// How long a bound-but-unconfirmed assumption lives.
    pub assume_ttl: Duration,
    /// Most pods the queue holds.
    pub queue_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            batch_size: 256,
            assume_ttl: Duration::from_secs(30),
            queue_capacity: 1_000_000,
        }
    }
}

/// What the cycle decided for one pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Assumed on `node`; the shell binds it (after waiting if Permit asked to).
    Assumed {
        /// The pod.
        pod: Arc<PodInfo>,
        /// The node's name.
        node: String,
        /// Permit asked to wait at most this long before binding.
        permit_wait: Option<Duration>,
    },
    /// No node fits. `message` is upstream's "0/N nodes are available: ..." text.
    Unschedulable {
        /// The pod.
        pod: Arc<PodInfo>,
        /// The FailedScheduling message.
        message: String,
        /// Preemption's outcome: the nominated node and the victims to delete.
        nomination: Option<(String, Vec<PodKey>)>,
    },
    /// An internal error; the pod retries after its backoff.
    Error {
        /// The pod.
        pod: Arc<PodInfo>,
        /// What went wrong.
        message: String,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Attempts that assumed a node.
    pub scheduled: u64,
    /// Attempts that found no node.
    pub unschedulable: u64,
    /// Attempts that failed with an error.
    pub errors: u64,
    /// Pods re-evaluated in full during resolution.
    pub reevaluated: u64,
    /// Batches run.
    pub batches: u64,
    /// Pods that started from their equivalence class's evaluation instead of their own.
    pub shared: u64,
    /// End-to-end latency (queue entry to assumption) histogram: counts per bucket of
    /// `E2E_BUCKETS` (the last counts everything above).
    pub e2e_buckets: [u64; E2E_BUCKETS.len() + 1],
    /// Sum of the end-to-end latencies in seconds.
    pub e2e_sum: f64,
}

/// Upper bounds (seconds) of the end-to-end latency histogram's buckets.
pub const E2E_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 30.0,
];

/// What one worker found for one pod in its partition.
#[derive(Debug, Default)]
struct Part {
    feasible: Vec<u32>,
    base: Vec<i64>,
    /// Raw scores of the normalizing plugins, `feasible.len() * norm.len()`, row per node.
    raw: Vec<i64>,
    reasons: Vec<(Reason, u32)>,
    rejectors: Vec<usize>,
    unresolvable: Vec<u32>,
}

/// A pod's evaluation, its partitions' results, and the stamp it was taken at.
type Evaluated<'a> = (Eval<'a>, Vec<Part>, Scored, u64);

struct Eval<'a> {
    fw: &'a Framework,
    pod: Arc<PodInfo>,
    pc: PodCycle,
    norm: Vec<(usize, i64)>,
}

/// The scheduler core: snapshot, queue, profiles, assumed pods and nominations.
pub struct Scheduler {
    /// The cluster as the scheduler sees it (bound + assumed pods).
    pub snap: Snapshot,
    profiles: Arc<Vec<Framework>>,
    /// The pending pods.
    pub queue: SchedulingQueue,
    assumed: HashMap<PodKey, Option<Instant>>,
    nominated: HashMap<PodKey, (String, Arc<PodInfo>)>,
    opts: Options,
    priority_classes: HashMap<String, i32>,
    /// Counters.
    pub stats: Stats,
    /// Recycled partition buffers (bounded by `POOL_MAX`): reusing them keeps the allocator
    /// from returning and re-faulting pages every batch.
    pool: std::sync::Mutex<Vec<Part>>,
    /// Recycled score buffers, as `pool`.
    entries_pool: std::sync::Mutex<Vec<Vec<(u32, i64, i64)>>>,
    /// Recycled max-tree buffers, as `pool`.
    tree_pool: std::sync::Mutex<Vec<Vec<(i64, u32)>>>,
}

/// Most partition buffers kept for reuse.
const POOL_MAX: usize = 8192;

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("nodes", &self.snap.nodes.len())
            .field("profiles", &self.profiles)
            .field("queue", &self.queue.len())
            .finish()
    }
}

fn add_reason(v: &mut Vec<(Reason, u32)>, r: Reason, n: u32) {
    if let Some(x) = v.iter_mut().find(|(x, _)| *x == r) {
        x.1 += n;
    } else {
        v.push((r, n));
    }
}

/// Upstream's FailedScheduling text: "0/N nodes are available: 2 Insufficient cpu, 1 ...".
pub fn failure_message(total_nodes: usize, reasons: &[(Reason, u32)]) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

impl Scheduler {
    /// A scheduler with the profiles of `cfg`.
    pub fn new(cfg: &Config, mut opts: Options) -> Result<Self, Error> {
        let profiles = build_profiles(cfg)?;
        if let Some(p) = cfg.parallelism {
            opts.parallelism = p;
        }
        if let Some(b) = cfg.batch_size {
            opts.batch_size = b;
        }
        opts.parallelism = opts.parallelism.clamp(1, 256);
        opts.batch_size = opts.batch_size.clamp(1, 65_536);
        let mut interests = HashMap::new();
        for fw in &profiles {
            for p in &fw.plugins {
                interests.insert(p.name(), p.events());
            }
        }
        Ok(Scheduler {
            snap: Snapshot::new(),
            queue: SchedulingQueue::new(opts.queue_capacity, interests),
            profiles: Arc::new(profiles),
            assumed: HashMap::new(),
            nominated: HashMap::new(),
            opts,
            priority_classes: HashMap::new(),
            stats: Stats::default(),
            pool: std::sync::Mutex::new(Vec::new()),
            entries_pool: std::sync::Mutex::new(Vec::new()),
            tree_pool: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The profiles.
    pub fn profiles(&self) -> &[Framework] {
        &self.profiles
    }

    /// Whether a profile serves this scheduler name.
    pub fn serves(&self, scheduler_name: &str) -> bool {
        self.profiles
            .iter()
            .any(|p| p.scheduler_name == scheduler_name)
    }

    /// Sets a PriorityClass value (`globalDefault` classes are stored under "").
    pub fn set_priority_class(&mut self, name: &str, value: i32, global_default: bool) {
        self.priority_classes.insert(name.to_owned(), value);
        if global_default {
            self.priority_classes.insert(String::new(), value);
        }
    }

    /// Compiles a pod with the known PriorityClasses.
    pub fn pod_info(&self, pod: &core::Pod) -> Result<PodInfo, Error> {
        PodInfo::new(pod, &self.priority_classes)
    }

    /// A node was added or changed.
    pub fn upsert_node(&mut self, node: &core::Node, now: Instant) -> Result<(), Error> {
        let n = NodeInfo::new(node)?;
        let existed = self.snap.node_index(&n.name).is_some();
        self.snap.upsert_node(n);
        self.queue.on_event(
            if existed {
                ClusterEvent::NodeUpdate
            } else {
                ClusterEvent::NodeAdd
            },
            now,
        );
        Ok(())
    }

    /// A node was deleted.
    pub fn remove_node(&mut self, name: &str) {
        for p in self.snap.remove_node(name) {
            self.assumed.remove(&p.key);
        }
        self.nominated.retain(|_, (n, _)| n != name);
        self.sync_nominated();
    }

    /// Rebuilds the snapshot's by-node index of nominated pods.
    fn sync_nominated(&mut self) {
        let mut m: HashMap<usize, Vec<Arc<PodInfo>>> = HashMap::new();
        for (node, p) in self.nominated.values() {
            if let Some(i) = self.snap.node_index(node) {
                m.entry(i).or_default().push(p.clone());
            }
        }
        self.snap.nominated = m;
    }

    /// A pod was added or changed in the cluster: bound pods enter the snapshot (confirming
    /// an assumption), pending pods of our profiles enter the queue.
    pub fn upsert_pod(&mut self, pod: &core::Pod, now: Instant) -> Result<(), Error> {
        let terminal = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        // The informer's first sight of a pod we assumed and bound: confirm the assumption
        // without compiling the pod again (the binding changed nothing else).
        if !terminal
            && let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            && pod.metadata.deletion_timestamp.is_none()
        {
            let key = PodKey {
                namespace: pod
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: pod.metadata.name.clone().unwrap_or_default(),
            };
            if self.assumed.contains_key(&key)
                && let Some(i) = self.snap.pod_node(&key)
                && self.snap.nodes[i].name == node
            {
                self.assumed.remove(&key);
                return Ok(());
            }
        }
        let info = Arc::new(self.pod_info(pod)?);
        if terminal {
            self.delete_pod(&info.key, now);
            return Ok(());
        }
        match info.node_name.clone() {
            Some(node) => {
                self.queue.delete(&info.key);
                if self.nominated.remove(&info.key).is_some() {
                    self.sync_nominated();
                }
                self.assumed.remove(&info.key);
                let Some(i) = self.snap.node_index(&node) else {
                    // Bound to a node we do not know (yet): nothing to account.
                    return Ok(());
                };
                let was = self.snap.pod_node(&info.key);
                self.snap.add_pod(i, info);
                if was.is_none() {
                    self.queue.on_event(ClusterEvent::PodAdd, now);
                }
            }
            None if self.serves(&info.scheduler_name) => {
                if self.assumed.contains_key(&info.key) {
                    return Ok(()); // our own assumption, not yet visible as bound
                }
                self.queue.update(info, now)?;
            }
            None => {}
        }
        Ok(())
    }

    /// A pod was deleted: it frees its node and leaves the queue.
    pub fn delete_pod(&mut self, key: &PodKey, now: Instant) {
        self.queue.delete(key);
        if self.nominated.remove(key).is_some() {
            self.sync_nominated();
        }
        self.assumed.remove(key);
        if self.snap.remove_pod(key).is_some() {
            self.queue.on_event(ClusterEvent::PodDelete, now);
        }
    }

    /// The shell finished binding an assumed pod: the assumption now expires after the TTL
    /// unless the informer confirms it.
    pub fn finish_binding(&mut self, key: &PodKey, now: Instant) {
        if let Some(d) = self.assumed.get_mut(key) {
            *d = Some(now + self.opts.assume_ttl);
        }
    }

    /// The binding is known to have happened (the in-process harness, or the informer).
    pub fn confirm(&mut self, key: &PodKey) {
        self.assumed.remove(key);
    }

    /// The binding failed: undo the assumption and retry the pod after a backoff.
    pub fn forget(&mut self, key: &PodKey, now: Instant) {
        if self.assumed.remove(key).is_none() {
            return;
        }
        let node = self
            .snap
            .pod_node(key)
            .map(|i| self.snap.nodes[i].name.clone());
        if let Some(p) = self.snap.remove_pod(key) {
            if let Some(fw) = self
                .profiles
                .iter()
                .find(|f| f.scheduler_name == p.scheduler_name)
            {
                fw.run_unreserve(&p, node.as_deref().unwrap_or(""));
            }
            let mut fresh = (*p).clone();
            fresh.node_name = None;
            self.queue.requeue_after_failed_bind(Arc::new(fresh), now);
            self.queue.on_event(ClusterEvent::PodDelete, now);
        }
    }

    /// Drops assumptions whose binding finished more than the TTL ago without confirmation.
    pub fn cleanup_assumed(&mut self, now: Instant) -> usize {
        let expired: Vec<PodKey> = self
            .assumed
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.assumed.remove(k);
            self.snap.remove_pod(k);
        }
        if !expired.is_empty() {
            self.queue.on_event(ClusterEvent::PodDelete, now);
        }
        expired.len()
    }

    /// The Prometheus text exposition of the scheduler's metrics (upstream names).
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let st = &self.stats;
        let q = self.queue.len();
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE scheduler_schedule_attempts_total counter");
        for (result, v) in [
            ("scheduled", st.scheduled),
            ("unschedulable", st.unschedulable),
            ("error", st.errors),
        ] {
            let _ = writeln!(
                out,
                "scheduler_schedule_attempts_total{{result=\"{result}\"}} {v}"
            );
        }
        let _ = writeln!(out, "# TYPE scheduler_pending_pods gauge");
        for (queue, v) in [
            ("active", q.active),
            ("backoff", q.backoff),
            ("unschedulable", q.unschedulable),
            ("gated", q.gated),
        ] {
            let _ = writeln!(out, "scheduler_pending_pods{{queue=\"{queue}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# TYPE scheduler_pod_scheduling_sli_duration_seconds histogram"
        );
        let mut cum = 0;
        for (i, le) in E2E_BUCKETS.iter().enumerate() {
            cum += st.e2e_buckets[i];
            let _ = writeln!(
                out,
                "scheduler_pod_scheduling_sli_duration_seconds_bucket{{le=\"{le}\"}} {cum}"
            );
        }
        cum += st.e2e_buckets[E2E_BUCKETS.len()];
        let _ = writeln!(
            out,
            "scheduler_pod_scheduling_sli_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            out,
            "scheduler_pod_scheduling_sli_duration_seconds_sum {}",
            st.e2e_sum
        );
        let _ = writeln!(
            out,
            "scheduler_pod_scheduling_sli_duration_seconds_count {cum}"
        );
        out
    }

    /// Number of assumed, unconfirmed pods.
    pub fn assumed_len(&self) -> usize {
        self.assumed.len()
    }

    fn partitions(&self) -> Vec<std::ops::Range<usize>> {
        let n = self.snap.nodes.len();
        let p = self.opts.parallelism.min(n.max(1));
        let chunk = n.div_ceil(p.max(1)).max(1);
        (0..p)
            .map(|i| (i * chunk).min(n)..((i + 1) * chunk).min(n))
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Runs one batch: pops up to `batch_size` pods, places what fits, returns one decision
    /// per popped pod (unschedulable and failed pods are requeued here).
    pub fn schedule_batch(&mut self, now: Instant) -> Vec<Decision> {
        let batch = self.queue.pop_batch(self.opts.batch_size, now);
        if batch.is_empty() {
            return Vec::new();
        }
        self.stats.batches += 1;
        let profiles = self.profiles.clone();

        // PreFilter/PreScore per pod. Coupled pods after the first are evaluated only when
        // their turn comes (earlier placements would invalidate the work). A pod whose
        // scheduling-relevant spec equals an earlier pod's of the batch (an equivalence
        // class: same template) is not evaluated on its own: it reuses the class's
        // evaluation, kept current by re-scoring only the nodes changed since.
        enum Slot<'a> {
            Ready(Eval<'a>),
            Lazy(&'a Framework),
            /// Shares the evaluation of the class whose first pod is at this slot index.
            Shared(usize, &'a Framework),
            Done(Decision),
        }
        let initial: HashMap<PodKey, Instant> = batch
            .iter()
            .map(|q| (q.pod.key.clone(), q.initial))
            .collect();
        let mut slots: Vec<(Arc<PodInfo>, Slot<'_>)> = Vec::with_capacity(batch.len());
        // Class representatives by `class_hash`, and whether a slot heads a class with members.
        let mut reps: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut heads: Vec<bool> = Vec::with_capacity(batch.len());
        for (pos, qp) in batch.iter().enumerate() {
            let pod = qp.pod.clone();
            heads.push(false);
            let Some(fw) = profiles
                .iter()
                .find(|f| f.scheduler_name == pod.scheduler_name)
            else {
                let message = format!("no profile for scheduler {:?}", pod.scheduler_name);
                slots.push((pod.clone(), Slot::Done(Decision::Error { pod, message })));
                continue;
            };
            let coupled = fw.plugins.iter().any(|p| p.couples(&pod, &self.snap));
            // Nominated pods and pods that reach other nodes are evaluated on their own.
            let shareable = !coupled
                && pod.nominated_node.is_none()
                && !self.nominated.contains_key(&pod.key)
                && !fw.plugins.iter().any(|p| p.reaches(&pod));
            let hash = if shareable { pod.class_hash() } else { 0 };
            if shareable
                && let Some(&rep) = reps.get(&hash).and_then(|v| {
                    v.iter().find(|&&r| {
                        slots[r].0.same_class(&pod) && matches!(slots[r].1, Slot::Ready(_))
                    })
                })
            {
                heads[rep] = true;
                slots.push((pod, Slot::Shared(rep, fw)));
                continue;
            }
            let slot = if coupled && pos > 0 {
                Slot::Lazy(fw)
            } else {
                match fw.prepare(&pod, &self.snap) {
                    Ok(pc) => Slot::Ready(Eval {
                        norm: fw.normalizing(&pc),
                        fw,
                        pod: pod.clone(),
                        pc,
                    }),
                    Err(st) => Slot::Done(self.prefilter_failure(pod.clone(), st, now)),
                }
            };
            if shareable && matches!(slot, Slot::Ready(_)) {
                reps.entry(hash).or_default().push(slots.len());
            }
            slots.push((pod, slot));
        }
        // Phase 1 for every Ready slot; results by slot index.
        let mut results: Vec<Option<(Vec<Part>, Scored)>> =
            (0..slots.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..slots.len())
            .filter(|&i| matches!(slots[i].1, Slot::Ready(_)))
            .collect();
        for round in 0..2 {
            let evals: Vec<&Eval<'_>> = pending
                .iter()
                .filter_map(|&i| match &slots[i].1 {
                    Slot::Ready(e) => Some(e),
                    _ => None,
                })
                .collect();
            for (&i, r) in pending.iter().zip(self.evaluate(&evals)) {
                results[i] = Some(r);
            }
            if round == 1 {
                break;
            }
            // A class whose first pod fits nowhere shares nothing: each of its pods needs
            // its own evaluation (its message, its preemption), done here in parallel.
            let empty: Vec<usize> = (0..slots.len())
                .filter(|&i| {
                    heads[i]
                        && results[i]
                            .as_ref()
                            .is_some_and(|(_, sc)| sc.entries.is_empty())
                })
                .collect();
            if empty.is_empty() {
                break;
            }
            pending.clear();
            for &r in &empty {
                heads[r] = false;
            }
            for (i, (pod, slot)) in slots.iter_mut().enumerate() {
                let Slot::Shared(rep, fw) = *slot else {
                    continue;
                };
                if !empty.contains(&rep) {
                    continue;
                }
                let pod = pod.clone();
                *slot = match fw.prepare(&pod, &self.snap) {
                    Ok(pc) => {
                        pending.push(i);
                        Slot::Ready(Eval {
                            norm: fw.normalizing(&pc),
                            fw,
                            pod,
                            pc,
                        })
                    }
                    Err(st) => Slot::Done(self.prefilter_failure(pod, st, now)),
                };
            }
        }

        let mut decisions = Vec::with_capacity(slots.len());
        // The nodes changed in this batch (placements, promised room), in stamp order: an
        // evaluation taken at stamp `at` re-checks only the nodes logged after `at`.
        let mut changed: Vec<(u64, u32)> = Vec::new();
        let mut stamp: u64 = 0;
        let mut last_assume: u64 = 0;
        let mut last_reach: u64 = 0;
        // The current evaluation of each class, by the slot index of its first pod.
        let mut classes: HashMap<usize, Evaluated<'_>> = HashMap::new();
        for (slot_idx, (pod, slot)) in slots.into_iter().enumerate() {
            let (fw, class, mut cur): (&Framework, Option<usize>, Option<Evaluated<'_>>) =
                match slot {
                    Slot::Done(d) => {
                        decisions.push(d);
                        continue;
                    }
                    Slot::Ready(e) => {
                        let (parts, scored) = results[slot_idx].take().unwrap_or_default();
                        let class = heads[slot_idx].then_some(slot_idx);
                        (e.fw, class, Some((e, parts, scored, 0)))
                    }
                    Slot::Lazy(fw) => (fw, None, None),
                    Slot::Shared(rep, fw) => {
                        let cur = classes.remove(&rep);
                        if cur.is_some() {
                            self.stats.shared += 1;
                        }
                        (fw, Some(rep), cur)
                    }
                };
            let mut forced = false;
            let mut rounds = 0;
            let decision = loop {
                rounds += 1;
                let stale = match &cur {
                    None => true,
                    Some((e, _, _, at)) => {
                        forced || last_reach > *at || (e.pc.coupled && last_assume > *at)
                    }
                };
                if stale {
                    if cur.is_some() {
                        self.stats.reevaluated += 1;
                    }
                    if let Some((_, parts, scored, _)) = cur.take() {
                        self.recycle(parts);
                        self.recycle_scored(scored);
                    }
                    match fw.prepare(&pod, &self.snap) {
                        Ok(pc) => {
                            let e = Eval {
                                norm: fw.normalizing(&pc),
                                fw,
                                pod: pod.clone(),
                                pc,
                            };
                            let (parts, scored) = self.evaluate(&[&e]).pop().unwrap_or_default();
                            cur = Some((e, parts, scored, stamp));
                        }
                        Err(st) => break self.prefilter_failure(pod.clone(), st, now),
                    }
                }
                let Some((e, parts, scored, at)) = &mut cur else {
                    unreachable!("evaluated above")
                };
                // Pick the best node, re-checking the nodes changed since the evaluation
                // and keeping what the re-check found (a class's later pods start from it).
                // The best is the root of a max tree over the entries: a pod of a class
                // costs O(changed nodes x log nodes), not a scan of every feasible node.
                if scored.tree.is_empty() {
                    scored.build_tree();
                }
                let mut dropped = false;
                let since = changed.partition_point(|&(s, _)| s <= *at);
                for &(_, node) in &changed[since..] {
                    let Ok(k) = scored.entries.binary_search_by_key(&node, |e| e.0) else {
                        continue;
                    };
                    let n = &self.snap.nodes[node as usize];
                    let score = if self.feasible_with_nominated(e, n, node as usize) {
                        fw.base_score(&e.pc, &pod, n, &self.snap) + scored.entries[k].2
                    } else {
                        dropped = true;
                        i64::MIN
                    };
                    scored.set(k, score);
                }
                let best = scored.best();
                *at = stamp;
                if dropped && scored.sensitive && rounds < 3 {
                    // A node dropping out can shift everyone's normalized score.
                    forced = true;
                    continue;
                }
                // The no-fit message, preemption and requeue need this pod's own evaluation
                // (a class's evaluation may be another pod's, or hold earlier drops).
                let own = e.pod.key == pod.key;
                if best.is_none() && (!own || dropped) && rounds < 4 {
                    forced = true;
                    continue;
                }
                let Some((_, node)) = best else {
                    break self.no_fit(e, parts, now);
                };
                let name = self.snap.nodes[node as usize].name.clone();
                let reserve = fw.run_reserve(&pod, &name);
                if !reserve.is_success() {
                    break self.rejected(pod.clone(), &reserve, now);
                }
                let wait = match fw.run_permit(&pod, &name) {
                    Status::Success | Status::Skip => None,
                    Status::Wait(d) => Some(d),
                    other => {
                        fw.run_unreserve(&pod, &name);
                        break self.rejected(pod.clone(), &other, now);
                    }
                };
                stamp += 1;
                last_assume = stamp;
                if e.pc.reaches {
                    last_reach = stamp;
                }
                changed.push((stamp, node));
                let mut placed = (*pod).clone();
                placed.node_name = Some(name.clone());
                self.snap.add_pod(node as usize, Arc::new(placed));
                self.assumed.insert(pod.key.clone(), None);
                if let Some((nominated_on, _)) = self.nominated.remove(&pod.key) {
                    if nominated_on != name {
                        // Room promised on another node is free again: a node may have
                        // become feasible, which re-scoring changed nodes cannot see.
                        last_reach = stamp;
                    }
                    self.sync_nominated();
                }
                self.queue.done(&pod.key);
                self.stats.scheduled += 1;
                if let Some(t) = initial.get(&pod.key) {
                    let secs = now.saturating_duration_since(*t).as_secs_f64();
                    let b = E2E_BUCKETS
                        .iter()
                        .position(|&u| secs <= u)
                        .unwrap_or(E2E_BUCKETS.len());
                    self.stats.e2e_buckets[b] += 1;
                    self.stats.e2e_sum += secs;
                }
                break Decision::Assumed {
                    pod: pod.clone(),
                    node: name,
                    permit_wait: wait,
                };
            };
            if let Decision::Unschedulable {
                nomination: Some((node, _)),
                ..
            } = &decision
                && let Some(i) = self.snap.node_index(node)
            {
                // The nominated pod's room is now promised: the node changed for the
                // pods after it.
                stamp += 1;
                changed.push((stamp, i as u32));
            }
            match (class, cur) {
                (Some(c), Some(ev)) => {
                    classes.insert(c, ev);
                }
                (_, Some((_, parts, scored, _))) => {
                    self.recycle(parts);
                    self.recycle_scored(scored);
                }
                (_, None) => {}
            }
            decisions.push(decision);
        }
        for (_, (_, parts, scored, _)) in classes {
            self.recycle(parts);
            self.recycle_scored(scored);
        }
        decisions
    }

    fn recycle_scored(&self, s: Scored) {
        let Scored {
            mut entries,
            mut tree,
            ..
        } = s;
        if let Ok(mut p) = self.entries_pool.lock()
            && p.len() < POOL_MAX
        {
            entries.clear();
            p.push(entries);
        }
        if let Ok(mut p) = self.tree_pool.lock()
            && p.len() < POOL_MAX
        {
            tree.clear();
            p.push(tree);
        }
    }

    fn recycle(&self, parts: Vec<Part>) {
        let Ok(mut pool) = self.pool.lock() else {
            return;
        };
        for mut p in parts {
            if pool.len() >= POOL_MAX {
                break;
            }
            p.feasible.clear();
            p.base.clear();
            p.raw.clear();
            p.reasons.clear();
            p.rejectors.clear();
            p.unresolvable.clear();
            pool.push(p);
        }
    }

    fn spare(&self, n: usize) -> Vec<Part> {
        match self.pool.lock() {
            Ok(mut pool) => {
                let k = pool.len().saturating_sub(n);
                pool.split_off(k)
            }
            Err(_) => Vec::new(),
        }
    }

    fn feasible_with_nominated(&self, e: &Eval<'_>, node: &NodeInfo, idx: usize) -> bool {
        if e.fw.filter_node(&e.pc, &e.pod, node, &self.snap).is_err() {
            return false;
        }
        match self.snap.with_nominated(idx, &e.pod) {
            Some(with) => e.fw.filter_node(&e.pc, &e.pod, &with, &self.snap).is_ok(),
            None => true,
        }
    }

    fn prefilter_failure(&mut self, pod: Arc<PodInfo>, st: Status, now: Instant) -> Decision {
        if let Status::Error(message) = st {
            self.stats.errors += 1;
            self.queue.error(&pod.key, now);
            return Decision::Error { pod, message };
        }
        let n = self.snap.nodes.len() as u32;
        let reasons: Vec<(Reason, u32)> = st.reasons().into_iter().map(|r| (r, n)).collect();
        self.stats.unschedulable += 1;
        self.queue.unschedulable(&pod.key, Vec::new(), now);
        Decision::Unschedulable {
            message: failure_message(n as usize, &reasons),
            pod,
            nomination: None,
        }
    }

    fn rejected(&mut self, pod: Arc<PodInfo>, st: &Status, now: Instant) -> Decision {
        if let Status::Error(message) = st {
            self.stats.errors += 1;
            self.queue.error(&pod.key, now);
            return Decision::Error {
                pod,
                message: message.clone(),
            };
        }
        self.stats.unschedulable += 1;
        self.queue.unschedulable(&pod.key, Vec::new(), now);
        let reasons: Vec<(Reason, u32)> = st.reasons().into_iter().map(|r| (r, 1)).collect();
        Decision::Unschedulable {
            message: failure_message(self.snap.nodes.len(), &reasons),
            pod,
            nomination: None,
        }
    }

    /// No node passed: build the message, run PostFilter (preemption), requeue.
    fn no_fit(&mut self, e: &Eval<'_>, parts: &[Part], now: Instant) -> Decision {
        let pod = e.pod.clone();
        let mut reasons = Vec::new();
        let mut rejectors: Vec<&'static str> = Vec::new();
        let mut unresolvable = Vec::new();
        for p in parts {
            for (r, n) in &p.reasons {
                add_reason(&mut reasons, r.clone(), *n);
            }
            for &slot in &p.rejectors {
                let name = e.fw.plugin(slot).name();
                if !rejectors.contains(&name) {
                    rejectors.push(name);
                }
            }
            unresolvable.extend_from_slice(&p.unresolvable);
        }
        if let Some(err) = reasons
            .iter()
            .find(|(r, _)| r.starts_with("internal error: "))
        {
            let message = err.0.to_string();
            self.stats.errors += 1;
            self.queue.error(&pod.key, now);
            return Decision::Error { pod, message };
        }
        let mut message = failure_message(self.snap.nodes.len(), &reasons);
        let mut nomination = None;
        unresolvable.sort_unstable();
        let rejected: Vec<(u32, bool)> = (0..self.snap.nodes.len() as u32)
            .map(|n| (n, unresolvable.binary_search(&n).is_ok()))
            .collect();
        for &slot in &e.fw.post_filter {
            let Some(pf) = e.fw.plugin(slot).as_post_filter() else {
                continue;
            };
            match pf.post_filter(e.fw, &pod, &self.snap, &rejected) {
                Ok(nom) => {
                    let node = self.snap.nodes[nom.node as usize].name.clone();
                    let mut p = (*pod).clone();
                    p.nominated_node = Some(node.clone());
                    self.nominated
                        .insert(pod.key.clone(), (node.clone(), Arc::new(p)));
                    self.sync_nominated();
                    nomination = Some((node, nom.victims));
                    break;
                }
                Err(st) => {
                    for r in st.reasons() {
                        message.push(' ');
                        message.push_str(&r);
                    }
                }
            }
        }
        self.stats.unschedulable += 1;
        self.queue.unschedulable(&pod.key, rejectors, now);
        Decision::Unschedulable {
            pod,
            message,
            nomination,
        }
    }

    fn evaluate(&self, evals: &[&Eval<'_>]) -> Vec<(Vec<Part>, Scored)> {
        let parts = self.partitions();
        let snap = &self.snap;
        let work = |range: std::ops::Range<usize>| -> Vec<Part> {
            let mut spare = self.spare(evals.len());
            evals
                .iter()
                .map(|e| eval_partition(e, snap, range.clone(), spare.pop().unwrap_or_default()))
                .collect()
        };
        let per_worker: Vec<Vec<Part>> = if parts.len() <= 1 || evals.is_empty() {
            parts.into_iter().map(work).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = parts
                    .into_iter()
                    .map(|r| s.spawn(move || work(r)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };
        let mut merged: Vec<Vec<Part>> = (0..evals.len()).map(|_| Vec::new()).collect();
        for worker in per_worker {
            for (i, p) in worker.into_iter().enumerate() {
                merged[i].push(p);
            }
        }
        // Phase 2: merge, normalize and weigh per pod, pods spread over the workers.
        let workers = self.opts.parallelism.min(evals.len()).max(1);
        let fin = |(e, parts): (&&Eval<'_>, Vec<Part>)| {
            let buf = self
                .entries_pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            let mut scored = finalize(e, &parts, snap, buf);
            scored.tree = self
                .tree_pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            (parts, scored)
        };
        if workers <= 1 {
            return evals.iter().zip(merged).map(fin).collect();
        }
        let mut items: Vec<(&&Eval<'_>, Vec<Part>)> = evals.iter().zip(merged).collect();
        let chunk = items.len().div_ceil(workers);
        let mut chunks = Vec::new();
        while !items.is_empty() {
            let rest = items.split_off(chunk.min(items.len()));
            chunks.push(std::mem::replace(&mut items, rest));
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|c| s.spawn(move || c.into_iter().map(fin).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

/// One pod against one partition of nodes.
fn eval_partition(
    e: &Eval<'_>,
    snap: &Snapshot,
    range: std::ops::Range<usize>,
    mut part: Part,
) -> Part {
    let nn = e.norm.len();
    part.feasible.reserve(range.len());
    part.base.reserve(range.len());
    part.raw.reserve(range.len() * nn);
    for i in range {
        let node = &snap.nodes[i];
        let mut res = e.fw.filter_node(&e.pc, &e.pod, node, snap);
        if res.is_ok() && !snap.nominated.is_empty() {
            // Room promised to nominated pods of at least this priority is not free.
            if let Some(with) = snap.with_nominated(i, &e.pod) {
                res = e.fw.filter_node(&e.pc, &e.pod, &with, snap);
            }
        }
        match res {
            Ok(()) => {
                part.feasible.push(i as u32);
                part.base.push(e.fw.base_score(&e.pc, &e.pod, node, snap));
                for &(slot, _) in &e.norm {
                    if let Some(sp) = e.fw.plugin(slot).as_score() {
                        part.raw
                            .push(sp.score(slot, &e.pc.state, &e.pod, node, snap));
                    }
                }
                debug_assert_eq!(part.raw.len(), part.feasible.len() * nn);
            }
            Err((slot, st)) => {
                if !part.rejectors.contains(&slot) {
                    part.rejectors.push(slot);
                }
                match st {
                    Status::UnschedulableAndUnresolvable(rs) => {
                        part.unresolvable.push(i as u32);
                        for r in rs {
                            add_reason(&mut part.reasons, r, 1);
                        }
                    }
                    Status::Unschedulable(rs) => {
                        for r in rs {
                            add_reason(&mut part.reasons, r, 1);
                        }
                    }
                    Status::Error(m) => add_reason(
                        &mut part.reasons,
                        Reason::Owned(format!("internal error: {m}")),
                        1,
                    ),
                    Status::Success | Status::Skip | Status::Wait(_) => {}
                }
            }
        }
    }
    part
}

#[derive(Debug, Default)]
struct Scored {
    /// (node, total weighted score, its normalized part), in node order; a score of
    /// `i64::MIN` marks a node that dropped out.
    entries: Vec<(u32, i64, i64)>,
    /// Whether a normalizing plugin saw different raw scores on different nodes (then a node
    /// dropping out can shift everyone's normalized score).
    sensitive: bool,
    /// Max tree over `entries` by (score, lowest node): leaves at `len..2 * len`, each inner
    /// slot `i` the better of `2i` and `2i + 1`, the best of all at slot 1. Empty until the
    /// first pick (`build_tree`).
    tree: Vec<(i64, u32)>,
}

/// The better of two (score, node) candidates: higher score, then lower node.
#[inline]
fn better(a: (i64, u32), b: (i64, u32)) -> (i64, u32) {
    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

impl Scored {
    /// Builds the max tree from `entries`.
    fn build_tree(&mut self) {
        let m = self.entries.len();
        self.tree.clear();
        self.tree.resize(2 * m, (i64::MIN, u32::MAX));
        for (k, &(node, score, _)) in self.entries.iter().enumerate() {
            self.tree[m + k] = (score, node);
        }
        for i in (1..m).rev() {
            self.tree[i] = better(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// Sets entry `k`'s score and updates the tree.
    fn set(&mut self, k: usize, score: i64) {
        self.entries[k].1 = score;
        let m = self.entries.len();
        let mut i = m + k;
        self.tree[i].0 = score;
        while i > 1 {
            i /= 2;
            self.tree[i] = better(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// The best (score, node), None when every node dropped out.
    fn best(&self) -> Option<(i64, u32)> {
        let b = *self.tree.get(1)?;
        (b.0 != i64::MIN).then_some(b)
    }
}

/// Phase 2 for one pod: merge the partitions, normalize, weigh.
fn finalize(
    e: &Eval<'_>,
    parts: &[Part],
    snap: &Snapshot,
    mut entries: Vec<(u32, i64, i64)>,
) -> Scored {
    let total: usize = parts.iter().map(|p| p.feasible.len()).sum();
    entries.clear();
    entries.reserve(total);
    for p in parts {
        for (k, &n) in p.feasible.iter().enumerate() {
            entries.push((n, p.base[k], 0));
        }
    }
    let nn = e.norm.len();
    let mut sensitive = false;
    if nn > 0 && total > 0 {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<NodeScore>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut scores: Vec<NodeScore> = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
        scores.reserve(total);
        for (j, &(slot, w)) in e.norm.iter().enumerate() {
            scores.clear();
            for p in parts {
                for (k, &n) in p.feasible.iter().enumerate() {
                    scores.push(NodeScore {
                        node: n,
                        score: p.raw[k * nn + j],
                    });
                }
            }
            let first = scores[0].score;
            if scores.iter().any(|s| s.score != first) {
                sensitive = true;
            }
            if let Some(sp) = e.fw.plugin(slot).as_score() {
                sp.normalize(slot, &e.pc.state, &e.pod, snap, &mut scores);
            }
            for (entry, s) in entries.iter_mut().zip(&scores) {
                entry.2 += w * s.score;
            }
        }
        for entry in &mut entries {
            entry.1 += entry.2;
        }
        scores.clear();
        SCRATCH.with(|c| *c.borrow_mut() = scores);
    }
    Scored {
        entries,
        sensitive,
        tree: Vec::new(),
    }
}

/// The simple sequential scorer: final (normalized, weighted) scores of `nodes` for a pod.
/// Used by tests and as the reference the batch cycle is checked against.
pub fn score_nodes(
    fw: &Framework,
    pc: &PodCycle,
    pod: &PodInfo,
    snap: &Snapshot,
    nodes: &[u32],
) -> Vec<i64> {
    let mut totals: Vec<i64> = nodes
        .iter()
        .map(|&n| fw.base_score(pc, pod, &snap.nodes[n as usize], snap))
        .collect();
    for (slot, w) in fw.normalizing(pc) {
        let Some(sp) = fw.plugin(slot).as_score() else {
            continue;
        };
        let mut scores: Vec<NodeScore> = nodes
            .iter()
            .map(|&n| NodeScore {
                node: n,
                score: sp.score(slot, &pc.state, pod, &snap.nodes[n as usize], snap),
            })
            .collect();
        sp.normalize(slot, &pc.state, pod, snap, &mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += w * s.score;
        }
    }
    totals
}

/// A plain sequential scheduler for one pod: filter every node, score the feasible ones,
/// return (best score, node index) with ties to the lowest index. None when nothing fits.
pub fn reference_pick(fw: &Framework, pod: &PodInfo, snap: &Snapshot) -> Option<(i64, u32)> {
    let pc = fw.prepare(pod, snap).ok()?;
    let feasible: Vec<u32> = (0..snap.nodes.len() as u32)
        .filter(|&n| {
            fw.filter_node(&pc, pod, &snap.nodes[n as usize], snap)
                .is_ok()
        })
        .collect();
    let scores = score_nodes(fw, &pc, pod, snap, &feasible);
    let mut best: Option<(i64, u32)> = None;
    for (&n, &s) in feasible.iter().zip(&scores) {
        if best.is_none_or(|(b, bn)| s > b || (s == b && n < bn)) {
            best = Some((s, n));
        }
    }
    best
}
