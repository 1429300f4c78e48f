//! Deployment reconciler (sans-IO), as upstream's `pkg/controller/deployment` (read, not
//! copied): a Deployment owns ReplicaSets, one per pod template (named
//! `<deployment>-<pod-template-hash>`); rolling updates move replicas from the old ones to the
//! new one within `maxSurge`/`maxUnavailable`; Recreate scales the old ones to zero and waits
//! for their pods to end before scaling the new one up; a change of `replicas` during a
//! rollout is spread proportionally over the active ReplicaSets.
//!
//! [`plan`] is one pass of upstream's `syncDeployment`: like upstream, it stops after the
//! first step that scaled something and leaves the next step to the next reconcile (which the
//! resulting ReplicaSet events trigger). Revisions live in the ReplicaSets'
//! `deployment.kubernetes.io/revision` annotation and are mirrored on the Deployment;
//! `kubectl rollout undo` copies an old template back, which makes that ReplicaSet the new one
//! with the next revision.
//!
//! The shell owes the core, per reconcile of a Deployment key:
//! 1. pass the cached Deployment, the cached ReplicaSets it controls (controller ref uid) and,
//!    for Recreate, the cached pods those ReplicaSets control;
//! 2. apply [`Write`]s in order, stopping at the first failure (requeue with backoff); a
//!    409 on `CreateReplicaSet` is a hash collision unless the existing ReplicaSet is ours;
//! 3. requeue after `plan.requeue_after` (progress deadline checks).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::util::{
    InvalidSelector, controller_ref, fnv32a, is_deleting, new_controller_ref, pod_phase,
    safe_encode, scaled_value,
};

/// The revision of a ReplicaSet (and, mirrored, of its Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had (comma-separated).
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled this ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `replicas + maxSurge` of the Deployment when it last scaled this ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label (and name suffix) that ties pods to their template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// A write the plan wants, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create this ReplicaSet.
    CreateReplicaSet(ReplicaSet),
    /// Replace this ReplicaSet (carries the resourceVersion it was read at).
    UpdateReplicaSet(ReplicaSet),
    /// Delete a ReplicaSet of an old revision (history limit).
    DeleteReplicaSet {
        /// Name.
        name: String,
        /// Uid precondition.
        uid: String,
    },
    /// Set the Deployment's `deployment.kubernetes.io/revision` annotation.
    SetRevision(String),
    /// Replace the Deployment's status.
    UpdateStatus(DeploymentStatus),
}

/// What one reconcile wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Writes in order.
    pub writes: Vec<Write>,
    /// Reconcile again after this long (progress deadline).
    pub requeue_after: Option<Duration>,
}

/// Why a Deployment cannot be planned (not retryable until the object changes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Bad selector or int-or-percent.
    #[error(transparent)]
    Invalid(#[from] InvalidSelector),
}

/// Upstream's `ResolveFenceposts`: (maxSurge rounded up, maxUnavailable rounded down) of
/// `desired`; both zero would deadlock, so maxUnavailable becomes 1.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), InvalidSelector> {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&quarter), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&quarter), desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `(maxSurge, maxUnavailable)` of a Deployment (0, 0 for Recreate), maxUnavailable capped
/// at replicas, as upstream's `MaxSurge` and `MaxUnavailable`.
pub fn surge_and_unavailable(d: &Deployment) -> Result<(i32, i32), InvalidSelector> {
    if is_recreate(d) {
        return Ok((0, 0));
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let replicas = d_replicas(d);
    let (s, u) = resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
    )?;
    let u = if replicas == 0 { 0 } else { u.min(replicas) };
    Ok((s, u))
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// The revision number of an object (0 when absent or malformed).
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn annotation_i32(meta: &ObjectMeta, key: &str) -> Option<i32> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
}

fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(POD_TEMPLATE_HASH);
        }
        if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            m.labels = None;
        }
    }
    t
}

/// Upstream's `EqualIgnoreHash`.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The pod-template-hash of a template and collision count: FNV-1a over its JSON and the
/// count, encoded as upstream's `SafeEncodeString` (same shape, not the same value).
pub fn compute_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

fn get_cond<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == type_)
}

