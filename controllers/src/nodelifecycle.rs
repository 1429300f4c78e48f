//! Node lifecycle and NoExecute taint eviction (sans-IO), as upstream's
//! `pkg/controller/nodelifecycle` and `pkg/controller/tainteviction` (read, not copied).
//!
//! Health is judged on the controller's own clock, never the kubelet's: a node is alive while
//! its Lease in `kube-node-lease` (or its Ready condition's `lastHeartbeatTime`) keeps
//! *changing*; the time we last saw a change is the probe time. Once `grace` (upstream's
//! `--node-monitor-grace-period`, 40 s) has passed since the probe time, the node's Ready,
//! MemoryPressure, DiskPressure and PIDPressure conditions become `Unknown`.
//!
//! Taints follow the Ready condition: `False` gives `node.kubernetes.io/not-ready`, `Unknown`
//! gives `node.kubernetes.io/unreachable`, each with both the NoSchedule and NoExecute
//! effects; `True` removes them. A pod on a node with NoExecute taints is evicted (deleted) at
//! once when a taint is not tolerated, else after the smallest `tolerationSeconds` of the
//! tolerations used, counted from when the taint was added; a toleration without seconds
//! tolerates forever.
//!
//! The shell owes the core:
//! 1. call [`Monitor::observe`] for each Node at least every monitor period (and on Node or
//!    Lease events) with the node's Lease and `now`; write the returned conditions with the
//!    status subresource and the returned taints to `spec.taints` (guarded by
//!    resourceVersion), and mark the node's pods not Ready when the node went Unknown;
//! 2. for each pod bound to a node with NoExecute taints, ask [`pod_eviction`] and delete
//!    the pod when it says so (requeue the node for an eviction in the future);
//! 3. call [`Monitor::forget`] when a Node is deleted.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Upstream's default `--node-monitor-grace-period`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// Upstream's default `--node-monitor-period`.
pub const DEFAULT_MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Conditions set to Unknown when the kubelet stops posting.
const MONITORED: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The node's readiness after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready=True.
    Ready,
    /// Ready=False (the kubelet says so).
    NotReady,
    /// Ready=Unknown (no heartbeat within the grace period).
    Unknown,
    /// No Ready condition yet and still within the grace period: leave the node alone.
    Pending,
}

/// What one observation of a node wants written.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// New `status.conditions` (the kubelet stopped posting), if they change.
    pub conditions: Option<Vec<NodeCondition>>,
    /// New `spec.taints`, if they change.
    pub taints: Option<Vec<Taint>>,
    /// Readiness after this observation.
    pub readiness: Readiness,
    /// The node went Unknown in this observation: mark its pods not Ready.
    pub became_unknown: bool,
    /// Observe again after this long (the grace period runs out).
    pub recheck_after: Option<Duration>,
}

#[derive(Debug)]
struct Health {
    probe_at: Timestamp,
    renew: Option<Timestamp>,
    heartbeat: Option<Timestamp>,
}

/// Per-node heartbeat bookkeeping (bounded by the Nodes the cache holds).
#[derive(Debug)]
pub struct Monitor {
    grace: Duration,
    health: HashMap<String, Health>,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default())
        .unwrap_or(t)
}

impl Monitor {
    /// A monitor that declares nodes Unknown after `grace` without a heartbeat.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            health: HashMap::new(),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Forgets a deleted node.
    pub fn forget(&mut self, node: &str) {
        self.health.remove(node);
    }

