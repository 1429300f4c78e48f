use super::*;
use crate::testutil::{pod, rs, ts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

#[test]
fn creates_the_missing_pods_and_counts_status() {
    let r = rs("web", "u1", 3);
    let pods = [pod("a", Some(&r), "Running", true, "n1")];
    let p = plan(&r, pods.iter(), ts(2000)).unwrap();
    assert_eq!(p.create, 2);
    assert!(p.delete.is_empty());
    assert_eq!(p.status.replicas, 1);
    assert_eq!(p.status.ready_replicas, Some(1));
    assert_eq!(p.status.available_replicas, Some(1));
    assert_eq!(p.status.observed_generation, Some(1));
}

#[test]
fn ignores_other_owners_and_finished_pods_and_adopts_orphans() {
    let r = rs("web", "u1", 2);
    let other = rs("other", "u2", 1);
    let pods = [
        pod("theirs", Some(&other), "Running", true, "n1"),
        pod("done", Some(&r), "Succeeded", false, "n1"),
        pod("orphan", None, "Running", true, "n1"),
    ];
    let p = plan(&r, pods.iter(), ts(2000)).unwrap();
    assert_eq!(p.adopt.len(), 1);
    assert_eq!(p.adopt[0].name, "orphan");
    assert_eq!(p.create, 1, "the orphan counts, the finished pod does not");
}

#[test]
fn releases_pods_that_no_longer_match() {
    let r = rs("web", "u1", 1);
    let mut stray = pod("stray", Some(&r), "Running", true, "n1");
    stray.metadata.labels = Some(crate::testutil::labels(&[("app", "other")]));
    let p = plan(&r, [stray].iter(), ts(2000)).unwrap();
    assert_eq!(p.release.len(), 1);
    assert_eq!(p.create, 1);
}

#[test]
fn deletes_in_upstream_rank_order() {
    let r = rs("web", "u1", 0);
    let mut old_ready = pod("old-ready", Some(&r), "Running", true, "n1");
    old_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .last_transition_time = Some(Time(ts(10)));
    let mut costly = pod("costly", Some(&r), "Running", false, "n1");
    costly.metadata.annotations = Some(crate::testutil::labels(&[(POD_DELETION_COST, "100")]));
    let pods = [
        old_ready,
        pod("new-ready", Some(&r), "Running", true, "n1"),
        pod("running-unready", Some(&r), "Running", false, "n1"),
        costly,
        pod("unknown", Some(&r), "Unknown", false, "n1"),
        pod("pending", Some(&r), "Pending", false, "n1"),
        pod("unassigned", Some(&r), "Pending", false, ""),
    ];
    let refs: Vec<&Pod> = pods.iter().collect();
    let order: Vec<String> = pods_to_delete(&refs, &refs, 6, ts(100_000))
        .into_iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "unassigned",
            "pending",
            "unknown",
            "running-unready",
            "costly",
            "new-ready"
        ]
    );
}

#[test]
fn doubled_up_pods_go_first() {
    let r = rs("web", "u1", 0);
    let pods = [
        pod("alone", Some(&r), "Running", true, "n1"),
        pod("crowd-1", Some(&r), "Running", true, "n2"),
        pod("crowd-2", Some(&r), "Running", true, "n2"),
    ];
    let refs: Vec<&Pod> = pods.iter().collect();
    let first = pods_to_delete(&refs, &refs, 1, ts(5000));
    assert!(
        first[0]
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("crowd")
    );
}

#[test]
fn a_deleting_replicaset_creates_nothing() {
    let mut r = rs("web", "u1", 3);
    r.metadata.deletion_timestamp = Some(Time(ts(1500)));
    let p = plan(&r, [].iter(), ts(2000)).unwrap();
    assert_eq!(p.create, 0);
}

#[test]
fn min_ready_seconds_delays_availability_and_requeues() {
    let mut r = rs("web", "u1", 1);
    r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let pods = [pod("a", Some(&r), "Running", true, "n1")];
    let p = plan(&r, pods.iter(), ts(1010)).unwrap();
    assert_eq!(p.status.available_replicas, Some(0));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));
    let p = plan(&r, pods.iter(), ts(1031)).unwrap();
    assert_eq!(p.status.available_replicas, Some(1));
    assert_eq!(p.requeue_after, None);
}

#[test]
fn template_pods_carry_the_controller_ref() {
    let r = rs("web", "u1", 1);
    let p = pod_from_template(&r);
    assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
    let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.uid.as_str(), owner.controller), ("u1", Some(true)));
    assert_eq!(owner.block_owner_deletion, Some(true));
}

#[test]
fn slow_start_doubles() {
    assert_eq!(slow_start_batches(10, 1), [1, 2, 4, 3]);
    assert_eq!(slow_start_batches(0, 1), Vec::<usize>::new());
    assert_eq!(slow_start_batches(1, 1), [1]);
}

proptest! {
    #[test]
    fn slow_start_sums_and_doubles(n in 0usize..5000) {
        let b = slow_start_batches(n, 1);
        prop_assert_eq!(b.iter().sum::<usize>(), n);
        for w in b.windows(2) { prop_assert!(w[1] <= 2 * w[0]); }
    }

    /// Whatever the pods, the plan converges the active count to the target (bounded by
    /// the burst) and never both creates and deletes.
    #[test]
    fn plan_converges(want in 0i32..40, have in proptest::collection::vec((0u8..4, any::<bool>(), 0u8..3), 0..40)) {
        let r = rs("web", "u1", want);
        let pods: Vec<Pod> = have.iter().enumerate().map(|(i, (ph, ready, node))| {
            let phase = ["Pending", "Running", "Unknown", "Succeeded"][usize::from(*ph)];
            pod(&format!("p{i}"), Some(&r), phase, *ready, ["", "n1", "n2"][usize::from(*node)])
        }).collect();
        let p = plan(&r, pods.iter(), ts(2000)).unwrap();
        let active = pods.iter().filter(|p| is_pod_active(p)).count();
        prop_assert!(p.create == 0 || p.delete.is_empty());
        prop_assert_eq!(active + p.create - p.delete.len(), usize::try_from(want).unwrap());
    }

    /// Among running pods on one node, no ready pod is deleted while an unready one stays.
    #[test]
    fn deletion_prefers_unready(want in 0i32..20, ready in proptest::collection::vec(any::<bool>(), 0..30)) {
        let r = rs("web", "u1", want);
        let pods: Vec<Pod> = ready.iter().enumerate()
            .map(|(i, rd)| pod(&format!("p{i}"), Some(&r), "Running", *rd, "n1")).collect();
        let p = plan(&r, pods.iter(), ts(2000)).unwrap();
        let deleted: std::collections::HashSet<_> = p.delete.iter().map(|d| d.name.clone()).collect();
        let kept_unready = pods.iter().filter(|p| !is_pod_ready(p)
            && !deleted.contains(p.metadata.name.as_deref().unwrap())).count();
        let deleted_ready = pods.iter().filter(|p| is_pod_ready(p)
            && deleted.contains(p.metadata.name.as_deref().unwrap())).count();
        prop_assert!(kept_unready == 0 || deleted_ready == 0);
    }
}
