use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn quota(v: serde_json::Value) -> ResourceQuota {
    serde_json::from_value(v).unwrap()
}

fn web(cpu: &str, mem: &str) -> Pod {
    pod(json!({"metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}}}]}}))
}

#[test]
fn quantities_parse_and_format_as_upstream() {
    for (s, m) in [
        ("100m", 100),
        ("1", 1000),
        ("1.5", 1500),
        ("1Ki", 1_024_000),
        ("128Mi", 134_217_728_000),
        ("2e3", 2_000_000),
        ("1k", 1_000_000),
        ("1n", 1),
    ] {
        assert_eq!(parse_milli(s), Some(m), "{s}");
    }
    for bad in ["", "x", "1.2.3", "1Q", "--1"] {
        assert_eq!(parse_milli(bad), None, "{bad}");
    }
    assert_eq!(format_milli("requests.cpu", 500), "500m");
    assert_eq!(format_milli("requests.cpu", 2000), "2");
    assert_eq!(format_milli("pods", 3000), "3");
    assert_eq!(format_milli("requests.memory", 268_435_456_000), "256Mi");
    assert_eq!(format_milli("requests.memory", 1_000_000_000_000), "1G");
    assert_eq!(format_milli("count/pods", 0), "0");
}

#[test]
fn pod_usage_sums_containers_and_takes_the_largest_init() {
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "2"}}}],
        "containers": [
            {"name": "a", "image": "x", "resources": {"requests": {"cpu": "500m", "memory": "64Mi", "example.com/gpu": "1"}, "limits": {"memory": "128Mi"}}},
            {"name": "b", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]}}));
    let u = usage(&Object::Pod(&p), 0);
    assert_eq!(u["pods"], 1000);
    assert_eq!(u["count/pods"], 1000);
    assert_eq!(
        u["requests.cpu"], 2000,
        "init container's 2 cores beat 750m"
    );
    assert_eq!(u["cpu"], 2000);
    assert_eq!(u["requests.memory"], 128 * 1_048_576 * 1000);
    assert_eq!(u["limits.memory"], 128 * 1_048_576 * 1000);
    assert_eq!(u["requests.example.com/gpu"], 1000);
    assert!(!u.contains_key("limits.cpu"));
}

#[test]
fn terminal_pods_keep_only_their_object_count() {
    let mut p = web("1", "1Gi");
    p.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Succeeded".into()),
        ..Default::default()
    });
    let u = usage(&Object::Pod(&p), 0);
    assert_eq!(u.len(), 1);
    assert_eq!(u["count/pods"], 1000);
}

#[test]
fn services_count_node_ports_and_load_balancers() {
    let lb: Service = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
        "ports": [{"port": 80}, {"port": 443}]}}),
    )
    .unwrap();
    let u = usage(&Object::Service(&lb), 0);
    assert_eq!(
        (
            u["services"],
            u["services.loadbalancers"],
            u["services.nodeports"]
        ),
        (1000, 1000, 2000)
    );
    let np: Service = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort",
        "ports": [{"port": 80}]}}),
    )
    .unwrap();
    let u = usage(&Object::Service(&np), 0);
    assert_eq!(u["services.nodeports"], 1000);
    assert!(!u.contains_key("services.loadbalancers"));
    let lb_no_alloc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "nodePort": 30001}, {"port": 81}]}})).unwrap();
    assert_eq!(
        usage(&Object::Service(&lb_no_alloc), 0)["services.nodeports"],
        1000
    );
}

#[test]
fn claims_count_storage_per_class() {
    let c: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": {
        "storageClassName": "gold", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}})).unwrap();
    let u = usage(&Object::Claim(&c), 0);
    assert_eq!(u["requests.storage"], 5 * (1 << 30) * 1000);
    assert_eq!(
        u["gold.storageclass.storage.k8s.io/requests.storage"],
        5 * (1 << 30) * 1000
    );
    assert_eq!(
        u["gold.storageclass.storage.k8s.io/persistentvolumeclaims"],
        1000
    );
    assert_eq!(u["count/persistentvolumeclaims"], 1000);
}

