//! DaemonSet reconciler (sans-IO): one pod per eligible node, as upstream's
//! `pkg/controller/daemon` (read, not copied).
//!
//! A node is eligible when the DaemonSet's pod would fit it: `spec.nodeName` (if set), the
//! nodeSelector, the required node affinity and the node's NoSchedule/NoExecute taints
//! against the pod's tolerations, with the tolerations daemon pods get by default
//! ([`default_tolerations`]). A pod keeps running on a node while it tolerates the node's
//! NoExecute taints. Pods are created with a required node affinity to their node
//! (`matchFields metadata.name In [node]`) and bound by the scheduler, as upstream.
//!
//! Updates: `RollingUpdate` replaces pods of older revisions within `maxUnavailable` (or
//! surges up to `maxSurge` new pods first); `OnDelete` replaces a pod only once the user
//! deletes it.
//!
//! The shell owes the core, per reconcile of a DaemonSet:
//! 1. skip while its expectations are unsatisfied;
//! 2. plan the history ([`crate::history::plan`]) and write it; pass the current hash here;
//! 3. call [`plan`] with every Node and the pods the DaemonSet controls; record expectations,
//!    create [`pod_for_node`] for each node of `plan.create`, delete `plan.delete`;
//! 4. write `plan.status` when it differs and requeue after `plan.requeue_after`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::history::{REVISION_HASH, hash_label};
use crate::nodelifecycle::{NOT_READY, UNREACHABLE, tolerates_all};
use crate::replicaset::PodRef;
use crate::util::{
    InvalidSelector, is_deleting, is_pod_available, is_pod_ready, new_controller_ref,
    pod_available_at, pod_phase, scaled_value,
};

/// Why a DaemonSet cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A bad maxSurge/maxUnavailable (not retryable until the object changes).
    #[error(transparent)]
    Invalid(#[from] InvalidSelector),
}

/// The writes one reconcile of a DaemonSet wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that need a daemon pod created (current revision).
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<PodRef>,
    /// Failed daemon pods `(node, pod)`: the shell deletes each unless its node's
    /// [`FailedPodBackoff`] holds it back (upstream's hot-loop guard against a kubelet that
    /// keeps rejecting the pod).
    pub failed: Vec<(String, PodRef)>,
    /// The status after this reconcile's view.
    pub status: DaemonSetStatus,
    /// Reconcile again after this long (a ready pod becomes available).
    pub requeue_after: Option<Duration>,
}

fn tol(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut v = vec![
        tol(NOT_READY, "NoExecute"),
        tol(UNREACHABLE, "NoExecute"),
        tol("node.kubernetes.io/disk-pressure", "NoSchedule"),
        tol("node.kubernetes.io/memory-pressure", "NoSchedule"),
        tol("node.kubernetes.io/pid-pressure", "NoSchedule"),
        tol("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(tol("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

fn same_toleration(a: &Toleration, b: &Toleration) -> bool {
    a.key == b.key && a.effect == b.effect && a.operator == b.operator && a.value == b.value
}

/// The pod's tolerations plus the daemon defaults it lacks.
fn tolerations_of(ds: &DaemonSet) -> Vec<Toleration> {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let mut tols = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    for d in default_tolerations(host_network) {
        if !tols.iter().any(|t| same_toleration(t, &d)) {
            tols.push(d);
        }
    }
    tols
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) =
                (value.and_then(num), values.first().and_then(|v| num(v)))
            else {
                return false;
            };
            if r.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// Whether a node satisfies a NodeSelector (terms ORed; each term's expressions ANDed; a term
/// with neither expressions nor fields matches nothing), as upstream's
/// `nodeaffinity.NodeSelector.Match`.
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref();
    sel.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
        let fields = t.match_fields.as_deref().unwrap_or(&[]);
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|r| {
                requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str))
            })
            && fields.iter().all(|r| {
                let v = if r.key == "metadata.name" { name } else { None };
                requirement_matches(r, v)
            })
    })
}

fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// Upstream's `NodeShouldRunDaemonPod`: (should a new pod run here, may an existing one
/// continue).
pub fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let Some(pod) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return (false, false);
    };
    let name = node.metadata.name.as_deref().unwrap_or("");
    if pod
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = pod
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|s| node_selector_matches(s, node));
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let tols = tolerations_of(ds);
    let taints = taints_of(node);
    let fits = tolerates_all(&tols, taints, |e| e == "NoSchedule" || e == "NoExecute");
    let stays = tolerates_all(&tols, taints, |e| e == "NoExecute");
    (fits, stays)
}

