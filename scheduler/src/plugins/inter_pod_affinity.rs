//! InterPodAffinity: required/preferred pod affinity and anti-affinity over topology keys,
//! namespaces and namespaceSelector, plus existing pods' anti-affinity towards the new pod.

use std::collections::HashMap;

use serde::Deserialize;

use crate::Error;
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeScore, Plugin, PreFilterPlugin, PreScorePlugin,
    ScorePlugin,
};
use crate::model::{AffinityTerm, NodeInfo, PodInfo, Snapshot};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// Counts per topology key, then per value.
type TopoCounts = HashMap<String, HashMap<String, i64>>;

fn bump(m: &mut TopoCounts, key: &str, val: &str, d: i64) {
    *m.entry(key.to_owned())
        .or_default()
        .entry(val.to_owned())
        .or_default() += d;
}

/// Adds `d` and drops the entries that reach zero, so that "no matching pod anywhere" stays an
/// empty map (the first-of-group rule reads emptiness).
fn bump_prune(m: &mut TopoCounts, key: &str, val: &str, d: i64) {
    let vals = m.entry(key.to_owned()).or_default();
    let c = vals.entry(val.to_owned()).or_default();
    *c += d;
    if *c == 0 {
        vals.remove(val);
        if vals.is_empty() {
            m.remove(key);
        }
    }
}

fn get(m: &TopoCounts, key: &str, val: &str) -> i64 {
    m.get(key).and_then(|v| v.get(val)).copied().unwrap_or(0)
}

/// InterPodAffinity.
#[derive(Debug)]
pub struct InterPodAffinity {
    hard_pod_affinity_weight: i64,
    ignore_preferred_of_existing: bool,
}

impl Default for InterPodAffinity {
    fn default() -> Self {
        InterPodAffinity {
            hard_pod_affinity_weight: 1,
            ignore_preferred_of_existing: false,
        }
    }
}

impl InterPodAffinity {
    /// Builds from `InterPodAffinityArgs`.
    pub fn from_args(args: &serde_json::Value) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct A {
            hard_pod_affinity_weight: Option<i64>,
            ignore_preferred_terms_of_existing_pods: Option<bool>,
        }
        if args.is_null() {
            return Ok(Self::default());
        }
        let a: A = serde_json::from_value(args.clone())
            .map_err(|e| Error::Config(format!("InterPodAffinity args: {e}")))?;
        let w = a.hard_pod_affinity_weight.unwrap_or(1);
        if !(0..=100).contains(&w) {
            return Err(Error::Config(
                "hardPodAffinityWeight must be in 0..=100".into(),
            ));
        }
        Ok(InterPodAffinity {
            hard_pod_affinity_weight: w,
            ignore_preferred_of_existing: a
                .ignore_preferred_terms_of_existing_pods
                .unwrap_or(false),
        })
    }
}

#[derive(Clone)]
struct FilterState {
    existing_anti: TopoCounts,
    affinity: TopoCounts,
    anti: TopoCounts,
    matches_own_affinity: bool,
}

