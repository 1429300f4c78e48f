//! Property tests: random clusters and pending pods. The batch-parallel cycle (several
//! partitions, whole batches) never overcommits a node, never violates a required
//! constraint, and gives every pod a node whose score equals the best score a plain
//! sequential scheduler finds in the same order (and fails only when it finds none).

mod common;

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use scheduler::cycle::{reference_pick, score_nodes};
use scheduler::model::{Effect, NodeInfo, PodInfo, Snapshot, tolerated};
use scheduler::{Config, Decision, Options, Scheduler};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct NodeSpec {
    cpu: u32,
    mem_gi: u32,
    pods: u32,
    zone: u8,
    ssd: bool,
    taint: u8,
}

#[derive(Debug, Clone)]
struct PodSpec {
    cpu_m: u32,
    mem_mi: u32,
    app: u8,
    zone_sel: Option<u8>,
    pref_ssd: bool,
    tolerate: bool,
    port: Option<u16>,
    anti_host: bool,
    spread_zone: bool,
    priority: i32,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (1u32..6, 1u32..6, 2u32..6, 0u8..3, any::<bool>(), 0u8..4).prop_map(
        |(cpu, mem_gi, pods, zone, ssd, taint)| NodeSpec {
            cpu,
            mem_gi,
            pods,
            zone,
            ssd,
            taint,
        },
    )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        (0u32..2500, 0u32..3000, 0u8..3),
        (
            prop::option::weighted(0.2, 0u8..3),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::option::weighted(0.2, 8080u16..8082),
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.25),
            0i32..3,
        ),
    )
        .prop_map(
            |(
                (cpu_m, mem_mi, app),
                (zone_sel, pref_ssd, tolerate),
                (port, anti_host, spread_zone, priority),
            )| PodSpec {
                cpu_m,
                mem_mi,
                app,
                zone_sel,
                pref_ssd,
                tolerate,
                port,
                anti_host,
                spread_zone,
                priority,
            },
        )
}

fn make_node(i: usize, n: &NodeSpec) -> k8s_openapi::api::core::v1::Node {
    let mut labels = json!({"zone": format!("z{}", n.zone)});
    if n.ssd {
        labels["disk"] = json!("ssd");
    }
    let taints = match n.taint {
        1 => json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        2 => json!([{"key": "soft", "value": "y", "effect": "PreferNoSchedule"}]),
        _ => json!([]),
    };
    common::node(
        &format!("n{i}"),
        &n.cpu.to_string(),
        &format!("{}Gi", n.mem_gi),
        n.pods,
        labels,
        taints,
    )
}

fn make_pod(i: usize, p: &PodSpec) -> k8s_openapi::api::core::v1::Pod {
    let mut spec = json!({"requests": {"cpu": format!("{}m", p.cpu_m), "memory": format!("{}Mi", p.mem_mi)}, "priority": p.priority});
    if let Some(z) = p.zone_sel {
        spec["nodeSelector"] = json!({"zone": format!("z{z}")});
    }
    let mut affinity = json!({});
    if p.pref_ssd {
        affinity["nodeAffinity"] = json!({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]});
    }
    if p.anti_host {
        affinity["podAntiAffinity"] = json!({"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": format!("a{}", p.app)}}, "topologyKey": "kubernetes.io/hostname"}]});
    }
    spec["affinity"] = affinity;
    if p.tolerate {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    }
    if let Some(port) = p.port {
        spec["hostPort"] = json!(port);
    }
    if p.spread_zone {
        spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": format!("a{}", p.app)}}}]);
    }
    common::pod(
        &format!("p{i}"),
        spec,
        json!({"app": format!("a{}", p.app)}),
    )
}

/// Independent checks of the hard constraints on the node a pod landed on.
fn check_required(pod: &PodInfo, node: &NodeInfo) -> Result<(), String> {
    if !pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err(format!(
            "{} violates its nodeSelector on {}",
            pod.key, node.name
        ));
    }
    for t in &node.taints {
        if t.effect != Effect::PreferNoSchedule && !tolerated(&pod.tolerations, t) {
            return Err(format!(
                "{} on {} does not tolerate {t:?}",
                pod.key, node.name
            ));
        }
    }
    for hp in &pod.host_ports {
        if node.used_ports.iter().any(|u| u.conflicts(hp)) {
            return Err(format!("{} port conflict on {}", pod.key, node.name));
        }
    }
    for term in &pod.required_anti_affinity {
        if node.pods.iter().any(|p| term.selector.matches(&p.labels)) {
            return Err(format!(
                "{} anti-affinity violated on {}",
                pod.key, node.name
            ));
        }
    }
    for p in &node.pods {
        for term in &p.required_anti_affinity {
            if term.selector.matches(&pod.labels) {
                return Err(format!(
                    "{}'s anti-affinity violated by {} on {}",
                    p.key, pod.key, node.name
                ));
            }
        }
    }
    Ok(())
}

fn spread_ok(pod: &PodInfo, snap: &Snapshot, target: usize) -> Result<(), String> {
    for c in &pod.spread {
        let mut counts = std::collections::HashMap::<String, i64>::new();
        for n in &snap.nodes {
            if !pod.matches_node_selector(n) {
                continue;
            }
            let Some(v) = n.labels.get(&c.topology_key) else {
                continue;
            };
            *counts.entry(v.clone()).or_default() += n
                .pods
                .iter()
                .filter(|p| p.key.namespace == pod.key.namespace && c.selector.matches(&p.labels))
                .count() as i64;
        }
        let v = &snap.nodes[target].labels[&c.topology_key];
        let min = counts.values().copied().min().unwrap_or(0);
        let after =
            counts.get(v).copied().unwrap_or(0) + i64::from(c.selector.matches(&pod.labels));
        if after - min > i64::from(c.max_skew) {
            return Err(format!(
                "{} breaks maxSkew on {}: {after} vs min {min}",
                pod.key, snap.nodes[target].name
            ));
        }
    }
    Ok(())
}