/// The node a daemon pod is for: `spec.nodeName`, else its `metadata.name` node affinity.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().map(String::as_str))
}

/// The pod the DaemonSet creates for `node`: its template, the revision hash label, the
/// default tolerations and a required node affinity to that node only.
pub fn pod_for_node(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(tolerations_of(ds));
    let mut affinity = spec.affinity.take().unwrap_or_default();
    let mut na = affinity.node_affinity.take().unwrap_or_default();
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    affinity.node_affinity = Some(na);
    spec.affinity = Some(affinity);
    let name = ds.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![new_controller_ref(
                "apps/v1",
                "DaemonSet",
                &ds.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn is_updated(p: &Pod, hash: &str) -> bool {
    hash_label(&p.metadata) == Some(hash)
}

fn oldest_first(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// Upstream's `findUpdatedPodsOnNode`: the node's (new, old) live pods; None when there is
/// more than one of either.
fn updated_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| !is_deleting(&p.metadata)) {
        let slot = if is_updated(p, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*p);
    }
    Some((new, old))
}

fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> Result<(i32, i32), InvalidSelector> {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = ru
        .and_then(|r| r.max_surge.clone())
        .unwrap_or(IntOrString::Int(0));
    let unavail = ru
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let surge = scaled_value(&surge, desired, true)?.max(0);
    let mut unavail = scaled_value(&unavail, desired, true)?.max(0);
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }
    Ok((surge, unavail))
}

fn rolling(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// Per (DaemonSet, node) backoff of failed-pod deletions (upstream `failedPodsBackoff`:
/// client-go `flowcontrol.Backoff` from 1 s doubling to 15 min; an entry idle for twice
/// the maximum starts over). Sans-IO: callers pass `now` in milliseconds. Bounded: at most
/// [`FailedPodBackoff::MAX_ENTRIES`] keys, expired ones are dropped first.
#[derive(Debug, Default)]
pub struct FailedPodBackoff {
    entries: HashMap<String, (Duration, i64)>,
}

impl FailedPodBackoff {
    /// First delay.
    pub const INITIAL: Duration = Duration::from_secs(1);
    /// Largest delay.
    pub const MAX: Duration = Duration::from_secs(15 * 60);
    /// Keys kept at most.
    pub const MAX_ENTRIES: usize = 65_536;

    fn expired(last_ms: i64, now_ms: i64) -> bool {
        now_ms - last_ms > 2 * i64::try_from(Self::MAX.as_millis()).unwrap_or(i64::MAX)
    }

    /// `Ok` when the failed pod of `key` (`<ns>/<ds>/<node>`) may be deleted now (and the
    /// backoff steps up), `Err(delay)` while the last deletion's backoff still runs.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> Result<(), Duration> {
        if let Some((d, last)) = self.entries.get(key).copied()
            && !Self::expired(last, now_ms)
        {
            let d_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if now_ms - last < d_ms {
                return Err(Duration::from_millis(
                    u64::try_from(d_ms - (now_ms - last)).unwrap_or(0),
                ));
            }
            self.entries
                .insert(key.to_string(), ((d * 2).min(Self::MAX), now_ms));
            return Ok(());
        }
        if self.entries.len() >= Self::MAX_ENTRIES {
            self.entries
                .retain(|_, (_, last)| !Self::expired(*last, now_ms));
            if self.entries.len() >= Self::MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries
            .insert(key.to_string(), (Self::INITIAL, now_ms));
        Ok(())
    }

    /// Forgets a deleted DaemonSet's keys (prefix `<ns>/<ds>/`).
    pub fn forget(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

/// Plans one reconcile of `ds` over every node and the pods it controls.
pub fn plan(
    ds: &DaemonSet,
    hash: &str,
    nodes: &[&Node],
    pods: &[&Pod],
    now: Timestamp,
) -> Result<Plan, PlanError> {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    let mut untargeted = Vec::new();
    for p in pods {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => untargeted.push(*p),
        }
    }
    for v in by_node.values_mut() {
        oldest_first(v);
    }
    let node_names: HashMap<&str, &Node> = nodes
        .iter()
        .map(|n| (n.metadata.name.as_deref().unwrap_or(""), *n))
        .collect();
    let surge_allowed = rolling(ds) && surge_and_unavailable(ds, 1).is_ok_and(|(s, _)| s > 0);
    let mut plan = Plan::default();
    let deleting_ds = is_deleting(&ds.metadata);
    let delete = |p: &Pod, plan: &mut Plan| {
        if !is_deleting(&p.metadata)
            && !plan
                .delete
                .iter()
                .any(|d| Some(&d.uid) == p.metadata.uid.as_ref())
        {
            plan.delete.push(PodRef {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
            });
        }
    };
    let mut eligible: Vec<&Node> = Vec::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        let (run, stay) = should_run(ds, n);
        let here = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
        if run {
            eligible.push(n);
        }
        if deleting_ds {
            continue;
        }
        if run && here.is_empty() {
            plan.create.push(name.to_string());
        } else if stay {
            // Failed and succeeded pods go (the next pass recreates); of the rest the oldest
            // stays (with surge: the oldest of each revision).
            let mut running: Vec<&Pod> = Vec::new();
            for p in here.iter().filter(|p| !is_deleting(&p.metadata)) {
                if pod_phase(p) == "Failed" {
                    plan.failed.push((
                        name.to_string(),
                        PodRef {
                            name: p.metadata.name.clone().unwrap_or_default(),
                            uid: p.metadata.uid.clone().unwrap_or_default(),
                        },
                    ));
                } else if pod_phase(p) == "Succeeded" {
                    delete(p, &mut plan);
                } else {
                    running.push(p);
                }
            }
            let (mut seen_new, mut seen_old) = (false, false);
            for (i, p) in running.iter().enumerate() {
                let keep = if surge_allowed {
                    let seen = if is_updated(p, hash) {
                        &mut seen_new
                    } else {
                        &mut seen_old
                    };
                    !std::mem::replace(seen, true)
                } else {
                    i == 0
                };
                if !keep {
                    delete(p, &mut plan);
                }
            }
        } else {
            for p in here {
                delete(p, &mut plan);
            }
        }
    }
    if !deleting_ds {
        // Pods waiting for the scheduler on a node that is gone.
        for (n, ps) in &by_node {
            if !node_names.contains_key(n) {
                for p in ps.iter().filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_none_or(str::is_empty)
                }) {
                    delete(p, &mut plan);
                }
            }
        }
    }
    // Status over the eligible nodes.
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let mut requeue: Option<i64> = None;
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        let here = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let run = eligible.iter().any(|e| std::ptr::eq(*e, *n));
        if run {
            st.desired_number_scheduled += 1;
            let Some(p) = here.first() else { continue };
            st.current_number_scheduled += 1;
            if is_pod_ready(p) {
                st.number_ready += 1;
                if is_pod_available(p, min_ready, now) {
                    *st.number_available.get_or_insert(0) += 1;
                } else if let Some(at) = pod_available_at(p, min_ready) {
                    requeue = Some(requeue.map_or(at, |r| r.min(at)));
                }
            }
            if is_updated(p, hash) {
                *st.updated_number_scheduled.get_or_insert(0) += 1;
            }
        } else if !here.is_empty() {
            st.number_misscheduled += 1;
        }
    }
    let available = st.number_available.unwrap_or(0);
    st.number_available = Some(available);
    st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0));
    st.number_unavailable = Some(st.desired_number_scheduled - available);
    plan.status = st;
    plan.requeue_after = requeue
        .map(|at| Duration::from_secs(u64::try_from(at - now.as_second()).unwrap_or(0).max(1)));
    if !deleting_ds && rolling(ds) {
        rolling_update(ds, hash, &eligible, &by_node, now, min_ready, &mut plan)?;
    }
    let _ = untargeted;
    Ok(plan)
}

