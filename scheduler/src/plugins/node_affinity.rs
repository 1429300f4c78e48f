//! NodeAffinity (with NodeSelector): `spec.nodeSelector` and required node affinity filter,
//! preferred node affinity scores.

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeScore, Plugin, PreFilterPlugin, PreScorePlugin,
    ScorePlugin, default_normalize,
};
use crate::model::{NodeInfo, PodInfo, Snapshot};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// NodeAffinity.
#[derive(Debug, Default)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
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
    fn events(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdd, ClusterEvent::NodeUpdate]
    }
}

impl PreFilterPlugin for NodeAffinity {
    fn pre_filter(&self, _: usize, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        if pod.node_selector.is_empty() && pod.required_node_affinity.is_none() {
            Status::Skip
        } else {
            Status::Success
        }
    }
}

impl FilterPlugin for NodeAffinity {
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        if pod.matches_node_selector(node) {
            Status::Success
        } else {
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        }
    }
}

impl PreScorePlugin for NodeAffinity {
    fn pre_score(&self, _: usize, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        if pod.preferred_node_affinity.is_empty() {
            Status::Skip
        } else {
            Status::Success
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _: usize, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        pod.preferred_node_affinity
            .iter()
            .filter(|(w, t)| *w != 0 && t.matches(node))
            .map(|(w, _)| *w as i64)
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
        default_normalize(MAX_NODE_SCORE, false, scores);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::testutil::*;
    use crate::status::Status;

    fn with_req(exprs: serde_json::Value) -> crate::model::PodInfo {
        pod(
            json!({"spec": {"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": exprs}}}}}),
        )
    }

    #[test]
    fn required_operators_table() {
        let fw = single("NodeAffinity", None);
        let s = snap(vec![
            cap_node("n1", "1", "1", &[("zone", "a"), ("gen", "5")]),
            cap_node("n2", "1", "1", &[("zone", "b"), ("gen", "10")]),
            cap_node("n3", "1", "1", &[]),
        ]);
        let e = |key: &str, op: &str, vals: &[&str]| json!([{"matchExpressions": [{"key": key, "operator": op, "values": vals}]}]);
        let cases = [
            (e("zone", "In", &["a"]), [true, false, false]),
            (e("zone", "NotIn", &["a"]), [false, true, true]),
            (e("zone", "Exists", &[]), [true, true, false]),
            (e("zone", "DoesNotExist", &[]), [false, false, true]),
            (e("gen", "Gt", &["6"]), [false, true, false]),
            (e("gen", "Lt", &["6"]), [true, false, false]),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
                [false, true, false],
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]),
                [true, false, true],
            ),
            // Terms are ORed; expressions within a term are ANDed.
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}]),
                [true, false, true],
            ),
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                          {"key": "gen", "operator": "Gt", "values": ["7"]}]}]),
                [false, true, false],
            ),
            // An empty term matches nothing.
            (json!([{}]), [false, false, false]),
        ];
        for (terms, want) in cases {
            let got: Vec<bool> = filter_all(&fw, &with_req(terms.clone()), &s)
                .iter()
                .map(Status::is_success)
                .collect();
            assert_eq!(got, want, "{terms}");
        }
        // nodeSelector and affinity must both hold.
        let both = pod(
            json!({"spec": {"containers": [], "nodeSelector": {"zone": "b"}, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": e("gen", "Lt", &["6"])}}}}}),
        );
        let got: Vec<bool> = filter_all(&fw, &both, &s)
            .iter()
            .map(Status::is_success)
            .collect();
        assert_eq!(got, [false, false, false]);
        assert_eq!(
            filter_all(&fw, &both, &s)[0],
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        );
    }

    #[test]
    fn preferred_scores() {
        let fw = single("NodeAffinity", None);
        let s = snap(vec![
            cap_node("n1", "1", "1", &[("zone", "a"), ("disk", "ssd")]),
            cap_node("n2", "1", "1", &[("zone", "a")]),
            cap_node("n3", "1", "1", &[]),
        ]);
        let p = pod(
            json!({"spec": {"containers": [], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 2, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 6, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}}}),
        );
        // raw 8, 2, 0 -> 100, 25, 0
        assert_eq!(score_all(&fw, &p, &s), vec![100, 25, 0]);
    }
}
