//! End-to-end with the real kubectl against `kubeshard server` + `kubeshard
//! controller-manager`: ResourceQuota (`kubectl create quota`, the 403 a user sees),
//! PersistentVolume binding (`kubectl get pv,pvc`) and the HPA without a metrics API
//! (an autoscaling/v2 manifest applied with kubectl; `kubectl autoscale` needs autoscaling/v1).

mod controllers_support;

use controllers_support::{Cluster, K, wait_for};

const VOLUMES: &str = "apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-a}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/pv-a}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: \"\"
  resources: {requests: {storage: 1Gi}}
";

const HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
";

#[test]
fn quota_volumes_and_autoscaler_through_kubectl() {
    let Some(c) = Cluster::start(
        "resourcequota,persistentvolume-binder,deployment,replicaset,horizontalpodautoscaling",
    ) else {
        return;
    };
    // Quota: usage shows up in status; the second pod is refused as upstream words it.
    c.k(&["create", "quota", "small", "--hard=pods=1,configmaps=5"]);
    wait_for("quota status", 30, || {
        let q = c.json(&["quota", "small"]);
        (q["status"]["used"]["pods"] == "0").then_some(())
    });
    c.k(&["run", "one", "--image=busybox", "--restart=Never"]);
    let out = c
        .server
        .kubectl(K, &["run", "two", "--image=busybox", "--restart=Never"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "Error from server (Forbidden): pods \"two\" is forbidden: exceeded quota: small, requested: pods=1, used: pods=1, limited: pods=1"
        ),
        "{err}"
    );
    let described = c.k(&["describe", "quota", "small"]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "1", "1"]),
        "{described}"
    );
    // Static volume binding.
    c.apply(VOLUMES);
    wait_for("claim bound", 30, || {
        let pvc = c.json(&["pvc", "data"]);
        (pvc["status"]["phase"] == "Bound").then_some(())
    });
    let table = c.k(&["get", "pv,pvc"]);
    let bound_rows = table.lines().filter(|l| l.contains("Bound")).count();
    assert_eq!(bound_rows, 2, "{table}");
    assert!(
        table.contains("default/data"),
        "the PV row names its claim: {table}"
    );
    // Autoscaler with no metrics API: the condition says why, nothing scales.
    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    // `kubectl autoscale` posts autoscaling/v1, which is not served yet (only v2 is):
    // the same object as an autoscaling/v2 manifest.
    c.apply(HPA);
    let cond = wait_for("ScalingActive condition", 60, || {
        let h = c.json(&["hpa", "web"]);
        h["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == "ScalingActive").cloned())
    });
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "FailedGetResourceMetric");
    let d = c.json(&["deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
}