struct ScoreState(TopoCounts);

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
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
    fn couples(&self, pod: &PodInfo, _: &Snapshot) -> bool {
        pod.has_affinity_terms()
    }
    fn reaches(&self, pod: &PodInfo) -> bool {
        pod.has_affinity_terms()
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

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status {
        let own = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        if !own && snap.pods_with_required_anti_affinity == 0 {
            return Status::Skip;
        }
        let mut st = FilterState {
            existing_anti: TopoCounts::new(),
            affinity: TopoCounts::new(),
            anti: TopoCounts::new(),
            matches_own_affinity: pod.required_affinity.iter().all(|t| t.matches(pod, snap)),
        };
        // Existing pods' required anti-affinity towards this pod: the snapshot keeps their
        // terms aggregated, with counts per topology value.
        for (t, counts) in &snap.existing_anti {
            if t.matches(pod, snap) {
                for (v, c) in counts {
                    bump(&mut st.existing_anti, &t.topology_key, v, *c);
                }
            }
        }
        // This pod's own terms, matched once per group of identically labelled pods.
        if own {
            for g in snap.pod_groups() {
                for (terms, out) in [
                    (&pod.required_affinity, &mut st.affinity),
                    (&pod.required_anti_affinity, &mut st.anti),
                ] {
                    for t in terms {
                        if !t.matches_labels(&g.namespace, &g.labels, snap) {
                            continue;
                        }
                        for (&n, &c) in &g.nodes {
                            if let Some(v) = snap.nodes[n as usize].labels.get(&t.topology_key) {
                                bump(out, &t.topology_key, v, i64::from(c));
                            }
                        }
                    }
                }
            }
        }
        state.write(slot, st);
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
        snap: &Snapshot,
    ) -> Status {
        Self::update_with_pod(slot, state, pod, other, node, snap, 1)
    }
    fn remove_pod(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> Status {
        Self::update_with_pod(slot, state, pod, other, node, snap, -1)
    }
}

impl InterPodAffinity {
    /// Upstream `preFilterState.updateWithPod`: the counts PreFilter made, as if `other` were
    /// added to (`d` = 1) or removed from (`d` = -1) `node`; the same per-term matching as
    /// PreFilter.
    fn update_with_pod(
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
        d: i64,
    ) -> Status {
        let Some(st) = state.read::<FilterState>(slot) else {
            return Status::Error("InterPodAffinity: no PreFilter state".into());
        };
        let mut st = st.clone();
        for t in &other.required_anti_affinity {
            if let Some(v) = node.labels.get(&t.topology_key)
                && t.matches(pod, snap)
            {
                bump_prune(&mut st.existing_anti, &t.topology_key, v, d);
            }
        }
        for (terms, out) in [
            (&pod.required_affinity, &mut st.affinity),
            (&pod.required_anti_affinity, &mut st.anti),
        ] {
            for t in terms {
                if let Some(v) = node.labels.get(&t.topology_key)
                    && t.matches(other, snap)
                {
                    bump_prune(out, &t.topology_key, v, d);
                }
            }
        }
        state.write(slot, st);
        Status::Success
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(
        &self,
        slot: usize,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        let Some(st) = state.read::<FilterState>(slot) else {
            return Status::Error("InterPodAffinity: no PreFilter state".into());
        };
        // Existing pods' required anti-affinity towards this pod.
        if !st.existing_anti.is_empty() {
            for (k, vals) in &st.existing_anti {
                if node
                    .labels
                    .get(k)
                    .and_then(|v| vals.get(v))
                    .is_some_and(|c| *c > 0)
                {
                    return Status::unschedulable(
                        "node(s) didn't satisfy existing pods anti-affinity rules",
                    );
                }
            }
        }
        // This pod's required affinity.
        if !pod.required_affinity.is_empty() {
            let mut pods_exist = true;
            for t in &pod.required_affinity {
                match node.labels.get(&t.topology_key) {
                    Some(v) => {
                        if get(&st.affinity, &t.topology_key, v) <= 0 {
                            pods_exist = false;
                        }
                    }
                    None => return Status::unresolvable("node(s) didn't match pod affinity rules"),
                }
            }
            // The first pod of a group with affinity to itself may go anywhere.
            let first_of_group = st.affinity.is_empty() && st.matches_own_affinity;
            if !pods_exist && !first_of_group {
                return Status::unresolvable("node(s) didn't match pod affinity rules");
            }
        }
        // This pod's required anti-affinity.
        for t in &pod.required_anti_affinity {
            if let Some(v) = node.labels.get(&t.topology_key)
                && get(&st.anti, &t.topology_key, v) > 0
            {
                return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
            }
        }
        Status::Success
    }
}

impl InterPodAffinity {
    fn add_terms(
        scores: &mut TopoCounts,
        terms: &[AffinityTerm],
        target: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
        sign: i64,
        weight: Option<i64>,
    ) {
        for t in terms {
            let w = weight.unwrap_or(t.weight as i64);
            if w == 0 {
                continue;
            }
            if let Some(v) = node.labels.get(&t.topology_key)
                && t.matches(target, snap)
            {
                bump(scores, &t.topology_key, v, sign * w);
            }
        }
    }
}

impl PreScorePlugin for InterPodAffinity {
    fn pre_score(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Status {
        let has_constraints =
            !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        if !has_constraints
            && (self.ignore_preferred_of_existing || snap.pods_with_scoring_affinity == 0)
        {
            return Status::Skip;
        }
        let mut scores = TopoCounts::new();
        // This pod's preferred terms, matched once per group of identically labelled pods.
        if has_constraints {
            for g in snap.pod_groups() {
                for (terms, sign) in [
                    (&pod.preferred_affinity, 1),
                    (&pod.preferred_anti_affinity, -1),
                ] {
                    for t in terms {
                        let w = i64::from(t.weight);
                        if w == 0 || !t.matches_labels(&g.namespace, &g.labels, snap) {
                            continue;
                        }
                        for (&n, &c) in &g.nodes {
                            if let Some(v) = snap.nodes[n as usize].labels.get(&t.topology_key) {
                                bump(&mut scores, &t.topology_key, v, sign * w * i64::from(c));
                            }
                        }
                    }
                }
            }
        }
        // Existing pods' terms towards this pod.
        if !self.ignore_preferred_of_existing && snap.pods_with_scoring_affinity > 0 {
            for node in &snap.nodes {
                if node.pods_with_affinity == 0 {
                    continue;
                }
                for ex in &node.pods {
                    if !ex.has_affinity_terms() {
                        continue;
                    }
                    if self.hard_pod_affinity_weight > 0 {
                        Self::add_terms(
                            &mut scores,
                            &ex.required_affinity,
                            pod,
                            node,
                            snap,
                            1,
                            Some(self.hard_pod_affinity_weight),
                        );
                    }
                    Self::add_terms(
                        &mut scores,
                        &ex.preferred_affinity,
                        pod,
                        node,
                        snap,
                        1,
                        None,
                    );
                    Self::add_terms(
                        &mut scores,
                        &ex.preferred_anti_affinity,
                        pod,
                        node,
                        snap,
                        -1,
                        None,
                    );
                }
            }
        }
        if scores.is_empty() {
            return Status::Skip;
        }
        state.write(slot, ScoreState(scores));
        Status::Success
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(
        &self,
        slot: usize,
        state: &CycleState,
        _: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> i64 {
        let Some(ScoreState(scores)) = state.read::<ScoreState>(slot) else {
            return 0;
        };
        scores
            .iter()
            .filter_map(|(k, vals)| node.labels.get(k).and_then(|v| vals.get(v)))
            .sum()
    }
    fn normalizes(&self) -> bool {
        true
    }
    fn normalize(
        &self,
        _: usize,
        _: &CycleState,
        _: &PodInfo,
        _: &Snapshot,
        scores: &mut [NodeScore],
    ) {
        let min = scores.iter().map(|s| s.score).min().unwrap_or(0);
        let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
        let diff = max - min;
        for s in scores.iter_mut() {
            s.score = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((s.score - min) as f64 / diff as f64)) as i64
            } else {
                0
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

    fn labeled(
        name: &str,
        ns: &str,
        labels: serde_json::Value,
        affinity: serde_json::Value,
    ) -> crate::model::PodInfo {
        pod(
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {"containers": [], "affinity": affinity}}),
        )
    }

    fn term(sel: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": sel}, "topologyKey": key})
    }

    fn cluster() -> Snapshot {
        // Two zones, two nodes each.
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
                &[("zone", "b"), ("kubernetes.io/hostname", "b1")],
            ),
            cap_node("b2", "1", "1", &[("kubernetes.io/hostname", "b2")]),
        ]);
        s.add_pod(
            0,
            Arc::new(labeled("db", "default", json!({"app": "db"}), json!({}))),
        );
        s.add_pod(
            2,
            Arc::new(labeled("web", "other", json!({"app": "web"}), json!({}))),
        );
        s.set_namespace("other", [("team".to_string(), "x".to_string())].into());
        s
    }

    fn ok(fw: &crate::framework::Framework, p: &crate::model::PodInfo, s: &Snapshot) -> Vec<bool> {
        filter_all(fw, p, s)
            .iter()
            .map(Status::is_success)
            .collect()
    }

    #[test]
    fn required_affinity_table() {
        let fw = single("InterPodAffinity", None);
        let s = cluster();
        let aff = |t: serde_json::Value| json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});
        // Same zone as app=db (zone a); b2 lacks the zone label.
        assert_eq!(
            ok(
                &fw,
                &labeled(
                    "p",
                    "default",
                    json!({}),
                    aff(term(json!({"app": "db"}), "zone"))
                ),
                &s
            ),
            [true, true, false, false]
        );
        // Same host as app=db.
        assert_eq!(
            ok(
                &fw,
                &labeled(
                    "p",
                    "default",
                    json!({}),
                    aff(term(json!({"app": "db"}), "kubernetes.io/hostname"))
                ),
                &s
            ),
            [true, false, false, false]
        );
        // app=web is in namespace "other": not matched by default (own namespace)...
        assert_eq!(
            ok(
                &fw,
                &labeled(
                    "p",
                    "default",
                    json!({}),
                    aff(term(json!({"app": "web"}), "zone"))
                ),
                &s
            ),
            [false, false, false, false]
        );
        // ...but by namespaces list or namespaceSelector.
        let mut t = term(json!({"app": "web"}), "zone");
        t["namespaces"] = json!(["other"]);
        assert_eq!(
            ok(&fw, &labeled("p", "default", json!({}), aff(t)), &s),
            [false, false, true, false]
        );
        let mut t = term(json!({"app": "web"}), "zone");
        t["namespaceSelector"] = json!({"matchLabels": {"team": "x"}});
        assert_eq!(
            ok(&fw, &labeled("p", "default", json!({}), aff(t)), &s),
            [false, false, true, false]
        );
        let mut t = term(json!({"app": "web"}), "zone");
        t["namespaceSelector"] = json!({});
        assert_eq!(
            ok(&fw, &labeled("p", "default", json!({}), aff(t)), &s),
            [false, false, true, false]
        );
        // First pod of a self-affine group: allowed where the topology key exists.
        assert_eq!(
            ok(
                &fw,
                &labeled(
                    "p",
                    "default",
                    json!({"app": "new"}),
                    aff(term(json!({"app": "new"}), "zone"))
                ),
                &s
            ),
            [true, true, true, false]
        );
    }

    #[test]
    fn required_anti_affinity_both_ways() {
        let fw = single("InterPodAffinity", None);
        let mut s = cluster();
        let anti = |t: serde_json::Value| json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});
        assert_eq!(
            ok(
                &fw,
                &labeled(
                    "p",
                    "default",
                    json!({}),
                    anti(term(json!({"app": "db"}), "zone"))
                ),
                &s
            ),
            [false, false, true, true]
        );
        // An existing pod's anti-affinity keeps matching pods off its host.
        s.add_pod(
            3,
            Arc::new(labeled(
                "guard",
                "default",
                json!({}),
                anti(term(json!({"role": "noisy"}), "kubernetes.io/hostname")),
            )),
        );
        assert_eq!(
            ok(
                &fw,
                &labeled("n", "default", json!({"role": "noisy"}), json!({})),
                &s
            ),
            [true, true, true, false]
        );
        assert_eq!(
            filter_all(
                &fw,
                &labeled("n", "default", json!({"role": "noisy"}), json!({})),
                &s
            )[3],
            Status::unschedulable("node(s) didn't satisfy existing pods anti-affinity rules")
        );
        assert_eq!(
            ok(
                &fw,
                &labeled("n", "default", json!({"role": "quiet"}), json!({})),
                &s
            ),
            [true, true, true, true]
        );
    }

    #[test]
    fn preferred_scores() {
        let fw = single("InterPodAffinity", None);
        let s = cluster();
        let p = labeled(
            "p",
            "default",
            json!({}),
            json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": term(json!({"app": "db"}), "zone")}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "podAffinityTerm": term(json!({"app": "db"}), "kubernetes.io/hostname")}]}}),
        );
        // raw: a1 10-5=5, a2 10, b1 0, b2 0 -> min-max: 50, 100, 0, 0
        assert_eq!(score_all(&fw, &p, &s), vec![50, 100, 0, 0]);
    }

    #[test]
    fn existing_pods_preferences_score() {
        let fw = single("InterPodAffinity", None);
        let mut s = cluster();
        s.add_pod(1, Arc::new(labeled("fan", "default", json!({}), json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 4, "podAffinityTerm": term(json!({"app": "x"}), "kubernetes.io/hostname")}]}}))));
        let p = labeled("p", "default", json!({"app": "x"}), json!({}));
        assert_eq!(score_all(&fw, &p, &s), vec![0, 100, 0, 0]);
    }
}
