//! The scheduling framework: one trait per extension point, the per-cycle state, and the
//! `Framework` (one profile) that runs the enabled plugins in order.
//!
//! Contracts, as upstream's `framework/interface.go`:
//! - `PreFilter` computes per-pod data once per cycle into `CycleState`; `Filter` and `Score`
//!   read it for every node and must be pure over the `NodeInfo` they are handed (preemption
//!   hands modified copies), never reach into the snapshot for the node itself.
//! - A plugin returning `Status::Skip` from PreFilter (PreScore) is not called at Filter
//!   (Score) for that pod in that cycle.
//! - `Unreserve` must be idempotent.
//! - The framework alone owns parallelism; plugins are `Send + Sync` and hold no per-cycle
//!   mutable state of their own.

use std::any::Any;
use std::sync::Arc;

use crate::model::{NodeInfo, PodInfo, Snapshot};
use crate::status::Status;

/// The highest score a plugin gives a node after normalization.
pub const MAX_NODE_SCORE: i64 = 100;

/// A node's score from one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeScore {
    /// Index of the node in the snapshot.
    pub node: u32,
    /// The score.
    pub score: i64,
}

/// Per-pod, per-cycle state: one slot per plugin of the profile, written in PreFilter/PreScore
/// and read by Filter/Score on every node. Cloning is cheap (slots are shared); a plugin
/// that changes its slot in `PreFilterPlugin::add_pod`/`remove_pod` writes a new value, so
/// the state of the cycle it was cloned from is untouched (upstream clones `CycleState` for
/// the preemption dry run the same way).
#[derive(Default, Clone)]
pub struct CycleState {
    slots: Vec<Option<Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl CycleState {
    /// State for a profile of `n` plugins.
    pub fn new(n: usize) -> Self {
        CycleState {
            slots: (0..n).map(|_| None).collect(),
        }
    }

    /// Stores a plugin's data.
    pub fn write<T: Any + Send + Sync>(&mut self, slot: usize, v: T) {
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(Arc::new(v));
    }

    /// Reads a plugin's data.
    pub fn read<T: Any>(&self, slot: usize) -> Option<&T> {
        self.slots.get(slot)?.as_deref()?.downcast_ref()
    }
}

/// What every plugin is: a name, and which extension points it implements. Each `as_*`
/// returns the plugin as that extension point, or None.
pub trait Plugin: Send + Sync {
    /// The upstream name ("NodeResourcesFit").
    fn name(&self) -> &'static str;
    /// The PreFilter face.
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        None
    }
    /// The Filter face.
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        None
    }
    /// The PostFilter face.
    fn as_post_filter(&self) -> Option<&dyn PostFilterPlugin> {
        None
    }
    /// The PreScore face.
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        None
    }
    /// The Score face.
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        None
    }
    /// The Reserve face.
    fn as_reserve(&self) -> Option<&dyn ReservePlugin> {
        None
    }
    /// The Permit face.
    fn as_permit(&self) -> Option<&dyn PermitPlugin> {
        None
    }
    /// The PreBind face.
    fn as_pre_bind(&self) -> Option<&dyn PreBindPlugin> {
        None
    }
    /// The Bind face.
    fn as_bind(&self) -> Option<&dyn BindPlugin> {
        None
    }
    /// Whether this plugin's verdict for `pod` on one node can change when another pod lands
    /// on a *different* node (pod affinity, spread, RWOP claims). The batch cycle re-evaluates
    /// such pods against the state left by the pods placed before them.
    fn couples(&self, _pod: &PodInfo, _snap: &Snapshot) -> bool {
        false
    }
    /// Whether placing `pod` can change this plugin's verdict for *other* pods on nodes other
    /// than the one it lands on (a pod with affinity terms).
    fn reaches(&self, _pod: &PodInfo) -> bool {
        false
    }
    /// Which cluster events can make a pod this plugin rejected schedulable again
    /// (upstream `EnqueueExtensions`).
    fn events(&self) -> &'static [crate::queue::ClusterEvent] {
        crate::queue::ALL_EVENTS
    }
}

