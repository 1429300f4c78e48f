//! End-to-end: namespace lifecycle, service accounts, endpoints and the garbage collector,
//! driven by the real kubectl against `kubeshard server` + `kubeshard controller-manager`.

mod controllers_support;

use controllers_support::{Cluster, terminating, wait_for};
use serde_json::Value;

const APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
        ports:
        - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data: {a: b}
";

#[test]
fn namespace_accounts_endpoints_and_deletion() {
    let Some(c) = Cluster::start("*") else { return };
    c.k(&["create", "namespace", "demo"]);
    // Every namespace gets a default ServiceAccount and the root CA.
    wait_for("default service account", 30, || {
        c.exists(&["serviceaccount", "default", "-n", "demo"])
            .then_some(())
    });
    let cm = wait_for("kube-root-ca.crt", 30, || {
        c.exists(&["configmap", "kube-root-ca.crt", "-n", "demo"])
            .then(|| c.json(&["configmap", "kube-root-ca.crt", "-n", "demo"]))
    });
    assert!(
        cm["data"]["ca.crt"]
            .as_str()
            .unwrap_or("")
            .contains("BEGIN CERTIFICATE")
    );

    c.apply(APP);
    let pods = wait_for("2 pods", 30, || {
        let p = c.items("pods", "demo", &["-l", "app=web"]);
        (p.len() == 2).then_some(p)
    });
    for (i, p) in pods.iter().enumerate() {
        c.make_ready("demo", p, &format!("10.3.0.{}", i + 1));
    }
    // The Service's endpoints list both pods on the resolved named port.
    let slices = wait_for("endpoint slices", 30, || {
        let s = c.items(
            "endpointslices",
            "demo",
            &["-l", "kubernetes.io/service-name=web"],
        );
        let ready = s
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        (ready == 2).then_some(s)
    });
    assert_eq!(slices[0]["ports"][0]["port"], 8080);
    assert_eq!(
        slices[0]["metadata"]["ownerReferences"][0]["kind"],
        "Service"
    );
    wait_for("endpoints", 30, || {
        let e = c.json(&["endpoints", "web", "-n", "demo"]);
        (e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)).then_some(())
    });

    // Deleting the namespace deletes everything in it, then the namespace.
    c.k(&["delete", "namespace", "demo", "--wait=false"]);
    wait_for("the namespace to go", 60, || {
        (!c.exists(&["namespace", "demo"])).then_some(())
    });
    let left = c.json(&[
        "pods,deployments,replicasets,services,configmaps",
        "-n",
        "demo",
    ]);
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
}

fn rs_and_pods(c: &Cluster) -> (Vec<Value>, Vec<Value>) {
    (
        c.items("replicasets", "default", &["-l", "app=web"]),
        c.items("pods", "default", &["-l", "app=web"]),
    )
}

#[test]
fn background_orphan_and_foreground_deletion() {
    let Some(c) = Cluster::start("*") else { return };
    // Background (kubectl's default): the Deployment goes, then its ReplicaSet and pods.
    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    wait_for("2 pods", 30, || {
        (rs_and_pods(&c).1.len() == 2).then_some(())
    });
    c.k(&["delete", "deployment", "web"]);
    wait_for("dependents collected", 30, || {
        let (rs, pods) = rs_and_pods(&c);
        (rs.is_empty() && pods.is_empty()).then_some(())
    });

    // Orphan: the Deployment goes, its ReplicaSet and pods stay, without owner references.
    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    wait_for("2 pods", 30, || {
        (rs_and_pods(&c).1.len() == 2).then_some(())
    });
    c.k(&["delete", "deployment", "web", "--cascade=orphan"]);
    wait_for("the deployment to go", 30, || {
        (!c.exists(&["deployment", "web"])).then_some(())
    });
    let rs = wait_for("the orphaned ReplicaSet", 30, || {
        let (rs, _) = rs_and_pods(&c);
        (rs.len() == 1 && rs[0]["metadata"]["ownerReferences"].is_null()).then(|| rs[0].clone())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (rss, pods) = rs_and_pods(&c);
    assert_eq!((rss.len(), pods.len()), (1, 2), "orphans are kept");
    let name = rs["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        pods.iter().all(
            |p| !terminating(p) && p["metadata"]["ownerReferences"][0]["name"] == name.as_str()
        ),
        "the pods still belong to the ReplicaSet"
    );

    // Foreground: the ReplicaSet waits (foregroundDeletion finalizer) until its pods are gone.
    c.k(&[
        "delete",
        "replicaset",
        &name,
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_for("foreground deletion", 30, || {
        let (rs, pods) = rs_and_pods(&c);
        if let Some(r) = rs.first() {
            // While the ReplicaSet is still there it is marked and waits for its pods.
            assert!(!r["metadata"]["deletionTimestamp"].is_null(), "{r}");
        }
        (rs.is_empty() && pods.is_empty()).then_some(())
    });
}
