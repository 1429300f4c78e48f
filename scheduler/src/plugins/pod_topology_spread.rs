//! PodTopologySpread: hard (DoNotSchedule) constraints filter, soft (ScheduleAnyway) ones
//! score; maxSkew, minDomains, nodeAffinityPolicy, nodeTaintsPolicy, matchLabelKeys, and the
//! cluster default constraints for pods that declare none.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1 as core;
use serde::Deserialize;

use crate::Error;
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeScore, Plugin, PreFilterPlugin, PreScorePlugin,
    ScorePlugin,
};
use crate::model::{
    Effect, LABEL_HOSTNAME, LABEL_ZONE, NodeInfo, PodInfo, Selector, Snapshot, SpreadConstraint,
    WhenUnsatisfiable, tolerated,
};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// PodTopologySpread.
#[derive(Debug)]
pub struct PodTopologySpread {
    /// Constraints applied to pods without their own (selector filled in per pod).
    defaults: Vec<SpreadConstraint>,
    /// Whether the defaults are upstream's system defaults (nodes missing a key are not ignored).
    system_defaulted: bool,
}

impl Default for PodTopologySpread {
    fn default() -> Self {
        let c = |key: &str, skew| SpreadConstraint {
            max_skew: skew,
            topology_key: key.into(),
            when: WhenUnsatisfiable::ScheduleAnyway,
            selector: Selector::Nothing,
            min_domains: None,
            honor_node_affinity: true,
            honor_node_taints: false,
        };
        PodTopologySpread {
            defaults: vec![c(LABEL_HOSTNAME, 3), c(LABEL_ZONE, 5)],
            system_defaulted: true,
        }
    }
}

impl PodTopologySpread {
    /// Builds from `PodTopologySpreadArgs` (`defaultingType: System|List`, `defaultConstraints`).
    pub fn from_args(args: &serde_json::Value) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct A {
            defaulting_type: Option<String>,
            #[serde(default)]
            default_constraints: Vec<core::TopologySpreadConstraint>,
        }
        if args.is_null() {
            return Ok(Self::default());
        }
        let a: A = serde_json::from_value(args.clone())
            .map_err(|e| Error::Config(format!("PodTopologySpread args: {e}")))?;
        match a.defaulting_type.as_deref().unwrap_or("System") {
            "System" if a.default_constraints.is_empty() => Ok(Self::default()),
            "System" => Err(Error::Config(
                "defaultConstraints need defaultingType List".into(),
            )),
            "List" => {
                let mut defaults = Vec::new();
                for c in &a.default_constraints {
                    if c.label_selector.is_some() {
                        return Err(Error::Config(
                            "default constraints must not have a labelSelector".into(),
                        ));
                    }
                    let mut sc = SpreadConstraint::new(c, &Default::default())
                        .map_err(|e| Error::Config(e.to_string()))?;
                    sc.selector = Selector::Nothing;
                    defaults.push(sc);
                }
                Ok(PodTopologySpread {
                    defaults,
                    system_defaulted: false,
                })
            }
            o => Err(Error::Config(format!("defaultingType {o:?}"))),
        }
    }

    /// The pod's effective constraints of one kind, and whether nodes must carry every key.
    fn constraints(
        &self,
        pod: &PodInfo,
        snap: &Snapshot,
        when: WhenUnsatisfiable,
    ) -> (Vec<SpreadConstraint>, bool) {
        if !pod.spread.is_empty() {
            return (
                pod.spread
                    .iter()
                    .filter(|c| c.when == when)
                    .cloned()
                    .collect(),
                true,
            );
        }
        if self.defaults.iter().all(|c| c.when != when) {
            return (Vec::new(), true);
        }
        // Selector of the services and controller selecting the pod (upstream DefaultSelector).
        let mut reqs = Vec::new();
        for (ns, sel) in &snap.services {
            if *ns == pod.key.namespace
                && sel.matches(&pod.labels)
                && let Selector::Reqs(r) = sel
            {
                reqs.extend(r.iter().cloned());
            }
        }
        if let Some((kind, name)) = &pod.owner
            && let Some(Selector::Reqs(r)) =
                snap.controllers
                    .get(&(pod.key.namespace.clone(), kind.clone(), name.clone()))
        {
            reqs.extend(r.iter().cloned());
        }
        if reqs.is_empty() {
            return (Vec::new(), true);
        }
        let cs = self
            .defaults
            .iter()
            .filter(|c| c.when == when)
            .map(|c| SpreadConstraint {
                selector: Selector::Reqs(reqs.clone()),
                ..c.clone()
            })
            .collect();
        (cs, !self.system_defaulted)
    }
}