fn new_cond(
    type_: &str,
    status: &str,
    reason: &str,
    msg: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(msg),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Upstream's `SetDeploymentCondition`: no-op for the same status and reason; keeps the
/// transition time while the status holds.
fn set_cond(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_cond(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_cond(s, &c.type_);
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

fn remove_cond(s: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
    }
}

fn progress_deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
        .map(i64::from)
}

/// Upstream's `DeploymentComplete`.
pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = d_replicas(d);
    s.updated_replicas.unwrap_or(0) == r
        && s.replicas.unwrap_or(0) == r
        && s.available_replicas.unwrap_or(0) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
    ta.cmp(&tb)
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

struct Planner<'a> {
    d: &'a Deployment,
    replicas: i32,
    surge: i32,
    unavailable: i32,
    status: DeploymentStatus,
    revision: Option<String>,
    rss: Vec<ReplicaSet>,
    new_idx: Option<usize>,
    created: bool,
    dirty: BTreeSet<usize>,
    deletes: Vec<(String, String)>,
    now: Timestamp,
}

/// Plans one reconcile of `d` given the ReplicaSets it controls and (for Recreate) their pods.
pub fn plan<'a>(
    d: &Deployment,
    rss: impl IntoIterator<Item = &'a ReplicaSet>,
    pods: impl IntoIterator<Item = &'a Pod>,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    let (surge, unavailable) = surge_and_unavailable(d)?;
    let mut rss: Vec<ReplicaSet> = rss.into_iter().cloned().collect();
    rss.sort_by(by_creation);
    let mut p = Planner {
        d,
        replicas: d_replicas(d),
        surge,
        unavailable,
        status: d.status.clone().unwrap_or_default(),
        revision: d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .cloned(),
        rss,
        new_idx: None,
        created: false,
        dirty: BTreeSet::new(),
        deletes: Vec::new(),
        now,
    };
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if is_deleting(&d.metadata) {
        p.find_new();
        p.sync_status(false);
        return Ok(p.finish());
    }
    p.check_paused_conditions(paused);
    if paused || p.is_scaling_event() {
        p.sync_revision(false);
        p.scale()?;
        if paused {
            p.cleanup();
        }
        p.sync_status(false);
        return Ok(p.finish());
    }
    if is_recreate(d) {
        let uids: Vec<String> = p
            .rss
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        let pods: Vec<&Pod> = pods
            .into_iter()
            .filter(|pod| controller_ref(&pod.metadata).is_some_and(|r| uids.contains(&r.uid)))
            .collect();
        p.rollout_recreate(&pods);
    } else {
        p.rollout_rolling();
    }
    Ok(p.finish())
}

