//! NodeName and NodeUnschedulable.

use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin};
use crate::model::{Effect, NodeInfo, PodInfo, Snapshot, Taint, tolerated};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// Rejects nodes other than `spec.nodeName` when it is set.
#[derive(Debug, Default)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdd]
    }
}

impl PreFilterPlugin for NodeName {
    fn pre_filter(&self, _: usize, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        if pod.node_name.is_some() {
            Status::Success
        } else {
            Status::Skip
        }
    }
}

impl FilterPlugin for NodeName {
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        match &pod.node_name {
            Some(n) if *n != node.name => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::Success,
        }
    }
}

/// Rejects `spec.unschedulable` nodes unless the pod tolerates the unschedulable taint.
#[derive(Debug, Default)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdd, ClusterEvent::NodeUpdate]
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        if !node.unschedulable {
            return Status::Success;
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: String::new(),
            effect: Effect::NoSchedule,
        };
        if tolerated(&pod.tolerations, &taint) {
            Status::Success
        } else {
            Status::unresolvable("node(s) were unschedulable")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::testutil::*;
    use crate::status::Status;

    #[test]
    fn node_name_table() {
        let fw = single("NodeName", None);
        let s = snap(vec![
            cap_node("a", "1", "1Gi", &[]),
            cap_node("b", "1", "1Gi", &[]),
        ]);
        let cases = [
            (json!({"spec": {"containers": []}}), [true, true]),
            (
                json!({"spec": {"nodeName": "b", "containers": []}}),
                [false, true],
            ),
            (
                json!({"spec": {"nodeName": "zz", "containers": []}}),
                [false, false],
            ),
        ];
        for (p, want) in cases {
            let got: Vec<bool> = filter_all(&fw, &pod(p.clone()), &s)
                .iter()
                .map(Status::is_success)
                .collect();
            assert_eq!(got, want, "{p}");
        }
        let st = &filter_all(
            &fw,
            &pod(json!({"spec": {"nodeName": "b", "containers": []}})),
            &s,
        )[0];
        assert_eq!(
            *st,
            Status::unresolvable("node(s) didn't match the requested node name")
        );
    }

    #[test]
    fn node_unschedulable_table() {
        let fw = single("NodeUnschedulable", None);
        let s = snap(vec![
            node(json!({"metadata": {"name": "cordoned"}, "spec": {"unschedulable": true}})),
            node(json!({"metadata": {"name": "ok"}})),
        ]);
        let plain = pod(json!({"spec": {"containers": []}}));
        let tol = pod(json!({"spec": {"containers": [], "tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}));
        let wrong_effect = pod(json!({"spec": {"containers": [], "tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoExecute"}]}}));
        for (p, want) in [
            (plain, [false, true]),
            (tol, [true, true]),
            (wrong_effect, [false, true]),
        ] {
            let got: Vec<bool> = filter_all(&fw, &p, &s)
                .iter()
                .map(Status::is_success)
                .collect();
            assert_eq!(got, want);
        }
    }
}