/// Whether a node counts for a constraint (nodeAffinityPolicy, nodeTaintsPolicy).
fn node_included(c: &SpreadConstraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_node_affinity && !pod.matches_node_selector(node) {
        return false;
    }
    if c.honor_node_taints {
        let untolerated = node
            .taints
            .iter()
            .any(|t| t.effect != Effect::PreferNoSchedule && !tolerated(&pod.tolerations, t));
        if untolerated {
            return false;
        }
    }
    true
}

fn count_matching(node: &NodeInfo, sel: &Selector, ns: &str) -> i64 {
    node.pods
        .iter()
        .filter(|p| !p.terminating && p.key.namespace == ns && sel.matches(&p.labels))
        .count() as i64
}

fn has_all_keys(node: &NodeInfo, cs: &[SpreadConstraint]) -> bool {
    cs.iter().all(|c| node.labels.contains_key(&c.topology_key))
}

#[derive(Clone)]
struct FilterState {
    constraints: Vec<SpreadConstraint>,
    /// Per constraint: domain value -> matching pods (kept for `add_pod`/`remove_pod`).
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the domain values decided once here rather than per node: the
    /// values that break maxSkew (`false`), or when a value outside the known domains breaks
    /// it too, the values that keep it (`true`).
    verdicts: Vec<(HashSet<String>, bool)>,
}

struct ScoreState {
    constraints: Vec<SpreadConstraint>,
    require_all: bool,
    /// Per constraint (non-hostname): domain value -> matching pods.
    counts: Vec<HashMap<String, i64>>,
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
    fn couples(&self, pod: &PodInfo, snap: &Snapshot) -> bool {
        !pod.spread.is_empty()
            || !self
                .constraints(pod, snap, WhenUnsatisfiable::ScheduleAnyway)
                .0
                .is_empty()
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::PodDelete,
            ClusterEvent::PodAdd,
        ]
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status {
        let (constraints, _) = self.constraints(pod, snap, WhenUnsatisfiable::DoNotSchedule);
        if constraints.is_empty() {
            return Status::Skip;
        }
        let mut counts = vec![HashMap::new(); constraints.len()];
        // One constraint over all nodes (no node filter applies): the domains are the key's
        // values on the nodes, the counts come from the groups of matching pods.
        let fast = constraints.len() == 1
            && pod.node_selector.is_empty()
            && pod.required_node_affinity.is_none()
            && !constraints[0].honor_node_taints;
        if fast {
            let c = &constraints[0];
            let domains = &mut counts[0];
            for v in snap
                .key_values(&c.topology_key)
                .into_iter()
                .flat_map(|m| m.keys())
            {
                domains.insert(v.clone(), 0);
            }
            for g in snap.pod_groups() {
                if g.terminating
                    || g.namespace != pod.key.namespace
                    || !c.selector.matches(&g.labels)
                {
                    continue;
                }
                for (&n, &cnt) in &g.nodes {
                    if let Some(v) = snap.nodes[n as usize].labels.get(&c.topology_key)
                        && let Some(d) = domains.get_mut(v)
                    {
                        *d += i64::from(cnt);
                    }
                }
            }
        }
        for node in snap.nodes.iter().filter(|_| !fast) {
            if !has_all_keys(node, &constraints) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if !node_included(c, pod, node) {
                    continue;
                }
                let v = &node.labels[&c.topology_key];
                *counts[i].entry(v.clone()).or_insert(0) +=
                    count_matching(node, &c.selector, &pod.key.namespace);
            }
        }
        let verdicts = decide(&constraints, &counts, pod);
        state.write(
            slot,
            FilterState {
                constraints,
                counts,
                verdicts,
            },
        );
        Status::Success
    }
    fn has_extensions(&self) -> bool {
        true
    }
    fn add_pod(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        Self::update_with_pod(slot, state, pod, other, node, 1)
    }
    fn remove_pod(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        Self::update_with_pod(slot, state, pod, other, node, -1)
    }
}