fn run(
    nodes: Vec<NodeSpec>,
    pods: Vec<PodSpec>,
    parallelism: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    // No preemption: the property is about placement.
    let cfg = Config::from_yaml(
        "profiles:\n- plugins:\n    postFilter:\n      disabled: [{name: '*'}]\n",
    )
    .unwrap();
    let mut s = Scheduler::new(
        &cfg,
        Options {
            parallelism,
            batch_size: batch,
            ..Options::default()
        },
    )
    .unwrap();
    let fw = s.profiles()[0].clone();
    // The reference cluster is built up in the order the batch resolved the pods.
    let mut reference = Snapshot::new();
    for (i, n) in nodes.iter().enumerate() {
        let node = make_node(i, n);
        s.upsert_node(&node, t0).unwrap();
        reference.upsert_node(NodeInfo::new(&node).unwrap());
    }
    for (i, p) in pods.iter().enumerate() {
        s.upsert_pod(&make_pod(i, p), t0).unwrap();
    }
    let mut decisions = Vec::new();
    for _ in 0..pods.len() + 1 {
        let ds = s.schedule_batch(t0);
        if ds.is_empty() {
            break;
        }
        decisions.extend(ds);
    }
    prop_assert_eq!(decisions.len(), pods.len());
    for d in &decisions {
        match d {
            Decision::Assumed { pod, node, .. } => {
                let idx = reference.node_index(node).unwrap();
                check_required(pod, &reference.nodes[idx]).map_err(TestCaseError::fail)?;
                spread_ok(pod, &reference, idx).map_err(TestCaseError::fail)?;
                let best = reference_pick(&fw, pod, &reference);
                prop_assert!(
                    best.is_some(),
                    "{} placed on {node} but the reference finds no node",
                    pod.key
                );
                let pc = fw.prepare(pod, &reference).unwrap();
                let feasible: Vec<u32> = (0..reference.nodes.len() as u32)
                    .filter(|&n| {
                        fw.filter_node(&pc, pod, &reference.nodes[n as usize], &reference)
                            .is_ok()
                    })
                    .collect();
                prop_assert!(
                    feasible.contains(&(idx as u32)),
                    "{} placed on infeasible {node}",
                    pod.key
                );
                let scores = score_nodes(&fw, &pc, pod, &reference, &feasible);
                let mine = scores[feasible.iter().position(|&n| n == idx as u32).unwrap()];
                prop_assert_eq!(
                    mine,
                    best.unwrap().0,
                    "{} on {}: score {} vs best {:?}",
                    pod.key,
                    node,
                    mine,
                    best
                );
                let mut p = (**pod).clone();
                p.node_name = Some(node.clone());
                reference.add_pod(idx, Arc::new(p));
            }
            Decision::Unschedulable { pod, .. } => {
                prop_assert!(
                    reference_pick(&fw, pod, &reference).is_none(),
                    "{} left pending but the reference fits it",
                    pod.key
                );
            }
            Decision::Error { message, .. } => prop_assert!(false, "error: {}", message),
        }
    }
    // Never overcommitted.
    for n in &s.snap.nodes {
        prop_assert!(
            n.requested.milli_cpu <= n.allocatable.milli_cpu,
            "{} cpu overcommitted",
            n.name
        );
        prop_assert!(
            n.requested.memory <= n.allocatable.memory,
            "{} memory overcommitted",
            n.name
        );
        prop_assert!(
            n.pods.len() as i64 <= n.allocatable.pods,
            "{} has too many pods",
            n.name
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn batch_cycle_matches_sequential_reference(
        nodes in prop::collection::vec(node_spec(), 1..8),
        pods in prop::collection::vec(pod_spec(), 1..16),
        parallelism in 1usize..4,
        batch in 1usize..16,
    ) {
        run(nodes, pods, parallelism, batch)?;
    }

    /// Pods stamped from a few templates (the batch's equivalence classes share one
    /// evaluation): the placements must still match scheduling the pods one by one.
    #[test]
    fn equivalence_classes_match_sequential_reference(
        nodes in prop::collection::vec(node_spec(), 1..8),
        templates in prop::collection::vec(pod_spec(), 1..4),
        picks in prop::collection::vec(0usize..4, 1..24),
        parallelism in 1usize..4,
        batch in 1usize..24,
    ) {
        let pods = picks.iter().map(|&i| templates[i % templates.len()].clone()).collect();
        run(nodes, pods, parallelism, batch)?;
    }
}

#[test]
fn json_helpers_build_valid_objects() {
    let p = make_pod(
        0,
        &PodSpec {
            cpu_m: 1,
            mem_mi: 1,
            app: 0,
            zone_sel: Some(1),
            pref_ssd: true,
            tolerate: true,
            port: Some(8080),
            anti_host: true,
            spread_zone: true,
            priority: 1,
        },
    );
    let info = PodInfo::new(&p, &Default::default()).unwrap();
    assert_eq!(info.host_ports.len(), 1);
    assert_eq!(info.spread.len(), 1);
    assert_eq!(info.required_anti_affinity.len(), 1);
    let _: Value = serde_json::to_value(&p).unwrap();
}
