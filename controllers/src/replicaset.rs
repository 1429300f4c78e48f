//! ReplicaSet reconciler (sans-IO): from a ReplicaSet and the pods in its namespace to the
//! writes that make the pod count match `spec.replicas`, as upstream's
//! `pkg/controller/replicaset`.
//!
//! The shell owes the core, per reconcile of a key:
//! 1. skip the key while its [`Expectations`](crate::expectations::Expectations) are not
//!    satisfied (creates or deletes in flight that the informer has not shown yet);
//! 2. call [`plan`] with the cached ReplicaSet and the cached pods of its namespace;
//! 3. record expectations for `plan.create` creates and `plan.delete` deletes *before*
//!    issuing them; apply adoptions/releases, then create in [`slow_start_batches`], stopping
//!    at the first failed batch (lowering expectations for the creates skipped), then delete;
//! 4. write `plan.status` when it differs from the stored status, and requeue after
//!    `plan.requeue_after` (pods waiting out `minReadySeconds`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::util::{
    InvalidSelector, controller_ref, is_deleting, is_pod_active, is_pod_available, is_pod_ready,
    new_controller_ref, pod_available_at, pod_phase, pod_ready_condition, selector_matches,
};

/// Upstream's `BurstReplicas`: at most this many creates or deletes per sync.
pub const BURST_REPLICAS: usize = 500;

/// The annotation with which users rank pods for deletion (lower goes first).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod named for a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Pod name.
    pub name: String,
    /// Pod uid (used as a delete precondition).
    pub uid: String,
}

impl PodRef {
    fn of(p: &Pod) -> Self {
        Self {
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

/// The writes one reconcile of a ReplicaSet wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods matching the selector to adopt (add our controller ref).
    pub adopt: Vec<PodRef>,
    /// Owned pods that no longer match the selector (remove our controller ref).
    pub release: Vec<PodRef>,
    /// How many pods to create from the template (at most [`BURST_REPLICAS`]).
    pub create: usize,
    /// Pods to delete, in deletion order (at most [`BURST_REPLICAS`]).
    pub delete: Vec<PodRef>,
    /// The status after this reconcile's view of the pods.
    pub status: ReplicaSetStatus,
    /// Reconcile again after this long (a ready pod becomes available).
    pub requeue_after: Option<Duration>,
}

/// Why a ReplicaSet cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The selector is malformed (not retryable until the object changes).
    #[error(transparent)]
    Selector(#[from] InvalidSelector),
}

/// Plans one reconcile of `rs` given every pod of its namespace.
pub fn plan<'a>(
    rs: &ReplicaSet,
    ns_pods: impl IntoIterator<Item = &'a Pod>,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    let spec = rs.spec.as_ref();
    let selector = spec.map(|s| s.selector.clone()).unwrap_or_default();
    let uid = rs.metadata.uid.as_deref().unwrap_or("");
    let empty_selector = selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty);
    let mut plan = Plan::default();
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in ns_pods {
        let matches = !empty_selector && selector_matches(&selector, pod.metadata.labels.as_ref())?;
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches || is_deleting(&pod.metadata) {
                    owned.push(pod);
                } else if !is_deleting(&rs.metadata) {
                    plan.release.push(PodRef::of(pod));
                }
            }
            Some(_) => {}
            None => {
                if matches && !is_deleting(&pod.metadata) && !is_deleting(&rs.metadata) {
                    plan.adopt.push(PodRef::of(pod));
                    owned.push(pod);
                }
            }
        }
    }
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_pod_active(p)).collect();
    let want = usize::try_from(spec.and_then(|s| s.replicas).unwrap_or(1).max(0)).unwrap_or(0);
    if !is_deleting(&rs.metadata) {
        if active.len() < want {
            plan.create = (want - active.len()).min(BURST_REPLICAS);
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST_REPLICAS);
            plan.delete = pods_to_delete(&active, &active, n, now)
                .into_iter()
                .map(PodRef::of)
                .collect();
        }
    }
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    plan.status = calculate_status(rs, &active, now);
    plan.requeue_after = active
        .iter()
        .filter(|p| !is_pod_available(p, min_ready, now))
        .filter_map(|p| pod_available_at(p, min_ready))
        .min()
        .map(|at| Duration::from_secs(u64::try_from(at - now.as_second()).unwrap_or(0).max(1)));
    Ok(plan)
}

