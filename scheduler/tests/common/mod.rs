//! Builders shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

pub fn node(
    name: &str,
    cpu: &str,
    mem: &str,
    pods: u32,
    labels: Value,
    taints: Value,
) -> core::Node {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods.to_string()}}
    }))
    .expect("node")
}

pub fn pod(name: &str, spec_extra: Value, labels: Value) -> core::Pod {
    let mut spec = json!({"containers": [{"name": "c"}]});
    if let Value::Object(m) = spec_extra {
        for (k, v) in m {
            if k == "requests" {
                spec["containers"][0]["resources"] = json!({"requests": v});
            } else if k == "hostPort" {
                spec["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": v}]);
            } else {
                spec[k] = v;
            }
        }
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": spec
    }))
    .expect("pod")
}
