//! DefaultPreemption (PostFilter): when no node fits, find the node where evicting the fewest,
//! least important lower-priority pods makes room, respecting PodDisruptionBudgets, and
//! nominate it.

use std::sync::Arc;

use crate::framework::{Framework, Nomination, Plugin, PostFilterPlugin};
use crate::model::{PodInfo, Snapshot};
use crate::status::Status;

/// Upstream's `minCandidateNodesPercentage` and `minCandidateNodesAbsolute`: the dry run stops
/// once this many candidate nodes are found.
const MIN_CANDIDATE_PERCENT: usize = 10;
const MIN_CANDIDATE_ABSOLUTE: usize = 100;

/// DefaultPreemption.
#[derive(Debug, Default)]
pub struct DefaultPreemption;

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        "DefaultPreemption"
    }
    fn as_post_filter(&self) -> Option<&dyn PostFilterPlugin> {
        Some(self)
    }
}

#[derive(Debug)]
struct Candidate {
    node: u32,
    victims: Vec<Arc<PodInfo>>,
    pdb_violations: usize,
}

/// More important first: higher priority, then older.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then(a.created.cmp(&b.created))
}

impl DefaultPreemption {
    fn select_victims(
        fw: &Framework,
        pc: &crate::framework::PodCycle,
        pod: &PodInfo,
        snap: &Snapshot,
        node_idx: u32,
        pdb_budget: &[i32],
    ) -> Option<Candidate> {
        let node = &snap.nodes[node_idx as usize];
        let lower: Vec<Arc<PodInfo>> = node
            .pods
            .iter()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        if lower.is_empty() {
            return None;
        }
        // Cheap resource pre-check before cloning the node.
        let mut freed = node.requested.clone();
        for p in &lower {
            freed.sub(&p.requests);
        }
        let r = &pod.requests;
        let a = &node.allocatable;
        if r.milli_cpu > a.milli_cpu - freed.milli_cpu
            || r.memory > a.memory - freed.memory
            || (node.pods.len() - lower.len()) as i64 + 1 > a.pods
        {
            return None;
        }
        // The dry run works on a copy of the node and of the pod's cycle state: plugins whose
        // PreFilter state counts pods on other nodes (InterPodAffinity, PodTopologySpread)
        // see each removal and re-addition through their AddPod/RemovePod extensions, as
        // upstream's `SelectVictimsOnNode` does.
        let ext = fw.has_pre_filter_extensions(pc);
        let mut state = ext.then(|| pc.clone());
        // Pods nominated here with at least this priority keep their promised room.
        let mut trial = node.clone();
        let nominated: Vec<Arc<PodInfo>> = snap
            .nominated
            .get(&(node_idx as usize))
            .map(|noms| {
                noms.iter()
                    .filter(|p| p.key != pod.key && p.priority >= pod.priority)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for p in nominated {
            trial.add_pod(p.clone());
            if let Some(st) = state.as_mut()
                && !fw
                    .run_pre_filter_add_pod(st, pod, &p, &trial, snap)
                    .is_success()
            {
                return None;
            }
        }
        for p in &lower {
            trial.remove_pod(&p.key);
            if let Some(st) = state.as_mut()
                && !fw
                    .run_pre_filter_remove_pod(st, pod, p, &trial, snap)
                    .is_success()
            {
                return None;
            }
        }
        if !fw
            .run_filters(state.as_ref().unwrap_or(pc), pod, &trial, snap)
            .is_success()
        {
            return None;
        }
        let mut sorted = lower;
        sorted.sort_by(|a, b| more_important(a, b));
        // Split by whether evicting would violate a PDB.
        let mut budget = pdb_budget.to_vec();
        let mut violating = Vec::new();
        let mut fine = Vec::new();
        for p in sorted {
            let mut violates = false;
            for (i, pdb) in snap.pdbs.iter().enumerate() {
                if pdb.namespace == p.key.namespace && pdb.selector.matches(&p.labels) {
                    budget[i] -= 1;
                    if budget[i] < 0 {
                        violates = true;
                    }
                }
            }
            if violates {
                violating.push(p)
            } else {
                fine.push(p)
            }
        }
        // Reprieve as many as possible, most important first, PDB-protected ones first.
        let mut victims = Vec::new();
        let mut pdb_violations = 0;
        for (group, is_violating) in [(violating, true), (fine, false)] {
            for p in group {
                trial.add_pod(p.clone());
                let fits = match state.as_mut() {
                    Some(st) => {
                        fw.run_pre_filter_add_pod(st, pod, &p, &trial, snap)
                            .is_success()
                            && fw.run_filters(st, pod, &trial, snap).is_success()
                    }
                    None => fw.run_filters(pc, pod, &trial, snap).is_success(),
                };
                if !fits {
                    trial.remove_pod(&p.key);
                    if let Some(st) = state.as_mut() {
                        // Undo the addition in the state too (it cannot fail: it only
                        // reverses the update just made).
                        let _ = fw.run_pre_filter_remove_pod(st, pod, &p, &trial, snap);
                    }
                    if is_violating {
                        pdb_violations += 1;
                    }
                    victims.push(p);
                }
            }
        }
        Some(Candidate {
            node: node_idx,
            victims,
            pdb_violations,
        })
    }
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        fw: &Framework,
        pod: &PodInfo,
        snap: &Snapshot,
        rejected: &[(u32, bool)],
    ) -> Result<Nomination, Status> {
        if pod.never_preempt {
            return Err(Status::unresolvable(
                "preemption: not eligible due to preemptionPolicy=Never.",
            ));
        }
        let potential: Vec<u32> = rejected
            .iter()
            .filter(|(_, unresolvable)| !unresolvable)
            .map(|(n, _)| *n)
            .collect();
        if potential.is_empty() {
            return Err(Status::unresolvable(format!(
                "preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.",
                snap.nodes.len(),
                rejected.len()
            )));
        }
        let want = (snap.nodes.len() * MIN_CANDIDATE_PERCENT / 100)
            .max(MIN_CANDIDATE_ABSOLUTE)
            .min(potential.len());
        let budget: Vec<i32> = snap.pdbs.iter().map(|p| p.disruptions_allowed).collect();
        let pc = fw.prepare(pod, snap)?;
        let mut candidates = Vec::new();
        for &n in &potential {
            if let Some(c) = Self::select_victims(fw, &pc, pod, snap, n, &budget) {
                candidates.push(c);
                if candidates.len() >= want {
                    break;
                }
            }
        }
        // pickOneNodeForPreemption: fewest PDB violations, lowest highest-victim priority,
        // lowest priority sum, fewest victims, then the first found.
        let key = |c: &Candidate| {
            let highest = c
                .victims
                .iter()
                .map(|v| v.priority)
                .max()
                .unwrap_or(i32::MIN);
            // Offset as upstream so that negative priorities still sum sensibly.
            let sum: i64 = c
                .victims
                .iter()
                .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
                .sum();
            (c.pdb_violations, highest, sum, c.victims.len())
        };
        let best = candidates
            .into_iter()
            .enumerate()
            .min_by_key(|(i, c)| (key(c), *i))
            .map(|(_, c)| c);
        match best {
            Some(c) => Ok(Nomination {
                node: c.node,
                victims: c.victims.iter().map(|v| v.key.clone()).collect(),
            }),
            None => Err(Status::unschedulable(format!(
                "preemption: 0/{} nodes are available: {} No preemption victims found for incoming pod.",
                snap.nodes.len(),
                potential.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::framework::PostFilterPlugin;
    use crate::model::{Pdb, PodInfo, Selector};
    use crate::plugins::testutil::*;

    fn prio(name: &str, cpu: &str, priority: i32, labels: serde_json::Value) -> PodInfo {
        pod(
            json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
    }

    fn run(
        s: &crate::model::Snapshot,
        p: &PodInfo,
    ) -> Result<crate::framework::Nomination, crate::Status> {
        let fw = single("NodeResourcesFit", None);
        let rejected: Vec<(u32, bool)> = (0..s.nodes.len() as u32).map(|n| (n, false)).collect();
        super::DefaultPreemption.post_filter(&fw, p, s, &rejected)
    }

    #[test]
    fn picks_minimal_lowest_priority_victims() {
        let mut s = snap(vec![
            cap_node("a", "4", "1Gi", &[]),
            cap_node("b", "4", "1Gi", &[]),
        ]);
        // a: two 2-cpu pods at priority 5; b: one 3-cpu pod at 1 and one 1-cpu at 10.
        s.add_pod(0, Arc::new(prio("a1", "2", 5, json!({}))));
        s.add_pod(0, Arc::new(prio("a2", "2", 5, json!({}))));
        s.add_pod(1, Arc::new(prio("b1", "3", 1, json!({}))));
        s.add_pod(1, Arc::new(prio("b2", "1", 10, json!({}))));
        // Needs 2 cpu at priority 20: on a one victim (prio 5), on b one victim (prio 1) -> b.
        let n = run(&s, &prio("hi", "2", 20, json!({}))).unwrap();
        assert_eq!(n.node, 1);
        assert_eq!(
            n.victims
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["b1"]
        );
        // Priority 7 cannot evict b2 (10) but can evict b1: still b.
        let n = run(&s, &prio("mid", "3", 7, json!({}))).unwrap();
        assert_eq!((n.node, n.victims.len()), (1, 1));
        // Priority 3 only outranks b1; 4 cpu needs b2 gone too: impossible.
        assert!(run(&s, &prio("low", "4", 3, json!({}))).is_err());
        // preemptionPolicy Never.
        let never = pod(json!({"metadata": {"name": "n", "namespace": "default"},
            "spec": {"priority": 100, "preemptionPolicy": "Never", "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}}));
        assert!(run(&s, &never).is_err());
    }

    #[test]
    fn respects_pod_disruption_budgets() {
        let mut s = snap(vec![
            cap_node("a", "2", "1Gi", &[]),
            cap_node("b", "2", "1Gi", &[]),
        ]);
        s.add_pod(0, Arc::new(prio("a1", "2", 1, json!({"app": "guarded"}))));
        s.add_pod(1, Arc::new(prio("b1", "2", 5, json!({}))));
        // Without a PDB the lowest-priority victim (a1) wins.
        assert_eq!(run(&s, &prio("hi", "2", 20, json!({}))).unwrap().node, 0);
        s.pdbs.push(Pdb {
            namespace: "default".into(),
            selector: Selector::from_labels(&[("app".to_string(), "guarded".to_string())].into()),
            disruptions_allowed: 0,
        });
        assert_eq!(run(&s, &prio("hi", "2", 20, json!({}))).unwrap().node, 1);
    }

    /// A framework with these plugins enabled at every point (weight 1).
    fn multi(names: &[&str]) -> crate::framework::Framework {
        let enabled = names
            .iter()
            .map(|n| format!("{{name: {n}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let cfg = format!(
            "profiles:\n- schedulerName: t\n  plugins:\n    multiPoint:\n      enabled: [{enabled}]\n      disabled: [{{name: '*'}}]\n"
        );
        let cfg: crate::config::Config = serde_yaml::from_str(&cfg).expect("config");
        crate::config::build_profiles(&cfg)
            .expect("profile")
            .remove(0)
    }

    fn run_with(
        fw: &crate::framework::Framework,
        s: &crate::model::Snapshot,
        p: &PodInfo,
    ) -> Result<crate::framework::Nomination, crate::Status> {
        let rejected: Vec<(u32, bool)> = (0..s.nodes.len() as u32).map(|n| (n, false)).collect();
        super::DefaultPreemption.post_filter(fw, p, s, &rejected)
    }

    fn names(n: &crate::framework::Nomination) -> Vec<&str> {
        let mut v: Vec<&str> = n.victims.iter().map(|k| k.name.as_str()).collect();
        v.sort();
        v
    }

    /// The victim is the very pod the preemptor's anti-affinity rejects: the dry run must
    /// remove it from InterPodAffinity's PreFilter counts too (RemovePod), or no node is a
    /// candidate.
    #[test]
    fn dry_run_removes_victims_from_inter_pod_affinity_state() {
        let mut s = snap(vec![
            cap_node("a", "2", "1Gi", &[("kubernetes.io/hostname", "a")]),
            cap_node("b", "2", "1Gi", &[("kubernetes.io/hostname", "b")]),
        ]);
        s.add_pod(0, Arc::new(prio("web", "2", 1, json!({"app": "web"}))));
        s.add_pod(1, Arc::new(prio("keep", "2", 100, json!({"app": "other"}))));
        let hi = pod(json!({"metadata": {"name": "hi", "namespace": "default"},
            "spec": {"priority": 50, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}));
        let fw = multi(&["NodeResourcesFit", "InterPodAffinity"]);
        let n = run_with(&fw, &s, &hi).expect("a candidate once the victim is gone");
        assert_eq!((n.node, names(&n)), (0, vec!["web"]));
        // The reprieve step re-adds through AddPod: a second, unrelated low-priority pod on
        // the node is not evicted when there is room for it.
        s.add_pod(0, Arc::new(prio("tiny", "0", 1, json!({"app": "tiny"}))));
        let n = run_with(&fw, &s, &hi).expect("candidate");
        assert_eq!((n.node, names(&n)), (0, vec!["web"]));
        // An existing pod's anti-affinity towards the preemptor, on the victim: removed too.
        let mut s = snap(vec![cap_node(
            "a",
            "2",
            "1Gi",
            &[("kubernetes.io/hostname", "a")],
        )]);
        let guard = pod(
            json!({"metadata": {"name": "guard", "namespace": "default", "labels": {"app": "guard"}},
            "spec": {"priority": 1, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "hi"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
        s.add_pod(0, Arc::new(guard));
        let hi = prio("hi", "1", 50, json!({"app": "hi"}));
        let n = run_with(&fw, &s, &hi).expect("candidate");
        assert_eq!((n.node, names(&n)), (0, vec!["guard"]));
    }

    /// Evicting matching pods changes the spread counts: the dry run must see the domain
    /// emptied (RemovePod) and refilled on each reprieve (AddPod).
    #[test]
    fn dry_run_updates_topology_spread_counts() {
        let mut s = snap(vec![
            cap_node("a", "2", "1Gi", &[("zone", "z1")]),
            cap_node("b", "1", "1Gi", &[("zone", "z2")]),
        ]);
        s.add_pod(0, Arc::new(prio("v1", "1", 1, json!({"app": "web"}))));
        s.add_pod(0, Arc::new(prio("v2", "1", 1, json!({"app": "web"}))));
        s.add_pod(1, Arc::new(prio("keep", "1", 100, json!({"app": "other"}))));
        let hi = pod(
            json!({"metadata": {"name": "hi", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"priority": 50, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
                     "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        );
        let fw = multi(&["NodeResourcesFit", "PodTopologySpread"]);
        // z1 holds 2 matching pods, z2 none: with either victim back, z1 would hold 2 with
        // the preemptor against 0 (skew 2 > 1), so both go; resources alone would need one.
        let n = run_with(&fw, &s, &hi).expect("a candidate once z1 is emptied");
        assert_eq!((n.node, names(&n)), (0, vec!["v1", "v2"]));
        // With maxSkew 2 one victim can stay (z1: 1 + preemptor = 2 against 0).
        let hi2 = pod(
            json!({"metadata": {"name": "hi", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"priority": 50, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
                     "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        );
        let n = run_with(&fw, &s, &hi2).expect("candidate");
        assert_eq!((n.node, n.victims.len()), (0, 1));
    }
}