/// The status a ReplicaSet has with these active pods, as upstream's `calculateStatus`
/// (conditions are kept; the shell sets `ReplicaFailure` on create errors).
pub fn calculate_status(rs: &ReplicaSet, active: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully_labeled = count(&|p| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let old = rs.status.clone().unwrap_or_default();
    ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&is_pod_ready)),
        available_replicas: Some(count(&|p| is_pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions,
        terminating_replicas: old.terminating_replicas,
    }
}

/// The pod a ReplicaSet creates: its template, `generateName: <rs>-`, our controller ref.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![new_controller_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Upstream's `slowStartBatch` sizes: 1, 2, 4, ... summing to `count`, so a template that
/// always fails costs one request, not `count`.
pub fn slow_start_batches(count: usize, initial: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut remaining = count;
    let mut size = initial.max(1).min(remaining);
    while size > 0 {
        out.push(size);
        remaining -= size;
        size = (size * 2).min(remaining);
    }
    out
}

fn phase_ordinal(p: &Pod) -> u8 {
    match pod_phase(p) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0, // Pending and unset
    }
}

fn deletion_cost(p: &Pod) -> i64 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(0, i64::from)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

/// `floor(log2(now - t))` in nanoseconds, -1 when `t` is not in the past.
fn log_rank(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d <= 0 {
        -1
    } else {
        i64::from(127 - d.leading_zeros())
    }
}

/// Compares two times the way upstream's LogarithmicScaleDown does: the newer (lower
/// log-rank) first; equal buckets tie-break on uid. `None` (zero time) goes first.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    ua: &str,
    ub: &str,
    now: Timestamp,
) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) if x == y => Ordering::Equal,
        (Some(x), Some(y)) => {
            let (rx, ry) = (log_rank(x, now), log_rank(y, now));
            if rx == ry { ua.cmp(ub) } else { rx.cmp(&ry) }
        }
    }
}

/// Upstream's `ActivePodsWithRanks.Less`: `Less` means "delete first". `rank_*` is the number
/// of related pods on the same node (more doubled-up goes first).
pub fn deletion_order(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize, now: Timestamp) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    // 1. unassigned < assigned
    let o = node(a).cmp(&node(b));
    if o != Ordering::Equal {
        return o;
    }
    // 2. Pending < Unknown < Running
    let o = phase_ordinal(a).cmp(&phase_ordinal(b));
    if o != Ordering::Equal {
        return o;
    }
    // 3. not ready < ready
    let (ra, ta) = pod_ready_condition(a);
    let (rb, tb) = pod_ready_condition(b);
    let o = ra.cmp(&rb);
    if o != Ordering::Equal {
        return o;
    }
    // 4. lower pod-deletion-cost first
    let o = deletion_cost(a).cmp(&deletion_cost(b));
    if o != Ordering::Equal {
        return o;
    }
    // 5. more pods of ours on the same node first
    let o = rank_b.cmp(&rank_a);
    if o != Ordering::Equal {
        return o;
    }
    let ua = a.metadata.uid.as_deref().unwrap_or("");
    let ub = b.metadata.uid.as_deref().unwrap_or("");
    // 6. both ready: ready for less time first
    if ra && rb && ta != tb {
        return newer_first(ta, tb, ua, ub, now);
    }
    // 7. more restarts first
    let o = max_restarts(b).cmp(&max_restarts(a));
    if o != Ordering::Equal {
        return o;
    }
    // 8. newer first
    let ca = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let cb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if ca != cb {
        return newer_first(ca, cb, ua, ub, now);
    }
    Ordering::Equal
}

/// Upstream's `getPodsToDelete`: the `n` pods of `active` to delete first, ranked against
/// `related` (the pods counted for doubling up on a node).
pub fn pods_to_delete<'a>(
    active: &[&'a Pod],
    related: &[&Pod],
    n: usize,
    now: Timestamp,
) -> Vec<&'a Pod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_pod_active(p)) {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        *on_node.entry(node).or_default() += 1;
    }
    let mut ranked: Vec<(&Pod, usize)> = active
        .iter()
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            (*p, on_node.get(node).copied().unwrap_or(0))
        })
        .collect();
    if n < ranked.len() {
        ranked.sort_by(|(a, ra), (b, rb)| deletion_order(a, *ra, b, *rb, now));
    }
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests;
