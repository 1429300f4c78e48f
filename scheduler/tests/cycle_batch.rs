//! The batch cycle end to end in-process: placement, conflicts inside a batch, the queue's
//! reaction to cluster events, preemption, assumptions.

mod common;

use std::time::{Duration, Instant};

use common::{node, pod};
use scheduler::{Config, Decision, Options, Scheduler};
use serde_json::json;

fn sched(parallelism: usize, batch: usize) -> Scheduler {
    Scheduler::new(
        &Config::default(),
        Options {
            parallelism,
            batch_size: batch,
            ..Options::default()
        },
    )
    .unwrap()
}

fn assumed(ds: &[Decision]) -> Vec<(String, String)> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Assumed { pod, node, .. } => Some((pod.key.name.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn conflicts_in_a_batch_are_resolved_and_events_requeue() {
    let t0 = Instant::now();
    let mut s = sched(2, 16);
    for n in ["n1", "n2"] {
        s.upsert_node(&node(n, "1", "1Gi", 110, json!({}), json!([])), t0)
            .unwrap();
    }
    for p in ["a", "b", "c"] {
        s.upsert_pod(&pod(p, json!({"requests": {"cpu": "600m"}}), json!({})), t0)
            .unwrap();
    }
    let ds = s.schedule_batch(t0);
    assert_eq!(ds.len(), 3);
    let placed = assumed(&ds);
    assert_eq!(placed.len(), 2, "{ds:?}");
    assert_ne!(
        placed[0].1, placed[1].1,
        "two pods of one batch must not share a 1-cpu node"
    );
    let Decision::Unschedulable { message, pod, .. } = &ds[2] else {
        panic!("{:?}", ds[2])
    };
    // Upstream's text, with preemption's verdict appended.
    assert_eq!(
        message,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    assert_eq!(pod.key.name, "c");
    assert_eq!(s.queue.len().unschedulable, 1);

    // A new node is a relevant event: the pod is retried within its 1 s backoff.
    let t1 = t0 + Duration::from_millis(300);
    s.upsert_node(&node("n3", "1", "1Gi", 110, json!({}), json!([])), t1)
        .unwrap();
    assert!(s.schedule_batch(t1).is_empty(), "still backing off");
    let ds = s.schedule_batch(t0 + Duration::from_secs(1));
    assert_eq!(assumed(&ds), [("c".to_string(), "n3".to_string())]);

    let m = s.metrics_text();
    assert!(
        m.contains("scheduler_schedule_attempts_total{result=\"scheduled\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("scheduler_schedule_attempts_total{result=\"unschedulable\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("scheduler_pending_pods{queue=\"active\"} 0"),
        "{m}"
    );
    // Two pods took 0 s, the third 1 s (its backoff) from first queueing to assumption.
    assert!(
        m.contains("scheduler_pod_scheduling_sli_duration_seconds_bucket{le=\"0.001\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("scheduler_pod_scheduling_sli_duration_seconds_bucket{le=\"1\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("scheduler_pod_scheduling_sli_duration_seconds_count 3"),
        "{m}"
    );
}

#[test]
fn anti_affinity_inside_one_batch() {
    let t0 = Instant::now();
    let mut s = sched(3, 64);
    for i in 0..3 {
        s.upsert_node(
            &node(&format!("n{i}"), "8", "8Gi", 110, json!({}), json!([])),
            t0,
        )
        .unwrap();
    }
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..4 {
        s.upsert_pod(
            &pod(&format!("db{i}"), anti.clone(), json!({"app": "db"})),
            t0,
        )
        .unwrap();
    }
    let ds = s.schedule_batch(t0);
    let placed = assumed(&ds);
    assert_eq!(placed.len(), 3, "{ds:?}");
    let mut nodes: Vec<&String> = placed.iter().map(|(_, n)| n).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3);
    let failed = ds.iter().find_map(|d| {
        if let Decision::Unschedulable { message, .. } = d {
            Some(message.clone())
        } else {
            None
        }
    });
    // The placed pods' own anti-affinity is checked first, as upstream.
    assert!(
        failed.as_deref().is_some_and(|m| m.starts_with(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        )),
        "{failed:?}"
    );
}

#[test]
fn preemption_nominates_and_the_preemptor_lands_after_victims_go() {
    let t0 = Instant::now();
    let mut s = sched(2, 16);
    s.set_priority_class("high", 1000, false);
    s.upsert_node(&node("n1", "2", "2Gi", 110, json!({}), json!([])), t0)
        .unwrap();
    s.upsert_node(&node("n2", "2", "2Gi", 110, json!({}), json!([])), t0)
        .unwrap();
    // Fill both nodes with bound low-priority pods; n2's is less important.
    let mut bound = |name: &str, node: &str, prio: i32| {
        let mut p = pod(
            name,
            json!({"requests": {"cpu": "2"}, "priority": prio}),
            json!({}),
        );
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        s.upsert_pod(&p, t0).unwrap();
    };
    bound("low1", "n1", 10);
    bound("low2", "n2", 5);
    s.upsert_pod(
        &pod(
            "hi",
            json!({"requests": {"cpu": "2"}, "priorityClassName": "high"}),
            json!({}),
        ),
        t0,
    )
    .unwrap();
    let ds = s.schedule_batch(t0);
    let Decision::Unschedulable {
        nomination: Some((node, victims)),
        message,
        ..
    } = &ds[0]
    else {
        panic!("{ds:?}")
    };
    assert_eq!(node, "n2");
    assert_eq!(
        victims.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["low2"]
    );
    assert!(
        message.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
        "{message}"
    );
    // A lower-priority pending pod must not take the room promised to the preemptor.
    s.delete_pod(&victims[0], t0);
    s.upsert_pod(
        &pod(
            "sneaky",
            json!({"requests": {"cpu": "1"}, "priority": 1}),
            json!({}),
        ),
        t0,
    )
    .unwrap();
    let ds = s.schedule_batch(t0 + Duration::from_secs(1));
    let placed = assumed(&ds);
    assert_eq!(placed, [("hi".to_string(), "n2".to_string())], "{ds:?}");
}

#[test]
fn assumptions_expire_or_are_forgotten() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(
        &Config::default(),
        Options {
            parallelism: 1,
            assume_ttl: Duration::from_secs(30),
            ..Options::default()
        },
    )
    .unwrap();
    s.upsert_node(&node("n1", "1", "1Gi", 110, json!({}), json!([])), t0)
        .unwrap();
    s.upsert_pod(&pod("a", json!({"requests": {"cpu": "1"}}), json!({})), t0)
        .unwrap();
    s.upsert_pod(&pod("b", json!({"requests": {"cpu": "1"}}), json!({})), t0)
        .unwrap();
    let ds = s.schedule_batch(t0);
    let placed = assumed(&ds);
    assert_eq!(placed.len(), 1);
    let key = scheduler::model::PodKey {
        namespace: "default".into(),
        name: placed[0].0.clone(),
    };
    s.finish_binding(&key, t0);
    assert_eq!(s.cleanup_assumed(t0 + Duration::from_secs(29)), 0);
    assert_eq!(s.cleanup_assumed(t0 + Duration::from_secs(30)), 1);
    assert_eq!(s.snap.pod_count(), 0);
    // The freed node takes the other pod; forgetting its failed bind requeues it.
    let ds = s.schedule_batch(t0 + Duration::from_secs(31));
    let placed = assumed(&ds);
    assert_eq!(placed.len(), 1, "{ds:?}");
    let key = scheduler::model::PodKey {
        namespace: "default".into(),
        name: placed[0].0.clone(),
    };
    s.forget(&key, t0 + Duration::from_secs(31));
    assert_eq!(s.snap.pod_count(), 0);
    assert_eq!(s.queue.len().backoff, 1);
}

#[test]
fn profiles_by_scheduler_name_and_gates() {
    let t0 = Instant::now();
    let cfg = Config::from_yaml(
        "profiles:\n- schedulerName: default-scheduler\n- schedulerName: packer\n  plugins:\n    score:\n      disabled: [{name: NodeResourcesBalancedAllocation}]\n  pluginConfig:\n  - name: NodeResourcesFit\n    args: {scoringStrategy: {type: MostAllocated}}\n",
    )
    .unwrap();
    let mut s = Scheduler::new(
        &cfg,
        Options {
            parallelism: 2,
            ..Options::default()
        },
    )
    .unwrap();
    s.upsert_node(&node("big", "8", "8Gi", 110, json!({}), json!([])), t0)
        .unwrap();
    s.upsert_node(&node("small", "2", "8Gi", 110, json!({}), json!([])), t0)
        .unwrap();
    s.upsert_pod(
        &pod("spread", json!({"requests": {"cpu": "1"}}), json!({})),
        t0,
    )
    .unwrap();
    s.upsert_pod(
        &pod(
            "pack",
            json!({"requests": {"cpu": "1"}, "schedulerName": "packer"}),
            json!({}),
        ),
        t0,
    )
    .unwrap();
    s.upsert_pod(
        &pod("other", json!({"schedulerName": "someone-else"}), json!({})),
        t0,
    )
    .unwrap();
    s.upsert_pod(
        &pod(
            "gated",
            json!({"schedulingGates": [{"name": "x"}]}),
            json!({}),
        ),
        t0,
    )
    .unwrap();
    let mut placed = assumed(&s.schedule_batch(t0));
    placed.sort();
    assert_eq!(
        placed,
        [
            ("pack".to_string(), "small".to_string()),
            ("spread".to_string(), "big".to_string())
        ]
    );
    assert_eq!(s.queue.len().gated, 1);
    s.upsert_pod(&pod("gated", json!({}), json!({})), t0)
        .unwrap();
    assert_eq!(assumed(&s.schedule_batch(t0)).len(), 1);
}

/// Pods of one template form an equivalence class: the batch evaluates the class once and
/// re-scores only the nodes its earlier pods changed. Placements must equal those of
/// scheduling the pods one per batch (no sharing), including the unschedulable tail.
#[test]
fn equivalence_class_gives_the_same_placements_as_one_by_one() {
    let t0 = Instant::now();
    let run = |batch: usize| {
        let mut s = sched(2, batch);
        for (i, cpu) in ["1", "2", "3", "1500m", "2500m", "4"].iter().enumerate() {
            s.upsert_node(
                &node(
                    &format!("n{i}"),
                    cpu,
                    &format!("{}Gi", i + 1),
                    110,
                    json!({}),
                    json!([]),
                ),
                t0,
            )
            .unwrap();
        }
        for i in 0..40 {
            // Two templates interleaved, so two classes share the batch.
            let req = if i % 2 == 0 {
                json!({"requests": {"cpu": "300m", "memory": "100Mi"}})
            } else {
                json!({"requests": {"cpu": "500m", "memory": "700Mi"}})
            };
            s.upsert_pod(&pod(&format!("p{i:02}"), req, json!({"app": "x"})), t0)
                .unwrap();
        }
        let mut out = Vec::new();
        for _ in 0..100 {
            let ds = s.schedule_batch(t0);
            if ds.is_empty() {
                break;
            }
            for d in ds {
                match d {
                    Decision::Assumed { pod, node, .. } => out.push((pod.key.name.clone(), node)),
                    Decision::Unschedulable { pod, message, .. } => {
                        out.push((pod.key.name.clone(), message))
                    }
                    Decision::Error { message, .. } => panic!("{message}"),
                }
            }
        }
        out.sort();
        (out, s.stats.shared)
    };
    let (one_by_one, shared1) = run(1);
    let (batched, shared) = run(64);
    assert_eq!(shared1, 0);
    assert!(shared >= 30, "class evaluation not shared: {shared}");
    assert_eq!(batched, one_by_one);
    // The cluster fills up: some pods must be left with upstream's message.
    assert!(
        batched
            .iter()
            .any(|(_, m)| m.starts_with("0/6 nodes are available: ")),
        "{batched:?}"
    );
}