#[test]
fn scopes_select_pods_only() {
    let be = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    );
    let burst = web("1", "1Gi");
    let mut term = web("1", "1Gi");
    term.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
    let mut prio = web("1", "1Gi");
    prio.spec.as_mut().unwrap().priority_class_name = Some("high".into());
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    let cases: [(&str, serde_json::Value, [bool; 5]); 6] = [
        ("none", json!({}), [true, true, true, true, true]),
        (
            "BestEffort",
            json!({"scopes": ["BestEffort"]}),
            [true, false, false, false, false],
        ),
        (
            "NotBestEffort",
            json!({"scopes": ["NotBestEffort"]}),
            [false, true, true, true, false],
        ),
        (
            "Terminating",
            json!({"scopes": ["Terminating"]}),
            [false, false, true, false, false],
        ),
        (
            "NotTerminating",
            json!({"scopes": ["NotTerminating"]}),
            [true, true, false, true, false],
        ),
        (
            "PriorityClass In high",
            json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
            [false, false, false, true, false],
        ),
    ];
    for (what, spec, want) in cases {
        let mut spec = spec;
        spec["hard"] = json!({"pods": "10"});
        let q = quota(json!({"metadata": {"name": "q"}, "spec": spec}));
        let got = [
            scopes_match(&q, &Object::Pod(&be)),
            scopes_match(&q, &Object::Pod(&burst)),
            scopes_match(&q, &Object::Pod(&term)),
            scopes_match(&q, &Object::Pod(&prio)),
            scopes_match(&q, &Object::Service(&svc)),
        ];
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn used_sums_only_hard_resources_of_selected_objects() {
    let q = quota(json!({"metadata": {"name": "q"}, "spec": {"hard": {
        "pods": "4", "requests.cpu": "2", "limits.memory": "2Gi", "services": "1", "count/deployments.apps": "3", "configmaps": "5"}}}));
    let a = web("500m", "512Mi");
    let b = web("250m", "256Mi");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    let objs = [
        Object::Pod(&a),
        Object::Pod(&b),
        Object::Service(&svc),
        Object::Other {
            group: "apps",
            resource: "deployments",
        },
        Object::Other {
            group: "",
            resource: "configmaps",
        },
        Object::Other {
            group: "",
            resource: "secrets",
        },
    ];
    let u = used(&q, objs, 0);
    assert_eq!(u.len(), 6);
    assert_eq!(u["pods"], 2000);
    assert_eq!(u["requests.cpu"], 750);
    assert_eq!(format_milli("limits.memory", u["limits.memory"]), "768Mi");
    assert_eq!(u["services"], 1000);
    assert_eq!(u["count/deployments.apps"], 1000);
    assert_eq!(u["configmaps"], 1000);
}

fn with_status(hard: serde_json::Value, used: serde_json::Value) -> ResourceQuota {
    quota(
        json!({"metadata": {"name": "compute"}, "spec": {"hard": hard.clone()},
        "status": {"hard": hard, "used": used}}),
    )
}

#[test]
fn admission_charges_or_refuses_with_the_upstream_message() {
    let q = with_status(
        json!({"pods": "2", "requests.cpu": "1"}),
        json!({"pods": "1", "requests.cpu": "500m"}),
    );
    let next = admit(&q, &Object::Pod(&web("500m", "1Gi")), 0)
        .unwrap()
        .unwrap();
    assert_eq!((next["pods"], next["requests.cpu"]), (2000, 1000));
    let e = admit(&q, &Object::Pod(&web("600m", "1Gi")), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
    );
    let full = with_status(json!({"pods": "2"}), json!({"pods": "2"}));
    assert_eq!(
        admit(&full, &Object::Pod(&web("1", "1Gi")), 0)
            .unwrap_err()
            .to_string(),
        "exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
    );
    // Other kinds are not charged against a pod quota.
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    assert_eq!(admit(&full, &Object::Service(&svc), 0), Ok(None));
}

#[test]
fn admission_requires_requests_and_limits_the_quota_constrains() {
    let q = with_status(
        json!({"limits.cpu": "4", "requests.memory": "4Gi"}),
        json!({"limits.cpu": "0", "requests.memory": "0"}),
    );
    let bare = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "web", "image": "x"}, {"name": "log", "image": "x", "resources": {"limits": {"cpu": "1"}}}]}}));
    assert_eq!(
        admit(&q, &Object::Pod(&bare), 0).unwrap_err().to_string(),
        "failed quota: compute: must specify limits.cpu for: web; requests.memory for: log,web"
    );
}