    /// Observes `node` (and its Lease) at `now`; says what to write. In `full_disruption`
    /// (no node of the cluster is Ready: more likely our network than every node) no
    /// NoExecute taint is added and ours are removed, so nothing is evicted (upstream's
    /// zone FullDisruption mode, for the whole cluster as one zone).
    pub fn observe(
        &mut self,
        node: &Node,
        lease: Option<&Lease>,
        full_disruption: bool,
        now: Timestamp,
    ) -> Verdict {
        let name = node.metadata.name.clone().unwrap_or_default();
        let renew = lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0);
        let ready = ready_condition(node);
        let heartbeat = ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let h = self.health.entry(name).or_insert(Health {
            probe_at: now,
            renew,
            heartbeat,
        });
        if h.renew != renew || h.heartbeat != heartbeat {
            h.probe_at = now;
            h.renew = renew;
            h.heartbeat = heartbeat;
        }
        let deadline = add(h.probe_at, self.grace);
        let expired = now > deadline;
        let mut conditions = None;
        let mut became_unknown = false;
        let readiness = if expired {
            let (conds, changed) = unknown_conditions(node, now);
            if changed {
                became_unknown = ready.is_none_or(|c| c.status != "Unknown");
                conditions = Some(conds);
            }
            Readiness::Unknown
        } else {
            match ready.map(|c| c.status.as_str()) {
                Some("True") => Readiness::Ready,
                Some("False") => Readiness::NotReady,
                Some(_) => Readiness::Unknown,
                None => Readiness::Pending,
            }
        };
        let taints = desired_taints(node, readiness, !full_disruption, now);
        let recheck_after = (!expired).then(|| {
            let ms = deadline.as_millisecond() - now.as_millisecond();
            Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 100)
        });
        Verdict {
            conditions,
            taints,
            readiness,
            became_unknown,
            recheck_after,
        }
    }
}

/// The node's conditions with the monitored ones set to Unknown; whether anything changed.
fn unknown_conditions(node: &Node, now: Timestamp) -> (Vec<NodeCondition>, bool) {
    let mut conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    for c in conds.iter_mut() {
        if MONITORED.contains(&c.type_.as_str()) && c.status != "Unknown" {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
            c.last_transition_time = Some(Time(now));
            changed = true;
        }
    }
    if !conds.iter().any(|c| c.type_ == "Ready") {
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusNeverUpdated".into()),
            message: Some("Kubelet never posted node status.".into()),
            last_heartbeat_time: node.metadata.creation_timestamp.clone(),
            last_transition_time: Some(Time(now)),
        });
        changed = true;
    }
    (conds, changed)
}

fn is_ours(t: &Taint) -> bool {
    t.key == UNREACHABLE || t.key == NOT_READY
}

/// The node's taints with ours made to match `readiness`; None when they already do.
fn desired_taints(
    node: &Node,
    readiness: Readiness,
    no_execute: bool,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let cur = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let key = match readiness {
        Readiness::Ready => None,
        Readiness::NotReady => Some(NOT_READY),
        Readiness::Unknown => Some(UNREACHABLE),
        Readiness::Pending => return None,
    };
    let mut next: Vec<Taint> = cur
        .iter()
        .filter(|t| {
            !is_ours(t) || (Some(t.key.as_str()) == key && (no_execute || t.effect != "NoExecute"))
        })
        .cloned()
        .collect();
    let effects: &[&str] = if no_execute {
        &["NoSchedule", "NoExecute"]
    } else {
        &["NoSchedule"]
    };
    if let Some(key) = key {
        for effect in effects.iter().copied() {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                    value: None,
                });
            }
        }
    }
    (next != cur).then_some(next)
}

/// Upstream's `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty())
        && k != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// Whether `tolerations` tolerate every taint of `taints` whose effect passes `effect`.
pub fn tolerates_all(
    tolerations: &[Toleration],
    taints: &[Taint],
    effect: impl Fn(&str) -> bool,
) -> bool {
    taints
        .iter()
        .filter(|t| effect(&t.effect))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// When a pod on a node with these taints must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Never (no NoExecute taint, or tolerated without a time limit).
    Never,
    /// Now (a NoExecute taint is not tolerated, or its time is up).
    Now,
    /// At this time.
    At(Timestamp),
}

