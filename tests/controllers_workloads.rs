//! End-to-end: Deployments, ReplicaSets and Jobs driven by the real kubectl against
//! `kubeshard server` + `kubeshard controller-manager`. The test plays the kubelet.

mod controllers_support;

use controllers_support::{Cluster, image, is_ready, terminating, wait_for};
use serde_json::Value;

fn web_pods(c: &Cluster) -> Vec<Value> {
    c.items("pods", "default", &["-l", "app=web"])
}

/// Marks every pod of `pods` that is not ready yet Ready (with a made-up IP).
fn ready_all(c: &Cluster, pods: &[Value]) {
    for (i, p) in pods.iter().enumerate() {
        if !is_ready(p) && !terminating(p) {
            c.make_ready("default", p, &format!("10.1.0.{}", i + 1));
        }
    }
}

fn live(pods: &[Value]) -> Vec<&Value> {
    pods.iter().filter(|p| !terminating(p)).collect()
}

#[test]
fn deployment_scale_rollout_and_undo() {
    let Some(c) = Cluster::start("*") else { return };
    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    // A ReplicaSet with 3 pods appears.
    let rs = wait_for("the ReplicaSet", 30, || {
        let rs = c.items("replicasets", "default", &["-l", "app=web"]);
        (rs.len() == 1 && rs[0]["spec"]["replicas"] == 3).then(|| rs[0].clone())
    });
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    wait_for("3 pods", 30, || {
        (live(&web_pods(&c)).len() == 3).then_some(())
    });
    ready_all(&c, &web_pods(&c));
    wait_for("3 available", 30, || {
        let d = c.json(&["deployment", "web"]);
        (d["status"]["availableReplicas"] == 3).then_some(())
    });

    // Scale up and back down.
    c.k(&["scale", "deployment", "web", "--replicas=10"]);
    wait_for("10 pods", 30, || {
        (live(&web_pods(&c)).len() == 10).then_some(())
    });
    c.k(&["scale", "deployment", "web", "--replicas=3"]);
    wait_for("3 pods again", 30, || {
        (live(&web_pods(&c)).len() == 3).then_some(())
    });
    ready_all(&c, &web_pods(&c));
    wait_for("3 available again", 30, || {
        let d = c.json(&["deployment", "web"]);
        (d["status"]["availableReplicas"] == 3 && d["status"]["replicas"] == 3).then_some(())
    });

    // A rolling update with maxSurge 1, maxUnavailable 1, with the test as a slow kubelet
    // that readies one pod per observation.
    c.k(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":1}}}}"#,
    ]);
    c.k(&["set", "image", "deployment/web", "busybox=busybox:1.36"]);
    let mut observations = 0;
    wait_for("the rollout", 60, || {
        observations += 1;
        let pods = web_pods(&c);
        let live = live(&pods);
        let ready = live.iter().filter(|p| is_ready(p)).count();
        assert!(
            live.len() <= 4,
            "more than replicas + maxSurge pods: {}",
            live.len()
        );
        assert!(
            ready >= 2,
            "fewer than replicas - maxUnavailable ready: {ready}"
        );
        if let Some((i, p)) = live.iter().enumerate().find(|(_, p)| !is_ready(p)) {
            c.make_ready("default", p, &format!("10.2.0.{}", observations * 10 + i));
        }
        let d = c.json(&["deployment", "web"]);
        let done = d["status"]["updatedReplicas"] == 3
            && d["status"]["availableReplicas"] == 3
            && d["status"]["replicas"] == 3
            && live.len() == 3
            && live
                .iter()
                .all(|p| image(p) == "busybox:1.36" && is_ready(p));
        done.then_some(())
    });
    let out = c.k(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let hist = c.k(&["rollout", "history", "deployment/web"]);
    assert!(
        hist.lines().any(|l| l.starts_with('1')) && hist.lines().any(|l| l.starts_with('2')),
        "{hist}"
    );

    // Undo: the first template comes back as revision 3.
    c.k(&["rollout", "undo", "deployment/web"]);
    wait_for("the undo", 60, || {
        let pods = web_pods(&c);
        ready_all(&c, &pods);
        let live = live(&pods);
        let d = c.json(&["deployment", "web"]);
        (d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
            && d["status"]["updatedReplicas"] == 3
            && d["status"]["availableReplicas"] == 3
            && live.len() == 3
            && live.iter().all(|p| image(p) == "busybox" && is_ready(p)))
        .then_some(())
    });
    let rss = c.items("replicasets", "default", &["-l", "app=web"]);
    assert_eq!(rss.len(), 2, "two templates, two ReplicaSets");
    let d = c.json(&["deployment", "web"]);
    let conds = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True"),
        "{conds:?}"
    );
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"),
        "{conds:?}"
    );
}

const JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  completions: 10
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: busybox
";

#[test]
fn job_of_ten_completions_with_parallelism_three() {
    let Some(c) = Cluster::start("*") else { return };
    c.apply(JOB);
    let mut peak = 0;
    wait_for("the job to complete", 60, || {
        let pods = c.items("pods", "default", &["-l", "job-name=pi"]);
        let active: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                !terminating(p)
                    && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
            .collect();
        assert!(active.len() <= 3, "parallelism exceeded: {}", active.len());
        peak = peak.max(active.len());
        if let Some(p) = active.first() {
            c.finish("default", p, "Succeeded");
        }
        let j = c.json(&["job", "pi"]);
        let complete = j["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
        });
        (complete && j["status"]["succeeded"] == 10).then_some(())
    });
    assert_eq!(peak, 3, "the controller keeps 3 pods running");
    let succeeded = c
        .items("pods", "default", &["-l", "job-name=pi"])
        .iter()
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .count();
    assert_eq!(succeeded, 10, "exactly 10 pods ran");
    let out = c.k(&[
        "wait",
        "--for=condition=complete",
        "job/pi",
        "--timeout=10s",
    ]);
    assert!(out.contains("condition met"), "{out}");
}