#[test]
fn admission_waits_for_the_controller_and_ignores_unwritten_quotas() {
    let unknown = with_status(json!({"pods": "2"}), json!({}));
    assert_eq!(
        admit(&unknown, &Object::Pod(&web("1", "1Gi")), 0)
            .unwrap_err()
            .to_string(),
        "status unknown for quota: compute, resources: pods"
    );
    let fresh = quota(json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "0"}}}));
    assert_eq!(admit(&fresh, &Object::Pod(&web("1", "1Gi")), 0), Ok(None));
}

fn claim(size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}))
    .unwrap()
}

fn service(ty: &str) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"type": ty, "ports": [{"port": 80}]}}),
    )
    .unwrap()
}

#[test]
fn updates_are_charged_only_what_they_add() {
    let q = with_status(
        json!({"requests.storage": "3Gi", "persistentvolumeclaims": "5"}),
        json!({"requests.storage": "2Gi", "persistentvolumeclaims": "2"}),
    );
    let (one, two, three) = (claim("1Gi"), claim("2Gi"), claim("3Gi"));
    // Growing 1Gi -> 2Gi adds 1Gi (3Gi used of 3Gi); the object count is not charged again.
    let next = admit_update(&q, &Object::Claim(&one), &Object::Claim(&two), 0)
        .unwrap()
        .unwrap();
    assert_eq!(next["requests.storage"], 3 * (1 << 30) * 1000);
    assert_eq!(next["persistentvolumeclaims"], 2000);
    // Growing 1Gi -> 3Gi adds 2Gi: over.
    assert_eq!(
        admit_update(&q, &Object::Claim(&one), &Object::Claim(&three), 0)
            .unwrap_err()
            .to_string(),
        "exceeded quota: compute, requested: requests.storage=2Gi, used: requests.storage=2Gi, limited: requests.storage=3Gi"
    );
    // Shrinking or keeping the size is never refused, even over the quota.
    let over = with_status(
        json!({"requests.storage": "1Gi"}),
        json!({"requests.storage": "5Gi"}),
    );
    assert_eq!(
        admit_update(&over, &Object::Claim(&three), &Object::Claim(&two), 0),
        Ok(None)
    );
    assert_eq!(
        admit_update(&over, &Object::Claim(&two), &Object::Claim(&two), 0),
        Ok(None)
    );
}

#[test]
fn a_service_becoming_a_node_port_or_load_balancer_is_charged() {
    let q = with_status(
        json!({"services": "10", "services.nodeports": "0", "services.loadbalancers": "1"}),
        json!({"services": "3", "services.nodeports": "0", "services.loadbalancers": "1"}),
    );
    let (cip, np, lb) = (
        service("ClusterIP"),
        service("NodePort"),
        service("LoadBalancer"),
    );
    assert_eq!(
        admit_update(&q, &Object::Service(&cip), &Object::Service(&np), 0)
            .unwrap_err()
            .to_string(),
        "exceeded quota: compute, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"
    );
    assert!(
        admit_update(&q, &Object::Service(&np), &Object::Service(&lb), 0)
            .unwrap_err()
            .to_string()
            .contains("services.loadbalancers=1")
    );
    // Back to ClusterIP frees, never charges.
    assert_eq!(
        admit_update(&q, &Object::Service(&lb), &Object::Service(&cip), 0),
        Ok(None)
    );
}

#[test]
fn a_pod_resize_is_charged_its_growth() {
    let q = with_status(
        json!({"requests.cpu": "1", "limits.cpu": "1", "requests.memory": "4Gi", "limits.memory": "4Gi"}),
        json!({"requests.cpu": "700m", "limits.cpu": "700m", "requests.memory": "1Gi", "limits.memory": "1Gi"}),
    );
    let next = admit_update(
        &q,
        &Object::Pod(&web("500m", "1Gi")),
        &Object::Pod(&web("800m", "1Gi")),
        0,
    )
    .unwrap()
    .unwrap();
    assert_eq!(next["requests.cpu"], 1000);
    assert!(
        admit_update(
            &q,
            &Object::Pod(&web("500m", "1Gi")),
            &Object::Pod(&web("900m", "1Gi")),
            0
        )
        .is_err()
    );
}
