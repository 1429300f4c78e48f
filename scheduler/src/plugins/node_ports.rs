//! NodePorts: host ports must be free on the node.

use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin};
use crate::model::{NodeInfo, PodInfo, Snapshot};
use crate::queue::ClusterEvent;
use crate::status::Status;

/// Rejects nodes where a requested host port (protocol, IP, port) is taken.
#[derive(Debug, Default)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn events(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdd, ClusterEvent::PodDelete]
    }
}

impl PreFilterPlugin for NodePorts {
    fn pre_filter(&self, _: usize, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        if pod.host_ports.is_empty() {
            Status::Skip
        } else {
            Status::Success
        }
    }
}

impl FilterPlugin for NodePorts {
    fn filter(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Snapshot,
    ) -> Status {
        let conflict = pod
            .host_ports
            .iter()
            .any(|p| node.used_ports.iter().any(|u| u.conflicts(p)));
        if conflict {
            Status::unschedulable("node(s) didn't have free ports for the requested pod ports")
        } else {
            Status::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::plugins::testutil::*;
    use crate::status::Status;

    fn port_pod(
        name: &str,
        port: i32,
        ip: Option<&str>,
        proto: Option<&str>,
    ) -> crate::model::PodInfo {
        let mut p = json!({"containerPort": 80, "hostPort": port});
        if let Some(ip) = ip {
            p["hostIP"] = json!(ip);
        }
        if let Some(pr) = proto {
            p["protocol"] = json!(pr);
        }
        pod(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [{"name": "c", "ports": [p]}]}}),
        )
    }

    #[test]
    fn node_ports_table() {
        let fw = single("NodePorts", None);
        let mut s = snap(vec![cap_node("a", "1", "1Gi", &[])]);
        s.add_pod(0, Arc::new(port_pod("e", 8080, Some("127.0.0.1"), None)));
        let cases = [
            (port_pod("x", 8080, None, None), false), // 0.0.0.0 overlaps every IP
            (port_pod("x", 8080, Some("127.0.0.1"), None), false), // same ip, port, protocol
            (port_pod("x", 8080, Some("127.0.0.2"), None), true), // other IP
            (port_pod("x", 8080, Some("127.0.0.1"), Some("UDP")), true), // other protocol
            (port_pod("x", 9090, None, None), true),  // other port
        ];
        for (p, want) in cases {
            let st = &filter_all(&fw, &p, &s)[0];
            assert_eq!(st.is_success(), want, "{:?}", p.host_ports);
            if !want {
                assert_eq!(
                    *st,
                    Status::unschedulable(
                        "node(s) didn't have free ports for the requested pod ports"
                    )
                );
            }
        }
    }
}