/// Per constraint, the domain values whose verdict differs from that of an unknown value (see
/// `FilterState::verdicts`), from the counts per domain.
fn decide(
    constraints: &[SpreadConstraint],
    counts: &[HashMap<String, i64>],
    pod: &PodInfo,
) -> Vec<(HashSet<String>, bool)> {
    constraints
        .iter()
        .zip(counts)
        .map(|(c, domains)| {
            let min = if c
                .min_domains
                .is_some_and(|m| (domains.len() as i64) < i64::from(m))
            {
                0
            } else {
                domains
                    .values()
                    .copied()
                    .min()
                    .unwrap_or(i64::from(i32::MAX))
            };
            let self_match = i64::from(c.selector.matches(&pod.labels));
            let over = |m: i64| m + self_match - min > i64::from(c.max_skew);
            let allow = over(0);
            let set = domains
                .iter()
                .filter(|(_, m)| over(**m) != allow)
                .map(|(v, _)| v.clone())
                .collect();
            (set, allow)
        })
        .collect()
}

impl PodTopologySpread {
    /// Upstream `preFilterState.updateWithPod`: the counts as if `other` were added to
    /// (`d` = 1) or removed from (`d` = -1) `node`, and the verdicts decided again.
    fn update_with_pod(
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        d: i64,
    ) -> Status {
        let Some(st) = state.read::<FilterState>(slot) else {
            return Status::Error("PodTopologySpread: no PreFilter state".into());
        };
        if other.terminating
            || other.key.namespace != pod.key.namespace
            || !has_all_keys(node, &st.constraints)
        {
            return Status::Success;
        }
        let mut st = st.clone();
        let mut changed = false;
        for (i, c) in st.constraints.iter().enumerate() {
            if !node_included(c, pod, node) || !c.selector.matches(&other.labels) {
                continue;
            }
            let v = &node.labels[&c.topology_key];
            *st.counts[i].entry(v.clone()).or_insert(0) += d;
            changed = true;
        }
        if changed {
            st.verdicts = decide(&st.constraints, &st.counts, pod);
            state.write(slot, st);
        }
        Status::Success
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(
        &self,
        slot: usize,
        state: &CycleState,
        _: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        let Some(st) = state.read::<FilterState>(slot) else {
            return Status::Error("PodTopologySpread: no PreFilter state".into());
        };
        for (i, c) in st.constraints.iter().enumerate() {
            let Some(v) = node.labels.get(&c.topology_key) else {
                return Status::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let (set, allow) = &st.verdicts[i];
            let over = if *allow {
                !set.contains(v)
            } else {
                !set.is_empty() && set.contains(v)
            };
            if over {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::Success
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status {
        let (constraints, require_all) =
            self.constraints(pod, snap, WhenUnsatisfiable::ScheduleAnyway);
        if constraints.is_empty() {
            return Status::Skip;
        }
        let mut counts = vec![HashMap::new(); constraints.len()];
        for node in &snap.nodes {
            if require_all && !has_all_keys(node, &constraints) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if c.topology_key == LABEL_HOSTNAME || !node_included(c, pod, node) {
                    continue;
                }
                let Some(v) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                *counts[i].entry(v.clone()).or_insert(0) +=
                    count_matching(node, &c.selector, &pod.key.namespace);
            }
        }
        state.write(
            slot,
            ScoreState {
                constraints,
                require_all,
                counts,
            },
        );
        Status::Success
    }
}

impl ScorePlugin for PodTopologySpread {
    fn score(&self, _: usize, _: &CycleState, _: &PodInfo, _: &NodeInfo, _: &Snapshot) -> i64 {
        // Scores depend on the domains among the feasible nodes: computed in `normalize`.
        0
    }
    fn normalizes(&self) -> bool {
        true
    }
    fn normalize(
        &self,
        slot: usize,
        state: &CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
        scores: &mut [NodeScore],
    ) {
        let Some(st) = state.read::<ScoreState>(slot) else {
            return;
        };
        let node = |s: &NodeScore| &snap.nodes[s.node as usize];
        // Feasible nodes missing a key are ignored (score 0) when the pod's own constraints apply.
        let ignored: HashSet<u32> = if st.require_all {
            scores
                .iter()
                .filter(|s| !has_all_keys(node(s), &st.constraints))
                .map(|s| s.node)
                .collect()
        } else {
            HashSet::new()
        };
        let considered = scores.len() - ignored.len();
        let weights: Vec<f64> = st
            .constraints
            .iter()
            .map(|c| {
                let size = if c.topology_key == LABEL_HOSTNAME {
                    considered
                } else {
                    scores
                        .iter()
                        .filter(|s| !ignored.contains(&s.node))
                        .filter_map(|s| node(s).labels.get(&c.topology_key))
                        .collect::<HashSet<_>>()
                        .len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for s in scores.iter_mut() {
            if ignored.contains(&s.node) {
                continue;
            }
            let n = &snap.nodes[s.node as usize];
            let mut total = 0f64;
            for (i, c) in st.constraints.iter().enumerate() {
                let Some(v) = n.labels.get(&c.topology_key) else {
                    continue;
                };
                let cnt = if c.topology_key == LABEL_HOSTNAME {
                    count_matching(n, &c.selector, &pod.key.namespace)
                } else {
                    st.counts[i].get(v).copied().unwrap_or(0)
                };
                total += cnt as f64 * weights[i] + f64::from(c.max_skew - 1);
            }
            s.score = total.round() as i64;
        }
        let mut min = i64::MAX;
        let mut max = 0;
        for s in scores.iter().filter(|s| !ignored.contains(&s.node)) {
            min = min.min(s.score);
            max = max.max(s.score);
        }
        for s in scores.iter_mut() {
            s.score = if ignored.contains(&s.node) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - s.score) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::model::Snapshot;
    use crate::plugins::testutil::*;
    use crate::status::Status;

    fn app(name: &str) -> crate::model::PodInfo {
        pod(
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}}, "spec": {"containers": []}}),
        )
    }

    fn spread(constraints: serde_json::Value, extra: serde_json::Value) -> crate::model::PodInfo {
        let mut spec = json!({"containers": [], "topologySpreadConstraints": constraints});
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                spec[k] = v;
            }
        }
        pod(
            json!({"metadata": {"name": "new", "namespace": "default", "labels": {"app": "x"}}, "spec": spec}),
        )
    }

    fn c(key: &str, skew: i32, when: &str) -> serde_json::Value {
        json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "x"}}})
    }

    /// zone a: a1 (2 pods), a2 (0); zone b: b1 (1 pod); c1 has no zone label.
    fn cluster() -> Snapshot {
        let mut s = snap(vec![
            cap_node(
                "a1",
                "1",
                "1",
                &[("zone", "a"), ("kubernetes.io/hostname", "a1")],
            ),
            cap_node(
                "a2",
                "1",
                "1",
                &[("zone", "a"), ("kubernetes.io/hostname", "a2")],
            ),
            cap_node(
                "b1",
                "1",
                "1",
                &[
                    ("zone", "b"),
                    ("kubernetes.io/hostname", "b1"),
                    ("tier", "gold"),
                ],
            ),
            cap_node("c1", "1", "1", &[("kubernetes.io/hostname", "c1")]),
        ]);
        s.add_pod(0, Arc::new(app("p1")));
        s.add_pod(0, Arc::new(app("p2")));
        s.add_pod(2, Arc::new(app("p3")));
        s
    }

    fn ok(p: &crate::model::PodInfo, s: &Snapshot) -> Vec<bool> {
        let fw = single("PodTopologySpread", None);
        filter_all(&fw, p, s)
            .iter()
            .map(Status::is_success)
            .collect()
    }

    #[test]
    fn max_skew_by_zone() {
        let s = cluster();
        // zone a: 2, zone b: 1. Placing in a makes 3-1=2 > 1; in b 2-2... ok.
        assert_eq!(
            ok(
                &spread(json!([c("zone", 1, "DoNotSchedule")]), json!({})),
                &s
            ),
            [false, false, true, false]
        );
        assert_eq!(
            ok(
                &spread(json!([c("zone", 2, "DoNotSchedule")]), json!({})),
                &s
            ),
            [true, true, true, false]
        );
        let missing = &filter_all(
            &single("PodTopologySpread", None),
            &spread(json!([c("zone", 2, "DoNotSchedule")]), json!({})),
            &s,
        )[3];
        assert_eq!(
            *missing,
            Status::unresolvable(
                "node(s) didn't match pod topology spread constraints (missing required label)"
            )
        );
        // Hostname: counts a1 2, a2 0, b1 1, c1 0; min 0.
        assert_eq!(
            ok(
                &spread(
                    json!([c("kubernetes.io/hostname", 1, "DoNotSchedule")]),
                    json!({})
                ),
                &s
            ),
            [false, true, false, true]
        );
        // Soft constraints never filter.
        assert_eq!(
            ok(
                &spread(json!([c("zone", 1, "ScheduleAnyway")]), json!({})),
                &s
            ),
            [true, true, true, true]
        );
    }

    #[test]
    fn min_domains_and_policies() {
        let s = cluster();
        // Two zones < minDomains 3: global minimum is 0, so zone b (1+1-0=2 > 1) fails too.
        let mut cc = c("zone", 1, "DoNotSchedule");
        cc["minDomains"] = json!(3);
        assert_eq!(
            ok(&spread(json!([cc]), json!({})), &s),
            [false, false, false, false]
        );
        // nodeAffinityPolicy Honor (default): with nodeSelector tier=gold only b1's domain counts,
        // so zone a has no count (0): a nodes pass, as upstream.
        let sel = json!({"nodeSelector": {"tier": "gold"}});
        assert_eq!(
            ok(
                &spread(json!([c("zone", 1, "DoNotSchedule")]), sel.clone()),
                &s
            ),
            [true, true, true, false]
        );
        let mut ign = c("zone", 1, "DoNotSchedule");
        ign["nodeAffinityPolicy"] = json!("Ignore");
        assert_eq!(
            ok(&spread(json!([ign]), sel), &s),
            [false, false, true, false]
        );
    }

    #[test]
    fn node_taints_policy() {
        let mut s = cluster();
        s.upsert_node(node(json!({"metadata": {"name": "b1", "labels": {"zone": "b", "kubernetes.io/hostname": "b1"}},
            "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "1", "memory": "1", "pods": "110"}}})));
        // Honor: the tainted node's domain (zone b, 1 pod) is not counted: only zone a (2) -> min 2.
        let mut h = c("zone", 1, "DoNotSchedule");
        h["nodeTaintsPolicy"] = json!("Honor");
        assert_eq!(
            ok(&spread(json!([h]), json!({})), &s),
            [true, true, true, false]
        );
    }

    #[test]
    fn soft_scores_prefer_emptier_domains() {
        let fw = single("PodTopologySpread", None);
        let s = cluster();
        let scores = score_all(
            &fw,
            &spread(
                json!([c("kubernetes.io/hostname", 1, "ScheduleAnyway")]),
                json!({}),
            ),
            &s,
        );
        // counts 2,0,1,0; weight ln(4+2); raw round(2*1.79)=4, 0, 2, 0 -> 100*(4+0-s)/4
        assert_eq!(scores, vec![0, 100, 50, 100]);
        let zs = score_all(
            &fw,
            &spread(json!([c("zone", 1, "ScheduleAnyway")]), json!({})),
            &s,
        );
        // zone counts a 2, b 1; ln(2+2)=1.386: a round(2.77)=3, b round(1.39)=1; c1 ignored
        // min 1, max 3: a 100*(3+1-3)/3=33, b 100*(3)/3=100
        assert_eq!(zs, vec![33, 33, 100, 0]);
    }

    #[test]
    fn default_constraints_apply_through_services() {
        let fw = single("PodTopologySpread", None);
        let mut s = cluster();
        let plain = app("new");
        // No service selects the pod: no default constraints, all scores 0 (skipped).
        assert_eq!(score_all(&fw, &plain, &s), vec![0, 0, 0, 0]);
        s.services.push((
            "default".into(),
            crate::model::Selector::from_labels(&[("app".to_string(), "x".to_string())].into()),
        ));
        let sc = score_all(&fw, &plain, &s);
        assert!(sc[1] > sc[0], "{sc:?}");
    }
}