/// Upstream's taint-eviction decision for one pod. `since` is when the shell first saw the
/// taints, used for taints without `timeAdded`.
pub fn pod_eviction(pod: &Pod, taints: &[Taint], since: Timestamp, now: Timestamp) -> Eviction {
    let noexec: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if noexec.is_empty() {
        return Eviction::Never;
    }
    let tols: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    // The first toleration matching each taint (upstream's GetMatchingTolerations).
    let mut used = Vec::new();
    for t in &noexec {
        match tols.iter().find(|tol| tolerates(tol, t)) {
            Some(tol) => used.push(tol),
            None => return Eviction::Now,
        }
    }
    let Some(secs) = used
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .map(|s| s.max(0))
        .min()
    else {
        return Eviction::Never;
    };
    let start = noexec
        .iter()
        .filter_map(|t| t.time_added.as_ref().map(|t| t.0))
        .max()
        .unwrap_or(since);
    let at = add(start, Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
    if at <= now {
        Eviction::Now
    } else {
        Eviction::At(at)
    }
}

/// The pod's conditions with Ready set False (its node went Unknown); None when it is not
/// Ready already or is finished.
pub fn pod_not_ready(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    if matches!(crate::util::pod_phase(pod), "Succeeded" | "Failed") {
        return None;
    }
    let mut conds = pod.status.as_ref()?.conditions.clone()?;
    let mut changed = false;
    for c in conds.iter_mut() {
        if c.type_ == "Ready" && c.status != "False" {
            c.status = "False".into();
            c.last_transition_time = Some(Time(now));
            changed = true;
        }
    }
    changed.then_some(conds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ts;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn node(ready: Option<&str>, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(ts(0))),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![
                        NodeCondition {
                            type_: "Ready".into(),
                            status: s.into(),
                            last_heartbeat_time: Some(Time(ts(0))),
                            ..Default::default()
                        },
                        NodeCondition {
                            type_: "MemoryPressure".into(),
                            status: "False".into(),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    fn lease(renew: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(ts(renew))),
                ..Default::default()
            }),
        }
    }

    fn keys(t: &[Taint]) -> Vec<(String, String)> {
        t.iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect()
    }

    #[test]
    fn stale_lease_makes_the_node_unknown_and_unreachable() {
        let mut m = Monitor::new(Duration::from_secs(40));
        let n = node(Some("True"), vec![]);
        // Renewed at t=0 and seen at t=100 (our clock): fine until t=140.
        let v = m.observe(&n, Some(&lease(0)), false, ts(100));
        assert_eq!(v.readiness, Readiness::Ready);
        assert_eq!((v.conditions, v.taints), (None, None));
        assert_eq!(v.recheck_after, Some(Duration::from_millis(40_100)));
        // A renewal at t=130 pushes the deadline.
        let v = m.observe(&n, Some(&lease(130)), false, ts(135));
        assert_eq!(v.readiness, Readiness::Ready);
        let v = m.observe(&n, Some(&lease(130)), false, ts(176));
        assert_eq!(v.readiness, Readiness::Unknown);
        assert!(v.became_unknown);
        let conds = v.conditions.unwrap();
        assert!(
            conds
                .iter()
                .all(|c| c.status == "Unknown" && c.reason.as_deref() == Some("NodeStatusUnknown"))
        );
        let taints = v.taints.unwrap();
        assert_eq!(
            keys(&taints),
            [
                (UNREACHABLE.into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoExecute".into())
            ]
        );
        assert_eq!(taints[1].time_added, Some(Time(ts(176))));
        assert!(taints[0].time_added.is_none());
    }

    #[test]
    fn taints_follow_ready_and_leave_foreign_taints_alone() {
        let mut m = Monitor::new(Duration::from_secs(40));
        let foreign = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        type Case<'a> = (Option<&'a str>, &'a [&'a str], Option<&'a [&'a str]>);
        let cases: &[Case<'_>] = &[
            (
                Some("False"),
                &[],
                Some(&["dedicated", NOT_READY, NOT_READY]),
            ),
            (Some("True"), &[UNREACHABLE], Some(&["dedicated"])),
            (Some("True"), &[], None),
            (None, &[], None), // never posted, within grace: wait
            (
                Some("False"),
                &[UNREACHABLE],
                Some(&["dedicated", NOT_READY, NOT_READY]),
            ),
        ];
        for (ready, ours, want) in cases {
            let mut taints = vec![foreign.clone()];
            taints.extend(ours.iter().map(|k| Taint {
                key: (*k).into(),
                effect: "NoExecute".into(),
                ..Default::default()
            }));
            let v = m.observe(&node(*ready, taints), Some(&lease(0)), false, ts(1));
            let got = v
                .taints
                .map(|t| t.into_iter().map(|t| t.key).collect::<Vec<_>>());
            let want = want.map(|w| w.iter().map(|s| (*s).to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{ready:?} {ours:?}");
        }
    }

    #[test]
    fn full_disruption_keeps_noexecute_taints_off() {
        let mut m = Monitor::new(Duration::from_secs(40));
        let tainted = vec![Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }];
        let v = m.observe(
            &node(Some("Unknown"), tainted),
            Some(&lease(0)),
            true,
            ts(1),
        );
        assert_eq!(
            v.taints.map(|t| keys(&t)),
            Some(vec![(UNREACHABLE.to_string(), "NoSchedule".to_string())])
        );
    }

    #[test]
    fn never_posted_node_goes_unknown_after_grace() {
        let mut m = Monitor::new(Duration::from_secs(10));
        let n = node(None, vec![]);
        assert_eq!(
            m.observe(&n, None, false, ts(0)).readiness,
            Readiness::Pending
        );
        let v = m.observe(&n, None, false, ts(11));
        let conds = v.conditions.unwrap();
        assert_eq!(conds[0].reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert!(v.taints.is_some());
        m.forget("n1");
        assert_eq!(
            m.observe(&n, None, false, ts(12)).readiness,
            Readiness::Pending
        );
    }

    fn pod_with(tols: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tols),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tol(key: &str, op: &str, effect: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: Some(op.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn eviction_after_toleration_seconds() {
        let unreachable = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(ts(100))),
            value: None,
        };
        let sched_only = Taint {
            key: "x".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = [unreachable.clone()];
        let cases = [
            (vec![], Eviction::Now),
            (
                vec![tol(UNREACHABLE, "Exists", "NoExecute", Some(300))],
                Eviction::At(ts(400)),
            ),
            (
                vec![tol(UNREACHABLE, "Exists", "NoExecute", Some(30))],
                Eviction::Now,
            ),
            (
                vec![tol(UNREACHABLE, "Exists", "NoExecute", None)],
                Eviction::Never,
            ),
            (vec![tol("", "Exists", "", None)], Eviction::Never),
            (
                vec![tol("other", "Exists", "NoExecute", Some(5))],
                Eviction::Now,
            ),
            (
                vec![tol(UNREACHABLE, "Exists", "NoSchedule", None)],
                Eviction::Now,
            ),
        ];
        for (tols, want) in cases {
            let p = pod_with(tols.clone());
            assert_eq!(pod_eviction(&p, &t, ts(0), ts(200)), want, "{tols:?}");
        }
        assert_eq!(
            pod_eviction(&pod_with(vec![]), &[sched_only], ts(0), ts(200)),
            Eviction::Never
        );
        // A taint without timeAdded counts from when the shell saw it.
        let bare = Taint {
            time_added: None,
            ..unreachable
        };
        let p = pod_with(vec![tol(UNREACHABLE, "Exists", "NoExecute", Some(60))]);
        assert_eq!(
            pod_eviction(&p, &[bare], ts(150), ts(200)),
            Eviction::At(ts(210))
        );
    }
}
