//! Hollow nodes against a real (in-process) apiserver: they register Ready Nodes, renew their
//! Leases, report the pods bound to them Running with addresses from their pod CIDRs, and
//! finish graceful deletions. No root needed: no container runs.

#[path = "kubelet_common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use api::client::{Api, DeleteParams, ListParams, PostParams};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use node::hollow::{HOLLOW_LABEL, HollowConfig};

const NODES: usize = 20;
const PODS: usize = 40;

async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn renew_times(leases: &[Lease]) -> Vec<String> {
    leases
        .iter()
        .map(|l| {
            l.spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| format!("{:?}", t.0))
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_register_renew_and_run_pods() {
    let server = common::Server::start();
    let client = server.client();
    let mut cfg = HollowConfig::new(server.kubeconfig.clone(), NODES);
    cfg.lease_interval = Duration::from_millis(300);
    cfg.status_interval = Duration::from_secs(1);
    cfg.start_delay = Duration::from_millis(50);
    cfg.start_rate = 1000;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hollow = tokio::spawn(node::hollow::run(cfg, async {
        let _ = stop_rx.await;
    }));

    // Every node registers, labelled, Ready, with the capacity it claims.
    let nodes: Api<Node> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{HOLLOW_LABEL}=true"));
    let listed = eventually(Duration::from_secs(30), "20 Ready hollow nodes", || async {
        let l = nodes.list(&lp).await.ok()?;
        let ready = l
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == NODES).then_some(l.items)
    })
    .await;
    let n0 = &listed[0];
    let cap = n0
        .status
        .as_ref()
        .and_then(|s| s.capacity.clone())
        .unwrap_or_default();
    assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("110"));
    assert_eq!(cap.get("cpu").map(|q| q.0.as_str()), Some("4"));

    // Leases exist and are renewed.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = eventually(Duration::from_secs(20), "20 leases", || async {
        let l = leases.list(&ListParams::default()).await.ok()?;
        (l.items.len() == NODES).then_some(renew_times(&l.items))
    })
    .await;
    eventually(Duration::from_secs(20), "renewed leases", || async {
        let l = leases.list(&ListParams::default()).await.ok()?;
        let now = renew_times(&l.items);
        (now.iter().zip(&first).all(|(a, b)| a != b)).then_some(())
    })
    .await;

    // Pods bound to hollow nodes are reported Running with an address of the node's CIDR.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..PODS {
        let node = format!("hollow-node-{}", i % NODES);
        let p = common::pod(
            &node,
            serde_json::json!({"metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        );
        pods.create(&PostParams::default(), &p)
            .await
            .expect("create pod");
    }
    let running = eventually(Duration::from_secs(30), "40 running pods", || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        let running: Vec<Pod> = l
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == PODS).then_some(running)
    })
    .await;
    let mut ips = HashSet::new();
    for p in &running {
        let st = p.status.as_ref().expect("status");
        let ip = st.pod_ip.clone().expect("pod IP");
        assert!(ips.insert(ip.clone()), "duplicate pod IP {ip}");
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let index: u32 = node.trim_start_matches("hollow-node-").parse().unwrap();
        // The default pod CIDR of node i is the i-th /24 of 10.128.0.0/9.
        let want_prefix = format!("10.128.{index}.");
        assert!(ip.starts_with(&want_prefix), "{node}: {ip}");
        let cs = st.container_statuses.as_ref().expect("container statuses");
        assert!(cs[0].ready && cs[0].state.as_ref().unwrap().running.is_some());
    }

    // Graceful deletion: the hollow kubelet finishes it (grace 0, uid precondition).
    for i in 0..PODS {
        pods.delete(&format!("p{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually(Duration::from_secs(30), "all pods gone", || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        l.items.is_empty().then_some(())
    })
    .await;

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), hollow)
        .await
        .expect("hollow nodes stop")
        .expect("join")
        .expect("run");
}

#[tokio::test]
async fn hollow_count_is_bounded() {
    let cfg = HollowConfig::new("/nonexistent/kubeconfig".into(), 0);
    let err = node::hollow::run(cfg, std::future::pending())
        .await
        .expect_err("zero nodes");
    assert!(err.to_string().contains("1..=100000"), "{err}");
}
