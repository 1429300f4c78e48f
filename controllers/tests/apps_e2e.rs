//! End to end through a real apiserver (in-process): DaemonSet, StatefulSet, CronJob (on a
//! driven clock), TTL-after-finished and ReplicationController. The test plays the
//! scheduler and the kubelet by writing pod status.

mod common;

use std::collections::BTreeMap;

use api::client::{Api, Client, ListParams, Patch, PatchParams};
use common::{Manager, Server, TestClock, create, image, name, node, pod_ready, pods, wait_for};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

fn target(p: &core::Pod) -> String {
    controllers::daemonset::target_node(p)
        .unwrap_or("")
        .to_string()
}

async fn ready_all(c: &Client, ns: &str, sel: &str) {
    for p in pods(c, ns, sel).await {
        if !common::is_ready(&p) {
            pod_ready(c, ns, &name(&p)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_places_one_pod_per_eligible_node_and_rolls() {
    let s = Server::start();
    let c = &s.client;
    node(c, "n1", json!({"disk": "ssd"}), json!([])).await;
    node(
        c,
        "n2",
        json!({"disk": "ssd"}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    node(c, "n3", json!({"disk": "hdd"}), json!([])).await;
    let _m = Manager::start(&s, "daemonset", |_| {});
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    create(
        &dss,
        json!({"metadata": {"name": "agent", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"nodeSelector": {"disk": "ssd"},
                                              "containers": [{"name": "a", "image": "agent:1"}]}}}}),
    )
    .await;
    // Only n1: n2 is tainted, n3 is not selected.
    let p = wait_for("one daemon pod", 30, || async {
        let p = pods(c, "default", "app=agent").await;
        (p.len() == 1).then_some(p)
    })
    .await;
    assert_eq!(target(&p[0]), "n1");
    let st = wait_for("status", 30, || async {
        let d = dss.get("agent").await.ok()?;
        d.status
            .filter(|s| s.desired_number_scheduled == 1 && s.current_number_scheduled == 1)
    })
    .await;
    assert_eq!(st.number_misscheduled, 0);
    // Tolerate the taint: n2 gets one too.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}}})),
    )
    .await
    .unwrap();
    let p = wait_for("pods on n1 and n2 at the new revision", 30, || async {
        ready_all(c, "default", "app=agent").await;
        let p = pods(c, "default", "app=agent").await;
        let mut nodes: Vec<String> = p.iter().map(target).collect();
        nodes.sort();
        let tolerant = p.iter().all(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.tolerations.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key.as_deref() == Some("dedicated")))
        });
        (nodes == ["n1", "n2"] && tolerant).then_some(p)
    })
    .await;
    // The pods carry their node affinity, the default tolerations and the revision label.
    let spec = p[0].spec.as_ref().unwrap();
    assert!(
        spec.node_name.is_none(),
        "the scheduler binds, not the controller"
    );
    assert!(
        spec.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
    );
    // Rolling update of the image, one node at a time, the test readying new pods.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    wait_for("the rollout", 60, || async {
        let p = pods(c, "default", "app=agent").await;
        assert!(p.len() <= 2, "more pods than nodes: {}", p.len());
        ready_all(c, "default", "app=agent").await;
        let d = dss.get("agent").await.ok()?;
        let st = d.status?;
        (p.len() == 2
            && p.iter().all(|p| image(p) == "agent:2")
            && st.updated_number_scheduled == Some(2)
            && st.number_available == Some(2))
        .then_some(())
    })
    .await;
    let revs: Api<ControllerRevision> = Api::namespaced(c.clone(), "default");
    let rl = revs.list(&ListParams::default()).await.unwrap().items;
    let mut numbers: Vec<i64> = rl.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3], "one revision per template");
    // n3 becomes eligible.
    let nodes: Api<core::Node> = Api::all(c.clone());
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .unwrap();
    wait_for("a pod on n3", 30, || async {
        let p = pods(c, "default", "app=agent").await;
        p.iter().any(|p| target(p) == "n3").then_some(())
    })
    .await;
}

