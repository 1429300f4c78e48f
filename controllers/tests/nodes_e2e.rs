//! End to end through a real apiserver (in-process): node IPAM hands out distinct podCIDRs,
//! survives a restart by rebuilding from the Nodes, reports a full range; node lifecycle
//! taints a node whose Lease goes stale, evicts the pods that do not tolerate it, and
//! untaints it when it comes back.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use api::client::{Api, DeleteParams, ListParams, Patch, PatchParams};
use common::{Manager, Server, create, node, node_ready, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

async fn cidrs(c: &api::client::Client) -> Vec<(String, Option<String>)> {
    let api: Api<core::Node> = Api::all(c.clone());
    api.list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .map(|n| {
            let cidr = n.spec.and_then(|s| s.pod_cidr);
            (n.metadata.name.unwrap_or_default(), cidr)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_assigns_distinct_ranges_and_rebuilds_after_restart() {
    let s = Server::start();
    let c = &s.client;
    for n in ["a", "b", "c"] {
        node(c, n, json!({}), json!([])).await;
    }
    let m = Manager::start(&s, "nodeipam", |_| {});
    let got = wait_for("three podCIDRs", 30, || async {
        let v = cidrs(c).await;
        v.iter().all(|(_, c)| c.is_some()).then_some(v)
    })
    .await;
    let set: BTreeSet<String> = got.iter().filter_map(|(_, c)| c.clone()).collect();
    assert_eq!(set.len(), 3, "distinct: {got:?}");
    for r in &set {
        assert!(r.starts_with("10.244.") && r.ends_with(".0/24"), "{r}");
    }
    let api: Api<core::Node> = Api::all(c.clone());
    let a = api.get("a").await.unwrap();
    assert_eq!(
        a.spec.as_ref().unwrap().pod_cidrs.as_deref(),
        Some(&[a.spec.as_ref().unwrap().pod_cidr.clone().unwrap()][..])
    );
    // Restart: the map comes back from the Nodes; a new node does not get a taken range.
    m.stop().await;
    let taken: BTreeSet<String> = set.clone();
    node(c, "d", json!({}), json!([])).await;
    let _m = Manager::start(&s, "nodeipam", |_| {});
    let d = wait_for("d's podCIDR", 30, || async {
        api.get("d")
            .await
            .ok()
            .and_then(|n| n.spec.and_then(|s| s.pod_cidr))
    })
    .await;
    assert!(!taken.contains(&d), "{d} was already taken: {taken:?}");
    // A deleted node's range goes back to the pool: with a, b, c, d holding four ranges,
    // deleting b and adding e gives e b's range at the latest when the pool wraps; here we
    // only check that e gets a range nobody else holds.
    let b_range = got
        .iter()
        .find(|(n, _)| n == "b")
        .and_then(|(_, c)| c.clone())
        .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    node(c, "e", json!({}), json!([])).await;
    let e = wait_for("e's podCIDR", 30, || async {
        api.get("e")
            .await
            .ok()
            .and_then(|n| n.spec.and_then(|s| s.pod_cidr))
    })
    .await;
    let others: BTreeSet<String> = cidrs(c)
        .await
        .into_iter()
        .filter(|(n, _)| n != "e")
        .filter_map(|(_, c)| c)
        .collect();
    assert!(!others.contains(&e), "{e} vs {others:?}");
    let _ = b_range;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_reports_a_full_range() {
    let s = Server::start();
    let c = &s.client;
    for n in ["a", "b", "c"] {
        node(c, n, json!({}), json!([])).await;
    }
    let _m = Manager::start(&s, "nodeipam", |o| {
        o.nodes.cluster_cidr = "10.250.0.0/23".parse().unwrap();
    });
    let events: Api<core::Event> = Api::namespaced(c.clone(), "default");
    let ev = wait_for("a CIDRNotAvailable event", 30, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.message
            .unwrap_or_default()
            .contains("no remaining CIDRs")
    );
    let got = cidrs(c).await;
    assert_eq!(
        got.iter().filter(|(_, c)| c.is_some()).count(),
        2,
        "{got:?}"
    );
}

async fn renew(c: &api::client::Client, node: &str) {
    let api: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    let now = Timestamp::now().to_string();
    let patch =
        json!({"spec": {"renewTime": now, "holderIdentity": node, "leaseDurationSeconds": 40}});
    if api
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .is_err()
    {
        create(
            &api,
            json!({"metadata": {"name": node, "namespace": "kube-node-lease"},
                   "spec": {"renewTime": now, "holderIdentity": node, "leaseDurationSeconds": 40}}),
        )
        .await;
    }
}

async fn bound_pod(
    c: &api::client::Client,
    name: &str,
    node: &str,
    tolerations: serde_json::Value,
) {
    let api: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    create(
        &api,
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"nodeName": node, "tolerations": tolerations,
                        "containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    common::pod_ready(c, "default", name).await;
}

fn taint_keys(n: &core::Node) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_taints_the_node_and_evicts_intolerant_pods() {
    let s = Server::start();
    let c = &s.client;
    let nss: Api<core::Namespace> = Api::all(c.clone());
    let ns: core::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kube-node-lease"}})).unwrap();
    // The apiserver may create it itself.
    let _ = nss.create(&api::client::PostParams::default(), &ns).await;
    node(c, "good", json!({}), json!([])).await;
    node(c, "stale", json!({}), json!([])).await;
    renew(c, "good").await;
    renew(c, "stale").await;
    // The apiserver's DefaultTolerationSeconds admission gives every pod 300 s; "doomed"
    // asks for 2.
    bound_pod(
        c,
        "doomed",
        "stale",
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]),
    )
    .await;
    bound_pod(
        c,
        "patient",
        "stale",
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]),
    )
    .await;
    bound_pod(c, "elsewhere", "good", json!([])).await;
    let _m = Manager::start(&s, "nodelifecycle,taint-eviction-controller", |o| {
        o.nodes.monitor_grace_period = Duration::from_secs(2);
        o.nodes.monitor_period = Duration::from_millis(500);
    });
    // The test is the kubelet of "good" only: it keeps renewing that Lease.
    let heartbeat = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                renew(&c, "good").await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let nodes: Api<core::Node> = Api::all(c.clone());
    let stale = wait_for("the stale node to be tainted", 30, || async {
        let n = nodes.get("stale").await.ok()?;
        let t = taint_keys(&n);
        (t.len() == 2).then_some(n)
    })
    .await;
    let t = taint_keys(&stale);
    assert!(
        t.contains(&("node.kubernetes.io/unreachable".into(), "NoSchedule".into())),
        "{t:?}"
    );
    assert!(
        t.contains(&("node.kubernetes.io/unreachable".into(), "NoExecute".into())),
        "{t:?}"
    );
    let ready = stale
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready").cloned())
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("Unknown", Some("NodeStatusUnknown"))
    );
    // The pod tolerating 2 s goes after 2 s; the one tolerating an hour stays, marked not Ready.
    let pods: Api<core::Pod> = Api::namespaced(c.clone(), "default");
    wait_for("the doomed pod to be evicted", 30, || async {
        match pods.get_opt("doomed").await.ok()? {
            None => Some(()),
            Some(p) => p.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
    let patient = pods.get("patient").await.unwrap();
    assert!(patient.metadata.deletion_timestamp.is_none());
    assert!(
        !common::is_ready(&patient),
        "pods of an unreachable node are not Ready"
    );
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert!(elsewhere.metadata.deletion_timestamp.is_none() && common::is_ready(&elsewhere));
    assert!(taint_keys(&nodes.get("good").await.unwrap()).is_empty());
    // The node comes back: its kubelet posts Ready and renews; the taints go.
    node_ready(c, "stale", "True").await;
    renew(c, "stale").await;
    let back = wait_for("the taints to go", 30, || async {
        renew(c, "stale").await;
        let n = nodes.get("stale").await.ok()?;
        taint_keys(&n).is_empty().then_some(n)
    })
    .await;
    assert!(taint_keys(&back).is_empty());
    heartbeat.abort();
}
