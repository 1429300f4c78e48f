//! TaintToleration: NoSchedule/NoExecute taints must be tolerated; untolerated
//! PreferNoSchedule taints lower the score.

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeScore, Plugin, PreScorePlugin, ScorePlugin,
    default_normalize,
};
use crate::model::{Effect, NodeInfo, PodInfo, Snapshot, Toleration, tolerated};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// TaintToleration.
#[derive(Debug, Default)]
pub struct TaintToleration;

struct PreferTolerations(Vec<Toleration>);

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
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

impl FilterPlugin for TaintToleration {
    #[inline]
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        for t in &node.taints {
            if t.effect == Effect::PreferNoSchedule {
                continue;
            }
            if !tolerated(&pod.tolerations, t) {
                return Status::unresolvable(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                ));
            }
        }
        Status::Success
    }
}

impl PreScorePlugin for TaintToleration {
    fn pre_score(
        &self,
        slot: usize,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
    ) -> Status {
        let tols = pod
            .tolerations
            .iter()
            .filter(|t| t.effect.is_none_or(|e| e == Effect::PreferNoSchedule))
            .cloned()
            .collect();
        state.write(slot, PreferTolerations(tols));
        Status::Success
    }
}

impl ScorePlugin for TaintToleration {
    #[inline]
    fn score(
        &self,
        slot: usize,
        state: &CycleState,
        _: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> i64 {
        if node.taints.is_empty() {
            return 0;
        }
        let empty = PreferTolerations(Vec::new());
        let tols = state.read::<PreferTolerations>(slot).unwrap_or(&empty);
        node.taints
            .iter()
            .filter(|t| t.effect == Effect::PreferNoSchedule && !tolerated(&tols.0, t))
            .count() as i64
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
        default_normalize(MAX_NODE_SCORE, true, scores);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::testutil::*;
    use crate::status::Status;

    fn tainted(name: &str, taints: serde_json::Value) -> crate::model::NodeInfo {
        node(json!({"metadata": {"name": name}, "spec": {"taints": taints}}))
    }

    #[test]
    fn filter_table() {
        let fw = single("TaintToleration", None);
        let s = snap(vec![
            tainted(
                "a",
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            ),
            tainted(
                "b",
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]),
            ),
            tainted(
                "c",
                json!([{"key": "soft", "value": "x", "effect": "PreferNoSchedule"}]),
            ),
        ]);
        let cases = [
            (json!([]), [false, false, true]),
            (
                json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]),
                [true, false, true],
            ),
            (
                json!([{"key": "dedicated", "value": "gpu"}]),
                [true, true, true],
            ),
            (
                json!([{"key": "dedicated", "value": "cpu"}]),
                [false, false, true],
            ),
            (
                json!([{"key": "dedicated", "operator": "Exists"}]),
                [true, true, true],
            ),
            (json!([{"operator": "Exists"}]), [true, true, true]),
            (
                json!([{"operator": "Exists", "effect": "NoExecute"}]),
                [false, true, true],
            ),
        ];
        for (tols, want) in cases {
            let p = pod(json!({"spec": {"containers": [], "tolerations": tols}}));
            let got: Vec<bool> = filter_all(&fw, &p, &s)
                .iter()
                .map(Status::is_success)
                .collect();
            assert_eq!(got, want, "{tols}");
        }
        let p = pod(json!({"spec": {"containers": []}}));
        assert_eq!(
            filter_all(&fw, &p, &s)[0],
            Status::unresolvable("node(s) had untolerated taint {dedicated: gpu}")
        );
    }

    #[test]
    fn score_table() {
        let fw = single("TaintToleration", None);
        let s = snap(vec![
            tainted("none", json!([])),
            tainted(
                "one",
                json!([{"key": "a", "value": "1", "effect": "PreferNoSchedule"}]),
            ),
            tainted(
                "two",
                json!([{"key": "a", "value": "1", "effect": "PreferNoSchedule"},
                                  {"key": "b", "value": "2", "effect": "PreferNoSchedule"}]),
            ),
        ]);
        let p = pod(json!({"spec": {"containers": []}}));
        assert_eq!(score_all(&fw, &p, &s), vec![100, 50, 0]);
        let tol_a = pod(
            json!({"spec": {"containers": [], "tolerations": [{"key": "a", "operator": "Exists", "effect": "PreferNoSchedule"}]}}),
        );
        assert_eq!(score_all(&fw, &tol_a, &s), vec![100, 100, 0]);
        // A NoSchedule toleration does not count for PreferNoSchedule taints.
        let tol_ns = pod(
            json!({"spec": {"containers": [], "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(score_all(&fw, &tol_ns, &s), vec![100, 50, 0]);
    }
}
