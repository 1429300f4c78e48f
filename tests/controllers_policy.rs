//! End-to-end with the real kubectl against `kubeshard server` + `kubeshard
//! controller-manager`: ResourceQuota (`kubectl create quota`, the 403 a user sees),
//! quota charged on updates that grow usage (a claim growing, a Service becoming a
//! NodePort), PersistentVolume binding (`kubectl get pv,pvc`) and the HPA without a metrics
//! API through `kubectl autoscale` (autoscaling/v1, converted to and from the stored v2).

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

/// A claim no volume matches (its class has none), so it stays Pending while it grows.
const GROW: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: grow, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: slow
  resources: {requests: {storage: 1Gi}}
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
    // Updates are charged what they add: a claim growing, a Service becoming a NodePort.
    c.k(&[
        "create",
        "quota",
        "storage",
        "--hard=requests.storage=3Gi,services.nodeports=0",
    ]);
    wait_for("storage quota status", 30, || {
        let q = c.json(&["quota", "storage"]);
        (q["status"]["used"]["requests.storage"] == "0").then_some(())
    });
    c.apply(GROW);
    c.k(&[
        "patch",
        "pvc",
        "grow",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
    ]);
    let out = c.server.kubectl(
        K,
        &[
            "patch",
            "pvc",
            "grow",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"4Gi"}}}}"#,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "persistentvolumeclaims \"grow\" is forbidden: exceeded quota: storage, requested: requests.storage=2Gi, used: requests.storage=2Gi, limited: requests.storage=3Gi"
        ),
        "{err}"
    );
    assert_eq!(
        c.json(&["pvc", "grow"])["spec"]["resources"]["requests"]["storage"],
        "2Gi"
    );
    c.k(&["create", "service", "clusterip", "plain", "--tcp=80"]);
    let out = c.server.kubectl(
        K,
        &[
            "patch",
            "svc",
            "plain",
            "-p",
            r#"{"spec":{"type":"NodePort"}}"#,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exceeded quota: storage, requested: services.nodeports=1"),
        "{err}"
    );
    assert_eq!(c.json(&["svc", "plain"])["spec"]["type"], "ClusterIP");
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
    // `kubectl autoscale` posts autoscaling/v1; the object is stored as v2.
    c.k(&[
        "autoscale",
        "deployment",
        "web",
        "--min=2",
        "--max=5",
        "--cpu-percent=80",
    ]);
    let v1 = c.json(&["horizontalpodautoscalers.v1.autoscaling", "web"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 80);
    assert_eq!(v1["spec"]["minReplicas"], 2);
    let v2 = c.json(&["horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"],
        serde_json::json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}])
    );
    let table = c.k(&["get", "hpa"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ],
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row: {table}"));
    assert!(row.contains("Deployment/web"), "{table}");
    assert!(row.contains("/80%"), "{table}");
    // A merge patch through v1 lands in the stored v2 metrics.
    c.k(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":60}}"#,
    ]);
    let v2 = c.json(&["horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    let cond = wait_for("ScalingActive condition", 60, || {
        let h = c.json(&["hpa", "web"]);
        h["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == "ScalingActive").cloned())
    });
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "FailedGetResourceMetric");
    // The v1 view keeps what it has no field for in upstream's annotations.
    let v1 = c.json(&["horizontalpodautoscalers.v1.autoscaling", "web"]);
    let conds = v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/conditions"]
        .as_str()
        .unwrap_or("");
    assert!(conds.contains("ScalingActive"), "{v1}");
    let d = c.json(&["deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
}