/// Runs once per pod per cycle before Filter; computes what Filter needs into the state.
pub trait PreFilterPlugin: Send + Sync {
    /// Returns `Skip` when Filter has nothing to check for this pod, a rejection to stop the
    /// cycle for the pod (no node can fit).
    fn pre_filter(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status;
    /// Whether the state this plugin writes depends on the pods of *other* nodes, so that
    /// `add_pod`/`remove_pod` must be run when a dry run (preemption, nominated pods)
    /// changes a node (upstream `PreFilterExtensions` returning non-nil).
    fn has_extensions(&self) -> bool {
        false
    }
    /// Updates this plugin's state as if `other` were added to `node` (upstream
    /// `PreFilterExtensions.AddPod`). `node` is the node as it is after the addition.
    fn add_pod(
        &self,
        _slot: usize,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
        _snap: &Snapshot,
    ) -> Status {
        Status::Success
    }
    /// Updates this plugin's state as if `other` were removed from `node` (upstream
    /// `PreFilterExtensions.RemovePod`).
    fn remove_pod(
        &self,
        _slot: usize,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
        _snap: &Snapshot,
    ) -> Status {
        Status::Success
    }
}

/// Decides whether one node can host the pod. Pure over `node`.
pub trait FilterPlugin: Send + Sync {
    /// Success, or a rejection with upstream's reason.
    fn filter(
        &self,
        slot: usize,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Status;
}

/// Runs when no node passed Filter (preemption).
pub trait PostFilterPlugin: Send + Sync {
    /// Returns the nominated node and the victims to delete, or why nothing helps.
    fn post_filter(
        &self,
        fw: &Framework,
        pod: &PodInfo,
        snap: &Snapshot,
        rejected: &[(u32, bool)],
    ) -> Result<Nomination, Status>;
}

/// A preemption outcome: the node the pod is nominated to and the pods to evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nomination {
    /// Index of the node.
    pub node: u32,
    /// Pods to evict, by key.
    pub victims: Vec<crate::model::PodKey>,
}

/// Runs once per pod per cycle on the feasible nodes before Score.
pub trait PreScorePlugin: Send + Sync {
    /// Returns `Skip` when Score has nothing to say for this pod.
    fn pre_score(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status;
}

/// Ranks a feasible node.
pub trait ScorePlugin: Send + Sync {
    /// The raw score of one node. Pure over `node`.
    fn score(
        &self,
        slot: usize,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> i64;
    /// Whether `normalize` must see all the feasible nodes' raw scores.
    fn normalizes(&self) -> bool {
        false
    }
    /// Maps the raw scores of all feasible nodes to 0..=MAX_NODE_SCORE.
    /// `scores` holds exactly the feasible nodes; `snap` lets a plugin see them (upstream
    /// hands PreScore the filtered nodes; here normalization is where they are known).
    fn normalize(
        &self,
        _slot: usize,
        _state: &CycleState,
        _pod: &PodInfo,
        _snap: &Snapshot,
        _scores: &mut [NodeScore],
    ) {
    }
}

/// Reserves/unreserves what the pod needs on its node once it is assumed.
pub trait ReservePlugin: Send + Sync {
    /// Reserve for the pod on `node`; a failure unreserves everything and requeues the pod.
    fn reserve(&self, pod: &PodInfo, node: &str) -> Status;
    /// Undo `reserve`. Must be idempotent.
    fn unreserve(&self, pod: &PodInfo, node: &str);
}

/// Approves, rejects or delays the binding.
pub trait PermitPlugin: Send + Sync {
    /// Success, a rejection, or `Wait(timeout)`.
    fn permit(&self, pod: &PodInfo, node: &str) -> Status;
}

/// Prepares the binding (volumes...).
pub trait PreBindPlugin: Send + Sync {
    /// Success or an error that unreserves and requeues.
    fn pre_bind(&self, pod: &PodInfo, node: &str) -> Status;
}

/// Binds the pod. `Skip` passes to the next bind plugin.
pub trait BindPlugin: Send + Sync {
    /// Success, Skip, or an error.
    fn bind(&self, pod: &PodInfo, node: &str) -> Status;
}

/// One enabled plugin and its score weight.
#[derive(Clone)]
pub struct Enabled {
    /// The plugin.
    pub plugin: Arc<dyn Plugin>,
    /// Its state slot.
    pub slot: usize,
    /// Its score weight (0 when not a score plugin).
    pub weight: i64,
}

/// One profile: the plugins enabled at each extension point, in order.
#[derive(Clone, Default)]
pub struct Framework {
    /// `schedulerName` this profile serves.
    pub scheduler_name: String,
    /// All plugins of the profile (a plugin's slot is its index here).
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Enabled at PreFilter.
    pub pre_filter: Vec<usize>,
    /// Enabled at Filter.
    pub filter: Vec<usize>,
    /// Enabled at PostFilter.
    pub post_filter: Vec<usize>,
    /// Enabled at PreScore.
    pub pre_score: Vec<usize>,
    /// Enabled at Score, with weights.
    pub score: Vec<(usize, i64)>,
    /// Enabled at Reserve.
    pub reserve: Vec<usize>,
    /// Enabled at Permit.
    pub permit: Vec<usize>,
    /// Enabled at PreBind.
    pub pre_bind: Vec<usize>,
    /// Enabled at Bind.
    pub bind: Vec<usize>,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[usize]| {
            v.iter()
                .map(|&i| self.plugins[i].name())
                .collect::<Vec<_>>()
        };
        f.debug_struct("Framework")
            .field("scheduler_name", &self.scheduler_name)
            .field("filter", &names(&self.filter))
            .field(
                "score",
                &self
                    .score
                    .iter()
                    .map(|&(i, w)| (self.plugins[i].name(), w))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What PreFilter/PreScore left for one pod: its state and the plugins active for it.
#[derive(Debug, Clone)]
pub struct PodCycle {
    /// Per-plugin state.
    pub state: CycleState,
    /// Filter plugins to run (slot indices), PreFilter-skipped ones removed.
    pub filters: Vec<usize>,
    /// Score plugins to run (slot, weight), PreScore-skipped ones removed.
    pub scores: Vec<(usize, i64)>,
    /// Whether the pod's verdicts depend on where other pods land (see `Plugin::couples`).
    pub coupled: bool,
    /// Whether placing the pod changes other pods' verdicts (see `Plugin::reaches`).
    pub reaches: bool,
}

impl Framework {
    /// The plugin in a slot.
    pub fn plugin(&self, slot: usize) -> &dyn Plugin {
        &*self.plugins[slot]
    }

    /// Runs PreFilter and PreScore for a pod. Err is the PreFilter rejection.
    pub fn prepare(&self, pod: &PodInfo, snap: &Snapshot) -> Result<PodCycle, Status> {
        let mut state = CycleState::new(self.plugins.len());
        let mut skipped = Vec::new();
        for &i in &self.pre_filter {
            let Some(pf) = self.plugins[i].as_pre_filter() else {
                continue;
            };
            match pf.pre_filter(i, &mut state, pod, snap) {
                Status::Success => {}
                Status::Skip => skipped.push(i),
                other => return Err(other),
            }
        }
        let filters = self
            .filter
            .iter()
            .copied()
            .filter(|i| !skipped.contains(i))
            .collect();
        let mut score_skipped = Vec::new();
        for &i in &self.pre_score {
            let Some(ps) = self.plugins[i].as_pre_score() else {
                continue;
            };
            match ps.pre_score(i, &mut state, pod, snap) {
                Status::Success => {}
                Status::Skip => score_skipped.push(i),
                other => return Err(other),
            }
        }
        let scores = self
            .score
            .iter()
            .copied()
            .filter(|(i, _)| !score_skipped.contains(i))
            .collect();
        let coupled = self.plugins.iter().any(|p| p.couples(pod, snap));
        let reaches = self.plugins.iter().any(|p| p.reaches(pod));
        Ok(PodCycle {
            state,
            filters,
            scores,
            coupled,
            reaches,
        })
    }

    /// Whether any of the pod's active PreFilter plugins keeps state that `add_pod` /
    /// `remove_pod` must update when a dry run changes a node.
    pub fn has_pre_filter_extensions(&self, pc: &PodCycle) -> bool {
        pc.filters.iter().any(|&i| {
            self.pre_filter.contains(&i)
                && self.plugins[i]
                    .as_pre_filter()
                    .is_some_and(|p| p.has_extensions())
        })
    }

    /// Runs every active PreFilter plugin's `add_pod` (upstream
    /// `RunPreFilterExtensionAddPod`): `other` was added to `node`.
    pub fn run_pre_filter_add_pod(
        &self,
        pc: &mut PodCycle,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Status {
        self.run_pre_filter_ext(pc, pod, other, node, snap, true)
    }

    /// Runs every active PreFilter plugin's `remove_pod` (upstream
    /// `RunPreFilterExtensionRemovePod`): `other` was removed from `node`.
    pub fn run_pre_filter_remove_pod(
        &self,
        pc: &mut PodCycle,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Status {
        self.run_pre_filter_ext(pc, pod, other, node, snap, false)
    }

    fn run_pre_filter_ext(
        &self,
        pc: &mut PodCycle,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
        add: bool,
    ) -> Status {
        for &i in &self.pre_filter {
            // Plugins skipped at PreFilter have no state and are not run at Filter.
            if !pc.filters.contains(&i) {
                continue;
            }
            let Some(pf) = self.plugins[i].as_pre_filter() else {
                continue;
            };
            if !pf.has_extensions() {
                continue;
            }
            let s = if add {
                pf.add_pod(i, &mut pc.state, pod, other, node, snap)
            } else {
                pf.remove_pod(i, &mut pc.state, pod, other, node, snap)
            };
            if !s.is_success() {
                return s;
            }
        }
        Status::Success
    }

    /// Runs the pod's filters on one node; stops at the first rejection.
    #[inline]
    pub fn run_filters(
        &self,
        pc: &PodCycle,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Status {
        for &i in &pc.filters {
            if let Some(f) = self.plugins[i].as_filter() {
                let s = f.filter(i, &pc.state, pod, node, snap);
                if !s.is_success() {
                    return s;
                }
            }
        }
        Status::Success
    }

    /// Runs the pod's filters on one node; on rejection returns the rejecting plugin's slot.
    #[inline]
    pub fn filter_node(
        &self,
        pc: &PodCycle,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Result<(), (usize, Status)> {
        for &i in &pc.filters {
            if let Some(f) = self.plugins[i].as_filter() {
                let s = f.filter(i, &pc.state, pod, node, snap);
                if !s.is_success() {
                    return Err((i, s));
                }
            }
        }
        Ok(())
    }

    /// The weighted sum of the scores that need no normalization, for one node.
    #[inline]
    pub fn base_score(
        &self,
        pc: &PodCycle,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> i64 {
        let mut total = 0;
        for &(i, w) in &pc.scores {
            if let Some(s) = self.plugins[i].as_score()
                && !s.normalizes()
            {
                total += w * s.score(i, &pc.state, pod, node, snap);
            }
        }
        total
    }

    /// The score plugins of this pod that normalize, in order.
    pub fn normalizing(&self, pc: &PodCycle) -> Vec<(usize, i64)> {
        pc.scores
            .iter()
            .copied()
            .filter(|&(i, _)| self.plugins[i].as_score().is_some_and(|s| s.normalizes()))
            .collect()
    }

    /// Runs the Reserve plugins; on failure unreserves those already run.
    pub fn run_reserve(&self, pod: &PodInfo, node: &str) -> Status {
        for (n, &i) in self.reserve.iter().enumerate() {
            if let Some(r) = self.plugins[i].as_reserve() {
                let s = r.reserve(pod, node);
                if !s.is_success() {
                    for &j in self.reserve[..=n].iter().rev() {
                        if let Some(r) = self.plugins[j].as_reserve() {
                            r.unreserve(pod, node);
                        }
                    }
                    return s;
                }
            }
        }
        Status::Success
    }

    /// Runs Unreserve on every Reserve plugin, in reverse order.
    pub fn run_unreserve(&self, pod: &PodInfo, node: &str) {
        for &i in self.reserve.iter().rev() {
            if let Some(r) = self.plugins[i].as_reserve() {
                r.unreserve(pod, node);
            }
        }
    }

    /// Runs the Permit plugins: the first non-success wins (`Wait` holds the longest timeout).
    pub fn run_permit(&self, pod: &PodInfo, node: &str) -> Status {
        let mut wait = None;
        for &i in &self.permit {
            if let Some(p) = self.plugins[i].as_permit() {
                match p.permit(pod, node) {
                    Status::Success | Status::Skip => {}
                    Status::Wait(d) => {
                        wait = Some(wait.map_or(d, |w: std::time::Duration| w.max(d)))
                    }
                    other => return other,
                }
            }
        }
        wait.map_or(Status::Success, Status::Wait)
    }

    /// Runs the PreBind plugins.
    pub fn run_pre_bind(&self, pod: &PodInfo, node: &str) -> Status {
        for &i in &self.pre_bind {
            if let Some(p) = self.plugins[i].as_pre_bind() {
                let s = p.pre_bind(pod, node);
                if !s.is_success() {
                    return s;
                }
            }
        }
        Status::Success
    }

    /// Runs the Bind plugins until one does not Skip. Success when none is enabled (the shell
    /// then binds through the API itself).
    pub fn run_bind(&self, pod: &PodInfo, node: &str) -> Status {
        for &i in &self.bind {
            if let Some(b) = self.plugins[i].as_bind() {
                match b.bind(pod, node) {
                    Status::Skip => continue,
                    s => return s,
                }
            }
        }
        Status::Success
    }
}

/// Upstream's `helper.DefaultNormalizeScore`: scale to 0..=max by the highest score, reversed
/// when asked.
pub fn default_normalize(max_priority: i64, reverse: bool, scores: &mut [NodeScore]) {
    let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
    if max == 0 {
        if reverse {
            for s in scores.iter_mut() {
                s.score = max_priority;
            }
        }
        return;
    }
    for s in scores.iter_mut() {
        let mut v = max_priority * s.score / max;
        if reverse {
            v = max_priority - v;
        }
        s.score = v;
    }
}