fn ordinal_names(p: &[core::Pod]) -> Vec<String> {
    let mut v: Vec<String> = p.iter().map(name).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_ordered_creation_partition_rollout_and_claims() {
    let s = Server::start();
    let c = &s.client;
    let _m = Manager::start(&s, "statefulset", |_| {});
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    create(
        &sts,
        json!({"metadata": {"name": "db", "namespace": "default"},
               "spec": {"replicas": 3, "serviceName": "db",
                        "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}},
                                     "spec": {"containers": [{"name": "db", "image": "db:1"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    )
    .await;
    // Ordered: db-0 alone until it is Ready, then db-1, then db-2.
    for i in 0..3 {
        let want: Vec<String> = (0..=i).map(|j| format!("db-{j}")).collect();
        wait_for(&format!("pods up to db-{i}"), 30, || async {
            let p = pods(c, "default", "app=db").await;
            assert!(
                p.len() <= want.len(),
                "db-{} before db-{i} was Ready",
                p.len() - 1
            );
            (ordinal_names(&p) == want).then_some(())
        })
        .await;
        // Nothing more appears while db-i is not Ready.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(pods(c, "default", "app=db").await.len(), want.len());
        pod_ready(c, "default", &format!("db-{i}")).await;
    }
    let claims: Api<core::PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let mut cl: Vec<String> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    cl.sort();
    assert_eq!(cl, ["data-db-0", "data-db-1", "data-db-2"]);
    let p0 = pods(c, "default", "statefulset.kubernetes.io/pod-name=db-0").await;
    let vols = p0[0].spec.as_ref().unwrap().volumes.clone().unwrap();
    assert_eq!(
        vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-db-0"
    );
    wait_for("3 ready replicas", 30, || async {
        let st = sts.get("db").await.ok()?.status?;
        (st.ready_replicas == Some(3)).then_some(())
    })
    .await;
    // Partition 2: only db-2 moves to the new image.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
                                      "template": {"spec": {"containers": [{"name": "db", "image": "db:2"}]}}}})),
    )
    .await
    .unwrap();
    wait_for("db-2 updated", 30, || async {
        ready_all(c, "default", "app=db").await;
        let p = pods(c, "default", "app=db").await;
        let images: BTreeMap<String, String> = p.iter().map(|p| (name(p), image(p))).collect();
        (images.get("db-2").map(String::as_str) == Some("db:2")).then_some(images)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let images: BTreeMap<String, String> = pods(c, "default", "app=db")
        .await
        .iter()
        .map(|p| (name(p), image(p)))
        .collect();
    assert_eq!(
        images.get("db-0").map(String::as_str),
        Some("db:1"),
        "below the partition"
    );
    assert_eq!(
        images.get("db-1").map(String::as_str),
        Some("db:1"),
        "below the partition"
    );
    // Partition 0: the rest follow, highest first, and the rollout completes.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    wait_for("the rollout to complete", 60, || async {
        ready_all(c, "default", "app=db").await;
        let st = sts.get("db").await.ok()?.status?;
        (st.updated_replicas == Some(3)
            && st.current_revision == st.update_revision
            && st.ready_replicas == Some(3))
        .then_some(())
    })
    .await;
    // Scale down: db-2 goes first; the claims stay.
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_for("scale down to db-0", 30, || async {
        let p = pods(c, "default", "app=db").await;
        let names = ordinal_names(&p);
        assert!(names != ["db-0", "db-2"], "db-1 went before db-2");
        (names == ["db-0"]).then_some(())
    })
    .await;
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
}

fn minute_after(t: Timestamp) -> Timestamp {
    let s = t.as_second();
    Timestamp::from_second((s.div_euclid(60) + 1) * 60).unwrap()
}

async fn touch(api: &Api<CronJob>, n: u32) {
    api.patch(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": n.to_string()}}})),
    )
    .await
    .unwrap();
}

async fn job_names(c: &Client) -> Vec<String> {
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let mut v: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter_map(|j| j.metadata.name)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_on_a_driven_clock() {
    let s = Server::start();
    let c = &s.client;
    let clock = TestClock::default();
    let cjs: Api<CronJob> = Api::namespaced(c.clone(), "default");
    let cj = create(
        &cjs,
        json!({"metadata": {"name": "tick", "namespace": "default"},
               "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": "Forbid",
                        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                            "containers": [{"name": "t", "image": "busybox"}]}}}}}}),
    )
    .await;
    let created = cj.metadata.creation_timestamp.unwrap().0;
    let first = minute_after(created);
    // Stopped just before the first minute: nothing runs.
    clock.set(first.checked_sub(SignedDuration::from_secs(1)).unwrap());
    let ck = clock.clock();
    let _m = Manager::start(&s, "cronjob", move |o| o.clock = ck);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(job_names(c).await.is_empty());
    // The minute comes: one Job, named after it, active in the status.
    clock.set(first.checked_add(SignedDuration::from_secs(2)).unwrap());
    touch(&cjs, 1).await;
    let j1 = format!("tick-{}", first.as_second() / 60);
    wait_for("the first job", 30, || async {
        let st = cjs.get("tick").await.ok()?.status?;
        (job_names(c).await == [j1.clone()]
            && st.active.as_ref().map(Vec::len) == Some(1)
            && st.last_schedule_time.as_ref().map(|t| t.0) == Some(first))
        .then_some(())
    })
    .await;
    // Forbid: the next minute is skipped while the first Job runs.
    let second = first.checked_add(SignedDuration::from_secs(60)).unwrap();
    clock.set(second.checked_add(SignedDuration::from_secs(1)).unwrap());
    touch(&cjs, 2).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(job_names(c).await, std::slice::from_ref(&j1), "Forbid");
    // The Job completes: it leaves the active list, lastSuccessfulTime is set.
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let done = second.to_string();
    jobs.patch_status(
        &j1,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"startTime": first.to_string(), "completionTime": done, "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": done}]}})),
    )
    .await
    .unwrap();
    // Forbid only delayed the second minute: once the first Job is done, it starts.
    let j2 = format!("tick-{}", second.as_second() / 60);
    wait_for("the completed job to leave the active list", 30, || async {
        let st = cjs.get("tick").await.ok()?.status?;
        let active: Vec<String> = st.active?.into_iter().filter_map(|a| a.name).collect();
        (active == [j2.clone()]
            && st.last_successful_time.as_ref().map(|t| t.0) == Some(second)
            && st.last_schedule_time.as_ref().map(|t| t.0) == Some(second))
        .then_some(())
    })
    .await;
    // Replace: the third minute's Job replaces the running second one.
    cjs.patch(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"concurrencyPolicy": "Replace"}})),
    )
    .await
    .unwrap();
    let third = second.checked_add(SignedDuration::from_secs(60)).unwrap();
    clock.set(third.checked_add(SignedDuration::from_secs(1)).unwrap());
    touch(&cjs, 3).await;
    let j3 = format!("tick-{}", third.as_second() / 60);
    wait_for("the third job replacing the second", 30, || async {
        let names = job_names(c).await;
        (names.contains(&j3) && !names.contains(&j2)).then_some(())
    })
    .await;
    // The status follows the Job's creation.
    wait_for("the third job alone in the active list", 30, || async {
        let st = cjs.get("tick").await.ok()?.status?;
        let active: Vec<String> = st.active?.into_iter().filter_map(|a| a.name).collect();
        (active == [j3.clone()]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_after_finished_and_replication_controller() {
    let s = Server::start();
    let c = &s.client;
    let clock = TestClock::default();
    let ck = clock.clock();
    let _m = Manager::start(&s, "ttl-after-finished,replicationcontroller", move |o| {
        o.clock = ck
    });
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "once", "namespace": "default"},
               "spec": {"ttlSecondsAfterFinished": 600,
                        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "busybox"}]}}}}),
    )
    .await;
    let finished = Timestamp::now();
    jobs.patch_status(
        "once",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"conditions": [{"type": "Complete", "status": "True",
            "lastTransitionTime": finished.to_string()}]}}),
        ),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        jobs.get_opt("once").await.unwrap().is_some(),
        "the TTL has not run out"
    );
    clock.set(
        finished
            .checked_add(SignedDuration::from_secs(601))
            .unwrap(),
    );
    jobs.patch(
        "once",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touch": "1"}}})),
    )
    .await
    .unwrap();
    wait_for("the job to be deleted", 30, || async {
        match jobs.get_opt("once").await.ok()? {
            None => Some(()),
            Some(j) => j.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;

    let rcs: Api<core::ReplicationController> = Api::namespaced(c.clone(), "default");
    create(
        &rcs,
        json!({"metadata": {"name": "legacy", "namespace": "default"},
               "spec": {"replicas": 2, "selector": {"app": "legacy"},
                        "template": {"metadata": {"labels": {"app": "legacy"}},
                                     "spec": {"containers": [{"name": "l", "image": "busybox"}]}}}}),
    )
    .await;
    let p = wait_for("2 pods", 30, || async {
        let p = pods(c, "default", "app=legacy").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let owner = &p[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.api_version.as_str()),
        ("ReplicationController", "v1")
    );
    ready_all(c, "default", "app=legacy").await;
    wait_for("status", 30, || async {
        let st = rcs.get("legacy").await.ok()?.status?;
        (st.replicas == 2 && st.ready_replicas == Some(2)).then_some(())
    })
    .await;
    rcs.patch(
        "legacy",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_for("1 pod", 30, || async {
        (pods(c, "default", "app=legacy").await.len() == 1).then_some(())
    })
    .await;
}
