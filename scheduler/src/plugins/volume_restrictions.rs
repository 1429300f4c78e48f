//! VolumeRestrictions basics: in-tree disks that cannot be mounted twice on one node (GCE PD
//! read-write, EBS, RBD, iSCSI) and ReadWriteOncePod claims already in use anywhere.

use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin};
use crate::model::{NodeInfo, PodInfo, Snapshot};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// VolumeRestrictions.
#[derive(Debug, Default)]
pub struct VolumeRestrictions;

fn rwop_claims<'a>(pod: &'a PodInfo, snap: &'a Snapshot) -> impl Iterator<Item = &'a String> + 'a {
    pod.pvcs.iter().filter(move |c| {
        snap.rwop_claims
            .contains(&(pod.key.namespace.clone(), (*c).clone()))
    })
}

impl Plugin for VolumeRestrictions {
    fn name(&self) -> &'static str {
        "VolumeRestrictions"
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn couples(&self, pod: &PodInfo, snap: &Snapshot) -> bool {
        rwop_claims(pod, snap).next().is_some()
    }
    fn reaches(&self, pod: &PodInfo) -> bool {
        !pod.pvcs.is_empty()
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::PodDelete]
    }
}

impl PreFilterPlugin for VolumeRestrictions {
    fn pre_filter(&self, _: usize, _: &mut CycleState, pod: &PodInfo, snap: &Snapshot) -> Status {
        if pod.disks.is_empty() && pod.pvcs.is_empty() {
            return Status::Skip;
        }
        for claim in rwop_claims(pod, snap) {
            let in_use = snap.nodes.iter().flat_map(|n| n.pods.iter()).any(|p| {
                p.key != pod.key && p.key.namespace == pod.key.namespace && p.pvcs.contains(claim)
            });
            if in_use {
                return Status::unresolvable(
                    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode",
                );
            }
        }
        if pod.disks.is_empty() {
            Status::Skip
        } else {
            Status::Success
        }
    }
}

impl FilterPlugin for VolumeRestrictions {
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        for d in &pod.disks {
            for other in &node.pods {
                if other.disks.iter().any(|o| d.conflicts(o)) {
                    return Status::unschedulable("node(s) had no available disk");
                }
            }
        }
        Status::Success
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::plugins::testutil::*;

    fn gce(name: &str, pd: &str, ro: bool) -> crate::model::PodInfo {
        pod(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "gcePersistentDisk": {"pdName": pd, "readOnly": ro}}]}}),
        )
    }

    #[test]
    fn disk_conflicts_table() {
        let fw = single("VolumeRestrictions", None);
        let mut s = snap(vec![cap_node("a", "1", "1", &[])]);
        s.add_pod(0, Arc::new(gce("e", "disk1", true)));
        for (p, want) in [
            (gce("x", "disk1", true), true),
            (gce("x", "disk1", false), false),
            (gce("x", "disk2", false), true),
        ] {
            assert_eq!(
                filter_all(&fw, &p, &s)[0].is_success(),
                want,
                "{:?}",
                p.disks
            );
        }
    }

    #[test]
    fn read_write_once_pod_claims() {
        let fw = single("VolumeRestrictions", None);
        let claim = |name: &str| {
            pod(
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}),
            )
        };
        let mut s = snap(vec![
            cap_node("a", "1", "1", &[]),
            cap_node("b", "1", "1", &[]),
        ]);
        s.add_pod(0, Arc::new(claim("e")));
        assert!(
            filter_all(&fw, &claim("x"), &s)
                .iter()
                .all(|st| st.is_success())
        );
        s.rwop_claims.insert(("default".into(), "data".into()));
        assert!(
            filter_all(&fw, &claim("x"), &s)
                .iter()
                .all(|st| !st.is_success())
        );
    }
}