/// Upstream's `rollingUpdate`: old pods replaced within the surge/unavailability budget.
fn rolling_update(
    ds: &DaemonSet,
    hash: &str,
    eligible: &[&Node],
    by_node: &BTreeMap<&str, Vec<&Pod>>,
    now: Timestamp,
    min_ready: i32,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    let (max_surge, max_unavailable) = surge_and_unavailable(ds, desired)?;
    let available = |p: &Pod| is_pod_available(p, min_ready, now);
    let push_delete = |p: &Pod, plan: &mut Plan| {
        if !plan
            .delete
            .iter()
            .any(|d| Some(&d.uid) == p.metadata.uid.as_ref())
        {
            plan.delete.push(PodRef {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
            });
        }
    };
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for n in eligible {
            let name = n.metadata.name.as_deref().unwrap_or("");
            let here = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let Some((new, old)) = updated_and_old(here, hash) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(p), None) => {
                    if !available(p) {
                        unavailable += 1;
                    }
                }
                (None, Some(p)) => {
                    if available(p) {
                        candidates.push(p);
                    } else {
                        // An old pod that is down anyway goes at once.
                        push_delete(p, plan);
                    }
                }
            }
        }
        let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
        for p in candidates.into_iter().take(room) {
            push_delete(p, plan);
        }
        return Ok(());
    }
    let mut surging = 0;
    let mut allowed = Vec::new();
    let mut candidates = Vec::new();
    for n in eligible {
        let name = n.metadata.name.as_deref().unwrap_or("");
        let here = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let Some((new, old)) = updated_and_old(here, hash) else {
            surging += 1;
            continue;
        };
        match (new, old) {
            (_, None) => {}
            (None, Some(o)) => {
                if !available(o) {
                    allowed.push(name.to_string());
                } else {
                    candidates.push(name.to_string());
                }
            }
            (Some(nw), Some(o)) => {
                if available(nw) {
                    push_delete(o, plan);
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
    allowed.extend(candidates.into_iter().take(room));
    for n in allowed {
        if !plan.create.contains(&n) {
            plan.create.push(n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labels, template, ts};
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSpec, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn ds(surge: i32, unavail: i32) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("default".into()),
                uid: Some("ds-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "agent")])),
                    ..Default::default()
                },
                template: template("agent:1", &[("app", "agent")]),
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(IntOrString::Int(unavail)),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn node(name: &str, l: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(l)),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: (*k).into(),
                            effect: (*e).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn dpod(d: &DaemonSet, name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Pod {
        let mut p = pod_for_node(d, node, hash);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(ts(created)));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(ts(created))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn eligibility_by_selector_affinity_and_taints() {
        let mut d = ds(0, 1);
        let n_plain = node("a", &[("disk", "ssd")], &[]);
        let n_tainted = node("b", &[("disk", "ssd")], &[("dedicated", "NoSchedule")]);
        let n_exec = node("c", &[("disk", "ssd")], &[("dedicated", "NoExecute")]);
        let n_unreach = node("d", &[("disk", "ssd")], &[(UNREACHABLE, "NoExecute")]);
        let n_hdd = node("e", &[("disk", "hdd")], &[]);
        assert_eq!(should_run(&d, &n_plain), (true, true));
        assert_eq!(should_run(&d, &n_tainted), (false, true));
        assert_eq!(should_run(&d, &n_exec), (false, false));
        assert_eq!(
            should_run(&d, &n_unreach),
            (true, true),
            "daemon pods tolerate unreachable"
        );
        let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.node_selector = Some(labels(&[("disk", "ssd")]));
        assert_eq!(should_run(&d, &n_hdd), (false, false));
        assert_eq!(should_run(&d, &n_plain), (true, true));
        let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.node_selector = None;
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "disk".into(),
                            operator: "NotIn".into(),
                            values: Some(vec!["ssd".into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(should_run(&d, &n_hdd), (true, true));
        assert_eq!(should_run(&d, &n_plain), (false, false));
        spec_tolerate(&mut d);
        assert!(!should_run(&d, &n_tainted).0, "affinity still excludes ssd");
    }

    fn spec_tolerate(d: &mut DaemonSet) {
        let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
    }

    #[test]
    fn creates_per_node_pins_affinity_and_deletes_extras() {
        let d = ds(0, 1);
        let nodes = [
            node("a", &[], &[]),
            node("b", &[], &[]),
            node("c", &[], &[("x", "NoExecute")]),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let p_b1 = dpod(&d, "b1", "b", "h1", true, 10);
        let p_b2 = dpod(&d, "b2", "b", "h1", true, 20);
        let p_c = dpod(&d, "c1", "c", "h1", true, 10);
        let p_gone = dpod(&d, "z1", "zz", "h1", false, 10);
        let pods = [&p_b1, &p_b2, &p_c, &p_gone];
        let plan = plan(&d, "h1", &refs, &pods, ts(100)).unwrap();
        assert_eq!(plan.create, vec!["a".to_string()]);
        let del: Vec<&str> = plan.delete.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            del,
            ["b2", "c1", "z1"],
            "the younger duplicate, the evicted, the lost"
        );
        let s = &plan.status;
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready,
                s.number_misscheduled
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(
            (
                s.number_available,
                s.number_unavailable,
                s.updated_number_scheduled
            ),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(target_node(&pod_for_node(&d, "a", "h1")), Some("a"));
        let created = pod_for_node(&d, "a", "h1");
        let tols = created.spec.unwrap().tolerations.unwrap();
        assert!(tols.iter().any(|t| t.key.as_deref() == Some(UNREACHABLE)));
        assert_eq!(
            created
                .metadata
                .labels
                .unwrap()
                .get(REVISION_HASH)
                .map(String::as_str),
            Some("h1")
        );
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let d = ds(0, 1);
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n, &[], &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| dpod(&d, &format!("{n}-old"), n, "h1", true, 10))
            .collect();
        let pods: Vec<&Pod> = old.iter().collect();
        let p = plan(&d, "h2", &refs, &pods, ts(100)).unwrap();
        assert_eq!(p.delete.len(), 1, "one old pod at a time");
        assert!(p.create.is_empty());
        // Node a's new pod exists but is not ready: nothing else goes.
        let new_a = dpod(&d, "a-new", "a", "h2", false, 50);
        let pods = vec![&new_a, &old[1], &old[2]];
        let p = plan(&d, "h2", &refs, &pods, ts(100)).unwrap();
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status.updated_number_scheduled, Some(1));
        // Ready now: the next old pod goes.
        let new_a = dpod(&d, "a-new", "a", "h2", true, 50);
        let pods = vec![&new_a, &old[1], &old[2]];
        let p = plan(&d, "h2", &refs, &pods, ts(100)).unwrap();
        assert_eq!(p.delete.len(), 1);
        // OnDelete: nothing is replaced by the controller.
        let mut od = d.clone();
        od.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let pods: Vec<&Pod> = old.iter().collect();
        assert!(
            plan(&od, "h2", &refs, &pods, ts(100))
                .unwrap()
                .delete
                .is_empty()
        );
    }

    #[test]
    fn rolling_update_with_surge_creates_before_deleting() {
        let d = ds(1, 0);
        let nodes: Vec<Node> = ["a", "b"].iter().map(|n| node(n, &[], &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = ["a", "b"]
            .iter()
            .map(|n| dpod(&d, &format!("{n}-old"), n, "h1", true, 10))
            .collect();
        let pods: Vec<&Pod> = old.iter().collect();
        let p = plan(&d, "h2", &refs, &pods, ts(100)).unwrap();
        assert_eq!(p.create.len(), 1, "one surge pod");
        assert!(p.delete.is_empty());
        let new_a = dpod(&d, "a-new", "a", "h2", true, 50);
        let pods = vec![&new_a, &old[0], &old[1]];
        let p = plan(&d, "h2", &refs, &pods, ts(100)).unwrap();
        let del: Vec<&str> = p.delete.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            del,
            ["a-old"],
            "the old pod goes once the new one is available"
        );
        assert_eq!(p.create, vec!["b".to_string()]);
    }

    #[test]
    fn failed_pod_deletions_back_off_per_node() {
        let mut b = FailedPodBackoff::default();
        let k = "ns/agent/n1";
        let t0 = 1_000_000;
        assert_eq!(b.allow(k, t0), Ok(()), "first failure: delete at once");
        assert_eq!(b.allow(k, t0 + 500), Err(Duration::from_millis(500)));
        assert_eq!(b.allow("ns/agent/n2", t0 + 500), Ok(()), "per node");
        assert_eq!(b.allow(k, t0 + 1000), Ok(()));
        // The delay doubles: 2 s now.
        assert!(b.allow(k, t0 + 2500).is_err());
        assert_eq!(b.allow(k, t0 + 3000), Ok(()));
        assert_eq!(b.allow(k, t0 + 3000 + 3999), Err(Duration::from_millis(1)));
        // Capped at 15 min (16 min apart: never expired, always past the delay).
        let mut t = t0 + 7000;
        for _ in 0..12 {
            assert_eq!(b.allow(k, t), Ok(()));
            t += 16 * 60 * 1000;
        }
        let last = t - 16 * 60 * 1000;
        assert_eq!(b.allow(k, last + 899_000), Err(Duration::from_millis(1000)));
        // Reset after 30 min idle.
        let mut fresh = FailedPodBackoff::default();
        assert_eq!(fresh.allow(k, 0), Ok(()));
        assert_eq!(fresh.allow(k, 31 * 60 * 1000), Ok(()));
        assert_eq!(
            fresh.allow(k, 31 * 60 * 1000 + 10),
            Err(Duration::from_millis(990)),
            "back to 1 s"
        );
        fresh.forget("ns/agent/");
        assert_eq!(fresh.allow(k, 31 * 60 * 1000 + 20), Ok(()));
    }
}
