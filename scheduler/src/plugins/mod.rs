//! The default plugins, with upstream semantics, and the registry that builds them by name.

mod image_locality;
mod inter_pod_affinity;
mod node_affinity;
mod node_basic;
mod node_ports;
mod noderesources;
mod pod_topology_spread;
mod preemption;
mod taint_toleration;
mod volume_restrictions;

pub use image_locality::ImageLocality;
pub use inter_pod_affinity::InterPodAffinity;
pub use node_affinity::NodeAffinity;
pub use node_basic::{NodeName, NodeUnschedulable};
pub use node_ports::NodePorts;
pub use noderesources::{BalancedAllocation, Fit, ResourceSpec, ScoringStrategy, ShapePoint};
pub use pod_topology_spread::PodTopologySpread;
pub use preemption::DefaultPreemption;
pub use taint_toleration::TaintToleration;
pub use volume_restrictions::VolumeRestrictions;

use std::sync::Arc;

use crate::Error;
use crate::framework::Plugin;

/// The default profile's plugins, in upstream's Filter order, with their Score weights
/// (0: not a score plugin in the default profile).
pub const DEFAULT_PLUGINS: &[(&str, i64)] = &[
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("VolumeRestrictions", 0),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
];

/// Builds a plugin by name from its `pluginConfig` args (None: defaults).
pub fn build(name: &str, args: Option<&serde_json::Value>) -> Result<Arc<dyn Plugin>, Error> {
    let args = args.cloned().unwrap_or(serde_json::Value::Null);
    Ok(match name {
        "NodeUnschedulable" => Arc::new(NodeUnschedulable),
        "NodeName" => Arc::new(NodeName),
        "TaintToleration" => Arc::new(TaintToleration),
        "NodeAffinity" => Arc::new(NodeAffinity),
        "NodePorts" => Arc::new(NodePorts),
        "NodeResourcesFit" => Arc::new(Fit::from_args(&args)?),
        "VolumeRestrictions" => Arc::new(VolumeRestrictions),
        "PodTopologySpread" => Arc::new(PodTopologySpread::from_args(&args)?),
        "InterPodAffinity" => Arc::new(InterPodAffinity::from_args(&args)?),
        "DefaultPreemption" => Arc::new(DefaultPreemption),
        "NodeResourcesBalancedAllocation" => Arc::new(BalancedAllocation::from_args(&args)?),
        "ImageLocality" => Arc::new(ImageLocality),
        other => return Err(Error::Config(format!("unknown plugin {other:?}"))),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for plugin table tests.
    use std::collections::{BTreeMap, HashMap};

    use k8s_openapi::api::core::v1 as core;
    use serde_json::json;

    use crate::framework::{Framework, PodCycle};
    use crate::model::{NodeInfo, PodInfo, Snapshot};

    /// A pod from JSON (`spec` at least).
    pub(crate) fn pod(v: serde_json::Value) -> PodInfo {
        let mut v = v;
        if v.get("metadata").is_none() {
            v["metadata"] = json!({"name": "p", "namespace": "default"});
        }
        let p: core::Pod = serde_json::from_value(v).expect("pod json");
        PodInfo::new(&p, &HashMap::new()).expect("pod info")
    }

    /// A plain pod with requests.
    pub(crate) fn req_pod(name: &str, cpu: &str, mem: &str) -> PodInfo {
        pod(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}))
    }

    /// A node from JSON.
    pub(crate) fn node(v: serde_json::Value) -> NodeInfo {
        let n: core::Node = serde_json::from_value(v).expect("node json");
        NodeInfo::new(&n).expect("node info")
    }

    /// A node with allocatable cpu/memory/pods and labels.
    pub(crate) fn cap_node(name: &str, cpu: &str, mem: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node(json!({"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}}))
    }

    /// A framework holding exactly one plugin (weight 1).
    pub(crate) fn single(name: &str, args: Option<serde_json::Value>) -> Framework {
        let cfg = format!(
            "profiles:\n- schedulerName: t\n  plugins:\n    multiPoint:\n      enabled: [{{name: {name}}}]\n      disabled: [{{name: '*'}}]\n"
        );
        let mut cfg: crate::config::Config = serde_yaml::from_str(&cfg).expect("config");
        if let Some(a) = args {
            cfg.profiles[0]
                .plugin_config
                .push(crate::config::PluginConfig {
                    name: name.into(),
                    args: a,
                });
        }
        let mut fws = crate::config::build_profiles(&cfg).expect("profile");
        fws.remove(0)
    }

    /// Runs PreFilter/PreScore then Filter on every node; Ok(status per node).
    pub(crate) fn filter_all(fw: &Framework, pod: &PodInfo, snap: &Snapshot) -> Vec<crate::Status> {
        match fw.prepare(pod, snap) {
            Err(s) => snap.nodes.iter().map(|_| s.clone()).collect(),
            Ok(pc) => snap
                .nodes
                .iter()
                .map(|n| fw.run_filters(&pc, pod, n, snap))
                .collect(),
        }
    }

    /// Final normalized, weighted scores of every node (all treated as feasible).
    pub(crate) fn score_all(fw: &Framework, pod: &PodInfo, snap: &Snapshot) -> Vec<i64> {
        let pc: PodCycle = fw.prepare(pod, snap).expect("prepare");
        let idx: Vec<u32> = (0..snap.nodes.len() as u32).collect();
        crate::cycle::score_nodes(fw, &pc, pod, snap, &idx)
    }

    /// A snapshot of these nodes.
    pub(crate) fn snap(nodes: Vec<NodeInfo>) -> Snapshot {
        let mut s = Snapshot::new();
        for n in nodes {
            s.upsert_node(n);
        }
        s
    }
}