impl Planner<'_> {
    fn old_idx(&self) -> Vec<usize> {
        (0..self.rss.len())
            .filter(|i| Some(*i) != self.new_idx)
            .collect()
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|i| spec_replicas(&self.rss[*i]) > 0)
            .collect()
    }

    fn all_idx(&self) -> Vec<usize> {
        (0..self.rss.len()).collect()
    }

    fn sum_spec(&self, idx: &[usize]) -> i32 {
        idx.iter().map(|i| spec_replicas(&self.rss[*i])).sum()
    }

    fn sum_available(&self, idx: &[usize]) -> i32 {
        idx.iter().map(|i| status_of(&self.rss[*i]).2).sum()
    }

    fn template(&self) -> PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    /// Upstream's `FindNewReplicaSet`: the oldest ReplicaSet with our template.
    fn find_new(&mut self) {
        let t = self.template();
        self.new_idx = self.rss.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|rt| equal_ignore_hash(rt, &t))
        });
    }

    fn is_scaling_event(&mut self) -> bool {
        self.find_new();
        self.active(&self.all_idx()).iter().any(|i| {
            annotation_i32(&self.rss[*i].metadata, DESIRED_REPLICAS)
                .is_some_and(|desired| desired != self.replicas)
        })
    }

    fn check_paused_conditions(&mut self, paused: bool) {
        if progress_deadline(self.d).is_none() {
            return;
        }
        let cur = get_cond(&self.status, "Progressing").and_then(|c| c.reason.clone());
        if cur.as_deref() == Some("ProgressDeadlineExceeded") {
            return;
        }
        let paused_cond = cur.as_deref() == Some("DeploymentPaused");
        if paused && !paused_cond {
            let c = new_cond(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                self.now,
            );
            set_cond(&mut self.status, c);
        } else if !paused && paused_cond {
            let c = new_cond(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                self.now,
            );
            set_cond(&mut self.status, c);
        }
    }

    /// Sets the replica annotations; whether they changed.
    fn set_replicas_annotations(&mut self, idx: usize) -> bool {
        let desired = self.replicas.to_string();
        let max = (self.replicas + self.surge).to_string();
        let a = self.rss[idx]
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
            if a.get(k) != Some(&v) {
                a.insert(k.to_string(), v);
                changed = true;
            }
        }
        changed
    }

    /// Upstream's `SetNewReplicaSetAnnotations`; whether anything changed.
    fn set_new_rs_annotations(&mut self, idx: usize, new_revision: i64, exists: bool) -> bool {
        let d_ann = self.d.metadata.annotations.clone().unwrap_or_default();
        let a = self.rss[idx]
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in d_ann {
            if SKIPPED_ANNOTATIONS.contains(&k.as_str()) || a.get(&k) == Some(&v) {
                continue;
            }
            a.insert(k, v);
            changed = true;
        }
        let old: Option<String> = a.get(REVISION).cloned();
        let old_n: i64 = old.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        if old_n < new_revision {
            a.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if let Some(o) = old.filter(|o| !o.is_empty()) {
                let h = match a.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{o}"),
                    _ => o,
                };
                a.insert(REVISION_HISTORY.into(), h);
            }
        }
        if !exists && self.set_replicas_annotations(idx) {
            changed = true;
        }
        changed
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision` / `getNewReplicaSet`.
    fn sync_revision(&mut self, create: bool) {
        self.find_new();
        let max_old = self
            .old_idx()
            .iter()
            .map(|i| revision_of(&self.rss[*i].metadata))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let has_deadline = progress_deadline(self.d).is_some();
        if let Some(idx) = self.new_idx {
            let mut changed = self.set_new_rs_annotations(idx, new_revision, true);
            let mrs = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if let Some(spec) = self.rss[idx].spec.as_mut()
                && spec.min_ready_seconds.unwrap_or(0) != mrs.unwrap_or(0)
            {
                spec.min_ready_seconds = mrs;
                changed = true;
            }
            if changed {
                self.dirty.insert(idx);
            }
            let rev = self.rss[idx]
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .cloned();
            if rev.is_some() {
                self.revision = rev;
            }
            if has_deadline && get_cond(&self.status, "Progressing").is_none() {
                let name = self.rss[idx].metadata.name.clone().unwrap_or_default();
                let c = new_cond(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set {name:?}"),
                    self.now,
                );
                set_cond(&mut self.status, c);
            }
            return;
        }
        if !create {
            return;
        }
        let hash = compute_hash(&self.template(), self.status.collision_count);
        let name = format!("{}-{hash}", self.d.metadata.name.as_deref().unwrap_or(""));
        if self
            .rss
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(name.as_str()))
        {
            // Ours, with another template: a hash collision. Bump the count and retry.
            self.status.collision_count = Some(self.status.collision_count.unwrap_or(0) + 1);
            return;
        }
        let mut template = self.template();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![new_controller_ref(
                    "apps/v1",
                    "Deployment",
                    &self.d.metadata,
                )]),
                creation_timestamp: Some(Time(self.now)),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        self.rss.push(rs);
        let idx = self.rss.len() - 1;
        self.new_idx = Some(idx);
        self.created = true;
        let n = self.new_rs_replicas(idx);
        if let Some(s) = self.rss[idx].spec.as_mut() {
            s.replicas = Some(n);
        }
        self.set_new_rs_annotations(idx, new_revision, false);
        if has_deadline {
            let c = new_cond(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set {name:?}"),
                self.now,
            );
            set_cond(&mut self.status, c);
        }
        self.revision = Some(new_revision.to_string());
    }

    /// Upstream's `NewRSNewReplicas`.
    fn new_rs_replicas(&self, idx: usize) -> i32 {
        let cur = spec_replicas(&self.rss[idx]);
        if is_recreate(self.d) {
            return self.replicas;
        }
        if cur == self.replicas {
            return cur;
        }
        if cur > self.replicas {
            return self.replicas;
        }
        let max_total = self.replicas + self.surge;
        let current = self.sum_spec(&self.all_idx());
        if current >= max_total {
            return cur;
        }
        let up = (max_total - current).min(self.replicas - cur);
        cur + up
    }

    /// Scales a ReplicaSet (and refreshes its replica annotations); whether its size changed.
    fn scale_rs(&mut self, idx: usize, n: i32) -> bool {
        let size = spec_replicas(&self.rss[idx]) != n;
        let ann = self.set_replicas_annotations(idx);
        if size || ann {
            if let Some(s) = self.rss[idx].spec.as_mut() {
                s.replicas = Some(n);
            }
            self.dirty.insert(idx);
        }
        size
    }

    fn rollout_rolling(&mut self) {
        self.sync_revision(true);
        if self.reconcile_new() || self.reconcile_old() {
            self.sync_rollout_status();
            return;
        }
        if deployment_complete(self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup();
        }
        self.sync_rollout_status();
    }

    fn reconcile_new(&mut self) -> bool {
        let Some(idx) = self.new_idx else {
            return false;
        };
        let cur = spec_replicas(&self.rss[idx]);
        if cur == self.replicas {
            return false;
        }
        if cur > self.replicas {
            return self.scale_rs(idx, self.replicas);
        }
        let n = self.new_rs_replicas(idx);
        self.scale_rs(idx, n)
    }

    fn reconcile_old(&mut self) -> bool {
        let old = self.active(&self.old_idx());
        if self.sum_spec(&old) == 0 {
            return false;
        }
        let all_pods = self.sum_spec(&self.all_idx());
        let min_available = self.replicas - self.unavailable;
        let new_unavailable = self.new_idx.map_or(0, |i| {
            spec_replicas(&self.rss[i]) - status_of(&self.rss[i]).2
        });
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.cleanup_unhealthy(&old, max_scaled_down);
        let scaled = self.scale_down_old_for_rolling(&old);
        cleaned + scaled > 0
    }

    /// Scales down old ReplicaSets' unavailable replicas first (they cost no availability).
    fn cleanup_unhealthy(&mut self, old: &[usize], max_cleanup: i32) -> i32 {
        let mut total = 0;
        for &i in old {
            if total >= max_cleanup {
                break;
            }
            let spec = spec_replicas(&self.rss[i]);
            let avail = status_of(&self.rss[i]).2;
            if spec == 0 || spec == avail {
                continue;
            }
            let down = (max_cleanup - total).min(spec - avail);
            self.scale_rs(i, spec - down);
            total += down;
        }
        total
    }

    fn scale_down_old_for_rolling(&mut self, old: &[usize]) -> i32 {
        let min_available = self.replicas - self.unavailable;
        let available = self.sum_available(&self.all_idx());
        if available <= min_available {
            return 0;
        }
        let target = available - min_available;
        let mut total = 0;
        for &i in old {
            if total >= target {
                break;
            }
            let spec = spec_replicas(&self.rss[i]);
            if spec == 0 {
                continue;
            }
            let down = spec.min(target - total);
            self.scale_rs(i, spec - down);
            total += down;
        }
        total
    }

    fn rollout_recreate(&mut self, pods: &[&Pod]) {
        self.sync_revision(false);
        let old = self.active(&self.old_idx());
        let mut scaled = false;
        for i in old {
            scaled |= self.scale_rs(i, 0);
        }
        if scaled || self.old_pods_running(pods) {
            self.sync_rollout_status();
            return;
        }
        if self.new_idx.is_none() {
            self.sync_revision(true);
        }
        if let Some(i) = self.new_idx {
            self.scale_rs(i, self.replicas);
        }
        if deployment_complete(self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup();
        }
        self.sync_rollout_status();
    }

    fn old_pods_running(&self, pods: &[&Pod]) -> bool {
        let old = self.old_idx();
        if old.iter().map(|i| status_of(&self.rss[*i]).0).sum::<i32>() > 0 {
            return true;
        }
        let new_uid = self.new_idx.and_then(|i| self.rss[i].metadata.uid.clone());
        pods.iter().any(|p| {
            let owner = controller_ref(&p.metadata).map(|r| r.uid.clone());
            owner != new_uid && !matches!(pod_phase(p), "Succeeded" | "Failed")
        })
    }

    /// Upstream's `scale`: a replicas change while several ReplicaSets are active is spread
    /// over them in proportion to their size.
    fn scale(&mut self) -> Result<(), PlanError> {
        let old = self.old_idx();
        let all = self.all_idx();
        let active = self.active(&all);
        // FindActiveOrLatest
        let target = match active.len() {
            0 => self.new_idx.or_else(|| {
                old.iter()
                    .copied()
                    .max_by(|a, b| by_creation(&self.rss[*a], &self.rss[*b]))
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = target {
            if spec_replicas(&self.rss[i]) != self.replicas {
                self.scale_rs(i, self.replicas);
            }
            return Ok(());
        }
        if let Some(i) = self.new_idx
            && annotation_i32(&self.rss[i].metadata, DESIRED_REPLICAS) == Some(self.replicas)
            && status_of(&self.rss[i]).2 == self.replicas
            && spec_replicas(&self.rss[i]) == self.replicas
        {
            for j in self.active(&old) {
                self.scale_rs(j, 0);
            }
            return Ok(());
        }
        if is_recreate(self.d) {
            return Ok(());
        }
        let total = self.sum_spec(&active);
        let allowed = if self.replicas > 0 {
            self.replicas + self.surge
        } else {
            0
        };
        let to_add = allowed - total;
        let mut order = active;
        // Largest first; ties: newer first when growing, older first when shrinking.
        order.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            spec_replicas(rb).cmp(&spec_replicas(ra)).then_with(|| {
                if to_add > 0 {
                    by_creation(rb, ra)
                } else {
                    by_creation(ra, rb)
                }
            })
        });
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        let mut added = 0;
        for &i in &order {
            let cur = spec_replicas(&self.rss[i]);
            let prop = if to_add != 0 {
                self.proportion(i, to_add, added)
            } else {
                0
            };
            sizes.push((i, cur + prop));
            added += prop;
        }
        for (k, (i, size)) in sizes.into_iter().enumerate() {
            let size = if k == 0 && to_add != 0 {
                (size + to_add - added).max(0)
            } else {
                size
            };
            self.scale_rs(i, size);
        }
        Ok(())
    }

    /// Upstream's `GetProportion` / `getReplicaSetFraction`.
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let rs = &self.rss[i];
        let cur = spec_replicas(rs);
        if cur == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = if self.replicas == 0 {
            -cur
        } else {
            let d_total = self.replicas + self.surge;
            let annotated = annotation_i32(&rs.metadata, MAX_REPLICAS)
                .unwrap_or_else(|| self.status.replicas.unwrap_or(0));
            if annotated == 0 {
                0
            } else {
                let size = f64::from(cur) * f64::from(d_total) / f64::from(annotated);
                // Go's math.Round: half away from zero.
                (size.round() as i32) - cur
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Upstream's `cleanupDeployment`: deletes the oldest revisions past the history limit.
    fn cleanup(&mut self) {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return;
        };
        let mut cleanable: Vec<usize> = self
            .old_idx()
            .into_iter()
            .filter(|i| {
                !(is_deleting(&self.rss[*i].metadata) || (self.created && Some(*i) == self.new_idx))
            })
            .collect();
        let diff = i32::try_from(cleanable.len()).unwrap_or(i32::MAX) - limit;
        if diff <= 0 {
            return;
        }
        cleanable.sort_by_key(|i| revision_of(&self.rss[*i].metadata));
        for &i in cleanable.iter().take(usize::try_from(diff).unwrap_or(0)) {
            let rs = &self.rss[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_of(rs).0 != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
                || self.dirty.contains(&i)
            {
                continue;
            }
            self.deletes.push((
                rs.metadata.name.clone().unwrap_or_default(),
                rs.metadata.uid.clone().unwrap_or_default(),
            ));
        }
    }

    /// Upstream's `calculateStatus`.
    fn calculate_status(&self) -> DeploymentStatus {
        let all = self.all_idx();
        let available = self.sum_available(&all);
        let total = self.sum_spec(&all);
        let mut s = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|i| status_of(&self.rss[*i]).0).sum()),
            updated_replicas: Some(self.new_idx.map_or(0, |i| status_of(&self.rss[i]).0)),
            ready_replicas: Some(all.iter().map(|i| status_of(&self.rss[*i]).1).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            terminating_replicas: None,
        };
        let c = if available >= self.replicas - self.unavailable {
            new_cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                self.now,
            )
        } else {
            new_cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                self.now,
            )
        };
        set_cond(&mut s, c);
        s
    }

    fn sync_status(&mut self, _rollout: bool) {
        self.status = self.calculate_status();
    }

    /// Upstream's `syncRolloutStatus`: Progressing from the change since the stored status.
    fn sync_rollout_status(&mut self) {
        let mut s = self.calculate_status();
        let old = self.d.status.clone().unwrap_or_default();
        let deadline = progress_deadline(self.d);
        if deadline.is_none() {
            remove_cond(&mut s, "Progressing");
        }
        let cur = get_cond(&old, "Progressing").cloned();
        let complete_before = s.replicas == s.updated_replicas
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let new_name = self.new_idx.and_then(|i| self.rss[i].metadata.name.clone());
        if deadline.is_some() && !complete_before {
            if deployment_complete(self.d, &s) {
                let msg = format!(
                    "ReplicaSet {:?} has successfully progressed.",
                    new_name.clone().unwrap_or_default()
                );
                set_cond(
                    &mut s,
                    new_cond(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        msg,
                        self.now,
                    ),
                );
            } else if progressing(&old, &s) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} is progressing."),
                    None => format!(
                        "Deployment {:?} is progressing.",
                        self.d.metadata.name.clone().unwrap_or_default()
                    ),
                };
                let mut c = new_cond("Progressing", "True", "ReplicaSetUpdated", msg, self.now);
                if let Some(cur) = &cur {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_cond(&mut s, "Progressing");
                }
                set_cond(&mut s, c);
            } else if self.timed_out(&s) {
                let msg = format!(
                    "ReplicaSet {:?} has timed out progressing.",
                    new_name.clone().unwrap_or_default()
                );
                set_cond(
                    &mut s,
                    new_cond(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        msg,
                        self.now,
                    ),
                );
            }
        }
        self.status = s;
    }

    fn timed_out(&self, s: &DeploymentStatus) -> bool {
        let Some(deadline) = progress_deadline(self.d) else {
            return false;
        };
        let Some(c) = get_cond(s, "Progressing") else {
            return false;
        };
        match c.reason.as_deref() {
            Some("NewReplicaSetAvailable") => false,
            Some("ProgressDeadlineExceeded") => true,
            _ => c
                .last_update_time
                .as_ref()
                .is_some_and(|t| t.0.as_second() + deadline < self.now.as_second()),
        }
    }

    fn requeue_after(&self) -> Option<Duration> {
        let deadline = progress_deadline(self.d)?;
        let c = get_cond(&self.status, "Progressing")?;
        if matches!(
            c.reason.as_deref(),
            Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded")
        ) || deployment_complete(self.d, &self.status)
        {
            return None;
        }
        let from = c.last_update_time.as_ref()?.0.as_second();
        let after = from + deadline - self.now.as_second();
        Some(Duration::from_secs(
            u64::try_from(after.max(1)).unwrap_or(1),
        ))
    }

    fn finish(self) -> Plan {
        let mut writes = Vec::new();
        let new_idx = self.new_idx;
        if self.created
            && let Some(i) = new_idx
        {
            writes.push(Write::CreateReplicaSet(self.rss[i].clone()));
        }
        for &i in &self.dirty {
            if self.created && Some(i) == new_idx {
                continue;
            }
            writes.push(Write::UpdateReplicaSet(self.rss[i].clone()));
        }
        for (name, uid) in &self.deletes {
            writes.push(Write::DeleteReplicaSet {
                name: name.clone(),
                uid: uid.clone(),
            });
        }
        let stored_rev = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if let Some(rev) = &self.revision
            && stored_rev != Some(rev)
        {
            writes.push(Write::SetRevision(rev.clone()));
        }
        let requeue_after = self.requeue_after();
        if Some(&self.status) != self.d.status.as_ref() {
            writes.push(Write::UpdateStatus(self.status));
        }
        Plan {
            writes,
            requeue_after,
        }
    }
}

/// Upstream's `DeploymentProgressing`: more updated, fewer old, more ready or more available.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

#[cfg(test)]
mod tests;
